"""Tests for llama.py against independent references: a float64 re-derivation of the model written here (both
semantics), transformers' LlamaForCausalLM holding the same weights and the real stories260K.bin (causal), explicit
generation loops; and for sanity_check.py."""
import math
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sanity_check
from checkpoint import save_checkpoint
from config import LlamaConfig
from convert import to_hf
import fast
from fast import NonFiniteError, finite
from files import InputError
from llama import Attention, FeedForward, KVCache, Llama, LlamaLayer, RMSNorm, load_pretrained

REPO = Path(__file__).resolve().parent.parent
CONFIG = LlamaConfig(vocab_size=97, dim=64, n_layers=3, n_heads=8, n_kv_heads=2, max_seq_len=32, causal=True)
COURSE = replace(CONFIG, causal=False)  # the course's reference semantics: no mask


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


def float64_forward(model: Llama, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states and logits of every position, from the state dict in float64, equation by equation:
    RMSNorm (Zhang & Sennrich 2019, eq. 4), RoPE as complex rotation (Su et al. 2021, §3.4.2), softmax(QKᵀ/√d)V with
    n_heads/n_kv_heads query heads per key/value head and a causal mask only if the config is causal, SwiGLU."""
    c = model.config
    w = {name: t.double() for name, t in model.state_dict().items()}
    batch, seqlen = tokens.shape
    hd = c.head_dim

    def rms_norm(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + c.layer_norm_eps) * gain

    angles = torch.arange(seqlen, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(0, hd, 2).double() / hd)
    turn = torch.polar(torch.ones_like(angles), angles)[:, None, :]  # (seqlen, 1, hd/2)

    def rope(x: torch.Tensor) -> torch.Tensor:
        z = torch.view_as_complex(x.unflatten(-1, (-1, 2)).contiguous()) * turn
        return torch.view_as_real(z).flatten(-2)

    future = torch.ones(seqlen, seqlen, dtype=torch.bool).triu(1)
    h = w["tok_embeddings.weight"][tokens]
    for i in range(c.n_layers):
        p = f"layers.{i}."
        x = rms_norm(h, w[p + "attention_norm.weight"])
        q = rope((x @ w[p + "attention.compute_query.weight"].T).view(batch, seqlen, c.n_heads, hd))
        k = rope((x @ w[p + "attention.compute_key.weight"].T).view(batch, seqlen, c.n_kv_heads, hd))
        v = (x @ w[p + "attention.compute_value.weight"].T).view(batch, seqlen, c.n_kv_heads, hd)
        group = torch.arange(c.n_heads) // (c.n_heads // c.n_kv_heads)  # the key/value head of each query head
        scores = torch.einsum("bthd,bshd->bhts", q, k[:, :, group]) / math.sqrt(hd)
        if c.causal:
            scores = scores.masked_fill(future, float("-inf"))
        attended = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v[:, :, group]).reshape(batch, seqlen, -1)
        h = h + attended @ w[p + "attention.compute_output.weight"].T
        x = rms_norm(h, w[p + "ffn_norm.weight"])
        gate = x @ w[p + "feed_forward.w1.weight"].T
        h = h + (gate * torch.sigmoid(gate) * (x @ w[p + "feed_forward.w3.weight"].T)) @ w[p + "feed_forward.w2.weight"].T
    hidden = rms_norm(h, w["norm.weight"])
    return hidden, hidden @ w["output.weight"].T


def reference(model: Llama):
    """transformers' LlamaForCausalLM with the same weights (a causal model)."""
    assert model.config.causal
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


@pytest.mark.parametrize("flash, tied", [(True, True), (False, True), (True, False)])
def test_causal_matches_transformers(flash, tied):
    model = random_model(tied=tied)
    for layer in model.layers:
        layer.attention.flash = flash
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
    model = load_pretrained(str(asset("stories260K.bin")), causal=True)
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


def test_course_semantics_matches_float64_reference():
    """No mask of any kind: padded rows attend to their pads, and rows sharing a prefix differ there (as the two rows
    of the course's sanity_check.data, which share their first two ids, do)."""
    model = random_model(COURSE)
    pad = 0
    tokens = torch.tensor([[5, 17, 40, 2, pad, pad, pad, pad], [5, 17, 61, 33, 9, 80, 44, 2]])
    with torch.no_grad():
        logits, hidden = model(tokens, targets=tokens)
        last_logits, _ = model(tokens)
    expected_hidden, expected_logits = float64_forward(model, tokens)
    assert logits.abs().max() > 1.0
    assert (hidden.double() - expected_hidden).abs().max() < 1e-4
    assert (logits.double() - expected_logits).abs().max() < 1e-4
    assert (last_logits[:, 0].double() - expected_logits[:, -1]).abs().max() < 1e-4
    assert (hidden[0, :2] - hidden[1, :2]).abs().max() > 0.1  # the shared prefix saw different continuations
    with torch.no_grad():
        _, causal_hidden = random_model(CONFIG)(tokens)
    assert (causal_hidden[0, :2] - causal_hidden[1, :2]).abs().max() < 1e-5  # with the mask it could not


def test_causal_matches_float64_reference():
    model = random_model(CONFIG)
    tokens = torch.randint(0, CONFIG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits, hidden = model(tokens, targets=tokens)
    expected_hidden, expected_logits = float64_forward(model, tokens)
    assert (hidden.double() - expected_hidden).abs().max() < 1e-4
    assert (logits.double() - expected_logits).abs().max() < 1e-4


def test_sanity_check_data_rows_differ_on_their_shared_prefix(asset):
    """The course's reference outputs themselves show no mask: the two rows share ids 101, 7592, yet differ there."""
    data = torch.load(asset("sanity_check.data"), weights_only=True)
    assert sanity_check.SENT_IDS[0][:2] == sanity_check.SENT_IDS[1][:2]
    difference = (data["hidden_states"][0, :2] - data["hidden_states"][1, :2]).abs().max()
    assert difference > 10.0  # 10.65, with rows of norm ~100: far beyond float rounding


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
@pytest.mark.parametrize("installed", [False, True], ids=["llama.py", "fast.install"])
@pytest.mark.parametrize("config", [COURSE, CONFIG], ids=["course", "causal"])
@pytest.mark.parametrize("prompt_len", [1, 5, 27, 32, 40])
def test_greedy_equals_argmax_loop_with_and_without_cache(config, prompt_len, installed):
    model = fast.install(random_model(config)) if installed else random_model(config)
    prompt = torch.randint(0, CONFIG.vocab_size, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    expected = argmax_or_sample_loop(model, prompt, 12, temperature=0.0)
    assert expected.shape == (2, prompt_len + 12)
    assert torch.equal(model.generate(prompt, 12, temperature=0.0, use_cache=False), expected)
    assert torch.equal(model.generate(prompt, 12, temperature=0.0), expected)
    assert all(layer.attention.cache is None for layer in model.layers)  # the cache is dropped afterwards


@pytest.mark.parametrize("causal, cached", [(False, False), (True, True)])
def test_only_the_causal_model_caches(causal, cached):
    """Without a mask each step must recompute the whole context: earlier positions see the new token."""
    model = random_model(replace(CONFIG, causal=causal))
    widths = []
    model.tok_embeddings.register_forward_pre_hook(lambda module, inputs: widths.append(inputs[0].shape[1]))
    model.generate(torch.tensor([[3, 4, 5]]), 4, temperature=0.0)
    assert widths == ([3, 1, 1, 1] if cached else [3, 4, 5, 6])


@pytest.mark.parametrize("installed", [False, True], ids=["llama.py", "fast.install"])
@pytest.mark.parametrize("config", [COURSE, CONFIG], ids=["course", "causal"])
@pytest.mark.parametrize("prompt_len", [3, 29])
def test_sampling_is_softmax_of_scaled_logits_and_reproducible(config, prompt_len, installed):
    model = fast.install(random_model(config)) if installed else random_model(config)
    prompt = torch.randint(0, CONFIG.vocab_size, (2, prompt_len), generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)
    expected = argmax_or_sample_loop(model, prompt, 10, temperature=0.8)
    for use_cache in (False, True):
        torch.manual_seed(123)
        assert torch.equal(model.generate(prompt, 10, temperature=0.8, use_cache=use_cache), expected)
    torch.manual_seed(124)
    assert not torch.equal(model.generate(prompt, 10, temperature=0.8), expected)


def test_top_k_samples_only_among_the_k_likeliest():
    model = random_model(COURSE)
    prompt = torch.tensor([[7, 8, 9]])
    with torch.no_grad():
        logits, _ = model(prompt)
    allowed = set(logits[0, -1].topk(3).indices.tolist())
    torch.manual_seed(0)
    firsts = {model.generate(prompt, 1, temperature=5.0, top_k=3)[0, -1].item() for _ in range(60)}
    assert firsts == allowed  # a high temperature spreads the draws over all three, and never beyond
    assert torch.equal(model.generate(prompt, 1, temperature=1.0, top_k=1)[0, -1], logits[0, -1].argmax())


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


@pytest.mark.parametrize("config, chunks", [(COURSE, None), (CONFIG, None), (CONFIG, [4, 3, 1, 1, 5]),
                                            (CONFIG, [1] * 6)], ids=["course", "causal", "cached", "one-by-one"])
def test_flash_equals_written_out_attention(config, chunks):
    """The fused kernel and the written-out softmax(QKᵀ/√d + M)V agree, with GQA, batch 3, and cache offsets."""
    attention = random_model(config).layers[1].attention
    x = torch.randn(3, sum(chunks or [14]), CONFIG.dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        attention.flash = False
        explicit = attention_outputs(attention, x, chunks)
        attention.flash = True
        fast = attention_outputs(attention, x, chunks)
        whole = attention_outputs(attention, x, None)
    assert explicit.abs().max() > 0.1
    assert (fast - explicit).abs().max() < 1e-5
    assert (fast - whole).abs().max() < 1e-5  # the cache gives what one pass over all positions gives


@pytest.mark.parametrize("config", [COURSE, CONFIG], ids=["course", "causal"])
def test_attention_goes_through_compute_query_key_value_scores(config, monkeypatch):
    """forward hands the function the course's shapes, keys and values repeated to n_heads; editing it changes
    the model."""
    model = random_model(config)
    tokens = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        before, _ = model(tokens)
    shapes = []

    def edited(self, query, key, value):
        shapes.append((query.shape, key.shape, value.shape))
        return torch.zeros_like(query)

    monkeypatch.setattr(Attention, "compute_query_key_value_scores", edited)
    with torch.no_grad():
        after, _ = model(tokens)
    heads = (1, config.n_heads, 5, config.head_dim)
    assert shapes == [(heads, heads, heads)] * config.n_layers
    assert not torch.allclose(before, after)


def test_course_names_and_signatures():
    config = LlamaConfig(dim=64, n_heads=8, n_kv_heads=None, n_layers=1, vocab_size=50, max_seq_len=16)
    assert config.n_kv_heads == 8 and config.causal is False
    attention = Attention(replace(config, n_kv_heads=2))
    assert (attention.n_local_heads, attention.n_local_kv_heads, attention.n_rep, attention.head_dim) == (8, 2, 4, 8)
    layer = LlamaLayer(0, config)
    assert (layer.n_heads, layer.dim, layer.head_dim) == (8, 64, 8)
    feed_forward = FeedForward(dim=64, hidden_dim=None, multiple_of=32, dropout=0.0)
    assert feed_forward.w1.weight.shape == (192, 64)  # int(2·4·64/3) = 170, rounded up to a multiple of 32
    assert FeedForward(64, 100, 32, 0.0).w2.weight.shape == (64, 100)


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
    loaded = load_pretrained(str(tmp_path / "model.pt"), causal=True)
    assert not loaded.training
    assert loaded.output.weight is not loaded.tok_embeddings.weight
    tokens = torch.randint(0, CONFIG.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(tokens, targets=tokens)[0], model(tokens, targets=tokens)[0])


def test_load_pretrained_defaults_to_the_cpu_and_the_courses_semantics(tmp_path, capsys):
    model_args = {**asdict(COURSE), "use_cache": True, "position_embedding_type": "rotary"}  # the course's keys
    del model_args["causal"]
    torch.save({"model_args": model_args, "model": random_model(COURSE).state_dict()}, tmp_path / "model.pt")
    loaded = load_pretrained(str(tmp_path / "model.pt"))
    assert loaded.output.weight.device.type == "cpu" and loaded.config.causal is False
    assert all(not layer.attention.causal for layer in loaded.layers)
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "['position_embedding_type', 'use_cache']" in note and "ignored" in note
    assert load_pretrained(str(tmp_path / "model.pt"), causal=True).layers[0].attention.causal
    model_args["position_embedding_type"] = "absolute"
    torch.save({"model_args": model_args, "model": random_model(COURSE).state_dict()}, tmp_path / "model.pt")
    with pytest.raises(InputError, match="position_embedding_type='absolute'"):
        load_pretrained(str(tmp_path / "model.pt"))


def test_load_pretrained_reads_hidden_dim_from_w1_where_model_args_lack_it(tmp_path):
    """llama2.c's train.py stores multiple_of, not hidden_dim; the weights' w1 decides, whatever multiple_of says
    (issue 19, defect 9: multiple_of = 7 was a size-mismatch traceback)."""
    model = random_model(COURSE)
    model_args = {**asdict(COURSE), "multiple_of": 7}
    del model_args["hidden_dim"], model_args["causal"]
    torch.save({"model_args": model_args, "model": model.state_dict()}, tmp_path / "model.pt")
    loaded = load_pretrained(str(tmp_path / "model.pt"))
    assert loaded.config.hidden_dim == COURSE.hidden_dim != LlamaConfig(**model_args).hidden_dim
    tokens = torch.randint(0, CONFIG.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(tokens)[0], model(tokens)[0])


@pytest.mark.parametrize("config", [COURSE, CONFIG], ids=["course", "causal"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logits_that_overflow_are_refused_not_sampled(config, temperature):
    """Finite weights can still overflow float32 (norm gains of 1e38): generating says so in one line instead of
    "probability tensor contains inf/nan", or of a silent argmax over NaN (issue 19, defect 9)."""
    model = fast.install(random_model(config))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith("norm.weight"):
                weight.fill_(1e38)
    with pytest.raises(NonFiniteError, match=r"^the model computes logits that hold NaN or infinity"):
        model.generate(torch.tensor([[1, 5, 7]]), 3, temperature=temperature)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_refuses_any_nan_or_infinity(bad, dtype):
    logits = torch.randn(2, 50).to(dtype)
    assert finite(logits) is logits
    logits[1, 17] = bad
    with pytest.raises(NonFiniteError):
        finite(logits)


def test_load_pretrained_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.pt"):
        load_pretrained(str(tmp_path / "nope.pt"))


def test_load_pretrained_fetches_nothing(tmp_path, asset, asset_cache, monkeypatch):
    """A missing known file is an error, even with a mirror that holds it: fetching is the entry points' job."""
    asset("stories260K.bin")  # into asset_cache, the mirror here
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINLLAMA_ASSET_MIRROR", str(asset_cache))
    with pytest.raises(InputError, match="stories260K.bin"):
        load_pretrained("stories260K.bin")
    assert list(tmp_path.iterdir()) == []


# sanity_check.py: its token ids reach 17953, so the tiny model here has a vocabulary of 18000
SANITY_CONFIG = LlamaConfig(vocab_size=18000, dim=16, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=8)


def test_sanity_check_against_float64_reference(tmp_path, capsys, monkeypatch):
    """sanity_check.py checks the course's semantics: expected outputs of the unmasked model pass, causal ones fail."""
    monkeypatch.setattr(sanity_check, "STORIES42M", SANITY_CONFIG)  # the sizes it checks for: those of this model
    model = random_model(replace(SANITY_CONFIG, causal=False))
    save_checkpoint(tmp_path / "tiny.pt", asdict(SANITY_CONFIG), model.state_dict())
    hidden, logits = float64_forward(model, torch.tensor(sanity_check.SENT_IDS))
    expected = {"logits": logits[:, -1:].float(), "hidden_states": hidden.float()}
    torch.save(expected, tmp_path / "expected.data")
    assert sanity_check.main(str(tmp_path / "tiny.pt"), str(tmp_path / "expected.data")) == 0
    assert capsys.readouterr().out == "Your Llama implementation is correct!\n"

    expected["logits"] = expected["logits"] * (1 + 3e-3)
    torch.save(expected, tmp_path / "expected.data")
    assert sanity_check.main(str(tmp_path / "tiny.pt"), str(tmp_path / "expected.data")) == 1
    err = capsys.readouterr().err
    assert "logits: max |difference|" in err and "hidden_states" not in err

    causal_hidden, causal_logits = float64_forward(random_model(replace(SANITY_CONFIG, causal=True)),
                                                   torch.tensor(sanity_check.SENT_IDS))
    torch.save({"logits": causal_logits[:, -1:].float(), "hidden_states": causal_hidden.float()},
               tmp_path / "expected.data")
    assert sanity_check.main(str(tmp_path / "tiny.pt"), str(tmp_path / "expected.data")) == 1


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


@pytest.mark.parametrize("config", [COURSE, CONFIG], ids=["course", "causal"])
def test_hidden_state_at_given_positions_equals_the_full_computation(config):
    """fast.hidden_state_at runs the last layer's feed-forward network at one position per row; the result is the
    full computation's at those positions."""
    model = fast.install(random_model(config))
    tokens = torch.randint(0, CONFIG.vocab_size, (3, 11), generator=torch.Generator().manual_seed(5))
    positions = torch.tensor([10, 4, 0])
    shapes = []
    model.layers[-1].feed_forward.register_forward_pre_hook(lambda module, inputs: shapes.append(inputs[0].shape))
    with torch.no_grad():
        logits, full = model(tokens)
        some = fast.hidden_state_at(model, tokens, positions)
        last = fast.last_logits(model, tokens)
    assert shapes == [(3, 11, CONFIG.dim), (3, CONFIG.dim), (3, CONFIG.dim)]  # the full pass, then one position
    assert (some - full[torch.arange(3), positions]).abs().max() < 1e-5
    assert (last - logits[:, 0]).abs().max() < 1e-5


@pytest.mark.parametrize("config", [COURSE, CONFIG], ids=["course", "causal"])
def test_install_keeps_the_parameters_state_dict_and_function(config):
    """fast.install changes no parameter, name or output: the tied weight stays one Parameter, the projections
    become BlockedLinear sharing their weights, attention takes the fused kernel."""
    plain = random_model(config)
    tokens = torch.randint(0, CONFIG.vocab_size, (2, 9), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected_logits, expected_h = plain(tokens, targets=tokens)
    weights = dict(plain.named_parameters())
    model = fast.install(plain)
    assert model is plain and isinstance(model, fast.FastLlama)
    assert dict(model.named_parameters()) == weights  # the very same Parameters
    assert model.output.weight is model.tok_embeddings.weight
    assert all(type(m) is not nn.Linear for m in model.modules())
    assert all(layer.attention.flash for layer in model.layers)
    with torch.no_grad():
        logits, h = model(tokens, targets=tokens)
    assert (logits - expected_logits).abs().max() < 1e-5 and (h - expected_h).abs().max() < 1e-5
