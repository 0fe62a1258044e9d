"""AdamW: Adam (Kingma & Ba 2015) with decoupled weight decay (Loshchilov & Hutter 2019), from scratch.

For a parameter θ with gradient g_t at step t = 1, 2, ... (Kingma & Ba 2015, Algorithm 1):

    m_t = β1·m_{t−1} + (1 − β1)·g_t             first moment, state "exp_avg"
    v_t = β2·v_{t−1} + (1 − β2)·g_t²            second moment, state "exp_avg_sq"

Bias correction in the efficient form given at the end of Kingma & Ba §2:

    α_t = lr·√(1 − β2^t) / (1 − β1^t)
    θ  ← θ − α_t·m_t / (√v_t + ε)              (correct_bias=False: α_t = lr)

then decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2, line 12, with the schedule multiplier η_t = 1
and lr folded into the decay):

    θ ← θ − lr·λ·θ

It is applied to the θ just updated, as in Hugging Face's AdamW that the course follows, not to θ_{t−1} as in the
paper; the two differ by a term of order lr²·λ.

With `max_grad_norm`, each parameter group's gradients are first scaled by max_norm / (‖g‖ + 1e-6) when that is
below 1, where ‖g‖ is the L2 norm of all the group's gradients together.
"""
import math
from collections.abc import Callable, Iterable

import torch


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay and optional per-group gradient clipping; see the module docstring."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        max_grad_norm: float | None = None,
    ):
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias,
            max_grad_norm=max_grad_norm,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group after checking its hyperparameters (the defaults filled in for those it leaves out)."""
        check_hyperparameters({**self.defaults, **param_group})
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Update every parameter that has a gradient; `closure` re-evaluates the loss and is returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients")
            scale = clip_scale([p.grad for p in params], group["max_grad_norm"])
            beta1, beta2 = group["betas"]
            lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]

            for p in params:
                grad = p.grad if scale == 1.0 else p.grad * scale  # clipped in a copy: p.grad stays as it was
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]

                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                alpha = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t) if group["correct_bias"] else lr
                p.addcdiv_(m, v.sqrt().add_(eps), value=-alpha)
                if weight_decay:
                    p.mul_(1 - lr * weight_decay)  # θ ← θ − lr·λ·θ
        return loss


def clip_scale(grads: list[torch.Tensor], max_norm: float | None) -> float:
    """The factor min(1, max_norm / (‖g‖ + 1e-6)) for the global L2 norm ‖g‖ of `grads`; 1 without max_norm."""
    if max_norm is None or not grads:
        return 1.0
    # sum the squares in at least float32, so half-precision gradients neither overflow nor lose the small ones
    total_norm = math.sqrt(sum(g.to(torch.promote_types(g.dtype, torch.float32)).square().sum().item() for g in grads))
    return min(1.0, max_norm / (total_norm + 1e-6))


def check_hyperparameters(group: dict) -> None:
    """Raise ValueError naming the first hyperparameter of `group` that is out of its range."""
    lr, betas, eps = group["lr"], group["betas"], group["eps"]
    weight_decay, max_grad_norm = group["weight_decay"], group["max_grad_norm"]
    if lr < 0:
        raise ValueError(f"AdamW: lr must be >= 0, got {lr}")
    if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
        raise ValueError(f"AdamW: betas must be two numbers in [0, 1), got {betas}")
    if eps < 0:
        raise ValueError(f"AdamW: eps must be >= 0, got {eps}")
    if weight_decay < 0:
        raise ValueError(f"AdamW: weight_decay must be >= 0, got {weight_decay}")
    if max_grad_norm is not None and max_grad_norm <= 0:
        raise ValueError(f"AdamW: max_grad_norm must be > 0 or None, got {max_grad_norm}")
