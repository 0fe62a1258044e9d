"""decode.Decoder, Llama.generate's fast causal steps: the tokens of the plain loop and of transformers whichever
few-row kernel is chosen, never a stale copy of the weights, and blocked_linear's kernel choice by measurement."""
import time

import pytest
import torch
import torch.nn.functional as F

import blocked_linear
import decode
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
    model = load_pretrained(str(asset("stories260K.bin")), causal=True)  # real weights, grouped-query attention
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
    model = random_model()
    prompt = torch.randint(0, CONFIG.vocab_size, (2, prompt_len), generator=torch.Generator().manual_seed(3))
    fast = model.generate(prompt, 8, temperature=0.0)
    add_lora(model, rank=2)  # fresh adapters (B = 0) change no output, but the Decoder does not apply any more
    assert not decode.applies_to(model)
    assert torch.equal(model.generate(prompt, 8, temperature=0.0), fast)
    assert torch.equal(model.generate(prompt, 8, temperature=0.0, use_cache=False), fast)


def test_decoder_logits_equal_the_models(kernel):
    model = random_model()
    tokens = torch.randint(0, CONFIG.vocab_size, (3, 9), generator=torch.Generator().manual_seed(4))
    decoder = decode.Decoder(model, batch_size=3, positions=9)
    with torch.inference_mode():
        full, _ = model(tokens, targets=tokens)
        steps = [decoder.logits(tokens[:, :5], 0)] + [decoder.logits(tokens[:, [t]], t) for t in range(5, 9)]
        with pytest.raises(ValueError, match="from position 0"):
            decoder.logits(tokens[:, 5:7], 5)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 4:], atol=1e-5, rtol=1e-5)


def test_decoder_applies_to_float32_outside_autocast_only():
    """Elsewhere llama.py's own cached steps run, and give the plain loop's tokens."""
    model = random_model()
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
    model = random_model()
    before, _ = greedy_pair(model)
    torch.manual_seed(0)
    optimizer = AdamW(model.parameters(), lr=0.05)  # a training step
    model.train()
    tokens = before.clone()  # not an inference tensor
    F.cross_entropy(model(tokens, targets=tokens)[0][0, :-1], tokens[0, 1:]).backward()
    optimizer.step()
    model.eval()
    fast, plain = greedy_pair(model)
    assert torch.equal(fast, plain) and not torch.equal(fast, before)
    model.load_state_dict(random_model(seed=1).state_dict())
    fast, plain = greedy_pair(model)
    assert torch.equal(fast, plain) and not torch.equal(fast, before)
    add_lora(model, rank=2, targets=ATTENTION_PROJECTIONS)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0.0, 2.0)
    merged = merge_lora(model)
    assert decode.applies_to(merged)
    after_lora, _ = greedy_pair(random_model(seed=1))
    fast, plain = greedy_pair(merged)
    assert torch.equal(fast, plain) and not torch.equal(fast, after_lora)


def test_fastest_kernel_is_measured_once_per_shape(monkeypatch):
    calls = []

    def slow(x, weight):
        calls.append(x.shape[0])
        time.sleep(0.0005)
        return F.linear(x, weight)

    for kernels, expected in [({"slow": slow, "F.linear": F.linear}, "F.linear"),
                              ({"blocked": blocked_linear.blocked, "slow": slow}, "blocked")]:
        monkeypatch.setattr(blocked_linear, "KERNELS", kernels)
        monkeypatch.setattr(blocked_linear, "chosen", {})
        assert blocked_linear.fastest_kernel(3, 16, 8, torch.float32) == expected
        n = len(calls)
        assert blocked_linear.fastest_kernel(3, 16, 8, torch.float32) == expected and len(calls) == n
        assert list(blocked_linear.chosen) == [(3, 16, 8, torch.float32, torch.get_num_threads())]
