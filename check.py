"""A learner's companion: `python check.py [COMPONENT ...] [--impl DIR]` checks a course-shaped implementation (the
course's skeleton filled in) one component at a time against minllama and a float64 derivation, and says which
part differs, by how much, where, and which known mistake the output matches. `python check.py --start DIR` fetches
the course's skeleton (a pinned commit, each file's sha256, through assets.py) into DIR to begin with.

Components, in order, and the course API each one calls:

    rope        rope.apply_rotary_emb                         RoFormer (Su et al. 2021) §3.4
    rmsnorm     llama.RMSNorm                                 Zhang & Sennrich 2019, eq. 4
    attention   Attention.compute_query_key_value_scores      Vaswani et al. 2017, eq. 1 (the written-out formula)
    layer       LlamaLayer.forward
    model       Llama.forward, on random weights (and on stories42M.pt when it is in the repository root)
    generate    Llama.generate, greedy and at a temperature with a fixed seed
    adamw       optimizer.AdamW.step                          Loshchilov & Hutter 2019, alg. 2
    classifier  LlamaEmbeddingClassifier.forward
    zeroshot    LlamaZeroShotClassifier.forward

Each component is fed reference inputs, so a mistake in one fails that one and those built on it (`NEEDS`), never
an independent one: generate runs the student's loop on a scripted model, whose logits are a fixed function of the
tokens and positions. The inputs make the usual mistakes show: tiny activations (where eps sits matters), tiny
gradients (the bias correction's form and eps), head dims and positions that are not symmetric (RoPE's pairing),
padded rows (the position a classifier reads). Exit status: 0 when every component checked matches, 1 when one
differs, 2 when DIR cannot be imported (one line names the missing file or package).

A difference beyond a component's tolerance, but no more than ROUNDING times minllama's own float32 error from the
float64 derivation, is reported as a match within float32 rounding: two correct models that sum in another order
differ by that much, and sanity_check.py's fixed atol 1e-5 fails some correct implementations by 2.86e-5.

Placement: the student's modules are imported under their course names (llama, rope, config, optimizer, ...), which
minllama's own modules also have. So they are never imported into this process. check.py runs itself again as a
child process (`python -P check.py --child WORK`) with DIR as its working directory: -P keeps this repository off
the child's sys.path, PYTHONPATH is dropped, and DIR is put first. Parent and child exchange the inputs and outputs
as torch.save files in the temporary folder WORK. This module imports only torch and the standard library at its
top, which the child shares; minllama's modules are imported in the parent's functions only.
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent
SEED = 1337  # the check's draws, in parent and child alike (the child cannot import config: a student's has that name)
SIZES = dict(vocab_size=64, dim=48, dropout=0.0, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16,
             layer_norm_eps=1e-5, multiple_of=8, hidden_dim=None)  # head_dim 12: six rotary pairs
LABELS = {"great": [11], "awful": [12, 13]}  # zero-shot label names and the token ids a scripted tokenizer gives
PADDED = [[5, 9, 3, 17, 0, 0, 0], [7, 2, 8, 4, 6, 1, 30]]  # right-padded rows, as the course's batches are
ROUNDING = 4.0  # within float32 rounding: at most this many times the float32 reference's own error from float64


# ---- the child: the student's side, run with DIR first on sys.path and this repository off it ----

class Scripted(nn.Module):
    """A stand-in model for generate: the logits of every position (batch, seqlen, vocab) are table[token] +
    positions[t], a fixed function of the context; `first` returns the first position's logits at every position
    (the catalogue's mistake). Has what the course's and minllama's Llama.generate read of self."""

    def __init__(self, table: torch.Tensor, positions: torch.Tensor, first: bool = False):
        super().__init__()
        self.table, self.positions, self.first = table, positions, first
        self.params = self.config = SimpleNamespace(max_seq_len=positions.shape[0], causal=False)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None, start_pos: int = 0):
        logits = self.table[tokens] + self.positions[start_pos:start_pos + tokens.shape[1]]
        if self.first:
            logits = logits[:, :1].expand_as(logits)
        return logits, None

    def clear_cache(self) -> None:
        pass


class Labels:
    """A stand-in tokenizer for the zero-shot classifier: each label name's ids from LABELS."""

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return list(LABELS[text])


def student_config(sizes: dict):
    """The student's LlamaConfig (as their llama.py imports it) of these sizes."""
    import llama
    return llama.LlamaConfig(**sizes)


