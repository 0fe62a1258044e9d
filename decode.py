"""Fast decoding for a causal Llama: the steps of llama.py's cached generation, computed with fewer, larger operations.

One decoding step of batch-size rows reads every weight once for little arithmetic, so its speed is that at which
the weights stream from memory, plus the cost of each eager PyTorch operation in between (several microseconds each:
the weights streaming through have pushed the operation's code and data out of the CPU's caches). A Decoder
computes the same function as Llama.hidden_states and Llama.output with a KV cache (llama.py), with fewer of them:
- q|k|v is one matrix product (the three projections' weights stacked, Wqkv = [Wq; Wk; Wv]) and so is w1|w3;
- each RMSNorm's gain g is folded into the product after it, W·(g ⊙ x̂) = (W·diag g)·x̂ (Zhang & Sennrich 2019,
  eq. 4), so a norm is x̂ = x / sqrt(mean(x²) + eps) alone, its mean square one batched product;
- each product of a step uses the kernel measured fastest on this machine for its rows, chosen once
  (blocked_linear.FewRowsProduct), and the residual additions h + W·x happen inside the product;
- the queries and keys turn together, in place, as complex numbers times e^{j·p·θ_i} (rope.py's rotation,
  RoFormer §3.4.2), whose table is made once;
- the keys and values of every layer live in one buffer allocated once for the whole generation, and a step
  writes a position's keys and values with one copy.
The results equal the model's up to float32 rounding (tested: the same greedy tokens as the plain loop and as
transformers). The stacked matrices are copies, made from the model's weights when the Decoder is built;
Llama.generate builds one per call and drops it at the end, so no copy outlives a change of the weights (a
training step, a LoRA merge, load_state_dict).
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from blocked_linear import BlockedLinear, FewRowsProduct


def applies_to(model: nn.Module) -> bool:
    """Whether a Decoder computes what `model` (a llama.Llama) does: a causal float32 model whose projections are all
    plain bias-free linear layers (not LoRA adapters, say), which applies no dropout, outside autocast (there
    llama.py's own cached steps run: the Decoder's fused operations would round differently)."""
    projections = [model.output] + [m for layer in model.layers for m in (
        layer.attention.compute_query, layer.attention.compute_key, layer.attention.compute_value,
        layer.attention.compute_output, layer.feed_forward.w1, layer.feed_forward.w2, layer.feed_forward.w3)]
    plain = all(type(m) in (nn.Linear, BlockedLinear) and m.bias is None for m in projections)
    weight = model.output.weight
    exact = weight.dtype == torch.float32 and not torch.is_autocast_enabled(weight.device.type)
    return model.config.causal and plain and exact and (not model.training or model.config.dropout == 0.0)


class DecoderLayer(NamedTuple):
    """One LlamaLayer's products: q|k|v and w1|w3 stacked, the gain of the RMSNorm before them folded in; wo, w2."""
    wqkv: FewRowsProduct
    wo: FewRowsProduct
    w13: FewRowsProduct
    w2: FewRowsProduct


class Decoder:
    """The logits of a causal Llama, one step after another, with the keys and values of up to `positions`
    positions of batch_size rows kept between steps."""

    def __init__(self, model: nn.Module, batch_size: int, positions: int):  # model: a causal llama.Llama
        config = model.config
        self.tok_embeddings, self.norm_gain = model.tok_embeddings, model.norm.weight.detach()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.eps = torch.tensor(config.layer_norm_eps, device=model.output.weight.device)

        def stacked(gain: nn.Parameter, *linears: nn.Linear) -> FewRowsProduct:
            """The copy [W₁; W₂; …]·diag g, g the preceding RMSNorm's gain: W·(g ⊙ x) = (W·diag g)·x."""
            return FewRowsProduct(torch.cat([linear.weight.detach() for linear in linears]).mul_(gain.detach()),
                                  batch_size)  # a step multiplies batch_size rows

        def alone(linear: nn.Linear) -> FewRowsProduct:  # the model's own weight, not copied
            return FewRowsProduct(linear.weight.detach(), batch_size)

        self.layers = [
            DecoderLayer(stacked(layer.attention_norm.weight, a.compute_query, a.compute_key, a.compute_value),
                         alone(a.compute_output), stacked(layer.ffn_norm.weight, f.w1, f.w3), alone(f.w2))
            for layer in model.layers for a, f in [(layer.attention, layer.feed_forward)]]
        self.output = alone(model.output)
        # e^{j·p·θ_i}: position p's turn of each pair i, (positions, head_dim / 2)
        self.turns = torch.complex(model.freqs_cos[:positions], model.freqs_sin[:positions])
        # (layer, batch, key heads then value heads, position, head_dim): a step writes both with one copy
        self.cache = model.output.weight.new_empty(config.n_layers, batch_size, 2 * self.n_kv_heads, positions,
                                                   self.head_dim)

    def normalised(self, h: torch.Tensor) -> torch.Tensor:
        """h / sqrt(mean(h²) + eps) over the last dimension: llama.RMSNorm without its gain (folded into the
        products), the mean square of each row by one batched product, eps + (1/dim)·h·hᵀ."""
        rows = h.reshape(-1, 1, h.shape[-1])
        mean_square = torch.baddbmm(self.eps, rows, rows.mT, alpha=1 / h.shape[-1])  # (rows, 1, 1)
        return h * mean_square.rsqrt_().view(*h.shape[:-1], 1)

    def logits(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        """The logits (batch, vocab_size) after the last of tokens (batch, seqlen), placed at positions start_pos…,
        whose keys and values are kept; the positions before start_pos must have been given before. Several tokens
        at once only from position 0 (the prompt, or a window that slid)."""
        batch_size, seqlen = tokens.shape
        if seqlen > 1 and start_pos != 0:
            raise ValueError(f"several tokens at once only from position 0, not {start_pos}")
        nq, nkv, head_dim = self.n_heads, self.n_kv_heads, self.head_dim
        end = start_pos + seqlen
        turn = self.turns[start_pos:end, None]  # (seqlen, 1, head_dim / 2): the same for every head
        h = self.tok_embeddings(tokens)
        for layer, keys_values in zip(self.layers, self.cache):
            qkv = layer.wqkv(self.normalised(h)).view(batch_size, seqlen, nq + 2 * nkv, head_dim)
            torch.view_as_complex(qkv[:, :, :nq + nkv].unflatten(-1, (-1, 2))).mul_(turn)  # queries, keys turned
            qkv = qkv.transpose(1, 2)  # (batch, heads, seqlen, head_dim)
            keys_values[:, :, start_pos:end] = qkv[:, nq:]
            attended = F.scaled_dot_product_attention(qkv[:, :nq], keys_values[:, :nkv, :end],
                                                      keys_values[:, nkv:, :end], is_causal=seqlen > 1,
                                                      enable_gqa=nq != nkv)
            h = layer.wo(attended.transpose(1, 2).reshape(batch_size, seqlen, -1), add=h)
            gate, up = layer.w13(self.normalised(h)).chunk(2, dim=-1)
            h = layer.w2(F.silu(gate) * up, add=h)
        return self.output(self.normalised(h[:, -1]) * self.norm_gain)
