"""Tests for llama.py against independent references: transformers' LlamaForCausalLM holding the same weights, the
real stories260K.bin, explicit generation loops written here, and float64 formulas; and for sanity_check.py."""
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sanity_check
from checkpoint import save_checkpoint
from config import LlamaConfig
from convert import to_hf
from llama import KVCache, Linear, Llama, RMSNorm, load_pretrained

REPO = Path(__file__).resolve().parent.parent
CONFIG = LlamaConfig(vocab_size=97, dim=64, n_layers=3, n_heads=8, n_kv_heads=2, max_seq_len=32)


def random_model(config: LlamaConfig = CONFIG, seed: int = 0, tied: bool = True) -> Llama:
    """A model whose activations are of order one (matrices ~ N(0, 1/fan_in), norm gains ~ N(1, 0.2)), so that
    attention is far from uniform and a wrong rotation or mask changes the logits by much more than 1e-4."""
    torch.manual_seed(seed)
    model = Llama(config)
    if not tied:
        model.output.weight = nn.Parameter(torch.empty_like(model.output.weight))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
            else:
                p.normal_(1.0, 0.2)
    return model.eval()


def reference(model: Llama):
    """transformers' LlamaForCausalLM with the same weights."""
    hf = to_hf(model)
    hf.generation_config.eos_token_id = None  # generate exactly max_new_tokens, like ours
    return hf


