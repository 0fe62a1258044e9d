"""The fast paths, installed on a loaded Llama from above llama.py, the way lora.add_lora installs adapters:

    model = fast.install(load_pretrained("stories42M.pt"))

llama.py stays the course's model, to be read; `install` gives the same model (the same parameters, state dict and
function, up to float32 rounding) these paths, each tested against the plain model:
- few-row products: every bias-free nn.Linear becomes a blocked_linear.BlockedLinear, which multiplies the few rows
  of a decoding step by the kernel that streams the weights fastest on this host;
- attention by PyTorch's fused kernel (scaled_dot_product_attention) instead of the written-out formula;
- the last layer's work at one position: where only one position per row is read (the next token's logits, a
  classifier's hidden state), the last layer's feed-forward network, the final norm and the output run there
  alone (hidden_state_at): they are position-wise, and nothing after them reads the other positions;
- generation: a causal model's one-token steps by decode.Decoder (the products fused and bound to buffers), and in
  the course's semantics, which recompute the whole context at every step, layer 0's projections of the positions
  seen before are kept (Recompute): they depend only on the token at a position, not on the rest of the context.
A model with LoRA adapters keeps them (install them after `install`): the paths that would bypass them (the Decoder)
do not apply to it, and the others run through the model's own modules.
"""
import math
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

import decode
from blocked_linear import BlockedLinear
from files import InputError
from llama import Llama

PROJECTIONS = ("compute_query", "compute_key", "compute_value")  # what layer 0 projects from each position alone


class NonFiniteError(InputError):
    """Logits holding NaN or infinity: the model's weights overflow its floating-point type."""


def finite(logits: torch.Tensor) -> torch.Tensor:
    """`logits`, once checked to be finite: sampling, arg-maxing or scoring NaN or infinity is meaningless. NaN
    makes both the smallest and the largest value NaN, and ±∞ is one of them, so one pass (aminmax) tells."""
    if not all(math.isfinite(bound) for bound in torch.aminmax(logits)):
        raise NonFiniteError(f"the model computes logits that hold NaN or infinity ({logits.dtype} overflows): its "
                             "weights are out of any usable range")
    return logits


