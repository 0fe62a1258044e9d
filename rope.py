"""Rotary position embeddings (Su et al. 2021, RoFormer §3.4), in the interleaved-pair layout of Llama.

The head vector x is read as head_dim/2 complex numbers z_i = x[2i] + j·x[2i+1]. At position p each one is
multiplied by e^{j·p·θ_i} with θ_i = θ^(−2i/head_dim), i.e. the pair turns by the angle p·θ_i:

    x'[2i]   = x[2i]·cos(p·θ_i) − x[2i+1]·sin(p·θ_i)
    x'[2i+1] = x[2i]·sin(p·θ_i) + x[2i+1]·cos(p·θ_i)

Because the rotations compose, q_m·k_n after rotation depends only on m − n (RoFormer eq. 16).
"""
import torch


def precompute_freqs(head_dim: int, max_seq_len: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(p·θ_i) and sin(p·θ_i) for p < max_seq_len, i < head_dim/2, each of shape (max_seq_len, head_dim/2).

    Computed in float32 operation for operation as llama2.c does, so these are bit for bit the tables that its
    legacy `.bin` export stores.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(max_seq_len).float(), inv_freq)
    return torch.cos(angles), torch.sin(angles)


def turns(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """e^{j·p·θ_i} = cos(p·θ_i) + j·sin(p·θ_i), from precompute_freqs' tables: the complex number by which
    pair i at position p is multiplied (RoFormer §3.4.2), to rotate pairs viewed as complex numbers in place."""
    return torch.complex(cos, sin)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Turn each pair of x (batch, seqlen, heads, head_dim) by the angles given as cos/sin (seqlen, head_dim/2)."""
    x_even, x_odd = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


def apply_rotary_emb(
    query: torch.Tensor,
    key: torch.Tensor,
    head_dim: int,
    max_seq_len: int,
    theta: float = 10000.0,
    start_pos: int = 0,
    freqs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate query (batch, seqlen, n_heads, head_dim) and key (batch, seqlen, n_kv_heads, head_dim).

    Token t of the input sits at position start_pos + t. `freqs` are tables from `precompute_freqs`, which a model
    computes once; without them they are computed here.
    """
    seqlen = query.shape[1]
    if start_pos + seqlen > max_seq_len:
        raise ValueError(f"positions up to {start_pos + seqlen} exceed max_seq_len={max_seq_len}")
    cos, sin = freqs if freqs is not None else precompute_freqs(head_dim, max_seq_len, theta)
    cos = cos[start_pos : start_pos + seqlen].to(query.device)
    sin = sin[start_pos : start_pos + seqlen].to(query.device)
    return rotate(query, cos, sin), rotate(key, cos, sin)
