"""The Llama 2 model (Touvron et al. 2023) in the llama2.c layout: pre-norm decoder layers of grouped-query
attention with rotary position embeddings and a SwiGLU feed-forward network, RMSNorm, tied input/output embeddings.
The attention is unmasked, as in the course's reference, or causal, as in Llama 2 (LlamaConfig.causal).

This file is the model and nothing else: the course's classes, names and loops, written to be read. The fast paths
(fast.py) are installed on a loaded model from above, as LoRA adapters are (lora.py), and compute the same function.
"""
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from checkpoint import is_tied, read_llama
from config import LlamaConfig, swiglu_hidden_dim
from rope import apply_rotary_emb, precompute_freqs


class RMSNorm(nn.Module):
    """Root-mean-square layer normalisation (Zhang & Sennrich 2019, eq. 4): x / sqrt(mean(x²) + eps) · g."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm(x.float()).type_as(x) * self.weight  # normalise in float32 whatever the input dtype


class KVCache:
    """Keys and values of the positions seen so far, for up to max_seq_len positions (those a generation reaches).

    The buffers are allocated at the first update, with the dtype and device of the keys they hold (so the cache
    also works under autocast), and are read only where they have been written.
    """

    def __init__(self, max_seq_len: int):
        self.max_seq_len = max_seq_len
        self.key: torch.Tensor | None = None
        self.value: torch.Tensor | None = None

    def update(self, start_pos: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store key/value (batch, n_kv_heads, seqlen, head_dim) at start_pos; return those of all positions so far."""
        if self.key is None:
            batch_size, n_kv_heads, _, head_dim = key.shape
            self.key = key.new_empty(batch_size, n_kv_heads, self.max_seq_len, head_dim)
            self.value = value.new_empty(batch_size, n_kv_heads, self.max_seq_len, head_dim)
        end = start_pos + key.shape[2]
        self.key[:, :, start_pos:end] = key
        self.value[:, :, start_pos:end] = value
        return self.key[:, :, :end], self.value[:, :, :end]


