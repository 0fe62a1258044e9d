"""Generation in the course's semantics (attention without a mask), less the work that is the same at every step.

Without a mask every position sees the newest token, so each step of generation recomputes the whole context: every
layer's output changes at every position. Layer 0's queries, keys and values do not: at position p they are
projections of token p's embedding (normalised), turned by RoPE for p. So a Recompute keeps those of the context it
was last given, and when the next context extends it (generation appends a token; the window has not slid), projects
the new positions' alone. That spares 3·dim² of the 88·dim² multiply-adds a position costs at stories42M's shape
(BENCHMARKS.md has the time saved). The rest runs through the model's own modules, so any weights, LoRA adapters or
autocast apply as in Llama.last_logits, whose result this equals up to float32 rounding (tested within 1e-5).
"""
import torch
from torch import nn


def applies_to(model: nn.Module) -> bool:
    """Whether a Recompute computes what `model` (a llama.Llama) does: unmasked, more than one layer (layer 0 is not
    also the last, which runs at one position only), no dropout at work (it would draw anew at every step)."""
    dropout = model.training and model.config.dropout > 0.0
    return not model.config.causal and model.n_layers > 1 and not dropout


class Recompute:
    """The logits after a context, with layer 0's queries, keys and values kept from the previous call's context."""

    def __init__(self, model: nn.Module):  # model: an unmasked llama.Llama
        self.model = model
        self.tokens: torch.Tensor | None = None  # the previous context (batch, seqlen)
        self.layer0: tuple[torch.Tensor, ...] = ()  # its layer-0 queries, keys, values as Attention.project gives

    def known(self, tokens: torch.Tensor) -> int:
        """How many positions of `tokens` (batch, seqlen) begin with the previous context: that many, or 0."""
        n = 0 if self.tokens is None else self.tokens.shape[1]
        same = self.tokens is not None and tokens.shape[0] == self.tokens.shape[0] and tokens.shape[1] >= n
        return n if same and torch.equal(tokens[:, :n], self.tokens) else 0

    def logits(self, tokens: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """The logits (batch, vocab_size) after the last of tokens (batch, seqlen), the whole context (start_pos 0),
        as Llama.last_logits gives them."""
        if start_pos != 0:
            raise ValueError(f"a Recompute takes the whole context, from position 0, not {start_pos}")
        model, n = self.model, self.known(tokens)
        first, freqs = model.layers[0], (model.freqs_cos, model.freqs_sin)
        h = model.dropout(model.tok_embeddings(tokens))
        new = first.attention.project(first.attention_norm(h[:, n:]), freqs, start_pos=n)
        if n:
            new = tuple(torch.cat((kept, part), dim=2) for kept, part in zip(self.layer0, new))
        self.tokens, self.layer0 = tokens, new
        h = h + first.attention.attend(*self.layer0)
        h = h + first.feed_forward(first.ffn_norm(h))
        last = torch.full((tokens.shape[0],), tokens.shape[1] - 1, device=tokens.device)
        for i, layer in enumerate(model.layers[1:], start=1):
            h = layer(h, freqs, 0, last if i == model.n_layers - 1 else None)
        return model.output(model.norm(h)[:, 0])
