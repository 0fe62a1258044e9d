"""The configurations every other module reads: the Llama 2 architecture's hyperparameters, as stored in a
checkpoint's `model_args`, and its semantics (LlamaConfig); what run_llama.py tells a classifier (ClassifierConfig);
and the attention projections LoRA may adapt. This module imports no other module of the project.
"""
import math
import os
import reprlib
import sys
import typing
from dataclasses import dataclass, fields

DEFAULT_CHECKPOINT = "stories42M.pt"  # the course's pretrained model
DEFAULT_TOKENIZER = "tokenizer.model"  # Llama 2's sentencepiece model
DEFAULT_SEED = 1337  # the course's seed
ATTENTION_PROJECTIONS = ("compute_query", "compute_key", "compute_value", "compute_output")
DEFAULT_TARGETS = ("compute_query", "compute_value")  # LoRA's targets by default: the paper's choice (§7.1, Table 5)
# model_args that the course's LlamaConfig accepts and that change nothing here: key -> the only value allowed
IGNORED_COURSE_ARGS = {"use_cache": None, "position_embedding_type": "rotary"}
# RMSNorm's eps: from float32's smallest normal number (RMSNorm normalises in float32, where a smaller eps is lost
# or subnormal) to 0.1, 10⁴ times Llama 2's 1e-5 (a larger one outweighs the mean square it is added to, and the
# normalised vectors shrink towards 0: 1e308 makes every one of them 0, and every logit equal)
NORM_EPS_RANGE = (2.0**-126, 0.1)
_SHOWN = reprlib.Repr()  # a value in a message: a few levels, items and characters, in bounded time whatever it is
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 3, 60, 60, 60


def shown(value: object) -> str:
    """repr(value) cut short (reprlib), for a message: a file's value may be huge, nested, or a list holding the
    same list twice at each of 64 levels, whose repr would never end."""
    return _SHOWN.repr(value)


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
            raise ValueError(f"{source}: model_args {key}={shown(value)}: only {allowed!r} is implemented")
    if ignored:
        print(f"note: {source}: model_args {ignored} are not used by this implementation; ignored", file=sys.stderr)
    return {key: value for key, value in model_args.items() if key not in IGNORED_COURSE_ARGS}


def fits_type(value: object, hint: object) -> bool:
    """Whether `value` is of the type `hint`: int, float (an int too, but not NaN or infinity), bool, str, a union
    of them with None, or tuple[one of them, ...]."""
    if typing.get_origin(hint) is tuple:
        return isinstance(value, tuple) and all(fits_type(item, typing.get_args(hint)[0]) for item in value)
    kinds = typing.get_args(hint) or (hint,)
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, kinds) or float in kinds and isinstance(value, int)


def memory_bytes() -> float:
    """The machine's physical memory in bytes, which no single allocation can exceed; infinity where the system
    does not say (os.sysconf is POSIX's)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return math.inf


def lora_problem(rank: int, alpha: float, dropout: float) -> str | None:
    """What is out of range in LoRA's hyperparameters (Hu et al. 2021, eq. 3, h = W0·x + (α/r)·B·A·dropout(x)),
    naming the one at fault: the rank r must be at least 1, α positive and finite, the dropout in [0, 1)."""
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        return f"lora_rank must be at least 1, got {rank!r}"
    if not 0.0 < alpha < math.inf:
        return f"lora_alpha must be a positive number, got {alpha!r}"
    if not 0.0 <= dropout < 1.0:
        return f"lora_dropout must be in [0, 1), got {dropout!r}"
    return None


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
        if not NORM_EPS_RANGE[0] <= self.layer_norm_eps <= NORM_EPS_RANGE[1]:
            raise ValueError(f"LlamaConfig.layer_norm_eps must be in [{NORM_EPS_RANGE[0]:.3g}, {NORM_EPS_RANGE[1]}] "
                             f"(NORM_EPS_RANGE), got {self.layer_norm_eps}")
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
    def from_model_args(cls, model_args: object, source: str = "model_args", **overrides) -> "LlamaConfig":
        """The one check of a checkpoint's `model_args`, and the config they describe, with `overrides` (e.g.
        causal=True): a dict of this class's fields, each of its field's type (an int is no bool, a float is
        finite), in range (__post_init__), and with rotary tables that fit in this machine's memory, so that an
        absurd size is refused before anything is allocated. Keys of the course's LlamaConfig that change nothing
        here (IGNORED_COURSE_ARGS) are dropped with a one-line notice. A model saved as causal (causal=True, as
        run_llama.py --causal saves a classifier it trains) is refused in the course's semantics (overrides
        causal=False), which would silently compute another function of its weights; a model saved without the mask
        may be run with it (causal=True), as Llama 2 computes it. Every refusal is a ValueError naming `source`.
        """
        if not isinstance(model_args, dict) or not all(isinstance(key, str) for key in model_args):
            raise ValueError(f"{source}: model_args is a {type(model_args).__name__}, not a dict of named sizes")
        args = drop_ignored_course_args(model_args, source)
        types = typing.get_type_hints(cls)
        unknown = sorted(args.keys() - types.keys())
        if unknown:
            raise ValueError(f"{source}: unknown model_args {shown(unknown)}; expected a subset of {sorted(types)}")
        for key, value in args.items():
            if not fits_type(value, types[key]):
                expected = getattr(types[key], "__name__", str(types[key]))
                raise ValueError(f"{source}: model_args {key}={shown(value)} is not a finite {expected}")
        if args.get("causal") is True and overrides.get("causal") is False:
            raise ValueError(f"{source} was saved as a causal model (model_args causal=True): pass --causal "
                             "(causal=True); without it, its weights would compute what they were not trained to")
        try:
            config = cls(**{**args, **overrides})
        except ValueError as e:
            raise ValueError(f"{source}: bad model sizes: {e}") from None
        rotary_bytes = 4 * config.max_seq_len * config.head_dim  # cos and sin, (max_seq_len, head_dim / 2) float32
        if rotary_bytes > memory_bytes():
            raise ValueError(f"{source}: model_args max_seq_len={config.max_seq_len}: the rotary tables of that many "
                             f"positions would take {rotary_bytes / 2**30:.3g} GiB, more than this machine's memory")
        return config


@dataclass
class ClassifierConfig:
    """What run_llama.py tells a classifier: the pretrained checkpoint, the number of labels, and, for the
    fine-tuned head, the dropout before it and what trains besides the head: all of Llama ("finetune"), nothing
    ("pretrain"), or LoRA adapters of rank lora_rank on Llama's attention projections lora_targets ("lora")."""

    pretrained_model_path: str
    num_labels: int
    hidden_dropout_prob: float = 0.3
    option: str = "finetune"
    lora_rank: int = 4
    lora_alpha: float = 1.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    causal: bool = False

    @classmethod
    def of(cls, config: object) -> "ClassifierConfig":
        """A ClassifierConfig from any object with these attributes, such as the course's SimpleNamespace; missing
        ones take their defaults, and attributes of other names are not read."""
        if isinstance(config, cls):
            return config
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)})
