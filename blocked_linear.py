"""A bias-free linear layer whose product with an input of a few rows uses the kernel found fastest on this host.

For a few rows (one decoding step, a classifier's output), x·Wᵀ reads all of W for little arithmetic, so its speed
is that at which W streams from memory, and that depends on the host's BLAS. F.linear hands it to one
matrix-vector call; cutting W into blocks of rows multiplied as one batch (torch.bmm) lets every thread stream whole
blocks. On one AMD EPYC the blocks stream at ~27 GB/s and F.linear at ~10 GB/s (one thread); on one Intel Xeon
F.linear streams at ~39 GB/s and the blocks at ~13 GB/s (BENCHMARKS.md). So neither is chosen in advance: the first
few-row product of a process times both, once, on one matrix shape streamed from beyond the caches (a property of
the host's memory system and BLAS, not of a shape), within ~100 ms, and that kernel serves every few-row product
of that dtype and thread count. Both compute the same x·Wᵀ (to rounding); more rows than MAX_BLOCKED_ROWS always go
to F.linear. BlockedLinear looks the choice up at every product; product_into, for a W that one decoding loop uses
many times, makes it once.
"""
import math
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from files import InputError

MAX_BLOCKED_ROWS = 16  # beyond this F.linear's matrix-matrix kernel is as fast (BENCHMARKS.md)
KERNEL_ENV = "MINLLAMA_FEW_ROWS_KERNEL"  # names the kernel (F.linear or blocked) instead of timing it
CLEARLY_FASTER = 1.2  # the blocks are chosen only when at least this much faster: a choice that noise cannot flip
TIMED_SHAPE = (1024, 512)  # the matrix the kernels are timed on: 2 MiB in float32, as one projection of stories42M
MAX_TIMED_BYTES = 64 << 20  # the weights streamed per pass are capped (a host with a larger cache times on less)


def timed_bytes() -> int:
    """How much weight the kernels are timed over: 1.25 × the largest CPU cache (Linux's sysfs), else 64 MiB, at
    most MAX_TIMED_BYTES. Streamed in a cycle, more than the cache holds is read from memory every pass."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()  # such as "32768K"
        if text[:-1].isdigit() and text[-1] in "KM":
            sizes.append(int(text[:-1]) << (10 if text[-1] == "K" else 20))
    return min(5 * max(sizes) // 4, MAX_TIMED_BYTES) if sizes else MAX_TIMED_BYTES


def blocks(weight: torch.Tensor) -> torch.Tensor:
    """W cut into blocks of rows, one per thread and at least two: a view (n, out_features / n, in_features)."""
    n = math.gcd(max(2, torch.get_num_threads()), weight.shape[0])
    return weight.view(n, -1, weight.shape[1])


def blocked(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x·Wᵀ with W cut into blocks of rows (one per thread, at least two) multiplied as one batch (torch.bmm)."""
    w_blocks = blocks(weight)
    n, _, in_features = w_blocks.shape
    rows = x.numel() // in_features
    # x's rows as columns, read in place (strides 1, in_features) rather than copied: BLAS is faster on this
    columns = x.reshape(rows, in_features).mT.expand(n, -1, -1)  # (n, in_features, rows)
    y = torch.bmm(w_blocks, columns)  # (n, out_features / n, rows)
    return y.permute(2, 0, 1).reshape(*x.shape[:-1], -1).contiguous()  # row-major, as F.linear gives


KERNELS = {"F.linear": F.linear, "blocked": blocked}
chosen: dict[tuple, str] = {}  # (dtype, threads) -> the faster kernel's name


