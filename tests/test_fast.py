"""fast.Recompute, which fast.install gives the course's generation, layer 0's queries, keys and values kept: the
logits of the full computation within 1e-5, layer 0's projections run for the new positions only, and the plain
loop's tokens wherever it applies (the window sliding past max_seq_len, LoRA adapters, autocast, one layer) and where
it does not."""
from dataclasses import replace

import pytest
import torch

import fast
from fast import Recompute
from llama import load_pretrained
from lora import add_lora
from test_llama import COURSE, CONFIG, random_model


def widths(module: torch.nn.Module) -> list[int]:
    """The number of positions of each input `module` gets from now on."""
    seen: list[int] = []
    module.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].shape[1]))
    return seen


def test_logits_equal_the_full_computation_as_the_context_grows_or_changes():
    model = fast.install(random_model(COURSE))
    tokens = torch.randint(0, CONFIG.vocab_size, (2, 20), generator=torch.Generator().manual_seed(5))
    other = tokens.flip(1)  # a context that does not extend the previous one: computed from scratch
    steps = Recompute(model)
    projected = widths(model.layers[0].attention.compute_query)
    with torch.inference_mode():
        for context in [tokens[:, :4], tokens[:, :5], tokens[:, :5], tokens[:, :9], other[:, :6], other[:, :7],
                        other[:1, :8]]:
            expected = model(context)[0][:, 0]
            assert expected.abs().max() > 1.0  # the comparison is not between near-zero numbers
            torch.testing.assert_close(steps.logits(context), expected, atol=1e-5, rtol=1e-5)
    assert projected[1::2] == [4, 1, 0, 4, 6, 1, 8]  # its own calls (the full pass projects every position)
    assert all(type(layer.attention.compute_query) is not fast.KeptRows for layer in model.layers)  # put back
    with pytest.raises(ValueError, match="from position 0"):
        steps.logits(tokens[:, 9:10], 9)


def test_course_generation_projects_layer_0_for_the_new_token_only():
    model = fast.install(random_model(COURSE))
    first, second = widths(model.layers[0].attention.compute_key), widths(model.layers[1].attention.compute_key)
    prompt = torch.tensor([[3, 4, 5]])
    cached = model.generate(prompt, 4, temperature=0.0)
    assert (first, second) == ([3, 1, 1, 1], [3, 4, 5, 6])  # every later layer still sees the whole context
    first.clear(), second.clear()
    assert torch.equal(model.generate(prompt, 4, temperature=0.0, use_cache=False), cached)
    assert first == second == [3, 4, 5, 6]


def test_real_weights_give_the_tokens_of_the_plain_loop(asset):
    model = fast.install(load_pretrained(str(asset("stories260K.bin"))))  # the course's semantics, GQA
    assert Recompute.applies_to(model) and model.config.n_kv_heads < model.config.n_heads
    bos = torch.tensor([[1]])
    assert torch.equal(model.generate(bos, 200, temperature=0.0), model.generate(bos, 200, temperature=0.0,
                                                                                use_cache=False))


@pytest.mark.parametrize("prompt_len", [30, 32, 40])  # the window slides past max_seq_len = 32 (from the start)
def test_tokens_of_the_plain_loop_when_the_window_slides(prompt_len):
    model = fast.install(random_model(COURSE))
    prompt = torch.randint(0, CONFIG.vocab_size, (2, prompt_len), generator=torch.Generator().manual_seed(6))
    assert torch.equal(model.generate(prompt, 8, temperature=0.0),
                       model.generate(prompt, 8, temperature=0.0, use_cache=False))


def test_lora_adapters_and_autocast_apply():
    model = add_lora(fast.install(random_model(COURSE)), rank=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0.0, 0.5)  # adapters that change the outputs
    prompt = torch.tensor([[7, 8, 9, 10]])
    assert Recompute.applies_to(model)
    assert torch.equal(model.generate(prompt, 10, temperature=0.0),
                       model.generate(prompt, 10, temperature=0.0, use_cache=False))
    tokens = torch.randint(0, CONFIG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(8))
    steps = Recompute(model)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        steps.logits(tokens[:, :8])
        ours, full = steps.logits(tokens), model(tokens)[0][:, 0]
    assert ours.dtype == full.dtype == torch.bfloat16
    # within bfloat16's rounding (8 bits of mantissa; the logits are of order one to ten), not the float32 logits'
    torch.testing.assert_close(ours, full, atol=0.1, rtol=0.02)
    assert (full.float() - model(tokens)[0][:, 0].detach()).abs().max() > 1e-3  # autocast was at work


def test_applies_only_where_it_computes_the_models_function():
    assert Recompute.applies_to(random_model(COURSE))
    assert not Recompute.applies_to(random_model(CONFIG))  # causal: the KV cache does better (decode.py)
    one_layer = fast.install(random_model(replace(COURSE, n_layers=1)))  # layer 0 is also the last
    assert Recompute.applies_to(one_layer)
    projected = widths(one_layer.layers[0].attention.compute_value)
    prompt = torch.tensor([[1, 2]])
    assert torch.equal(one_layer.generate(prompt, 5, temperature=0.0),
                       one_layer.generate(prompt, 5, temperature=0.0, use_cache=False))
    assert projected == [2, 1, 1, 1, 1] + [2, 3, 4, 5, 6]
    training = random_model(replace(COURSE, dropout=0.1)).train()
    assert not Recompute.applies_to(training)  # dropout draws anew at every step
    assert Recompute.applies_to(random_model(COURSE).train())  # no dropout: training mode changes nothing