def run_rope(inp: dict) -> dict:
    import rope
    query, key = rope.apply_rotary_emb(inp["query"], inp["key"], inp["head_dim"], inp["max_seq_len"])
    return {"query": query, "key": key}


def run_rmsnorm(inp: dict) -> dict:
    import llama
    norm = llama.RMSNorm(inp["x"].shape[-1], eps=inp["eps"])
    norm.load_state_dict({"weight": inp["weight"]})
    return {"output": norm(inp["x"])}


def run_attention(inp: dict) -> dict:
    import llama
    attention = llama.Attention(student_config(inp["sizes"])).eval()
    return {"output": attention.compute_query_key_value_scores(inp["query"], inp["key"], inp["value"])}


def run_layer(inp: dict) -> dict:
    import llama
    layer = llama.LlamaLayer(0, student_config(inp["sizes"])).eval()
    layer.load_state_dict(inp["state_dict"])
    return {"output": layer(inp["x"])}


def run_model(inp: dict) -> dict:
    import llama
    model = llama.Llama(student_config(inp["sizes"])).eval()
    model.load_state_dict(inp["state_dict"], strict=False)  # a student's own buffers may be saved or not
    logits, h = model(inp["tokens"])
    outputs = {"logits": logits, "hidden_states": h}
    if inp.get("stories42M"):
        logits, h = llama.load_pretrained(inp["stories42M"])(inp["sent_ids"].to(logits.device))
        outputs |= {"stories42M logits": logits, "stories42M hidden_states": h}
    return outputs


def run_generate(inp: dict) -> dict:
    import llama
    outputs = {}
    for name, temperature in (("greedy", 0.0), ("sampled", inp["temperature"])):
        torch.manual_seed(inp["seed"])
        model = Scripted(inp["table"], inp["positions"])
        outputs[name] = llama.Llama.generate(model, inp["prompt"], inp["max_new_tokens"], temperature=temperature)
    return outputs


def run_adamw(inp: dict) -> dict:
    import optimizer
    params = [nn.Parameter(p.clone()) for p in inp["params"]]
    opt = optimizer.AdamW(params, **inp["hyper"])
    for grads in inp["grads"]:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return {f"param {i}": p.detach() for i, p in enumerate(params)}


def classifier_config(inp: dict) -> SimpleNamespace:
    """The settings run_llama.py gives the course's classifiers, with dropout that eval() turns off anyway."""
    return SimpleNamespace(pretrained_model_path=inp["checkpoint"], num_labels=len(LABELS), option="pretrain",
                           hidden_dropout_prob=0.0)


def run_classifier(inp: dict) -> dict:
    import classifier
    model = classifier.LlamaEmbeddingClassifier(classifier_config(inp)).eval()
    model.classifier_head.load_state_dict(inp["head"])
    return {"log-probabilities": model(inp["input_ids"])}


def run_zeroshot(inp: dict) -> dict:
    import classifier
    model = classifier.LlamaZeroShotClassifier(classifier_config(inp), Labels(), list(LABELS)).eval()
    return {"label scores": model(inp["input_ids"])}


CHILD_RUNS: dict[str, Callable[[dict], dict]] = {
    "rope": run_rope, "rmsnorm": run_rmsnorm, "attention": run_attention, "layer": run_layer, "model": run_model,
    "generate": run_generate, "adamw": run_adamw, "classifier": run_classifier, "zeroshot": run_zeroshot,
}
MODULE = {"rope": "rope", "adamw": "optimizer", "classifier": "classifier", "zeroshot": "classifier"}  # else llama


def one_line(e: BaseException) -> str:
    """An exception in one line, with the student's file and line where it was raised."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve().parent == Path.cwd()]
    where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""
    message = " ".join(str(e).split())
    return f"{type(e).__name__}{': ' + message if message else ''}{where}"


def unimportable(module: str, e: BaseException) -> str:
    """The line that says why the student's `module` cannot be imported."""
    missing = getattr(e, "name", None) if isinstance(e, ModuleNotFoundError) else None
    if missing is None:
        return f"{module}.py cannot be imported: {one_line(e)}"
    if (Path.cwd() / f"{missing}.py").exists() or "." in missing:
        return f"{module}.py cannot be imported: {one_line(e)}"
    if missing in ("requests", "importlib_metadata", "filelock", "sentencepiece", "tqdm"):
        return (f"{module}.py cannot be imported: it needs the package {missing}, which is not installed "
                f"(the course's utils.py imports it): pip install {missing}")
    return f"{module}.py cannot be imported: no {missing}.py in {Path.cwd()} and no package {missing} installed"


