"""AdamW against the float64 NumPy reference in optimizer_test.py, its checkpointing and its error paths."""
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import optimizer_test
from optimizer import AdamW
from optimizer_test import reference_adamw

REPO = Path(__file__).resolve().parent.parent
STEPS = 200


def make_params(seed: int = 0) -> list[torch.Tensor]:
    """Parameters of a tiny tanh network: W1 (4, 3), b1 (4,), W2 (2, 4), in float64."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (4,), (2, 4)]
    return [torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_() for shape in shapes]


def loss_fn(t: int, params: list[torch.Tensor]) -> torch.Tensor:
    """A regression loss whose batch depends only on the step t."""
    g = torch.Generator().manual_seed(1000 + t)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randn(8, 2, generator=g, dtype=torch.float64)
    w1, b1, w2 = params
    return ((torch.tanh(x @ w1.T + b1) @ w2.T - y) ** 2).mean()


def autograd_grad(t: int, theta: list[np.ndarray]) -> list[np.ndarray]:
    """∇loss_fn at θ, by autograd on fresh float64 tensors (no optimizer involved)."""
    params = [torch.tensor(x, requires_grad=True) for x in theta]
    return [g.numpy() for g in torch.autograd.grad(loss_fn(t, params), params)]


def train(params: list[torch.Tensor], opt: AdamW, steps: range) -> None:
    for t in steps:
        opt.zero_grad()
        loss_fn(t, params).backward()
        opt.step()


@pytest.mark.parametrize("correct_bias", [True, False])
@pytest.mark.parametrize("max_grad_norm", [None, 0.05])
def test_matches_float64_reference(correct_bias: bool, max_grad_norm: float | None):
    hp = dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, correct_bias=correct_bias,
              max_grad_norm=max_grad_norm)
    params = make_params()
    expected = reference_adamw([p.detach().numpy() for p in params], autograd_grad, STEPS, **hp)
    train(params, AdamW(params, **hp), range(1, STEPS + 1))
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.detach().numpy(), e, rtol=1e-10, atol=1e-12)


def test_clipping_is_per_group():
    """Two groups with separable losses each follow the reference run on that group alone."""
    a, b = make_params(0), make_params(1)
    group_a = dict(lr=1e-2, weight_decay=0.0, max_grad_norm=0.05)
    group_b = dict(lr=3e-3, weight_decay=0.2, max_grad_norm=None)
    expected_a = reference_adamw([p.detach().numpy() for p in a], autograd_grad, STEPS, **group_a)
    expected_b = reference_adamw([p.detach().numpy() for p in b], autograd_grad, STEPS, **group_b)
    opt = AdamW([dict(params=a, **group_a), dict(params=b, **group_b)])
    for t in range(1, STEPS + 1):
        opt.zero_grad()
        (loss_fn(t, a) + loss_fn(t, b)).backward()
        opt.step()
    for p, e in zip(a + b, expected_a + expected_b):
        np.testing.assert_allclose(p.detach().numpy(), e, rtol=1e-10, atol=1e-12)


def test_clipping_leaves_grad_untouched():
    params = make_params()
    loss_fn(1, params).backward()
    grads = [p.grad.clone() for p in params]
    AdamW(params, max_grad_norm=1e-3).step()
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g)


def test_state_dict_resumes_exactly():
    hp = dict(lr=1e-2, weight_decay=0.1, max_grad_norm=0.05)
    uninterrupted = make_params()
    train(uninterrupted, AdamW(uninterrupted, **hp), range(1, 51))

    first = make_params()
    opt = AdamW(first, **hp)
    train(first, opt, range(1, 21))
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in first], "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    resumed = [p.clone().requires_grad_() for p in checkpoint["params"]]
    opt = AdamW(resumed, **hp)
    opt.load_state_dict(checkpoint["optimizer"])
    assert opt.state[resumed[0]]["step"] == 20
    train(resumed, opt, range(21, 51))
    for p, q in zip(resumed, uninterrupted):
        assert torch.equal(p, q)


def test_closure_is_evaluated_and_returned():
    params, reference = make_params(), make_params()
    train(reference, AdamW(reference), range(1, 2))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(1, params)
        loss.backward()
        return loss

    opt = AdamW(params)
    loss = opt.step(closure)
    assert loss.item() == loss_fn(1, make_params()).item()
    for p, q in zip(params, reference):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=-1e-3), "lr"),
        (dict(betas=(-0.1, 0.999)), "betas"),
        (dict(betas=(0.9, 1.0)), "betas"),
        (dict(eps=-1e-8), "eps"),
        (dict(weight_decay=-0.01), "weight_decay"),
        (dict(max_grad_norm=0.0), "max_grad_norm"),
    ],
)
def test_invalid_hyperparameters(kwargs: dict, name: str):
    with pytest.raises(ValueError, match=name):
        AdamW(make_params(), **kwargs)
    with pytest.raises(ValueError, match=name):  # also when a parameter group sets it
        AdamW([dict(params=make_params(), **kwargs)])


def test_sparse_gradient_is_an_error():
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        AdamW(embedding.parameters()).step()


def test_optimizer_test_script_passes(tmp_path: Path, asset):
    """Run as the course runs it: from a folder holding the course's reference file."""
    shutil.copy(asset("optimizer_test.npy"), tmp_path)
    result = subprocess.run([sys.executable, str(REPO / "optimizer_test.py")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Optimizer test passed!" in result.stdout


def test_optimizer_test_script_reports_a_mismatch(monkeypatch, asset):
    def off_by_a_little(*args, **kwargs):
        return [theta + 1e-3 for theta in reference_adamw(*args, **kwargs)]

    monkeypatch.setattr(optimizer_test, "reference_adamw", off_by_a_little)
    with pytest.raises(SystemExit, match="Optimizer test FAILED against the float64 derivation") as e:
        optimizer_test.main(str(asset("optimizer_test.npy")))
    assert e.value.code != 0


def test_optimizer_test_fails_when_the_course_values_differ(tmp_path: Path, asset):
    weight = np.load(asset("optimizer_test.npy"))
    weight[1, 2] += 1e-3  # beyond the course's atol=1e-5, rtol=1e-3
    reference = tmp_path / "optimizer_test.npy"
    np.save(reference, weight)
    with pytest.raises(SystemExit, match=f"Optimizer test FAILED against the course's {reference}:"):
        optimizer_test.main(str(reference))
