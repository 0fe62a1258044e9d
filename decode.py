"""Fast decoding for a causal Llama: the steps of llama.py's cached generation, computed with fewer, larger operations.

One decoding step of batch-size rows reads every weight once for little arithmetic, so its speed is that at which
the weights stream from memory, plus the cost of launching each eager PyTorch operation. A Decoder computes the
same function as Llama.hidden_states and Llama.output with a KV cache (llama.py), but
- q|k|v is one matrix product (the three projections' weights stacked, Wqkv = [Wq; Wk; Wv]) and so is w1|w3,
  and each few-row product uses the kernel measured fastest on this machine (blocked_linear.few_rows_linear);
- the queries and keys turn together, as complex numbers times e^{j·p·θ_i} (rope.py's rotation, RoFormer §3.4.2);
- the keys and values of every layer live in one buffer allocated once for the whole generation.
The stacked matrices are copies, made from the model's weights when the Decoder is built; Llama.generate builds one
per call and drops it at the end, so no copy outlives a change of the weights (a training step, a LoRA merge,
load_state_dict).
"""
import torch
import torch.nn.functional as F
from torch import nn

from blocked_linear import BlockedLinear, few_rows_linear


def applies_to(model: nn.Module) -> bool:
    """Whether a Decoder computes what `model` (a llama.Llama) does: a causal model whose projections are all plain
    bias-free linear layers (not LoRA adapters, say) and which applies no dropout."""
    projections = [model.output] + [m for layer in model.layers for m in (
        layer.attention.compute_query, layer.attention.compute_key, layer.attention.compute_value,
        layer.attention.compute_output, layer.feed_forward.w1, layer.feed_forward.w2, layer.feed_forward.w3)]
    plain = all(type(m) in (nn.Linear, BlockedLinear) and m.bias is None for m in projections)
    return model.config.causal and plain and (not model.training or model.config.dropout == 0.0)


class Decoder:
    """The logits of a causal Llama, one step after another, with the keys and values of up to `positions`
    positions of batch_size rows kept between steps."""

    def __init__(self, model: nn.Module, batch_size: int, positions: int):  # model: a causal llama.Llama
        config = model.config
        self.model = model
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        attentions = [layer.attention for layer in model.layers]
        feed_forwards = [layer.feed_forward for layer in model.layers]
        self.wqkv = [torch.cat((a.compute_query.weight, a.compute_key.weight, a.compute_value.weight)).detach()
                     for a in attentions]
        self.w13 = [torch.cat((f.w1.weight, f.w3.weight)).detach() for f in feed_forwards]
        weight = model.output.weight
        # (layer, key/value, batch, kv head, position, head_dim), as KVCache keeps them per layer
        self.cache = weight.new_empty(config.n_layers, 2, batch_size, self.n_kv_heads, positions, self.head_dim)

    def logits(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        """The logits (batch, vocab_size) after the last of tokens (batch, seqlen), placed at positions start_pos…,
        whose keys and values are kept; the positions before start_pos must have been given before. Several tokens
        at once only from position 0 (the prompt, or a window that slid)."""
        batch_size, seqlen = tokens.shape
        if seqlen > 1 and start_pos != 0:
            raise ValueError(f"several tokens at once only from position 0, not {start_pos}")
        model, nq, nkv = self.model, self.n_heads, self.n_kv_heads
        end = start_pos + seqlen
        turn = torch.complex(model.freqs_cos[start_pos:end], model.freqs_sin[start_pos:end])[:, None]
        h = model.tok_embeddings(tokens)
        for layer, wqkv, w13, (keys, values) in zip(model.layers, self.wqkv, self.w13, self.cache):
            qkv = few_rows_linear(layer.attention_norm(h), wqkv).view(batch_size, seqlen, nq + 2 * nkv, self.head_dim)
            qk = torch.view_as_complex(qkv[:, :, :nq + nkv].float().unflatten(-1, (-1, 2))) * turn  # in float32
            qk = torch.view_as_real(qk).flatten(-2).type_as(qkv).transpose(1, 2)  # (batch, heads, seqlen, head_dim)
            keys[:, :, start_pos:end] = qk[:, nq:]
            values[:, :, start_pos:end] = qkv[:, :, nq + nkv:].transpose(1, 2)
            attended = F.scaled_dot_product_attention(qk[:, :nq], keys[:, :, :end], values[:, :, :end],
                                                      is_causal=seqlen > 1, enable_gqa=nq != nkv)
            attended = attended.transpose(1, 2).reshape(batch_size, seqlen, -1)
            h = h + few_rows_linear(attended, layer.attention.compute_output.weight)
            gate, up = few_rows_linear(layer.ffn_norm(h), w13).chunk(2, dim=-1)
            h = h + few_rows_linear(F.silu(gate) * up, layer.feed_forward.w2.weight)
        return few_rows_linear(model.norm(h[:, -1]), model.output.weight)