def child(work: Path) -> int:
    """The student's side: run each component on its inputs (work/inputs.pt), save the outputs (work/outputs.pt):
    a dict of tensors per component, or {"error": line}; or {"unimportable": line} for a module that cannot be
    imported."""
    sys.path.insert(0, str(Path.cwd()))
    torch.set_num_threads(1)
    inputs = torch.load(work / "inputs.pt", weights_only=False)
    outputs = {}
    for name, inp in inputs.items():
        module = MODULE.get(name, "llama")
        try:
            __import__(module)
        except Exception as e:
            outputs = {"unimportable": unimportable(module, e)}
            break
        torch.manual_seed(SEED)
        try:
            with torch.no_grad():
                outputs[name] = {k: v.detach().cpu() for k, v in CHILD_RUNS[name](inp).items()}
        except Exception as e:
            outputs[name] = {"error": one_line(e)}
    torch.save(outputs, work / "outputs.pt")
    return 0


# ---- the parent: reference inputs and outputs (minllama and float64), the comparison and the report ----

@dataclass
class Reference:
    """A component's inputs for the student, minllama's outputs, float64's, and each known mistake's outputs."""

    inputs: dict
    expected: dict[str, torch.Tensor]
    float64: dict[str, torch.Tensor]
    mistakes: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # hint → outputs


@dataclass(frozen=True)
class Component:
    """What a component checks: the function, the equation it implements, the tolerances, and how its reference is
    made (`reference(work)`)."""

    name: str
    function: str
    equation: str
    reference: Callable[[Path], Reference]
    atol: float = 1e-6
    rtol: float = 1e-5


def seeded(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rope64(x: torch.Tensor, theta: float = 10000.0, halves: bool = False) -> torch.Tensor:
    """RoFormer §3.4 in float64 on x (batch, seqlen, heads, head_dim): pair i, (x[2i], x[2i+1]), turns by p·θ_i,
    θ_i = θ^(−2i/d). halves=True pairs x[i] with x[i + d/2] instead (the catalogue's mistake)."""
    x = x.double()
    d = x.shape[-1]
    angles = torch.outer(torch.arange(x.shape[1], dtype=torch.float64),
                         theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d))[:, None, :]
    cos, sin = angles.cos(), angles.sin()
    a, b = x.chunk(2, -1) if halves else x.unflatten(-1, (-1, 2)).unbind(-1)
    turned = (a * cos - b * sin, a * sin + b * cos)
    return torch.cat(turned, -1) if halves else torch.stack(turned, -1).flatten(-2)


def rope_reference(work: Path) -> Reference:
    import rope
    g = seeded()
    query, key = torch.randn(2, 7, 4, 12, generator=g), torch.randn(2, 7, 2, 12, generator=g)
    q32, k32 = rope.apply_rotary_emb(query, key, 12, 16)
    return Reference(dict(query=query, key=key, head_dim=12, max_seq_len=16), {"query": q32, "key": k32},
                     {"query": rope64(query), "key": rope64(key)},
                     {"pairs of halves (x[i], x[i + d/2]) instead of interleaved pairs (x[2i], x[2i+1]): the course "
                      "and Llama turn adjacent pairs": {"query": rope64(query, halves=True),
                                                        "key": rope64(key, halves=True)}})


def rmsnorm64(x: torch.Tensor, weight: torch.Tensor, eps: float, outside: bool = False) -> torch.Tensor:
    """x / sqrt(mean(x²) + eps) · g (Zhang & Sennrich 2019, eq. 4) in float64; outside: x / (sqrt(mean(x²)) + eps)."""
    x, ms = x.double(), x.double().pow(2).mean(-1, keepdim=True)
    return x / (ms.sqrt() + eps if outside else (ms + eps).sqrt()) * weight.double()


