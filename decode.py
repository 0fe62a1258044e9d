"""Fast decoding for a causal Llama: the one-token steps of llama.py's cached generation, in fewer, larger calls.

One decoding step of batch-size rows reads every weight once for little arithmetic, so its speed is that at which
the weights stream from memory, plus the cost of each eager PyTorch call in between (several microseconds each:
the weights streaming through have pushed the call's code and data out of the CPU's caches). A Decoder computes
the same function as Llama.forward with a KV cache (llama.py), the next token's logits, with far fewer calls:
- q|k|v is one matrix product (the three projections' weights stacked, Wqkv = [Wq; Wk; Wv]) and so is w1|w3;
- each RMSNorm's gain g is folded into the product after it, W·(g ⊙ x̂) = (W·diag g)·x̂ (Zhang & Sennrich 2019,
  eq. 4), so a norm is x̂ = x / sqrt(mean(x²) + eps) alone, its mean square one batched product;
- a step's activations live in buffers allocated once and written in place, so each product is one call bound to
  its buffers, by the kernel measured fastest here (blocked_linear.product_into), and the residual additions
  h += W·x happen inside it;
- the queries and keys turn together, in place, as complex numbers times rope.turns, e^{j·p·θ_i} (RoFormer
  §3.4.2);
- the keys and values go into the model's own KV caches (llama.KVCache), which Llama.generate sets up.
The prompt (or a window that slid) runs through llama.py's own forward pass, which fills those caches.
The results equal the model's up to float32 rounding (tested: the same greedy tokens as the plain loop and as
transformers). The stacked matrices are copies, made from the model's weights when the Decoder is built;
fast.FastLlama.generate builds one per call and drops it at the end, so no copy outlives a change of the weights (a
training step, a LoRA merge, load_state_dict).
"""
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from blocked_linear import BlockedLinear, product_into
from llama import Llama
from rope import turns


