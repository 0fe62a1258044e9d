"""Hyperparameters of the Llama 2 architecture, as stored in a checkpoint's `model_args`, and its semantics."""
import sys
from dataclasses import dataclass, fields

# model_args that the course's LlamaConfig accepts and that change nothing here: key -> the only value allowed
IGNORED_COURSE_ARGS = {"use_cache": None, "position_embedding_type": "rotary"}


def swiglu_hidden_dim(dim: int, multiple_of: int) -> int:
    """llama2.c's SwiGLU width: two thirds of 4·dim (three matrices instead of two), rounded up to multiple_of."""
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def drop_ignored_course_args(model_args: dict, source: str) -> dict:
    """model_args without the IGNORED_COURSE_ARGS keys, with a one-line notice naming those it drops."""
    ignored = sorted(key for key in IGNORED_COURSE_ARGS if key in model_args)
    for key in ignored:
        value, allowed = model_args[key], IGNORED_COURSE_ARGS[key]
        if allowed is not None and value != allowed:
            raise ValueError(f"{source}: model_args {key}={value!r}: only {allowed!r} is implemented")
    if ignored:
        print(f"note: {source}: model_args {ignored} are not used by this implementation; ignored", file=sys.stderr)
    return {key: value for key, value in model_args.items() if key not in IGNORED_COURSE_ARGS}


@dataclass
class LlamaConfig:
    """Sizes of a Llama model (the defaults are the course's stories42M) and which attention it computes.

    causal=False is the course's reference: every position attends to every other, with no mask of any kind (that
    is what produced the course's sanity_check.data and its published figures). causal=True is Llama 2 as
    llama2.c and transformers compute it: position t attends to positions ≤ t only.
    """

    vocab_size: int = 32000
    dim: int = 512
    dropout: float = 0.0
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int | None = 8  # None: n_heads (no grouping)
    max_seq_len: int = 1024
    layer_norm_eps: float = 1e-5
    multiple_of: int = 32
    hidden_dim: int | None = None
    causal: bool = False

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len", "multiple_of"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LlamaConfig.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_dim is not None and self.hidden_dim <= 0:
            raise ValueError(f"LlamaConfig.hidden_dim must be positive, got {self.hidden_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LlamaConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"LlamaConfig.layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if self.dim % self.n_heads:
            raise ValueError(f"LlamaConfig.dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"LlamaConfig.n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim = dim / n_heads = {self.head_dim} must be even for rotary pairs")
        if not isinstance(self.causal, bool):
            raise ValueError(f"LlamaConfig.causal must be True or False, got {self.causal!r}")
        if self.hidden_dim is None:
            self.hidden_dim = swiglu_hidden_dim(self.dim, self.multiple_of)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_model_args(cls, model_args: dict, source: str = "model_args", **overrides) -> "LlamaConfig":
        """Build a config from a checkpoint's `model_args` and `overrides` (e.g. causal=True).

        Keys of the course's LlamaConfig that change nothing here (IGNORED_COURSE_ARGS) are dropped with a one-line
        notice; any other unknown key, or such a key with a value this model does not implement, is an error.
        """
        args = {**drop_ignored_course_args(model_args, source), **overrides}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"{source}: unknown model_args {unknown}; expected a subset of {sorted(known)}")
        return cls(**args)