def rmsnorm_reference(work: Path) -> Reference:
    from llama import RMSNorm
    g = seeded()
    x = torch.randn(3, 5, 48, generator=g) * 3e-3  # mean(x²) ≈ 1e-5 = eps: where eps sits shows
    weight, eps = 1 + 0.1 * torch.randn(48, generator=g), 1e-5
    norm = RMSNorm(48, eps=eps)
    norm.load_state_dict({"weight": weight})
    return Reference(dict(x=x, weight=weight, eps=eps), {"output": norm(x)}, {"output": rmsnorm64(x, weight, eps)},
                     {"eps outside the square root, x / (sqrt(mean(x²)) + eps): eq. 4 adds eps to mean(x²) inside "
                      "it": {"output": rmsnorm64(x, weight, eps, outside=True)}})


def attention64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool = False):
    """softmax(QKᵀ·scale + M)·V in float64, M = −∞ above the diagonal when causal, else 0."""
    scores = q.double() @ k.double().transpose(-2, -1) * scale
    if causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v.double()


def attention_reference(work: Path) -> Reference:
    from config import LlamaConfig
    from llama import Attention
    g = seeded()
    q, k, v = (torch.randn(2, 4, 7, 12, generator=g) * 2 for _ in range(3))  # scores of order 1: the scale shows
    attention = Attention(LlamaConfig(**SIZES)).eval()
    d = 12
    return Reference(dict(query=q, key=k, value=v, sizes=SIZES),
                     {"output": attention.compute_query_key_value_scores(q, k, v)},
                     {"output": attention64(q, k, v, 1 / math.sqrt(d))},
                     {"scores scaled by 1/d instead of 1/√d (eq. 1 divides QKᵀ by √d_k)":
                      {"output": attention64(q, k, v, 1 / d)},
                      "a causal mask applied: the course's reference attention has no mask, every position sees "
                      "every other (Llama 2 has one, minllama's LlamaConfig.causal, but sanity_check.data was "
                      "computed without)": {"output": attention64(q, k, v, 1 / math.sqrt(d), causal=True)}})


