"""Tests for lora.py: adapters start as the identity update, only they train, they save and load apart from the
base model, merge back into plain weights, and compute W0·x + (α/r)·B·A·x as a float64 re-derivation does."""
import copy
import io

import pytest
import torch
from torch import nn

from config import ATTENTION_PROJECTIONS, LlamaConfig
from llama import Llama
from lora import LoRALinear, add_lora, load_lora_state_dict, lora_state_dict, merge_lora
from optimizer import AdamW

CONFIG = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, max_seq_len=16)


class Classifier(nn.Module):
    """A model holding a Llama as `.llama` with a head on its last hidden state, as the course's classifier does."""

    def __init__(self, llama: Llama, n_classes: int = 3):
        super().__init__()
        self.llama = llama
        self.classifier_head = nn.Linear(llama.config.dim, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _, h = self.llama(tokens)
        return self.classifier_head(h[:, -1, :])


def base_model(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    return Llama(LlamaConfig(**CONFIG)).eval()


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, CONFIG["vocab_size"], (3, 10), generator=torch.Generator().manual_seed(seed))


def randomize_adapters(model: nn.Module, seed: int) -> None:
    """Give every lora_B random values, as training would, so that the adapters change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def adapter_names(targets=("compute_query", "compute_value"), prefix: str = "") -> set[str]:
    return {
        f"{prefix}layers.{i}.attention.{t}.lora_{m}"
        for i in range(CONFIG["n_layers"]) for t in targets for m in "AB"
    }


def logits(model: Llama) -> torch.Tensor:
    x = tokens()
    return model(x, targets=x)[0]


@pytest.mark.parametrize("targets", [("compute_query", "compute_value"), ATTENTION_PROJECTIONS])
def test_fresh_adapters_leave_outputs_unchanged(targets):
    base = base_model()
    model = add_lora(copy.deepcopy(base), rank=4, alpha=2.0, targets=targets)
    adapters = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(adapters) == CONFIG["n_layers"] * len(targets)
    assert all(a.lora_A.abs().sum() > 0 and not a.lora_B.any() for a in adapters)  # A random, B zero
    assert torch.equal(logits(model), logits(base))


def test_only_adapters_require_grad_and_base_names_are_kept():
    base = base_model()
    model = add_lora(Classifier(copy.deepcopy(base)))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == adapter_names(prefix="llama.")
    model.classifier_head.requires_grad_(True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == adapter_names(prefix="llama.") | {"classifier_head.weight", "classifier_head.bias"}
    # the base weights are still there under the course's names, with their values and memory layout
    llama_state = model.llama.state_dict()
    assert llama_state.keys() - adapter_names() == base.state_dict().keys()
    for name, t in base.state_dict().items():
        assert torch.equal(llama_state[name], t) and llama_state[name].stride() == t.stride(), name


def test_training_steps_change_only_adapters_and_head():
    torch.manual_seed(1)
    model = add_lora(Classifier(base_model()), targets=ATTENTION_PROJECTIONS).train()
    model.classifier_head.requires_grad_(True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = AdamW(model.parameters(), lr=1e-2)  # frozen parameters get no gradient, so no update
    labels = torch.tensor([0, 1, 2])
    for _ in range(2):  # B is zero at first, so A has no gradient until B has moved in step 1
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(tokens()), labels).backward()
        optimizer.step()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != p.requires_grad, name


def test_adapter_state_dict_is_a_small_fraction_of_the_model():
    model = add_lora(Classifier(base_model()))
    saved = lora_state_dict(model, "classifier_head.")
    assert saved.keys() == adapter_names(prefix="llama.") | {"classifier_head.weight", "classifier_head.bias"}

    def n_bytes(state: dict[str, torch.Tensor]) -> int:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.tell()

    assert n_bytes(saved) < 0.05 * n_bytes(model.state_dict())


def test_save_and_load_onto_a_fresh_base_reproduces_outputs(tmp_path):
    torch.manual_seed(1)
    trained = add_lora(Classifier(base_model()), rank=3, alpha=4.0, targets=ATTENTION_PROJECTIONS)
    randomize_adapters(trained, seed=2)
    torch.save(lora_state_dict(trained, "classifier_head."), tmp_path / "lora.pt")

    torch.manual_seed(3)  # other adapters A and another head
    fresh = add_lora(Classifier(base_model()), rank=3, alpha=4.0, targets=ATTENTION_PROJECTIONS)
    assert not torch.allclose(fresh(tokens()), trained(tokens()))
    load_lora_state_dict(fresh, torch.load(tmp_path / "lora.pt", weights_only=True), "classifier_head.")
    assert torch.equal(fresh(tokens()), trained(tokens()))


def test_load_is_strict():
    model = add_lora(Classifier(base_model()))
    good = {n: t.clone() for n, t in lora_state_dict(model, "classifier_head.").items()}
    name = "llama.layers.1.attention.compute_value.lora_B"

    with pytest.raises(ValueError, match=rf"missing \['{name}'\]"):
        load_lora_state_dict(model, {n: t for n, t in good.items() if n != name}, "classifier_head.")
    with pytest.raises(ValueError, match=r"unexpected \['extra.weight'\]"):
        load_lora_state_dict(model, {**good, "extra.weight": torch.zeros(1)}, "classifier_head.")
    with pytest.raises(ValueError, match=rf"{name}: \(32, 5\) in the state dict, \(32, 4\) in the model"):
        load_lora_state_dict(model, {**good, name: torch.zeros(32, 5)}, "classifier_head.")
    with pytest.raises(ValueError, match=r"unexpected \['classifier_head.bias', 'classifier_head.weight'\]"):
        load_lora_state_dict(model, good)  # the head was saved but the caller did not ask for it
    with pytest.raises(ValueError, match="'classifer_head.'"):
        lora_state_dict(model, "classifer_head.")
    with pytest.raises(ValueError, match="no LoRA adapters"):
        lora_state_dict(base_model())


@pytest.mark.parametrize("targets", [("compute_query", "compute_value"), ATTENTION_PROJECTIONS])
def test_merge_gives_the_base_names_and_the_same_outputs(targets):
    base = base_model()
    model = add_lora(copy.deepcopy(base), rank=4, alpha=8.0, targets=targets)
    randomize_adapters(model, seed=1)
    assert not torch.allclose(logits(model), logits(base), atol=1e-3)  # the adapters matter
    expected = {  # W0 + (α/r)·B·A in float64
        name: lin.weight.double() + (8.0 / 4) * (lin.lora_B.double() @ lin.lora_A.double())
        for name, lin in model.named_modules() if isinstance(lin, LoRALinear)
    }
    merged = merge_lora(copy.deepcopy(model))

    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert merged.state_dict().keys() == base.state_dict().keys()
    for name, weight in expected.items():
        got = merged.get_submodule(name).weight
        assert type(merged.get_submodule(name)) is nn.Linear
        assert got.stride() == base.get_submodule(name).weight.stride(), name  # layout of W0 kept
        torch.testing.assert_close(got.double(), weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(merged), logits(model), rtol=0, atol=1e-5)
    plain = Llama(LlamaConfig(**CONFIG)).eval()
    plain.load_state_dict(merged.state_dict(), strict=True)
    torch.testing.assert_close(logits(plain), logits(model), rtol=0, atol=1e-5)


def test_forward_matches_float64_equation():
    model = add_lora(base_model(), rank=3, alpha=1.5)
    randomize_adapters(model, seed=1)
    layer = model.layers[0].attention.compute_value
    x = torch.randn(2, 5, CONFIG["dim"], generator=torch.Generator().manual_seed(4))
    w0, a, b, x64 = layer.weight.double(), layer.lora_A.double(), layer.lora_B.double(), x.double()
    expected = x64 @ w0.T + (1.5 / 3) * (x64 @ a.T) @ b.T  # h = W0·x + (α/r)·B·A·x, row vectors
    torch.testing.assert_close(layer(x).double(), expected, rtol=0, atol=1e-6)


def test_dropout_acts_on_the_adapter_input_in_training_only():
    torch.manual_seed(0)
    base = nn.Linear(16, 8, bias=True)
    layer = LoRALinear(base, rank=4, alpha=4.0, dropout=0.5)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(6, 16)
    exact = base(x) + x @ layer.lora_A.T @ layer.lora_B.T  # α/r = 1

    layer.eval()
    torch.testing.assert_close(layer(x), exact)
    layer.train()
    torch.manual_seed(5)
    got = layer(x)
    torch.manual_seed(5)
    dropped = nn.functional.dropout(x, p=0.5, training=True)  # the same random mask
    assert not torch.allclose(got, exact)
    torch.testing.assert_close(got, base(x) + dropped @ layer.lora_A.T @ layer.lora_B.T)


@pytest.mark.parametrize("kwargs, named", [
    (dict(rank=0), "rank"), (dict(rank=-1), "rank"), (dict(rank=2.0), "rank"), (dict(rank=33), "rank"),
    (dict(alpha=0.0), "alpha"), (dict(alpha=-1.0), "alpha"), (dict(alpha=float("nan")), "alpha"),
    (dict(dropout=1.0), "dropout"), (dict(dropout=-0.1), "dropout"),
    (dict(targets=()), "targets"), (dict(targets=("w1",)), "targets"), (dict(targets="compute_query"), "targets"),
    (dict(targets=("compute_query", "compute_query")), "targets"),
])
def test_bad_arguments_are_refused_and_leave_the_model_untouched(kwargs, named):
    model = base_model()
    before = model.state_dict().keys()
    with pytest.raises(ValueError, match=named):
        add_lora(model, **kwargs)  # rank 33 exceeds the kv projections' 32 outputs
    assert model.state_dict().keys() == before
    assert all(p.requires_grad for p in model.parameters())


def test_adding_twice_or_to_a_model_without_attention_or_merging_nothing_is_refused():
    model = add_lora(base_model())
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(model)
    with pytest.raises(ValueError, match="no llama.Attention"):
        add_lora(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no LoRA adapters to merge"):
        merge_lora(base_model())