class Attention(nn.Module):
    """Multi-head self-attention with grouped-query key/value heads (Ainslie et al. 2023): n_heads query heads share
    n_kv_heads key/value heads, n_rep = n_heads / n_kv_heads each. Unmasked (the course's reference) or causal."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.n_local_heads = config.n_heads
        self.n_local_kv_heads = config.n_kv_heads
        self.n_rep = self.n_local_heads // self.n_local_kv_heads  # query heads per key/value head
        self.head_dim = config.head_dim
        self.max_seq_len = config.max_seq_len
        self.causal = config.causal
        self.compute_query = nn.Linear(config.dim, config.n_heads * self.head_dim, bias=False)
        self.compute_key = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.compute_value = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.compute_output = nn.Linear(config.n_heads * self.head_dim, config.dim, bias=False)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.flash = False  # True: PyTorch's fused kernel for the same function (fast.install chooses it)
        self.cache: KVCache | None = None  # set by Llama.setup_cache for cached generation

    def compute_query_key_value_scores(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> torch.Tensor:
        """softmax(QKᵀ/√d + M)·V (Vaswani et al. 2017, eq. 1), with dropout on the probabilities.

        query is (batch, n_heads, seqlen, head_dim); key and value are (batch, n_heads, kv_len, head_dim), already
        repeated to n_heads, and cover the kv_len − seqlen cached positions before the queries too. M is zero
        without `causal` (every position sees every other); with it, −∞ where key position > query position.
        """
        seqlen, kv_len = query.shape[2], key.shape[2]
        mask = None
        if self.causal and seqlen > 1:  # query t sits at position kv_len − seqlen + t and sees the keys up to there
            mask = torch.ones(seqlen, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - seqlen)
        if self.flash:
            plain = mask is not None and seqlen == kv_len  # the kernel makes the plain triangular mask itself
            return F.scaled_dot_product_attention(query, key, value, attn_mask=None if plain else mask,
                                                  is_causal=plain, dropout_p=self.dropout if self.training else 0.0)
        scores = query @ key.transpose(-2, -1) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = self.attn_dropout(F.softmax(scores.float(), dim=-1).type_as(query))
        return probs @ value

    def forward(
        self, x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor] | None = None, start_pos: int = 0
    ) -> torch.Tensor:
        """Attention output for x (batch, seqlen, dim) at positions start_pos…; freqs: the model's rotary tables.
        With a KV cache, the keys and values of the positions before start_pos come from it."""
        batch_size, seqlen, _ = x.shape
        query = self.compute_query(x).view(batch_size, seqlen, self.n_local_heads, self.head_dim)
        key = self.compute_key(x).view(batch_size, seqlen, self.n_local_kv_heads, self.head_dim)
        value = self.compute_value(x).view(batch_size, seqlen, self.n_local_kv_heads, self.head_dim)
        query, key = apply_rotary_emb(query, key, self.head_dim, self.max_seq_len, start_pos=start_pos, freqs=freqs)
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # heads first
        if self.cache is not None:
            key, value = self.cache.update(start_pos, key, value)
        # key/value head h serves query heads h·n_rep … (h+1)·n_rep − 1
        key = key.repeat_interleave(self.n_rep, dim=1)
        value = value.repeat_interleave(self.n_rep, dim=1)
        output = self.compute_query_key_value_scores(query, key, value)
        output = output.transpose(1, 2).flatten(2)  # (batch, seqlen, n_heads · head_dim)
        return self.resid_dropout(self.compute_output(output))


class FeedForward(nn.Module):
    """SwiGLU feed-forward network (Shazeer 2020, eq. 6): w2(silu(w1·x) ⊙ w3·x)."""

    def __init__(self, dim: int, hidden_dim: int | None, multiple_of: int, dropout: float):
        super().__init__()
        if hidden_dim is None:
            hidden_dim = swiglu_hidden_dim(dim, multiple_of)
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def SwiGLU(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.w1(x)) * self.w3(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(self.SwiGLU(x)))


class LlamaLayer(nn.Module):
    """One pre-norm decoder layer: h = x + attention(norm(x)); out = h + feed_forward(norm(h))."""

    def __init__(self, layer_id: int, config: LlamaConfig):
        super().__init__()
        # n_heads, dim, head_dim and layer_id are not read here: kept only because the course's LlamaLayer has them
        self.n_heads = config.n_heads
        self.dim = config.dim
        self.head_dim = config.head_dim
        self.layer_id = layer_id
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config.dim, config.hidden_dim, config.multiple_of, config.dropout)
        self.attention_norm = RMSNorm(config.dim, eps=config.layer_norm_eps)
        self.ffn_norm = RMSNorm(config.dim, eps=config.layer_norm_eps)

    def forward(
        self, x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor] | None = None, start_pos: int = 0
    ) -> torch.Tensor:
        """The layer's output (batch, seqlen, dim) for x (batch, seqlen, dim) at positions start_pos…"""
        h = x + self.attention(self.attention_norm(x), freqs, start_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class LlamaPreTrainedModel(nn.Module):
    """Holds the config and the GPT-2 weight initialisation: N(0, 0.02) for every matrix, zero biases."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.params = config
        self.vocab_size = config.vocab_size
        self.n_layers = config.n_layers

    def init_weights(self) -> None:
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)


class Llama(LlamaPreTrainedModel):
    """Token embedding, n_layers decoder layers, a final RMSNorm and the output projection tied to the embedding."""

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(LlamaLayer(i, config) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, eps=config.layer_norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.tok_embeddings.weight = self.output.weight  # weight tying (Press & Wolf 2017)
        cos, sin = precompute_freqs(config.head_dim, config.max_seq_len)
        self.register_buffer("freqs_cos", cos, persistent=False)  # computed once, not part of the state dict
        self.register_buffer("freqs_sin", sin, persistent=False)
        self.init_weights()
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/√(2·n_layers)
            if name.endswith(("w3.weight", "compute_output.weight")):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    def forward(
        self, tokens: torch.Tensor, targets: torch.Tensor | None = None, start_pos: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of every position when targets are given (training), else of the last one only (batch, 1, vocab);
        and the final hidden states (batch, seqlen, dim). The tokens sit at positions start_pos… (a KV cache holds
        the keys and values of those before)."""
        h = self.dropout(self.tok_embeddings(tokens))
        freqs = (self.freqs_cos, self.freqs_sin)
        for layer in self.layers:
            h = layer(h, freqs, start_pos)
        h = self.norm(h)
        logits = self.output(h if targets is not None else h[:, [-1], :])  # [-1] keeps the position dimension
        return logits, h

    @torch.inference_mode()
    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
        use_cache: bool = True, on_token: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Append max_new_tokens tokens to idx (batch, seqlen): argmax at temperature 0.0, otherwise a sample from
        softmax(logits / temperature), from the top_k likeliest tokens when top_k is given. The model sees at most
        the last max_seq_len tokens. `on_token`, if given, is called with each new token (batch, 1) as it is drawn.

        Without a mask (the course's semantics) every position sees the newest token, so each step recomputes the
        whole context. A causal model keeps the keys and values of earlier positions in a KV cache (use_cache), so
        each step runs only the new token, until the window slides past max_seq_len and every position changes.
        """
        cached = use_cache and self.config.causal  # a cache is valid only where no position sees a later one
        start = 0  # the positions whose keys and values the cache holds
        if cached:
            self.setup_cache(min(idx.size(1) + max_new_tokens - 1, self.params.max_seq_len))
        try:
            for _ in range(max_new_tokens):
                idx_cond = idx
                if idx.size(1) > self.params.max_seq_len:  # crop the context; every position moved: all anew
                    idx_cond, start = idx[:, -self.params.max_seq_len:], 0
                logits, _ = self(idx_cond[:, start:], start_pos=start)
                start = idx_cond.size(1) if cached else 0
                idx_next = sample(logits[:, -1], temperature, top_k)
                idx = torch.cat((idx, idx_next), dim=1)
                if on_token:
                    on_token(idx_next)
        finally:
            self.clear_cache()
        return idx

    def setup_cache(self, positions: int | None = None) -> None:
        """Give every attention layer an empty KV cache for `positions` positions (default: max_seq_len), which
        later forward passes fill and read."""
        for layer in self.layers:
            layer.attention.cache = KVCache(positions or self.params.max_seq_len)

    def clear_cache(self) -> None:
        """Drop the KV caches, so that forward passes see only their own tokens again."""
        for layer in self.layers:
            layer.attention.cache = None


def sample(logits: torch.Tensor, temperature: float, top_k: int | None = None) -> torch.Tensor:
    """The next token (batch, 1) for logits (batch, vocab): greedy at temperature 0.0, else sampled from
    softmax(logits / temperature) over the top_k largest logits (all of them when top_k is None)."""
    if temperature == 0.0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth_largest = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, [-1]]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


def load_pretrained(checkpoint: str, causal: bool = False, device: str | torch.device | None = None) -> Llama:
    """Load a checkpoint strictly, in eval mode, on `device` (default: the CPU, as the course's does).

    causal=False computes the course's reference semantics (attention without a mask), causal=True Llama 2's
    (see LlamaConfig); the weights are the same. Reads the course's stories42M.pt, llama2.c train.py checkpoints,
    llama2.c legacy and version-1 `.bin` exports, and the Llama part of run_llama.py's fine-tuned classifiers
    (see checkpoint.py). A missing file is a files.InputError: fetching one is the caller's job (assets.ensure).
    """
    ckpt = read_llama(checkpoint, causal=causal)  # model_args checked, and the tensors' names and shapes
    model = Llama(ckpt.config)
    if not is_tied(ckpt.state_dict):
        model.output.weight = nn.Parameter(torch.empty_like(model.output.weight))  # the file has its own classifier
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.to(device or "cpu").eval()
