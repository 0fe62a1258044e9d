"""The course's rotary embedding test: `python rope_test.py` prints "Rotary embedding test passed!".

The expected values are derived here, independently of rope.py, from the complex-number form of RoPE (Su et al.
2021, §3.4.2) in float64: the pair (x[2i], x[2i+1]) is the complex number x[2i] + j·x[2i+1], and at position p it is
multiplied by e^{j·p·θ_i} with θ_i = 10000^(−2i/head_dim).
"""
import sys

import torch

from rope import apply_rotary_emb

HEAD_DIM, MAX_SEQ_LEN = 4, 20


def expected_rotation(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """x (batch, seqlen, heads, head_dim) rotated at positions 0 … seqlen−1, computed with complex float64."""
    z = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous())  # (batch, seqlen, heads, head_dim/2)
    head_dim = x.shape[-1]
    theta_i = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(x.shape[1], dtype=torch.float64)[:, None] * theta_i  # (seqlen, head_dim/2)
    rotated = z * torch.polar(torch.ones_like(angles), angles)[:, None, :]
    return torch.view_as_real(rotated).flatten(-2)


def main() -> int:
    query = 2 * torch.ones(1, 2, 2, HEAD_DIM)
    key = 3 * torch.ones(1, 2, 2, HEAD_DIM)
    rotated_query, rotated_key = apply_rotary_emb(query, key, HEAD_DIM, MAX_SEQ_LEN)
    # at position 1 the first pair turns by 1 rad, the second by 0.01 rad: 2·(cos − sin, sin + cos)
    course_values = torch.tensor([-0.6023, 2.7635, 1.9799, 2.0199], dtype=torch.float64)
    checks = {
        "query": torch.allclose(rotated_query.double(), expected_rotation(query), atol=1e-6),
        "key": torch.allclose(rotated_key.double(), expected_rotation(key), atol=1e-6),
        "query at position 1": torch.allclose(rotated_query[0, 1, 0].double(), course_values, atol=1e-4),
        "position 0 unchanged": torch.equal(rotated_query[0, 0], query[0, 0]),
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        print(f"Rotary embedding test failed: {', '.join(failed)}\n"
              f"query:\n{rotated_query}\nexpected:\n{expected_rotation(query)}", file=sys.stderr)
        return 1
    print("Rotary embedding test passed!")
    return 0


if __name__ == "__main__":
    sys.exit(main())