def test_state_dict_has_the_course_names():
    names = {"tok_embeddings.weight", "norm.weight", "output.weight"} | {
        f"layers.{i}.{name}.weight" for i in range(CONFIG.n_layers) for name in (
            "attention.compute_query", "attention.compute_key", "attention.compute_value", "attention.compute_output",
            "feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "attention_norm", "ffn_norm")}
    model = Llama(CONFIG)
    assert set(model.state_dict()) == names
    assert model.output.weight is model.tok_embeddings.weight


@pytest.mark.parametrize("use_sdpa, tied", [(True, True), (False, True), (True, False)])
def test_matches_transformers(use_sdpa, tied):
    model = random_model(tied=tied)
    for layer in model.layers:
        layer.attention.use_sdpa = use_sdpa
    tokens = torch.randint(0, CONFIG.vocab_size, (3, CONFIG.max_seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, hidden_states = model(tokens, targets=tokens)
        last_logits, _ = model(tokens)
        hf = reference(model)(tokens, output_hidden_states=True)
    assert logits.abs().max() > 1.0  # the comparison below is not between near-zero numbers
    assert (logits - hf.logits).abs().max() < 1e-4
    assert (hidden_states - hf.hidden_states[-1]).abs().max() < 1e-4  # transformers' last entry is after the norm
    assert last_logits.shape == (3, 1, CONFIG.vocab_size)
    assert (last_logits[:, 0] - hf.logits[:, -1]).abs().max() < 1e-4


def test_stories260k_greedy_matches_transformers(asset):
    model = load_pretrained(str(asset("stories260K.bin")), device="cpu")
    config = model.config
    assert (config.n_heads, config.n_kv_heads, config.vocab_size, config.dim, config.n_layers) == (8, 4, 512, 64, 5)
    bos = torch.tensor([[1]])
    ours = model.generate(bos, 200, temperature=0.0)
    hf = reference(model)
    theirs = hf.generate(bos, attention_mask=torch.ones_like(bos), max_new_tokens=200, do_sample=False)
    assert ours.shape == (1, 201)
    assert ours.tolist() == theirs.tolist()
    assert torch.equal(model.generate(bos, 200, temperature=0.0, use_cache=False), ours)
    with torch.no_grad():
        logits, _ = model(ours, targets=ours)
        assert (logits - hf(ours).logits).abs().max() < 1e-4


def argmax_or_sample_loop(model: Llama, idx: torch.Tensor, max_new_tokens: int, temperature: float) -> torch.Tensor:
    """The course's generation loop, spelled out: the whole (cropped) context through forward at every step."""
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits, _ = model(idx[:, -model.config.max_seq_len:])
        logits = logits[:, -1, :]
        if temperature == 0.0:
            idx_next = logits.argmax(dim=-1, keepdim=True)
        else:
            idx_next = torch.multinomial(F.softmax(logits / temperature, dim=-1), num_samples=1)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


# prompt lengths: short; one that runs past max_seq_len (the window then slides); exactly max_seq_len; longer
@pytest.mark.parametrize("prompt_len", [1, 5, 27, 32, 40])
def test_greedy_equals_argmax_loop_with_and_without_cache(prompt_len):
    model = random_model()
    prompt = torch.randint(0, CONFIG.vocab_size, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    expected = argmax_or_sample_loop(model, prompt, 12, temperature=0.0)
    assert expected.shape == (2, prompt_len + 12)
    assert torch.equal(model.generate(prompt, 12, temperature=0.0, use_cache=False), expected)
    assert torch.equal(model.generate(prompt, 12, temperature=0.0), expected)
    assert all(layer.attention.cache is None for layer in model.layers)  # the cache is dropped afterwards


@pytest.mark.parametrize("prompt_len", [3, 29])
def test_sampling_is_softmax_of_scaled_logits_and_reproducible(prompt_len):
    model = random_model()
    prompt = torch.randint(0, CONFIG.vocab_size, (2, prompt_len), generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)
    expected = argmax_or_sample_loop(model, prompt, 10, temperature=0.8)
    for use_cache in (False, True):
        torch.manual_seed(123)
        assert torch.equal(model.generate(prompt, 10, temperature=0.8, use_cache=use_cache), expected)
    torch.manual_seed(124)
    assert not torch.equal(model.generate(prompt, 10, temperature=0.8), expected)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, 1, temperature=-1.0)


def attention_outputs(attention, x: torch.Tensor, chunks: list[int] | None) -> torch.Tensor:
    """Attention over x (batch, seqlen, dim) in one pass, or chunk by chunk through a KV cache."""
    if chunks is None:
        return attention(x)
    attention.cache = KVCache(attention.max_seq_len)
    outputs, start = [], 0
    for size in chunks:
        outputs.append(attention(x[:, start : start + size], start_pos=start))
        start += size
    attention.cache = None
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("chunks", [None, [4, 3, 1, 1, 5], [1] * 6])
def test_sdpa_equals_explicit_attention(chunks):
    """The fused kernel and the written-out softmax(QKᵀ/√d)V agree, with GQA, batch 3, and cache offsets."""
    attention = random_model().layers[1].attention
    x = torch.randn(3, sum(chunks or [14]), CONFIG.dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        attention.use_sdpa = False
        explicit = attention_outputs(attention, x, chunks)
        attention.use_sdpa = True
        fast = attention_outputs(attention, x, chunks)
        whole = attention_outputs(attention, x, None)
    assert explicit.abs().max() > 0.1
    assert (fast - explicit).abs().max() < 1e-5
    assert (fast - whole).abs().max() < 1e-5  # the cache gives what one pass over all positions gives


def test_explicit_attention_takes_repeated_keys_too():
    """The course expands keys/values to n_heads before compute_query_key_value_scores; both forms agree."""
    attention = random_model().layers[0].attention
    g = torch.Generator().manual_seed(3)
    query = torch.randn(2, CONFIG.n_heads, 6, CONFIG.head_dim, generator=g)
    key, value = (torch.randn(2, CONFIG.n_kv_heads, 6, CONFIG.head_dim, generator=g) for _ in range(2))
    n_rep = CONFIG.n_heads // CONFIG.n_kv_heads
    grouped = attention.compute_query_key_value_scores(query, key, value)
    repeated = attention.compute_query_key_value_scores(
        query, key.repeat_interleave(n_rep, dim=1), value.repeat_interleave(n_rep, dim=1))
    assert torch.equal(grouped, repeated)
    # query head 5 uses key/value head 5 // n_rep; its first position sees only itself: output = that value
    assert torch.allclose(grouped[:, 5, 0], value[:, 5 // n_rep, 0])


def test_rmsnorm_is_computed_in_float32():
    x = (torch.randn(4, 64, dtype=torch.float64) * 300).to(torch.bfloat16)
    norm = RMSNorm(64, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2)
    x64, w64 = x.double(), norm.weight.double()
    expected = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5) * w64
    got = norm(x)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.double(), expected, rtol=2e-2, atol=0)


def test_load_pretrained_untied_course_checkpoint(tmp_path):
    model = random_model(tied=False)
    state_dict = {"_orig_mod." + name: t for name, t in model.state_dict().items()}
    torch.save({"model_args": asdict(CONFIG), "model": state_dict}, tmp_path / "model.pt")
    loaded = load_pretrained(str(tmp_path / "model.pt"), device="cpu")
    assert not loaded.training
    assert loaded.output.weight is not loaded.tok_embeddings.weight
    tokens = torch.randint(0, CONFIG.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(tokens, targets=tokens)[0], model(tokens, targets=tokens)[0])


def test_load_pretrained_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_pretrained(str(tmp_path / "nope.pt"))


# sanity_check.py: its token ids reach 17953, so the tiny model here has a vocabulary of 18000
SANITY_CONFIG = LlamaConfig(vocab_size=18000, dim=16, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=8)


def test_sanity_check_against_transformers_outputs(tmp_path, capsys):
    model = random_model(SANITY_CONFIG)
    save_checkpoint(tmp_path / "tiny.pt", asdict(SANITY_CONFIG), model.state_dict())
    with torch.no_grad():
        hf = reference(model)(torch.tensor(sanity_check.SENT_IDS), output_hidden_states=True)
    expected = {"logits": hf.logits[:, -1:], "hidden_states": hf.hidden_states[-1]}
    torch.save(expected, tmp_path / "expected.data")
    assert sanity_check.main(str(tmp_path / "tiny.pt"), str(tmp_path / "expected.data")) == 0
    assert capsys.readouterr().out == "Your Llama implementation is correct!\n"

    expected["logits"] = expected["logits"] * (1 + 3e-3)
    torch.save(expected, tmp_path / "expected.data")
    assert sanity_check.main(str(tmp_path / "tiny.pt"), str(tmp_path / "expected.data")) == 1
    err = capsys.readouterr().err
    assert "logits: max |difference|" in err and "hidden_states" not in err


def test_sanity_check_compare():
    logits, hidden = torch.randn(2, 1, 50), torch.randn(2, 8, 16)
    outputs = {"logits": logits, "hidden_states": hidden}
    assert sanity_check.compare(outputs, {"logits": logits + 5e-6, "hidden_states": hidden * (1 + 5e-4)}) == []
    problems = sanity_check.compare(outputs, {"logits": logits + 1e-3, "hidden_states": hidden[:, :4]})
    assert len(problems) == 2
    assert problems[0].startswith("logits: max |difference| 0.001")
    assert problems[1] == "hidden_states: shape (2, 8, 16), expected (2, 4, 16)"
    assert sanity_check.compare(outputs, {"logits": logits}) == ["hidden_states: not in the expected data"]


def run_sanity_check(cwd: Path, mirror: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MINLLAMA_ASSET_MIRROR=str(mirror))
    return subprocess.run([sys.executable, str(REPO / "sanity_check.py")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_sanity_check_missing_files(tmp_path, asset):
    data = asset("sanity_check.data")
    mirror, work = tmp_path / "mirror", tmp_path / "work"
    mirror.mkdir()
    work.mkdir()
    result = run_sanity_check(work, mirror)
    assert result.returncode == 1
    assert "sanity_check.data" in result.stderr and "Download it by hand from https://" in result.stderr
    assert "Traceback" not in result.stderr
    # with sanity_check.data in the mirror, it is fetched, and the missing checkpoint is what is reported
    (mirror / "sanity_check.data").write_bytes(data.read_bytes())
    result = run_sanity_check(work, mirror)
    assert result.returncode == 1
    assert "stories42M.pt" in result.stderr and "https://www.cs.cmu.edu/~vijayv/stories42M.pt" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["sanity_check.data"]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("out_features", [64, 61, 96])
def test_fast_linear_equals_f_linear(threads, out_features):
    """llama.Linear's blocked product for a few rows is F.linear's, whatever the threads and row counts."""
    layer = Linear(48, out_features)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape in [(48,), (1, 48), (1, 1, 48), (3, 5, 48), (16, 48), (17, 48), (2, 20, 48)]:
            x = torch.randn(shape)
            got = layer(x)
            assert got.shape == (*shape[:-1], out_features)
            torch.testing.assert_close(got, F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)
