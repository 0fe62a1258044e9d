"""decode.Decoder, the fast causal steps that fast.install gives generate: the tokens of the plain loop and of
transformers whichever few-row kernel is chosen, never a stale copy of the weights, and blocked_linear's kernel
choice by measurement, once per process."""
import time

import pytest
import torch
import torch.nn.functional as F

import blocked_linear
import decode
import fast
from files import InputError
from llama import load_pretrained
from lora import ATTENTION_PROJECTIONS, add_lora, merge_lora
from optimizer import AdamW
from test_llama import CONFIG, random_model, reference


@pytest.fixture(params=list(blocked_linear.KERNELS))
def kernel(request, monkeypatch) -> str:
    """Every few-row product by this kernel, as if it had been measured fastest."""
    monkeypatch.setattr(blocked_linear, "fastest_kernel", lambda *shape: request.param)
    return request.param


def test_every_kernel_gives_the_tokens_of_the_plain_loop_and_of_transformers(asset, kernel):
    model = fast.install(load_pretrained(str(asset("stories260K.bin")), causal=True))  # real weights, GQA
    assert decode.applies_to(model) and model.config.n_kv_heads < model.config.n_heads
    prompt = torch.tensor([[1, 403, 407]])
    hf = reference(model)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=150, do_sample=False)
    ours = model.generate(prompt, 150, temperature=0.0)
    assert ours.tolist() == theirs.tolist()
    assert torch.equal(model.generate(prompt, 150, temperature=0.0, use_cache=False), ours)


@pytest.mark.parametrize("prompt_len", [1, 6, 30])  # 30 + 8 tokens: the window slides past max_seq_len = 32
def test_decoder_gives_the_tokens_of_llamas_own_cache(kernel, prompt_len):
    """Batch 2: the Decoder and llama.py's KVCache path (taken for a model it does not apply to) agree."""
    model = fast.install(random_model())
    prompt = torch.randint(0, CONFIG.vocab_size, (2, prompt_len), generator=torch.Generator().manual_seed(3))
    decoded = model.generate(prompt, 8, temperature=0.0)
    add_lora(model, rank=2)  # fresh adapters (B = 0) change no output, but the Decoder does not apply any more
    assert not decode.applies_to(model)
    assert torch.equal(model.generate(prompt, 8, temperature=0.0), decoded)
    assert torch.equal(model.generate(prompt, 8, temperature=0.0, use_cache=False), decoded)


def test_decoder_logits_equal_the_models(kernel):
    model = fast.install(random_model())
    tokens = torch.randint(0, CONFIG.vocab_size, (3, 9), generator=torch.Generator().manual_seed(4))
    decoder = decode.Decoder(model, batch_size=3)
    with torch.inference_mode():
        full, _ = model(tokens, targets=tokens)
        model.setup_cache()  # as Llama.generate does: the Decoder keeps its keys and values there
        steps = [decoder.logits(tokens[:, :5], 0)] + [decoder.logits(tokens[:, [t]], t) for t in range(5, 9)]
        with pytest.raises(ValueError, match="from position 0"):
            decoder.logits(tokens[:, 5:7], 5)
        model.clear_cache()
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 4:], atol=1e-5, rtol=1e-5)


