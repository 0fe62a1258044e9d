"""The course's optimizer test: `python optimizer_test.py` prints "Optimizer test passed!" or exits non-zero saying
which check failed and what differs.

As the course's test does, it trains nn.Linear(3, 2, bias=False) for 1000 AdamW steps (lr 1e-3, weight decay 1e-4)
on a small regression problem and compares the weight with the course's reference file optimizer_test.npy, fetched
if missing (see assets.py). It also checks optimizer.AdamW, with and without gradient clipping, against AdamW
written here in float64 NumPy from the equations, given the same gradients. reference_adamw is also used by
tests/test_optimizer.py.
"""
import argparse
import io
import sys
from collections.abc import Callable

import numpy as np
import torch

import assets
import files
from files import InputError
from optimizer import AdamW

STEPS, LR, WEIGHT_DECAY = 1000, 1e-3, 1e-4
REFERENCE = "optimizer_test.npy"


# ---- the reference: float64 NumPy, written from the equations of Kingma & Ba 2015 and Loshchilov & Hutter 2019 ----
def reference_adamw(
    theta0: list[np.ndarray],
    grad_fn: Callable[[int, list[np.ndarray]], list[np.ndarray]],
    steps: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    correct_bias: bool = True,
    max_grad_norm: float | None = None,
) -> list[np.ndarray]:
    """Run `steps` AdamW steps on parameters theta0 (one group) and return them; grad_fn(t, θ) gives ∇ at step t."""
    beta1, beta2 = betas
    theta = [np.array(x, dtype=np.float64) for x in theta0]
    m = [np.zeros_like(x) for x in theta]
    v = [np.zeros_like(x) for x in theta]
    for t in range(1, steps + 1):
        g = [np.asarray(x, dtype=np.float64) for x in grad_fn(t, theta)]
        if max_grad_norm is not None:
            norm = np.sqrt(sum(np.sum(x * x) for x in g))
            if max_grad_norm / (norm + 1e-6) < 1:
                g = [x * (max_grad_norm / (norm + 1e-6)) for x in g]
        for i in range(len(theta)):
            m[i] = beta1 * m[i] + (1 - beta1) * g[i]
            v[i] = beta2 * v[i] + (1 - beta2) * g[i] ** 2
            step_size = lr * np.sqrt(1 - beta2**t) / (1 - beta1**t) if correct_bias else lr
            theta[i] = theta[i] - step_size * m[i] / (np.sqrt(v[i]) + eps)
            theta[i] = theta[i] - lr * weight_decay * theta[i]
    return theta


def regression_gradient(xs: list[np.ndarray]) -> Callable[[int, list[np.ndarray]], list[np.ndarray]]:
    """∇_W of ‖W·x_t − y_t‖² = 2·(W·x_t − y_t)·x_tᵀ, with y_t = [x0 + x1, −x2]."""

    def grad_fn(t: int, theta: list[np.ndarray]) -> list[np.ndarray]:
        x = xs[t - 1]
        y = np.array([x[0] + x[1], -x[2]])
        return [2.0 * np.outer(theta[0] @ x - y, x)]

    return grad_fn


# ---- the optimizer under test ----
def train_linear(max_grad_norm: float | None) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Train Linear(3, 2) with AdamW; return its initial and final weight and the inputs it saw (as float64)."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2, bias=False)
    initial = model.weight.detach().double().numpy().copy()
    opt = AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, max_grad_norm=max_grad_norm)
    xs = []
    for _ in range(STEPS):
        opt.zero_grad()
        x = torch.tensor(rng.uniform(size=(3,)), dtype=torch.float32)
        y = torch.stack([x[0] + x[1], -x[2]])
        loss = ((model(x) - y) ** 2).sum()
        loss.backward()
        opt.step()
        xs.append(x.double().numpy())
    return initial, model.weight.detach().double().numpy(), xs


def read_reference(path: str) -> np.ndarray:
    """The course's weight after its run, saved in `path`."""
    try:
        weight = np.load(io.BytesIO(files.read(path)[0]), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a NumPy .npy array ({e})") from None
    if weight.shape != (2, 3):
        raise InputError(f"{path}: expected the (2, 3) weight of nn.Linear(3, 2), found shape {weight.shape}")
    return weight


def main(reference: str = REFERENCE) -> None:
    """Run the checks; exits non-zero naming the check that failed, or the file at fault (files.status)."""
    if files.status(lambda: check(reference)):
        sys.exit(1)


def check(reference: str) -> None:
    """Train as the course's test does and compare with its reference file and the float64 derivation."""
    course = read_reference(str(assets.ensure(reference)))
    for max_grad_norm in (None, 0.9):
        initial, actual, xs = train_linear(max_grad_norm)
        if max_grad_norm is None and not np.allclose(actual, course, atol=1e-5, rtol=1e-3):  # the course's check
            sys.exit(f"Optimizer test FAILED against the course's {reference}: after {STEPS} steps AdamW gives\n"
                     f"{actual}\nbut the course's reference is\n{course}\n"
                     f"(max abs difference {np.abs(actual - course).max():.3g})")
        (expected,) = reference_adamw(
            [initial], regression_gradient(xs), STEPS, LR, weight_decay=WEIGHT_DECAY, max_grad_norm=max_grad_norm
        )
        if not np.allclose(actual, expected, atol=1e-5, rtol=1e-3):
            sys.exit(
                f"Optimizer test FAILED against the float64 derivation (max_grad_norm={max_grad_norm}): after "
                f"{STEPS} steps AdamW gives\n{actual}\nbut the float64 reference gives\n{expected}\n"
                f"(max abs difference {np.abs(actual - expected).max():.3g})"
            )
    print("Optimizer test passed!")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                            allow_abbrev=False).parse_args()
    main()