def applies_to(model: Llama) -> bool:
    """Whether a Decoder computes what `model` does: a causal float32 model whose projections are all
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
    """One LlamaLayer's products, each a call bound to the Decoder's buffers: x̂ ↦ q|k|v, h += wo·attended,
    x̂ ↦ w1|w3, h += w2·gated (q|k|v and w1|w3 with the gain of the RMSNorm before them folded in); and the layer's
    attention, whose KV cache the steps read and write."""
    qkv: Callable[[], object]
    wo: Callable[[], object]
    w13: Callable[[], object]
    w2: Callable[[], object]
    attention: nn.Module


class Decoder:
    """The logits of a causal Llama, one step after another, for batch_size rows, the keys and values kept in the
    model's KV caches (Llama.setup_cache) between steps."""

    def __init__(self, model: Llama, batch_size: int):
        config = model.config
        self.model, self.norm_gain = model, model.norm.weight.detach()
        nq, nkv, head_dim, dim = config.n_heads, config.n_kv_heads, config.head_dim, config.dim
        self.n_heads, self.n_kv_heads = nq, nkv
        new, hidden_dim = model.output.weight.new_empty, model.layers[0].feed_forward.w2.in_features
        self.eps, self.alpha = model.output.weight.new_tensor(config.layer_norm_eps), 1 / dim
        # one step's buffers, batch_size rows each: h the residual stream, x̂ its normalised copy
        self.h, self.x, self.mean_square = new(batch_size, dim), new(batch_size, dim), new(batch_size, 1, 1)
        self.h_rows, self.mean_square_rows = self.h.view(batch_size, 1, dim), self.mean_square.view(batch_size, 1)
        self.h_columns = self.h_rows.mT
        self.qkv, self.attended = new(batch_size, (nq + 2 * nkv) * head_dim), new(batch_size, nq * head_dim)
        self.gate_up, self.gated = new(batch_size, 2 * hidden_dim), new(batch_size, hidden_dim)
        self.logits_buffer = new(batch_size, config.vocab_size)
        # views of them: queries and keys as head_dim / 2 complex numbers a head, and each head on its own
        self.queries_keys = torch.view_as_complex(
            self.qkv[:, :(nq + nkv) * head_dim].view(batch_size, nq + nkv, head_dim // 2, 2))
        self.queries = self.qkv[:, :nq * head_dim].view(batch_size, nq, 1, head_dim)
        self.new_keys = self.qkv[:, nq * head_dim:(nq + nkv) * head_dim].view(batch_size, nkv, head_dim)
        self.new_values = self.qkv[:, (nq + nkv) * head_dim:].view(batch_size, nkv, head_dim)
        self.attended_heads = self.attended.view(batch_size, nq, 1, head_dim)
        self.gate, self.up = self.gate_up.chunk(2, dim=-1)

        def stacked(gain: nn.Parameter, *linears: nn.Linear) -> torch.Tensor:
            """The copy [W₁; W₂; …]·diag g, g the preceding RMSNorm's gain: W·(g ⊙ x) = (W·diag g)·x."""
            return torch.cat([linear.weight.detach() for linear in linears]).mul_(gain.detach())

        self.layers = [
            DecoderLayer(
                product_into(stacked(layer.attention_norm.weight, a.compute_query, a.compute_key, a.compute_value),
                             self.x, self.qkv),
                product_into(a.compute_output.weight.detach(), self.attended, self.h, accumulate=True),
                product_into(stacked(layer.ffn_norm.weight, f.w1, f.w3), self.x, self.gate_up),
                product_into(f.w2.weight.detach(), self.gated, self.h, accumulate=True),
                a)
            for layer in model.layers for a, f in [(layer.attention, layer.feed_forward)]]
        self.output = product_into(model.output.weight.detach(), self.x, self.logits_buffer)
        self.turns = turns(model.freqs_cos, model.freqs_sin)  # (max_seq_len, head_dim / 2), rope.py's rotation

    def normalise(self) -> None:
        """x̂ = h / sqrt(mean(h²) + eps) over each row: llama.RMSNorm._norm (its gain is folded into the products),
        in three calls into the step's buffers, the mean square of each row by one batched product, eps +
        (1/dim)·h·hᵀ. Calling RMSNorm._norm itself (five allocating calls) made decoding 3–4% slower, and PyTorch's
        F.rms_norm 5% slower (BENCHMARKS.md)."""
        torch.baddbmm(self.eps, self.h_rows, self.h_columns, alpha=self.alpha, out=self.mean_square)
        torch.mul(self.h, self.mean_square_rows.rsqrt_(), out=self.x)

    def logits(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        """The logits (batch, vocab_size) after the last of tokens (batch, seqlen), placed at positions start_pos…,
        whose keys and values go into the KV caches; the positions before start_pos must have been given before.
        Several tokens at once only from position 0 (the prompt, or a window that slid): llama.py's forward pass."""
        if start_pos == 0:
            return Llama.forward(self.model, tokens)[0][:, -1]
        if tokens.shape[1] > 1:
            raise ValueError(f"several tokens at once only from position 0, not {start_pos}")
        return self.step(tokens, start_pos)

    def step(self, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        """The logits (batch, vocab_size) after one new token a row, tokens (batch, 1), at position pos."""
        nkv, end = self.n_kv_heads, pos + 1
        self.h_rows.copy_(self.model.tok_embeddings(tokens))
        turn = self.turns[pos]  # the same for every head
        for layer in self.layers:
            self.normalise()
            layer.qkv()
            self.queries_keys.mul_(turn)
            cache = layer.attention.cache
            cache.key[:, :, pos] = self.new_keys
            cache.value[:, :, pos] = self.new_values
            self.attended_heads.copy_(F.scaled_dot_product_attention(
                self.queries, cache.key[:, :, :end], cache.value[:, :, :end], enable_gqa=self.n_heads != nkv))
            layer.wo()
            self.normalise()
            layer.w13()
            torch.mul(F.silu(self.gate, inplace=True), self.up, out=self.gated)
            layer.w2()
        self.normalise()
        self.x.mul_(self.norm_gain)
        self.output()
        return self.logits_buffer.clone()  # the buffer is written again at the next step
