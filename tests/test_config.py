"""Tests for config.py: the course's defaults, llama2.c's hidden_dim rule, and errors that name the bad field."""
import math
import os

import pytest

from config import ClassifierConfig, LlamaConfig, lora_problem, memory_bytes


def test_defaults_are_the_courses():
    config = LlamaConfig()
    assert (config.vocab_size, config.dim, config.dropout, config.n_layers, config.n_heads, config.n_kv_heads,
            config.max_seq_len, config.layer_norm_eps, config.multiple_of) == (32000, 512, 0.0, 8, 8, 8, 1024, 1e-5, 32)
    assert config.head_dim == 64


@pytest.mark.parametrize("dim, multiple_of, hidden_dim", [
    (512, 32, 1376),  # stories42M: int(2·4·512/3) = 1365, rounded up to a multiple of 32
    (288, 32, 768),  # stories15M: 768 exactly
    (64, 32, 192),  # 170 -> 192
    (64, 4, 172),  # stories260K's 172
    (4096, 256, 11008),  # Llama 2 7B
])
def test_hidden_dim_is_derived_as_in_llama2c(dim, multiple_of, hidden_dim):
    assert LlamaConfig(dim=dim, n_heads=8, n_kv_heads=8, multiple_of=multiple_of).hidden_dim == hidden_dim


def test_explicit_hidden_dim_is_kept():
    assert LlamaConfig(dim=64, hidden_dim=100).hidden_dim == 100


@pytest.mark.parametrize("changes, field", [
    (dict(vocab_size=0), "vocab_size"),
    (dict(dim=-8), "dim"),
    (dict(n_layers=0), "n_layers"),
    (dict(n_heads=0), "n_heads"),
    (dict(n_kv_heads=-1), "n_kv_heads"),
    (dict(max_seq_len=0), "max_seq_len"),
    (dict(multiple_of=0), "multiple_of"),
    (dict(hidden_dim=0), "hidden_dim"),
    (dict(dropout=1.0), "dropout"),
    (dict(dropout=-0.1), "dropout"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps"),
    (dict(dim=100, n_heads=8), "n_heads"),  # dim not divisible by n_heads
    (dict(n_heads=8, n_kv_heads=3), "n_kv_heads"),  # n_heads not divisible by n_kv_heads
    (dict(dim=24, n_heads=8, n_kv_heads=8), "head_dim"),  # head_dim 3 is odd: no rotary pairs
])
def test_invalid_configs_name_the_field(changes, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        LlamaConfig(**changes)


def test_from_model_args_rejects_unknown_keys():
    config = LlamaConfig.from_model_args(dict(dim=64, n_heads=4, n_kv_heads=2, vocab_size=10))
    assert (config.dim, config.n_heads, config.n_kv_heads, config.vocab_size) == (64, 4, 2, 10)
    with pytest.raises(ValueError, match=r"ckpt\.pt.*\['rope_theta'\]"):
        LlamaConfig.from_model_args(dict(dim=64, rope_theta=1e4), source="ckpt.pt")


@pytest.mark.parametrize("change, error", [
    (dict(max_seq_len=10**12), r"ckpt\.pt: model_args max_seq_len=1000000000000: the rotary tables .* GiB, more than"),
    (dict(n_layers=-1), r"ckpt\.pt: bad model sizes: LlamaConfig\.n_layers must be positive"),
    (dict(dim=64.0), r"ckpt\.pt: model_args dim=64\.0 is not a finite int"),
    (dict(causal=1), r"ckpt\.pt: model_args causal=1 is not a finite bool"),
])
def test_from_model_args_refuses_before_anything_is_allocated(change, error):
    """An absurd size is one line naming the file (issue 19, defect 9), not an allocation error later."""
    with pytest.raises(ValueError, match=error) as refusal:
        LlamaConfig.from_model_args({**dict(dim=64, n_heads=4, n_kv_heads=2, vocab_size=10), **change}, "ckpt.pt")
    assert "\n" not in str(refusal.value)


def test_the_lower_layer_holds_the_classifier_config_and_the_lora_checks():
    assert ClassifierConfig("m.pt", 2).lora_targets == ("compute_query", "compute_value")
    for args, name in (((0, 1.0, 0.0), "lora_rank"), ((4, float("nan"), 0.0), "lora_alpha"),
                       ((4, 1.0, 1.0), "lora_dropout")):
        assert lora_problem(*args).startswith(f"{name} must be ")
    assert lora_problem(4, 1.0, 0.0) is None


def test_memory_is_unbounded_where_the_system_does_not_say(monkeypatch):
    assert 0 < memory_bytes() < math.inf
    monkeypatch.delattr(os, "sysconf")  # Windows has no os.sysconf
    assert memory_bytes() == math.inf
    assert LlamaConfig.from_model_args(dict(dim=64, n_heads=4, n_kv_heads=2, max_seq_len=10**12)).max_seq_len == 10**12
