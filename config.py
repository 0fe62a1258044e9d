"""Hyperparameters of the Llama 2 architecture, as stored in a checkpoint's `model_args`."""
from dataclasses import dataclass, fields


@dataclass
class LlamaConfig:
    """Sizes of a Llama model. The defaults are those of the course's stories42M checkpoint."""

    vocab_size: int = 32000
    dim: int = 512
    dropout: float = 0.0
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int = 8
    max_seq_len: int = 1024
    layer_norm_eps: float = 1e-5
    multiple_of: int = 32
    hidden_dim: int | None = None

    def __post_init__(self) -> None:
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
        if self.hidden_dim is None:
            # llama2.c: two thirds of 4·dim (SwiGLU has three matrices), rounded up to a multiple of multiple_of
            hidden = int(2 * (4 * self.dim) / 3)
            self.hidden_dim = self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_model_args(cls, model_args: dict, source: str = "model_args") -> "LlamaConfig":
        """Build a config from a checkpoint's `model_args`; an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(model_args) - known)
        if unknown:
            raise ValueError(f"{source}: unknown model_args {unknown}; expected a subset of {sorted(known)}")
        return cls(**model_args)
