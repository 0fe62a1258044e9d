"""Tests for rope.py against a float64 re-derivation: RoFormer's block-diagonal rotation matrices (eq. 15)."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rope_test
from rope import apply_rotary_emb, precompute_freqs

REPO = Path(__file__).resolve().parent.parent


def rotation_matrix(position: int, head_dim: int, theta: float = 10000.0) -> np.ndarray:
    """R_p: a 2×2 rotation by p·θ^(−2i/head_dim) on the diagonal block of dimensions (2i, 2i+1), in float64."""
    r = np.zeros((head_dim, head_dim))
    for i in range(head_dim // 2):
        angle = position * theta ** (-2 * i / head_dim)
        r[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return r


def reference(x: torch.Tensor, start_pos: int = 0, theta: float = 10000.0) -> np.ndarray:
    """x (batch, seqlen, heads, head_dim) with every head vector at position start_pos + t multiplied by R_p."""
    x = x.double().numpy()
    out = np.empty_like(x)
    for t in range(x.shape[1]):
        out[:, t] = x[:, t] @ rotation_matrix(start_pos + t, x.shape[-1], theta).T
    return out


@pytest.mark.parametrize("batch, seqlen, n_heads, n_kv_heads, head_dim, start_pos", [
    (1, 7, 4, 4, 8, 0),
    (3, 5, 6, 2, 16, 0),
    (2, 9, 4, 1, 32, 11),
    (2, 1, 8, 2, 64, 37),
])
def test_matches_float64_rotation_matrices(batch, seqlen, n_heads, n_kv_heads, head_dim, start_pos):
    g = torch.Generator().manual_seed(seqlen * head_dim + start_pos)
    query = torch.randn(batch, seqlen, n_heads, head_dim, generator=g)
    key = torch.randn(batch, seqlen, n_kv_heads, head_dim, generator=g)
    max_seq_len = start_pos + seqlen + 3
    q, k = apply_rotary_emb(query, key, head_dim, max_seq_len, start_pos=start_pos)
    assert q.shape == query.shape and k.shape == key.shape
    np.testing.assert_allclose(q.numpy(), reference(query, start_pos), atol=2e-5, rtol=0)
    np.testing.assert_allclose(k.numpy(), reference(key, start_pos), atol=2e-5, rtol=0)
    # the tables a model precomputes once give the same result
    q_pre, k_pre = apply_rotary_emb(query, key, head_dim, max_seq_len, start_pos=start_pos,
                                    freqs=precompute_freqs(head_dim, max_seq_len))
    assert torch.equal(q_pre, q) and torch.equal(k_pre, k)


def test_other_theta():
    query, key = torch.randn(1, 4, 2, 8), torch.randn(1, 4, 1, 8)
    q, k = apply_rotary_emb(query, key, 8, 4, theta=500.0)
    np.testing.assert_allclose(q.numpy(), reference(query, theta=500.0), atol=2e-5, rtol=0)
    np.testing.assert_allclose(k.numpy(), reference(key, theta=500.0), atol=2e-5, rtol=0)


def test_course_values():
    """Values worked out by hand: 2·ones at position 1 turns by 1 rad (pair 0) and by 0.01 rad (pair 1)."""
    q, k = apply_rotary_emb(2 * torch.ones(1, 2, 2, 4), 3 * torch.ones(1, 2, 2, 4), 4, 20)
    assert torch.equal(q[0, 0], 2 * torch.ones(2, 4))  # position 0 is unchanged
    torch.testing.assert_close(q[0, 1, 0], torch.tensor([-0.6023, 2.7635, 1.9799, 2.0199]), atol=1e-4, rtol=0)
    torch.testing.assert_close(k[0, 1, 1], 1.5 * q[0, 1, 1])


def test_scores_depend_only_on_relative_position():
    """RoFormer eq. 16: the rotated q_m·k_n is qᵀ·R_(n−m)·k, a function of m − n only, for any q and k."""
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)

    def score(query: torch.Tensor, key: torch.Tensor, m: int, n: int) -> float:
        qm = apply_rotary_emb(query.float().view(1, 1, 1, 16), query.float().view(1, 1, 1, 16), 16, 64, start_pos=m)
        kn = apply_rotary_emb(key.float().view(1, 1, 1, 16), key.float().view(1, 1, 1, 16), 16, 64, start_pos=n)
        return float((qm[0] * kn[1]).sum())

    # float32 tables and products: over 300 draws and all positions < 64 the error stayed below 1e-6·|q|·|k|
    tolerance = 1e-5 * float(q.norm() * k.norm())
    for m, n in [(5, 2), (40, 37), (2, 5), (37, 40), (0, 0), (63, 63), (0, 63), (50, 10)]:
        expected = float(q.numpy() @ rotation_matrix(n - m, 16) @ k.numpy())
        assert score(q, k, m, n) == pytest.approx(expected, abs=tolerance)
    # and it does change with m − n: e_0's first pair turns by 1 rad per position, so e_0·e_0 scores cos(m − n)
    e0 = torch.zeros(16, dtype=torch.float64)
    e0[0] = 1.0
    scores = [score(e0, e0, m, n) for m, n in [(5, 2), (40, 37), (5, 3), (3, 5), (9, 9)]]
    assert scores == pytest.approx([np.cos(3), np.cos(3), np.cos(2), np.cos(2), 1.0], abs=1e-6)


def test_dtype_is_kept():
    query, key = torch.randn(2, 3, 4, 8, dtype=torch.bfloat16), torch.randn(2, 3, 2, 8, dtype=torch.bfloat16)
    q, k = apply_rotary_emb(query, key, 8, 3)
    assert q.dtype == k.dtype == torch.bfloat16
    np.testing.assert_allclose(q.float().numpy(), reference(query), atol=3e-2, rtol=0)


def test_positions_past_max_seq_len_are_an_error():
    query = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="max_seq_len=5"):
        apply_rotary_emb(query, query, 8, 5, start_pos=2)


def test_rope_test_script(tmp_path: Path, asset):
    """Run as the course runs it: from a folder holding the course's reference file."""
    shutil.copy(asset("rotary_embedding_actual.data"), tmp_path)
    result = subprocess.run([sys.executable, str(REPO / "rope_test.py")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Rotary embedding test passed!"


@pytest.mark.parametrize("which, failed", [(0, "query against"), (1, "key against")])
def test_rope_test_fails_when_the_course_values_differ(tmp_path: Path, capsys, asset, which: int, failed: str):
    pair = list(torch.load(asset("rotary_embedding_actual.data"), weights_only=True))
    pair[which] = pair[which].clone()
    pair[which][0, 1, 1, 2] += 1e-3  # beyond torch.allclose's default tolerances, which the course's test uses
    reference = tmp_path / "rotary_embedding_actual.data"
    torch.save(tuple(pair), reference)
    assert rope_test.main(str(reference)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"Rotary embedding test failed: {failed} the course's {reference}\n")
    assert "float64" not in err.splitlines()[0]  # the independent derivation still agrees


def test_rope_test_fails_when_the_float64_derivation_differs(monkeypatch, capsys, asset):
    derive = rope_test.expected_rotation
    monkeypatch.setattr(rope_test, "expected_rotation", lambda x: derive(x) + 1e-3)
    assert rope_test.main(str(asset("rotary_embedding_actual.data"))) == 1
    assert capsys.readouterr().err.startswith("Rotary embedding test failed: query against the float64 derivation; "
                                              "key against the float64 derivation\n")