def reference_model(seed: int = SEED):
    """minllama's Llama of SIZES with random weights (GPT-2's initialisation, seeded), in eval mode."""
    from config import LlamaConfig
    from llama import Llama
    torch.manual_seed(seed)
    model = Llama(LlamaConfig(**SIZES)).eval()
    with torch.no_grad():  # norm weights away from 1, so that a norm that forgets its weight shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def layer64(state: dict[str, torch.Tensor], x: torch.Tensor, config, prefix: str = "") -> torch.Tensor:
    """LlamaLayer.forward derived in float64 from its weights: h = x + attention(norm(x)), out = h + w2(silu(w1·n) ⊙
    w3·n) with n = norm(h); the attention unmasked, its key/value heads shared by n_heads / n_kv_heads query heads."""
    def w(name: str) -> torch.Tensor:
        return state[prefix + name].double()
    batch, seqlen, dim = x.shape
    d = dim // config.n_heads
    a = rmsnorm64(x, w("attention_norm.weight"), config.layer_norm_eps)
    q, k, v = (a @ w(f"attention.compute_{n}.weight").T for n in ("query", "key", "value"))
    q, k = rope64(q.view(batch, seqlen, -1, d)), rope64(k.view(batch, seqlen, -1, d))
    k, v = (t.view(batch, seqlen, -1, d).repeat_interleave(config.n_heads // config.n_kv_heads, dim=2) for t in (k, v))
    o = attention64(*(t.transpose(1, 2) for t in (q, k, v)), 1 / math.sqrt(d)).transpose(1, 2).flatten(2)
    h = x + o @ w("attention.compute_output.weight").T
    n = rmsnorm64(h, w("ffn_norm.weight"), config.layer_norm_eps)
    return h + (F.silu(n @ w("feed_forward.w1.weight").T) * (n @ w("feed_forward.w3.weight").T)) @ \
        w("feed_forward.w2.weight").T


def llama64(state: dict[str, torch.Tensor], tokens: torch.Tensor, config) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama.forward derived in float64 from its weights: the logits of the last position and the final hidden
    states."""
    h = state["tok_embeddings.weight"].double()[tokens]
    for i in range(config.n_layers):
        h = layer64(state, h, config, f"layers.{i}.")
    h = rmsnorm64(h, state["norm.weight"], config.layer_norm_eps)
    return h[:, [-1]] @ state["output.weight"].double().T, h


def layer_reference(work: Path) -> Reference:
    model = reference_model()
    x = torch.randn(2, 7, 48, generator=seeded()) * 0.02  # of the embeddings' size: where eps sits shows
    state = {k: v.clone() for k, v in model.layers[0].state_dict().items()}
    with torch.no_grad():
        return Reference(dict(x=x, state_dict=state, sizes=SIZES), {"output": model.layers[0](x)},
                         {"output": layer64(state, x.double(), model.config)})


def model_reference(work: Path) -> Reference:
    from llama import load_pretrained
    from sanity_check import SENT_IDS
    model = reference_model()
    tokens = torch.randint(0, SIZES["vocab_size"], (2, 9), generator=seeded())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = dict(tokens=tokens, state_dict=state, sizes=SIZES)
    with torch.no_grad():
        logits, h = model(tokens)
        logits64, h64 = llama64(state, tokens, model.config)
        expected, float64 = {"logits": logits, "hidden_states": h}, {"logits": logits64, "hidden_states": h64}
        stories = REPO / "stories42M.pt"
        if stories.exists():
            big, ids = load_pretrained(str(stories), causal=False), torch.tensor(SENT_IDS)
            inputs |= dict(stories42M=str(stories), sent_ids=ids)
            logits, h = big(ids)
            logits64, h64 = llama64(big.state_dict(), ids, big.config)
            expected |= {"stories42M logits": logits, "stories42M hidden_states": h}
            float64 |= {"stories42M logits": logits64, "stories42M hidden_states": h64}
    return Reference(inputs, expected, float64)


def generate_reference(work: Path) -> Reference:
    from llama import Llama
    g = seeded()
    table, positions = torch.randn(SIZES["vocab_size"], SIZES["vocab_size"], generator=g) * 3, \
        torch.randn(8, SIZES["vocab_size"], generator=g) * 3  # max_seq_len 8: the context is cropped
    inputs = dict(table=table, positions=positions, prompt=torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]]),
                  max_new_tokens=6, temperature=0.8, seed=SEED)

    def run(first: bool) -> dict[str, torch.Tensor]:
        outputs = {}
        for name, temperature in (("greedy", 0.0), ("sampled", inputs["temperature"])):
            torch.manual_seed(SEED)
            outputs[name] = Llama.generate(Scripted(table, positions, first), inputs["prompt"], 6, temperature)
        return outputs

    expected = run(first=False)
    return Reference(inputs, expected, expected,
                     {"the logits of the first position read instead of the last (logits[:, -1]: the next token "
                      "follows the last one)": run(first=True)})


def adam64(params: list[torch.Tensor], grads: list[list[torch.Tensor]], hyper: dict,
           decay_first: bool = False, inefficient: bool = False) -> dict[str, torch.Tensor]:
    """AdamW (Loshchilov & Hutter 2019, alg. 2; Kingma & Ba 2015's efficient bias correction, α_t = lr·√(1−β2^t) /
    (1−β1^t)) in float64, the decay θ ← θ − lr·λ·θ after the step as the course has it. decay_first: decay before the
    step; inefficient: θ ← θ − lr·m̂/(√v̂ + ε) with m̂ = m/(1−β1^t), v̂ = v/(1−β2^t)."""
    lr, (b1, b2), eps, wd = hyper["lr"], hyper["betas"], hyper["eps"], hyper["weight_decay"]
    theta = [p.double().clone() for p in params]
    m, v = [torch.zeros_like(p) for p in theta], [torch.zeros_like(p) for p in theta]
    for t, step in enumerate(grads, 1):
        for i, g in enumerate(step):
            g = g.double()
            m[i], v[i] = b1 * m[i] + (1 - b1) * g, b2 * v[i] + (1 - b2) * g * g
            if decay_first:
                theta[i] = theta[i] * (1 - lr * wd)
            if inefficient:
                theta[i] = theta[i] - lr * (m[i] / (1 - b1**t)) / ((v[i] / (1 - b2**t)).sqrt() + eps)
            else:
                theta[i] = theta[i] - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m[i] / (v[i].sqrt() + eps)
            if not decay_first:
                theta[i] = theta[i] * (1 - lr * wd)
    return {f"param {i}": p for i, p in enumerate(theta)}


def adamw_reference(work: Path) -> Reference:
    from optimizer import AdamW
    g = seeded()
    params = [torch.randn(4, 6, generator=g), torch.randn(5, generator=g)]
    grads = [[torch.randn(p.shape, generator=g) * 1e-6 for p in params] for _ in range(5)]  # ≈ eps: its place shows
    hyper = dict(lr=0.1, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.5)  # a decay large enough for its order to show
    ours = [nn.Parameter(p.clone()) for p in params]
    opt = AdamW(ours, **hyper)
    for step in grads:
        for p, grad in zip(ours, step):
            p.grad = grad.clone()
        opt.step()
    return Reference(dict(params=params, grads=grads, hyper=hyper),
                     {f"param {i}": p.detach() for i, p in enumerate(ours)}, adam64(params, grads, hyper),
                     {"weight decay applied before the Adam step: the course decays the updated θ, after it":
                      adam64(params, grads, hyper, decay_first=True),
                      "the inefficient bias correction, lr·m̂/(√v̂ + ε): the course uses Kingma & Ba's efficient form, "
                      "α_t = lr·√(1−β2^t)/(1−β1^t), then α_t·m/(√v + ε)": adam64(params, grads, hyper,
                                                                                  inefficient=True)})


def saved_checkpoint(work: Path) -> str:
    """The random model of reference_model saved as the course's checkpoints are ({"model_args", "model"})."""
    path = work / "random.pt"
    if not path.exists():
        model = reference_model()
        torch.save({"model_args": dict(SIZES), "model": model.state_dict()}, path)
    return str(path)


def classifier_reference(work: Path) -> Reference:
    g = seeded()
    head = {"weight": torch.randn(len(LABELS), SIZES["dim"], generator=g),
            "bias": torch.randn(len(LABELS), generator=g)}
    ids = torch.tensor(PADDED)

    def read(h: torch.Tensor, column: int) -> dict[str, torch.Tensor]:
        logits = h[:, column] @ head["weight"].to(h.dtype).T + head["bias"].to(h.dtype)
        return {"log-probabilities": F.log_softmax(logits, dim=-1)}

    model = reference_model()
    with torch.no_grad():
        h, h64 = model(ids)[1], llama64(model.state_dict(), ids, model.config)[1]
        return Reference(dict(checkpoint=saved_checkpoint(work), head=head, input_ids=ids), read(h, -1),
                         read(h64, -1),
                         {"the hidden state of the first token read instead of the last column's (the course "
                          "reads the final position of each padded row)": read(h, 0)})


def zeroshot_reference(work: Path) -> Reference:
    ids = torch.tensor(PADDED)

    def scores(h: torch.Tensor, output: torch.Tensor, column: int) -> dict[str, torch.Tensor]:
        log_probs = F.log_softmax(h[:, column] @ output.to(h.dtype).T, dim=-1)
        return {"label scores": torch.stack([log_probs[:, tokens].sum(-1) for tokens in LABELS.values()], dim=-1)}

    model = reference_model()
    with torch.no_grad():
        h, h64, output = model(ids)[1], llama64(model.state_dict(), ids, model.config)[1], model.output.weight
        return Reference(dict(checkpoint=saved_checkpoint(work), input_ids=ids), scores(h, output, -1),
                         scores(h64, output, -1),
                         {"the logits of the first position read instead of the last (each label is scored as "
                          "the continuation of the whole prompt)": scores(h, output, 0)})


COMPONENTS: dict[str, Component] = {c.name: c for c in [
    Component("rope", "rope.apply_rotary_emb", "rotary position embeddings, RoFormer (Su et al. 2021) §3.4: pair "
              "(x[2i], x[2i+1]) at position p turns by p·θ^(−2i/d)", rope_reference, 1e-5, 1e-5),
    Component("rmsnorm", "llama.RMSNorm._norm and forward", "RMSNorm (Zhang & Sennrich 2019, eq. 4): "
              "x / sqrt(mean(x²) + eps) · g", rmsnorm_reference, 1e-5, 1e-5),
    Component("attention", "llama.Attention.compute_query_key_value_scores (the written-out formula)",
              "scaled dot-product attention (Vaswani et al. 2017, eq. 1): softmax(QKᵀ/√d)·V, no mask in the "
              "course's reference", attention_reference),
    Component("layer", "llama.LlamaLayer.forward", "h = x + attention(norm(x)); out = h + feed_forward(norm(h))",
              layer_reference, 1e-5, 1e-4),
    Component("model", "llama.Llama.forward", "logits of the last position and the final hidden states "
              "(sanity_check.py's tolerance: atol 1e-5, rtol 1e-3)", model_reference, 1e-5, 1e-3),
    Component("generate", "llama.Llama.generate", "argmax at temperature 0, else a sample from "
              "softmax(logits / temperature) (torch.multinomial after torch.manual_seed), the context cropped to "
              "max_seq_len", generate_reference, 0.0, 0.0),
    Component("adamw", "optimizer.AdamW.step", "AdamW (Loshchilov & Hutter 2019, alg. 2) with Kingma & Ba's "
              "efficient bias correction (2015, end of §2), the decay after the step", adamw_reference, 1e-6, 1e-5),
    Component("classifier", "classifier.LlamaEmbeddingClassifier.forward", "log_softmax(W·h + b), h the final "
              "hidden state at the last column", classifier_reference, 1e-5, 1e-4),
    Component("zeroshot", "classifier.LlamaZeroShotClassifier.forward", "Σ log p(t | prompt) over each label's "
              "tokens, from the logits of the last position", zeroshot_reference, 1e-5, 1e-4),
]}
NEEDS = {"layer": ["rope", "rmsnorm", "attention"], "model": ["layer"], "classifier": ["model"],
         "zeroshot": ["model"]}  # the components each one is built on (directly)


def close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], c: Component) -> bool:
    """Whether every tensor of got matches its namesake in want within the component's tolerances."""
    return all(k in got and got[k].shape == want[k].shape and
               torch.allclose(got[k].to(want[k].dtype), want[k], atol=c.atol, rtol=c.rtol) for k in want)