def install(model: Llama) -> "FastLlama":
    """`model`, changed in place into a FastLlama: its bias-free nn.Linear projections become BlockedLinear (sharing
    their weights, the tied embedding too) and its attention takes the fused kernel. Returned for chaining."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and child.bias is None:
                setattr(module, name, BlockedLinear.sharing(child))
        if hasattr(module, "flash"):
            module.flash = True
    model.__class__ = FastLlama
    return model


class FastLlama(Llama):
    """A Llama with the fast paths installed (`install`); built only by `install`, from a loaded Llama."""

    steps: Callable[[torch.Tensor, int], torch.Tensor] | None = None  # the logits of generation's steps, while it runs

    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
        use_cache: bool = True, on_token: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Llama.generate's loop, its steps' logits computed by `next_logits` and checked to be finite."""
        self.steps = next_logits(self, idx.shape[0], use_cache)
        try:
            return super().generate(idx, max_new_tokens, temperature, top_k, use_cache, on_token)
        finally:
            self.steps = None

    def forward(
        self, tokens: torch.Tensor, targets: torch.Tensor | None = None, start_pos: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Llama.forward; while generate runs, the logits after the last token (batch, 1, vocab) alone, and None
        for the hidden states, which generation does not read."""
        if self.steps is None or targets is not None:
            return super().forward(tokens, targets, start_pos)
        return finite(self.steps(tokens, start_pos))[:, None], None


def next_logits(model: Llama, batch_size: int, use_cache: bool) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The function (tokens, start_pos) ↦ the logits (batch, vocab) after the last of tokens that Llama.generate's
    steps call: a Decoder's for a causal cached model it applies to, a Recompute's in the course's semantics where
    it applies, else last_logits (with use_cache=False: the plain loop, the last layer at one position)."""
    if use_cache and decode.applies_to(model):
        return decode.Decoder(model, batch_size).logits
    if use_cache and Recompute.applies_to(model):
        return Recompute(model).logits
    return partial(last_logits, model)


def last_column(tokens: torch.Tensor) -> torch.Tensor:
    """The index (batch,) of the last position of each row of tokens (batch, seqlen, ...)."""
    return torch.full((tokens.shape[0],), tokens.shape[1] - 1, device=tokens.device)


def hidden_state_at(model: Llama, tokens: torch.Tensor, positions: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
    """The final hidden state (batch, dim) at position positions[b] of each row b of tokens (batch, seqlen), placed
    at positions start_pos…: Llama.forward's, with the last layer's feed-forward network and the final norm run at
    those positions only (LlamaLayer.forward split where its attention has gathered the context)."""
    h = model.dropout(model.tok_embeddings(tokens))
    freqs = (model.freqs_cos, model.freqs_sin)
    *layers, last = model.layers
    for layer in layers:
        h = layer(h, freqs, start_pos)
    h = h + last.attention(last.attention_norm(h), freqs, start_pos)
    h = h[torch.arange(h.shape[0], device=h.device), positions]
    return model.norm(h + last.feed_forward(last.ffn_norm(h)))


def last_logits(model: Llama, tokens: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
    """The logits (batch, vocab) after the last of tokens (batch, seqlen) placed at positions start_pos…"""
    return model.output(hidden_state_at(model, tokens, last_column(tokens), start_pos))


class KeptRows(nn.Module):
    """A position-wise module (a projection) that, given `known`, reuses its outputs for the first `known`
    positions from its previous call and computes the rest: exact where those positions' inputs are unchanged."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.known, self.kept = inner, 0, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.inner(x[:, self.known:])
        self.kept = torch.cat((self.kept[:, :self.known], new), dim=1) if self.known else new
        return self.kept


class Recompute:
    """Generation's steps in the course's semantics, less the work that is the same at every step.

    Without a mask every position sees the newest token, so each step recomputes the whole context: every layer's
    output changes at every position. Layer 0's queries, keys and values before RoPE do not: at position p they
    are projections of token p's (normalised) embedding. So a Recompute keeps those of the context it was last
    given and, when the next context extends it (generation appends a token; the window has not slid), projects
    the new positions alone, through the model's own projections (LoRA adapters and autocast apply as usual). At
    stories42M's shape that spares 3·dim² of the 88·dim² multiply-adds a position costs (BENCHMARKS.md).
    """

    def __init__(self, model: Llama):
        self.model = model
        self.tokens: torch.Tensor | None = None  # the previous context (batch, seqlen)
        self.kept = {name: KeptRows(getattr(model.layers[0].attention, name)) for name in PROJECTIONS}

    @staticmethod
    def applies_to(model: Llama) -> bool:
        """Whether a Recompute computes what `model` does: unmasked, with no dropout at work (it would draw anew at
        every step)."""
        return not model.config.causal and not (model.training and model.config.dropout > 0.0)

    def known(self, tokens: torch.Tensor) -> int:
        """How many positions of `tokens` (batch, seqlen) begin with the previous context: that many, or 0."""
        n = 0 if self.tokens is None else self.tokens.shape[1]
        same = self.tokens is not None and tokens.shape[0] == self.tokens.shape[0] and tokens.shape[1] >= n
        return n if same and torch.equal(tokens[:, :n], self.tokens) else 0

    def logits(self, tokens: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """The logits (batch, vocab) after the last of tokens (batch, seqlen), the whole context (start_pos 0)."""
        if start_pos != 0:
            raise ValueError(f"a Recompute takes the whole context, from position 0, not {start_pos}")
        attention, n = self.model.layers[0].attention, self.known(tokens)
        for name, kept in self.kept.items():
            kept.known = n
            setattr(attention, name, kept)
        try:
            logits = last_logits(self.model, tokens)
        finally:
            for name, kept in self.kept.items():
                setattr(attention, name, kept.inner)
        self.tokens = tokens
        return logits
