"""LoRA: low-rank adaptation of the attention projections (Hu et al. 2021).

A frozen projection W0 (out × in) is adapted by a trainable low-rank update ΔW = B·A with A (r × in) and
B (out × r), r ≪ min(in, out) (eq. 3, scaled as in §4.1):

    h = W0·x + (α/r)·B·A·x

A starts random and B at zero, so ΔW = 0 and the adapted model starts as the base model. Only A and B train.
The base weight keeps its name (`layers.0.attention.compute_query.weight`), so the adapted model holds the base
checkpoint's tensors under the course's names, the adapters are saved apart from it (`...compute_query.lora_A`,
`...lora_B`), and merging W ← W0 + (α/r)·B·A gives back a plain model with the same outputs (§4.1, "No Additional
Inference Latency").

Usage, for a model `m` that is a Llama or holds one (a classifier with `m.llama`):

    add_lora(m, rank=4, alpha=1.0)                     # freezes m, adds adapters to compute_query / compute_value
    m.classifier_head.requires_grad_(True)             # the caller unfreezes what else should train
    torch.save(lora_state_dict(m, "classifier_head."), path)
    load_lora_state_dict(m2, torch.load(path), "classifier_head.")   # m2: base model + add_lora with the same rank
    merge_lora(m)                                      # plain nn.Linear layers again, the course's state dict
"""
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from config import ATTENTION_PROJECTIONS, DEFAULT_TARGETS, lora_problem
from llama import Attention


class LoRALinear(nn.Linear):
    """A linear layer W0 with a low-rank adapter: h = W0·x + (α/r)·B·A·dropout(x) (Hu et al. 2021, eq. 3).

    It takes over the weight (and bias) Parameter of `base` itself, same tensor and memory layout, and adds
    `lora_A` (r × in), random like nn.Linear's own weights (Kaiming-uniform), and `lora_B` (out × r), zero.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        if problem := lora_problem(rank, alpha, dropout):
            raise ValueError(problem)
        if rank > min(base.in_features, base.out_features):
            raise ValueError(f"LoRA rank must be an integer in [1, min(in_features, out_features)] = "
                             f"[1, {min(base.in_features, base.out_features)}], got {rank!r}")
        # on the meta device nn.Linear allocates nothing; its weight and bias are then replaced by the base's
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight
        self.bias = base.bias
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's initialisation of an (r × in) weight
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # B·A·x through the rank-r space
        return super().forward(x) + self.scaling * update

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain nn.Linear with weight W0 + (α/r)·B·A, stored in the memory layout of W0."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        weight = self.weight.clone()  # clone keeps the strides of W0 (row- or column-major)
        weight += self.scaling * (self.lora_B @ self.lora_A)
        linear.weight = nn.Parameter(weight, requires_grad=self.weight.requires_grad)
        linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


def add_lora(
    model: nn.Module,
    rank: int = 4,
    alpha: float = 1.0,
    dropout: float = 0.0,
    targets: Sequence[str] = DEFAULT_TARGETS,
) -> nn.Module:
    """Freeze every parameter of `model`, then give the `targets` projections of each llama.Attention inside it
    a LoRA adapter (LoRALinear). Only the adapters require grad afterwards; unfreeze a head yourself.
    `model` is changed in place and returned; on bad arguments it is left untouched.
    """
    distinct = not isinstance(targets, str) and len(targets) == len(set(targets)) > 0
    if not distinct or not set(targets) <= set(ATTENTION_PROJECTIONS):
        raise ValueError(f"LoRA targets must be distinct names among {ATTENTION_PROJECTIONS}, got {targets!r}")
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    if not attentions:
        raise ValueError(f"add_lora: {type(model).__name__} contains no llama.Attention module to adapt")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError(f"add_lora: {type(model).__name__} already has LoRA adapters")
    adapters = [(a, name, LoRALinear(getattr(a, name), rank, alpha, dropout)) for a in attentions for name in targets]
    model.requires_grad_(False)  # the base weights, before the adapters join the model
    for attention, name, adapter in adapters:
        setattr(attention, name, adapter)
    return model


def is_adapter(name: str) -> bool:
    """Whether the state-dict entry `name` is a LoRA adapter's A or B, rather than a weight of the base model."""
    return name.endswith((".lora_A", ".lora_B"))


def lora_state_dict(model: nn.Module, *extra_prefixes: str) -> dict[str, torch.Tensor]:
    """The adapter tensors (`...lora_A`, `...lora_B`) of `model`, and every entry whose name starts with one of
    `extra_prefixes` (e.g. "classifier_head."): what a LoRA checkpoint stores beside the base checkpoint.
    """
    state = model.state_dict()
    for prefix in extra_prefixes:
        if not any(name.startswith(prefix) for name in state):
            raise ValueError(f"lora_state_dict: no entry of {type(model).__name__}'s state dict starts with {prefix!r}")
    adapters = {name: t for name, t in state.items() if is_adapter(name)}
    if not adapters:
        raise ValueError(f"lora_state_dict: {type(model).__name__} has no LoRA adapters (call add_lora first)")
    return {name: t for name, t in state.items() if name in adapters or name.startswith(extra_prefixes)}


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], *extra_prefixes: str) -> None:
    """Copy a `lora_state_dict(model, *extra_prefixes)` saved earlier into `model`, which has the same adapters
    (add_lora with the same rank and targets). A missing, unexpected or wrong-shaped tensor is an error naming it.
    """
    expected = lora_state_dict(model, *extra_prefixes)
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    wrong_shape = [
        f"{name}: {tuple(state_dict[name].shape)} in the state dict, {tuple(t.shape)} in the model"
        for name, t in expected.items() if name in state_dict and state_dict[name].shape != t.shape
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"load_lora_state_dict: the state dict does not fit the model: missing {missing}, "
            f"unexpected {unexpected}, wrong shapes {wrong_shape}"
        )
    for name, t in expected.items():
        t.copy_(state_dict[name])  # state_dict() tensors share memory with the model's parameters


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear in `model` by its merged nn.Linear (W0 + (α/r)·B·A), in place; the result has the
    base model's state-dict names and, up to float rounding, the adapted model's outputs.
    """
    merged = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
                merged += 1
    if not merged:
        raise ValueError(f"merge_lora: {type(model).__name__} has no LoRA adapters to merge")
    return model