def largest(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> tuple[float, str, tuple]:
    """The largest |got − want| over all tensors, the tensor's name and the index where it occurs."""
    best = (-1.0, "", ())
    for k, w in want.items():
        diff = (got[k].double() - w.double()).abs()
        diff = torch.where(torch.isnan(diff), torch.inf, diff)
        index = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        best = max(best, (diff[index].item(), k, index), key=lambda b: b[0])
    return best


def side_by_side(got: torch.Tensor, want: torch.Tensor, want64: torch.Tensor, index: tuple) -> list[str]:
    """A few values around `index` along the last axis: yours, the reference, float64."""
    start = max(0, index[-1] - 1)
    rows = [f"    {'index':<16}{'yours':>14}{'reference':>14}{'float64':>14}"]
    for j in range(start, min(start + 4, got.shape[-1])):
        at = (*index[:-1], j)
        rows.append(f"    {str(list(at)):<16}{got[at].item():>14.6g}{want[at].item():>14.6g}{want64[at].item():>14.6g}")
    return rows


def report(c: Component, ref: Reference, got: dict) -> tuple[bool, list[str]]:
    """Whether the student's outputs match, and the lines that say so or say what differs."""
    head = f"{c.name}: {c.function}"
    if "error" in got:
        return False, [f"{head}: DIFFERS: it raised {got['error']}", f"  implements {c.equation}"]
    if (wrong := [k for k in ref.expected if k not in got or got[k].shape != ref.expected[k].shape]):
        k = wrong[0]
        shape = tuple(got[k].shape) if k in got else "nothing"
        return False, [f"{head}: DIFFERS: {k} has shape {shape}, expected {tuple(ref.expected[k].shape)}",
                       f"  implements {c.equation}"]
    diff, name, index = largest(got, ref.expected)
    if close(got, ref.expected, c):
        return True, [f"{head}: matches (largest difference {diff:.3g} over {', '.join(ref.expected)})"]
    own = largest(ref.expected, ref.float64)[0]
    diff64 = largest(got, ref.float64)[0]
    if diff64 <= ROUNDING * own and own > 0:
        return True, [f"{head}: matches within float32 rounding: it differs from minllama by {diff:.3g} (beyond "
                      f"atol {c.atol:g}, rtol {c.rtol:g}), but from the float64 model by {diff64:.3g}, no more than "
                      f"{ROUNDING:g}× minllama's own float32 error {own:.3g}: both are correct models, rounded "
                      "differently (sums in another order); a check with a fixed atol can fail on this alone"]
    lines = [f"{head}: DIFFERS", f"  implements {c.equation}",
             f"  largest difference {diff:.3g} in {name} at {list(index)} (tolerance atol {c.atol:g}, rtol {c.rtol:g})"]
    if got[name].dtype.is_floating_point:
        lines += side_by_side(got[name], ref.expected[name], ref.float64[name], index)
    else:
        row = index[0]
        lines += [f"    yours     {got[name][row].tolist()}", f"    reference {ref.expected[name][row].tolist()}"]
    lines += [f"  likely mistake: {hint}" for hint, outputs in ref.mistakes.items() if close(got, outputs, c)]
    return False, lines


def run_child(impl: Path, work: Path) -> dict:
    """Run the student's side (`child`) in a process of its own, in impl, with this repository off its path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-P", str(Path(__file__).resolve()), "--child", str(work)], cwd=impl,
                            env=env, capture_output=True, text=True)
    if result.returncode != 0 or not (work / "outputs.pt").exists():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise Unimportable(f"{impl}: the check of its modules stopped (exit status {result.returncode}): {last}")
    return torch.load(work / "outputs.pt", weights_only=False)


class Unimportable(Exception):
    """DIR cannot be imported: reported in one line, exit status 2."""


def check(names: list[str], impl: Path) -> int:
    """Check the components `names` of the implementation in impl; print the report; return the exit status."""
    if not impl.is_dir():
        raise Unimportable(f"{impl}: {'not a folder' if impl.exists() else 'no such folder'}")
    if missing := sorted({f"{MODULE.get(n, 'llama')}.py" for n in names} -
                         {p.name for p in impl.iterdir()}):
        raise Unimportable(f"{impl}: no {', '.join(missing)} (a course-shaped implementation holds llama.py, "
                           "rope.py, optimizer.py and classifier.py, with the course's helper files)")
    with tempfile.TemporaryDirectory(prefix="minllama-check-") as tmp:
        work = Path(tmp)
        refs = {n: COMPONENTS[n].reference(work) for n in names}
        torch.save({n: ref.inputs for n, ref in refs.items()}, work / "inputs.pt")
        outputs = run_child(impl, work)
    if "unimportable" in outputs:
        raise Unimportable(f"{impl}: {outputs['unimportable']}")
    results = {n: report(COMPONENTS[n], refs[n], outputs[n]) for n in names}
    differ = [n for n in names if not results[n][0]]
    if differ:
        print(f"differs: {', '.join(differ)} (first: {differ[0]}); matches: "
              f"{', '.join(n for n in names if n not in differ) or 'none'}")
    for n in names:
        print("\n".join(results[n][1]))
        if not results[n][0] and (under := [m for m in NEEDS.get(n, []) if m in differ]):
            print(f"  it is built on {', '.join(under)}, which differ{'s' if len(under) == 1 else ''} too: "
                  "fix that first")
    if not differ:
        print(f"every component checked matches ({', '.join(names)})")
    return 1 if differ else 0


def start(folder: Path) -> int:
    """Fetch the course's skeleton into folder (assets.fetch_skeleton) and say what to do next."""
    import assets
    import files
    if problem := files.output_problem(folder, folder=True):
        raise files.InputError(f"--start {folder}: {problem}")
    files.make_folders(folder)
    fetched = assets.fetch_skeleton(folder)
    kept = sorted(set(assets.SKELETON) - set(fetched))
    print(f"{folder}: fetched {len(fetched)} of the course's files" +
          (f"; kept your own {', '.join(kept)}" if kept else "") +
          f". Fill in the #todo parts, then: python {Path(__file__).name} --impl {folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("components", nargs="*", metavar="COMPONENT",
                        help=f"What to check (default: all, in order): {', '.join(COMPONENTS)}.")
    parser.add_argument("--impl", type=Path, default=REPO, metavar="DIR",
                        help="The folder of the course-shaped implementation to check (default: this project).")
    parser.add_argument("--start", type=Path, metavar="DIR",
                        help="Fetch the course's skeleton files into DIR (those it does not hold yet) and stop.")
    args = parser.parse_args(argv)
    if unknown := [n for n in args.components if n not in COMPONENTS]:
        parser.error(f"unknown component(s) {', '.join(unknown)}; known: {', '.join(COMPONENTS)}")
    if args.start:
        return start(args.start)
    names = [n for n in COMPONENTS if n in args.components] if args.components else list(COMPONENTS)
    try:
        return check(names, args.impl.resolve())
    except Unimportable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:  # the student's side (see the module docstring)
        sys.exit(child(Path(sys.argv[2])))
    import files
    files.cli(main)
