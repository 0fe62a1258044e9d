"""A bias-free linear layer whose product with an input of a few rows is computed block by block.

For a few rows (one decoding step, a classifier's output), x·Wᵀ reads all of W for little arithmetic, so its speed
is that at which W streams from memory. F.linear hands it to one matrix-vector BLAS call; cutting W into blocks of
rows and multiplying them as one batch (torch.bmm) lets every thread stream whole blocks and reads W faster
(BENCHMARKS.md, "Where the time goes"). The result is the same x·Wᵀ; more rows go to F.linear as usual.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_BLOCKED_ROWS = 16  # beyond this F.linear's matrix-matrix kernel is as fast (BENCHMARKS.md)


class BlockedLinear(nn.Linear):
    """nn.Linear without bias, computing x·Wᵀ for an x of at most MAX_BLOCKED_ROWS rows on the CPU as a batch of
    blocks of W's rows. Same parameter (`weight`) and state dict as nn.Linear(in_features, out_features, bias=False).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        n = math.gcd(max(2, torch.get_num_threads()), self.out_features)  # blocks: one per thread, at least two
        if not (0 < rows <= MAX_BLOCKED_ROWS and n > 1 and x.is_cpu and self.weight.is_contiguous()):
            return F.linear(x, self.weight)
        blocks = self.weight.view(n, -1, self.in_features)  # (n, out_features / n, in_features)
        # x's rows as columns, read in place (strides 1, in_features) rather than copied: BLAS is faster on this
        columns = x.reshape(rows, -1).mT.expand(n, -1, -1)  # (n, in_features, rows)
        y = torch.bmm(blocks, columns)  # (n, out_features / n, rows)
        return y.permute(2, 0, 1).reshape(*x.shape[:-1], self.out_features)
