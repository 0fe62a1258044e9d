"""Tests for config.py: the course's defaults, llama2.c's hidden_dim rule, and errors that name the bad field."""
import pytest

from config import LlamaConfig


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