def test_decoder_applies_to_float32_outside_autocast_only():
    """Elsewhere llama.py's own cached steps run, and give the plain loop's tokens."""
    model = fast.install(random_model())
    assert decode.applies_to(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not decode.applies_to(model)
    model.double()
    assert not decode.applies_to(model)
    prompt = torch.tensor([[5, 6, 7]])
    assert torch.equal(model.generate(prompt, 10, temperature=0.0),
                       model.generate(prompt, 10, temperature=0.0, use_cache=False))


def greedy_pair(model) -> tuple[torch.Tensor, torch.Tensor]:
    prompt = torch.tensor([[5, 6, 7]])
    return model.generate(prompt, 10, temperature=0.0), model.generate(prompt, 10, temperature=0.0, use_cache=False)


def test_no_stale_fused_weights_after_training_load_or_merge():
    model = fast.install(random_model())
    before, _ = greedy_pair(model)
    torch.manual_seed(0)
    optimizer = AdamW(model.parameters(), lr=0.05)  # a training step
    model.train()
    tokens = before.clone()  # not an inference tensor
    F.cross_entropy(model(tokens, targets=tokens)[0][0, :-1], tokens[0, 1:]).backward()
    optimizer.step()
    model.eval()
    decoded, plain = greedy_pair(model)
    assert torch.equal(decoded, plain) and not torch.equal(decoded, before)
    model.load_state_dict(random_model(seed=1).state_dict())
    decoded, plain = greedy_pair(model)
    assert torch.equal(decoded, plain) and not torch.equal(decoded, before)
    add_lora(model, rank=2, targets=ATTENTION_PROJECTIONS)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0.0, 2.0)
    merged = merge_lora(model)
    assert decode.applies_to(merged)
    after_lora, _ = greedy_pair(fast.install(random_model(seed=1)))
    decoded, plain = greedy_pair(merged)
    assert torch.equal(decoded, plain) and not torch.equal(decoded, after_lora)


def test_fastest_kernel_is_measured_once_per_process(monkeypatch):
    """One timing serves every shape and number of rows (so a process's first generation is not slowed by a timing
    per row count): blocked_linear times one matrix shape, once per dtype and thread count."""
    calls = []

    def slow(x, weight):
        calls.append(x.shape[0])
        time.sleep(0.0005)
        return F.linear(x, weight)

    for kernels, expected in [({"F.linear": F.linear, "blocked": slow}, "F.linear"),
                              ({"F.linear": slow, "blocked": blocked_linear.blocked}, "blocked")]:
        monkeypatch.setattr(blocked_linear, "KERNELS", kernels)
        monkeypatch.setattr(blocked_linear, "chosen", {})
        monkeypatch.setattr(blocked_linear, "timed_bytes", lambda: 1 << 20)
        assert blocked_linear.fastest_kernel(torch.float32) == expected
        n = len(calls)
        for rows, shape in [(1, (16, 8)), (3, (16, 8)), (16, (64, 32)), (2, (32000, 8))]:
            assert blocked_linear.kernel_for(rows, torch.zeros(shape)) == expected
        assert len(calls) == n and list(blocked_linear.chosen) == [(torch.float32, torch.get_num_threads())]


@pytest.mark.parametrize("blocked_seconds, expected", [(1.0, "blocked"), (1.5, "F.linear"), (2.0, "F.linear")])
def test_the_blocks_are_chosen_only_when_clearly_faster(monkeypatch, blocked_seconds, expected):
    """F.linear is kept unless the blocks stream at least CLEARLY_FASTER faster: nearer, a busy moment could flip
    the choice and with it the rounding of two runs of one command."""
    clock = [0.0]

    def costing(seconds: float):
        def kernel(x, weight):
            clock[0] += seconds
            return F.linear(x, weight)
        return kernel

    monkeypatch.setattr(blocked_linear.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(blocked_linear, "KERNELS", {"F.linear": costing(1.7), "blocked": costing(blocked_seconds)})
    monkeypatch.setattr(blocked_linear, "chosen", {})
    monkeypatch.setattr(blocked_linear, "timed_bytes", lambda: 1 << 20)
    assert 1.7 / 1.5 < blocked_linear.CLEARLY_FASTER < 1.7
    assert blocked_linear.fastest_kernel(torch.float32) == expected


def test_the_kernel_named_in_the_environment_is_taken_untimed(monkeypatch):
    """MINLLAMA_FEW_ROWS_KERNEL makes processes round alike whatever the load (a run and its --resume)."""
    monkeypatch.setattr(blocked_linear, "chosen", {})
    for name in blocked_linear.KERNELS:
        monkeypatch.setenv(blocked_linear.KERNEL_ENV, name)
        assert blocked_linear.kernel_for(2, torch.zeros(16, 8)) == name
    assert blocked_linear.chosen == {}  # nothing was timed
    monkeypatch.setenv(blocked_linear.KERNEL_ENV, "gemv")
    with pytest.raises(InputError, match=r"^MINLLAMA_FEW_ROWS_KERNEL=gemv: name one of F.linear, blocked"):
        blocked_linear.kernel_for(2, torch.zeros(16, 8))
