"""The course's rotary embedding test: `python rope_test.py` prints "Rotary embedding test passed!".

As the course's test does, it compares apply_rotary_emb's (query, key) for query = 2·ones, key = 3·ones
(batch 1, 2 positions, 2 heads, head_dim 4) with the course's reference file rotary_embedding_actual.data, fetched
if missing (see assets.py). It also checks them against values derived here, independently of rope.py, from the
complex-number form of RoPE (Su et al. 2021, §3.4.2) in float64: the pair (x[2i], x[2i+1]) is the complex number
x[2i] + j·x[2i+1], and at position p it is multiplied by e^{j·p·θ_i} with θ_i = 10000^(−2i/head_dim).
"""
import argparse
import sys

import torch

import assets
import files
from checkpoint import read_torch_file
from files import InputError
from rope import apply_rotary_emb

HEAD_DIM, MAX_SEQ_LEN = 4, 20
REFERENCE = "rotary_embedding_actual.data"


def expected_rotation(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """x (batch, seqlen, heads, head_dim) rotated at positions 0 … seqlen−1, computed with complex float64."""
    z = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous())  # (batch, seqlen, heads, head_dim/2)
    head_dim = x.shape[-1]
    theta_i = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(x.shape[1], dtype=torch.float64)[:, None] * theta_i  # (seqlen, head_dim/2)
    rotated = z * torch.polar(torch.ones_like(angles), angles)[:, None, :]
    return torch.view_as_real(rotated).flatten(-2)


def read_reference(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The course's (query, key) pair saved in `path`."""
    saved = read_torch_file(path)
    if not (isinstance(saved, (tuple, list)) and len(saved) == 2 and all(isinstance(t, torch.Tensor) for t in saved)):
        raise InputError(f"{path}: expected a (query, key) pair of tensors, found {type(saved).__name__}")
    return saved[0], saved[1]


def close(got: torch.Tensor, want: torch.Tensor, **tolerance: float) -> bool:
    return got.shape == want.shape and torch.allclose(got.double(), want.double(), **tolerance)


def main(reference: str = REFERENCE) -> int:
    """Run the checks; returns the exit status (0 when all pass; 1 once an InputError is reported: files.status)."""
    return files.status(lambda: check(reference))


def check(reference: str) -> int:
    """Compare apply_rotary_emb with the course's reference file and the float64 derivation; the exit status."""
    course_query, course_key = read_reference(str(assets.ensure(reference)))
    query = 2 * torch.ones(1, 2, 2, HEAD_DIM)
    key = 3 * torch.ones(1, 2, 2, HEAD_DIM)
    rotated_query, rotated_key = apply_rotary_emb(query, key, HEAD_DIM, MAX_SEQ_LEN)
    checks = {  # the course's comparison uses torch.allclose's default tolerances
        f"query against the course's {reference}": close(rotated_query, course_query),
        f"key against the course's {reference}": close(rotated_key, course_key),
        "query against the float64 derivation": close(rotated_query, expected_rotation(query), atol=1e-6),
        "key against the float64 derivation": close(rotated_key, expected_rotation(key), atol=1e-6),
        "position 0 unchanged": torch.equal(rotated_query[0, 0], query[0, 0]),
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        print(f"Rotary embedding test failed: {'; '.join(failed)}\nquery:\n{rotated_query}\n"
              f"the course's:\n{course_query}\nthe float64 derivation:\n{expected_rotation(query)}", file=sys.stderr)
        return 1
    print("Rotary embedding test passed!")
    return 0


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                            allow_abbrev=False).parse_args()
    sys.exit(main())