def fastest_kernel(dtype: torch.dtype) -> str:
    """The name of the kernel that multiplies one row by a matrix fastest on this host, timed once per process (and
    dtype and thread count): each kernel streams the same set of TIMED_SHAPE matrices (timed_bytes() in all) three
    times, in turns with the other, and its fastest pass counts. F.linear, PyTorch's own, unless the blocks are
    CLEARLY_FASTER: the two round differently, so a choice that a busy moment could flip would make two runs of one
    command on one host differ (2.3× on the AMD EPYC of BENCHMARKS.md, 3× the other way on an Intel Xeon). Where
    runs in several processes must round alike whatever the load (a run and its --resume on a busy host), the
    environment variable KERNEL_ENV names the kernel instead."""
    if pinned := os.environ.get(KERNEL_ENV):
        if pinned not in KERNELS:
            raise InputError(f"{KERNEL_ENV}={pinned}: name one of {', '.join(KERNELS)}, or leave it unset")
        return pinned
    key = (dtype, torch.get_num_threads())
    if key not in chosen:
        out_features, in_features = TIMED_SHAPE
        n = max(2, timed_bytes() // (out_features * in_features * torch.finfo(dtype).bits // 8))
        with torch.no_grad():
            weights = torch.empty(n, out_features, in_features, dtype=dtype).fill_(0.5)  # every page touched
            x = torch.ones(1, in_features, dtype=dtype)
            best = dict.fromkeys(KERNELS, float("inf"))
            for kernel in KERNELS.values():
                kernel(x, weights[0])  # warm-up
            for _ in range(3):  # the kernels take turns, so that a busy moment of the machine does not decide
                for name, kernel in KERNELS.items():
                    start = time.perf_counter()
                    for w in weights:
                        kernel(x, w)
                    best[name] = min(best[name], time.perf_counter() - start)
        chosen[key] = "blocked" if best["blocked"] * CLEARLY_FASTER < best["F.linear"] else "F.linear"
    return chosen[key]


def kernel_for(rows: int, weight: torch.Tensor) -> str:
    """The name of the kernel for `rows` rows times W: the fastest here (fastest_kernel) for a few rows on the CPU,
    else F.linear."""
    if not (0 < rows <= MAX_BLOCKED_ROWS and weight.is_cpu and weight.is_contiguous() and weight.shape[0] > 1):
        return "F.linear"
    return fastest_kernel(weight.dtype)


def few_rows_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x·Wᵀ for an x of any shape (…, in_features), by the kernel for its number of rows (kernel_for)."""
    return KERNELS[kernel_for(x.numel() // weight.shape[1], weight)](x, weight)


def product_into(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 accumulate: bool = False) -> Callable[[], object]:
    """A call that sets y = x·Wᵀ (y += x·Wᵀ with accumulate) for buffers x (rows, in_features) and y (rows,
    out_features) that a decoding loop refills in place: the kernel is chosen (kernel_for) and every view of x, y
    and W made once, here, so that each product is then one call into BLAS (two for the blocks of several rows)."""
    if kernel_for(x.shape[0], weight) == "F.linear":
        return partial(y.addmm_, x, weight.t()) if accumulate else partial(torch.mm, x, weight.t(), out=y)
    w_blocks = blocks(weight)
    n = w_blocks.shape[0]
    columns, y_blocks = x.mT.expand(n, -1, -1), y.mT.unflatten(0, (n, -1))  # (n, in, rows), (n, out / n, rows)
    if y_blocks.is_contiguous():  # one row: the blocks' results are y itself
        if accumulate:
            return partial(y_blocks.baddbmm_, w_blocks, columns)
        return partial(torch.bmm, w_blocks, columns, out=y_blocks)
    z = torch.empty(y_blocks.shape, dtype=y.dtype, device=y.device)  # BLAS writes strided results ~1.6× slower

    def product() -> None:
        if accumulate:
            torch.baddbmm(y_blocks, w_blocks, columns, out=z)
        else:
            torch.bmm(w_blocks, columns, out=z)
        y_blocks.copy_(z)
    return product


class BlockedLinear(nn.Linear):
    """nn.Linear without bias, computing x·Wᵀ for an x of at most MAX_BLOCKED_ROWS rows on the CPU by the faster of
    F.linear and the blocked product. Same parameter (`weight`) and state dict as nn.Linear(in_features,
    out_features, bias=False).
    """

    def __init__(self, in_features: int, out_features: int, device: torch.device | str | None = None):
        super().__init__(in_features, out_features, bias=False, device=device)

    @classmethod
    def sharing(cls, linear: nn.Linear) -> "BlockedLinear":
        """A BlockedLinear whose weight is the bias-free `linear`'s own Parameter (a tied weight stays tied)."""
        layer = cls(linear.in_features, linear.out_features, device="meta")  # allocates nothing
        layer.weight = linear.weight
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return few_rows_linear(x, self.weight)
