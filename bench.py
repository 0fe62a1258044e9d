"""minllama against Hugging Face transformers on the CPU, measured in the same run.

    python bench.py                                   # every workload, about 12 minutes on 2 cores
    python bench.py --workloads generate --rounds 5   # some of them, with more samples
    python bench.py --workloads generate finetune --baseline ../old   # against another checkout of minllama
    python bench.py --workloads llama2c              # against llama2.c's C code only

Every model holds the same random weights of stories42M's shapes (LlamaConfig's defaults); transformers gets them
through convert.to_hf. Each workload × implementation runs in a fresh subprocess, so that its peak RSS
(getrusage's ru_maxrss, its high-water mark reset once the models are built) is its own, and the implementations
take turns, round after round and in a new random order each round, so that all see the same machine. The table
gives medians, and beside each ratio the lowest and highest of the rounds' ratios; a sample during which other
processes used the CPU is left out of them ("clean samples" counts the rest). The subprocesses run with glibc's
malloc settings MALLOC (see there) unless --default-malloc.

minllama runs in both semantics: "causal" (--causal: Llama 2, what transformers computes, so the comparison
with transformers is made there) and "course" (the default: the course's reference, attention without a mask).
With --baseline DIR, the causal generate, finetune and zeroshot workloads also run from DIR, another checkout of
minllama (say a `git worktree` of an older commit) whose bench.py has the same --child interface, taking turns with
the rest: the table adds a row "this / baseline" for each, with the lowest and highest of the rounds' ratios, which
shows whether a change made minllama slower and how far one round's processes differ from the next's.

Workloads (batch sizes are the course's):
  llama2c    tokens/s of greedy decoding, batch 1, 256 new tokens after the course's PREFIX: causal minllama against
             llama2.c's run.c (llama2c/run.c, a known asset), built in a temporary folder as its Makefile builds
             `runomp` (RUNOMP_BUILD, with $CC or cc) and run on the same weights, written as a legacy version-0 .bin,
             with OMP_NUM_THREADS=--threads and -t 0 (greedy). runomp's figure is the "achieved tok/s" it prints:
             its steps after the first over the time since the first (the prompt is fed one position a step, so
             every step costs the same). minllama's "decode" is counted alike, its steps after the first new token
             (drawn at the end of the prompt's one forward pass) over the time since it; its "call" row is all
             new tokens over the whole generate call, the prompt and the stacked copies included. Neither counts
             process start or loading. A shared host's memory bandwidth can drift by 1.5× within minutes, for
             both (BENCHMARKS.md), so each child (a round) holds the model and calls generate and runomp in turn,
             pair by pair: the table gives the median of the pairs' ratios, and the lowest and highest of the
             rounds' medians. Without a C compiler the rows are left out, with one line saying so.
  generate   tokens/s of greedy continuations of the course's PREFIX by exactly 75 and 256 new tokens, batch 1:
             causal minllama with its KV cache, transformers' generate (cached), and in one process, course
             minllama (which recomputes the context at every step, as it must without a mask, less layer 0's
             queries, keys and values) and causal minllama's plain loop (use_cache=False), a pair of calls taking
             turns token by token (in_turns, by greenlet: at a call's time scale this host's speed swings by 20%,
             at a step's far less). The table gives the median of the pairs' ratios, with the lowest and highest
             (and, for both, the peak RSS of the two models together)
  finetune   examples/s of one training step on 80 × 64 tokens, forward + backward + AdamW: classifier.py's
             LlamaEmbeddingClassifier + optimizer.AdamW in both semantics, against transformers' LlamaModel +
             nn.Linear head + torch.optim.AdamW
  zeroshot   examples/s of scoring 10 × 64 tokens, the vocabulary projected at one position per row:
             classifier.py's LlamaZeroShotClassifier in both semantics, against LlamaForCausalLM(logits_to_keep=1)
  epoch      seconds per training epoch over the first 800 sentences of data/sst-train.txt at batch 80, by
             run_llama's own LlamaDataset (splits.py) and train_epoch (trainer.py), course semantics, without and
             with --group_by_length
  first      a process's first generate call against its second, 20 greedy tokens after a 3-token prompt, in
             both semantics: the first pays once what a process sets up (the few-row kernel's timing)
  record     microseconds per epoch record added to a metrics.jsonl of 10 and of 10,000 earlier lines, in the
             current folder's file system: metrics.append against the whole-file rewrite it replaced

Needs transformers and greenlet (requirements-test.txt), and the public files each workload reads (NEEDS), fetched
as run_llama.py does, or read from $MINLLAMA_ASSET_MIRROR: one that cannot be had is one line, before any work, that
names it and the workload. Not part of the test suite.
"""
import argparse
import ctypes
import gc
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from metrics import machine

WORKLOADS = {  # workload -> its implementations, in the order they take turns
    "llama2c": ("causal",),  # with runomp, called in turn by the same child
    "generate": ("causal", "recompute", "transformers"),
    "finetune": ("causal", "course", "transformers"),
    "zeroshot": ("causal", "course", "transformers"),
    "epoch": ("random", "grouped"),
    "first": ("course", "causal"),
    "record": ("append", "rewrite"),
}
BASELINE_WORKLOADS = ("generate", "finetune", "zeroshot")  # those that --baseline runs from the other checkout too
# rounds of fresh processes: zero-shot speeds vary by ±5–10% from one process to the next here, and it is quick
ROUNDS = {"llama2c": 5, "generate": 3, "finetune": 3, "zeroshot": 6, "epoch": 3, "first": 5, "record": 3}
GEN_TOKENS = (75, 256)
FIRST_PROMPT, FIRST_TOKENS = 3, 20  # the first workload: 20 new tokens after the prompt's first 3 tokens
DECODE_TOKENS = 256  # the llama2c workload
RUNOMP_BUILD = ["-Ofast", "-fopenmp", "-march=native", "run.c", "-lm", "-o", "runomp"]  # llama2.c's Makefile
FINETUNE_BATCH, ZEROSHOT_BATCH, SEQLEN = 80, 10, 64
EPOCH_SENTENCES, EPOCH_BATCH = 800, 80
RECORD_LINES, RECORDS = (10, 10_000), 200  # the record workload: earlier lines of metrics.jsonl, records timed
NUM_LABELS = 5  # SST-5
LR = 2e-5
# glibc's malloc hands blocks of more than a few MB back to the OS when they are freed, and the next batch page-faults
# them in again. How often depends on what the process did before (one that built minllama's model to convert it
# behaves differently from one that did not), which moved zero-shot speeds by ±20% from one process to the next
# here. With these settings neither implementation page-faults in steady state. Linux (glibc) only.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}
NEEDS = {  # workload -> the public files it reads (asset)
    "llama2c": ("llama2c/run.c", "llama2c/tokenizer.bin", "tokenizer.model"),
    "generate": ("tokenizer.model",),
    "finetune": (),
    "zeroshot": ("tokenizer.model", "data/sst-label-mapping.json"),
    "epoch": ("tokenizer.model", "data/sst-train.txt"),
    "first": ("tokenizer.model",),
    "record": (),
}


def asset(name: str) -> Path:
    """A public file the benchmark reads: from $MINLLAMA_ASSET_MIRROR if set, else where run_llama.py keeps it
    (fetched if missing). One the mirror lacks, or holds as anything but a file, is an InputError naming it."""
    import assets
    import files

    mirror = os.environ.get(assets.MIRROR_ENV)
    if not mirror:
        return assets.ensure(name)
    path = assets.mirror_entry(mirror, assets.ASSETS[name])  # the mirror's check, as fetching makes it
    if not path.exists():
        raise files.InputError(f"{path} is missing (the mirror {assets.MIRROR_ENV}={mirror})")
    return path


def missing_asset(workloads: list[str]) -> str | None:
    """Why one of the public files these workloads read cannot be had (asset), naming the workload; or None."""
    import files

    for workload in workloads:
        for name in NEEDS[workload]:
            try:
                asset(name)
            except files.InputError as e:
                return f"the {workload} workload needs {name}: {e}"
    return None


def at_least_one(text: str) -> int:
    """An argparse type: a whole number of at least 1 (rounds, repeats, threads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (ru_maxrss is in kB on Linux, in bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def reset_peak_rss() -> bool:
    """Lower the high-water mark of the RSS to the current RSS (Linux ≥ 4.0), so that what was built and freed
    before a workload does not count in its peak. False where this cannot be done."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc: give freed memory back first (under MALLOC it is kept)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def busy_ticks() -> tuple[int, float]:
    """CPU time used so far by the whole machine and by this process and its children, in clock ticks (Linux;
    zeros elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0, 0.0
    own = os.times()  # with the children waited for (runomp)
    own_seconds = own.user + own.system + own.children_user + own.children_system
    return sum(fields) - fields[3] - fields[4], own_seconds * os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], Any]) -> tuple[Any, float, bool]:
    """fn()'s result, the seconds it took, and whether other processes used a noticeable share of the CPU
    meanwhile (then the sample is "contested": on a shared machine those are the outliers)."""
    machine0, own0 = busy_ticks()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    machine1, own1 = busy_ticks()
    capacity = seconds * os.cpu_count() * os.sysconf("SC_CLK_TCK")
    return result, seconds, (machine1 - machine0) - (own1 - own0) > max(3, 0.1 * capacity)


def random_batch(batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids (batch_size, SEQLEN) from the vocabulary (beyond the special tokens), their lengths, labels."""
    g = torch.Generator().manual_seed(seed)
    token_ids = torch.randint(3, 32000, (batch_size, SEQLEN), generator=g)
    labels = torch.randint(0, NUM_LABELS, (batch_size,), generator=g)
    return token_ids, torch.full((batch_size,), SEQLEN), labels


def hf_llama(checkpoint: str):
    """transformers' LlamaForCausalLM with the checkpoint's weights (minllama's copy is freed again)."""
    from convert import to_hf
    from llama import load_pretrained

    hf = to_hf(load_pretrained(checkpoint, causal=True))
    hf.generation_config.eos_token_id = None  # generate exactly max_new_tokens, as minllama does
    hf.generation_config.pad_token_id = 0
    return hf


# ---- the workloads, each run in a child process; each returns its samples ----
def prefix_tokens() -> torch.Tensor:
    """The course's PREFIX (options.py) as token ids (1, seqlen), with the BOS token."""
    from options import PREFIX
    from tokenizer import Tokenizer

    return torch.tensor([Tokenizer(tokenizer_model=str(asset("tokenizer.model"))).encode(PREFIX, True, False)])


def bench_llama2c(impl: str, checkpoint: str, repeats: int) -> dict:
    """The llama2c workload in one process: `repeats` pairs of a generate call of causal minllama and a run of
    runomp (built and given the weights beside the checkpoint, by the parent), the two in random order within each
    pair, so that both sides of a pair see the same moment of the machine. minllama's samples are, per call, its
    steps after the first new token over the time since that token ("decode", as runomp counts) and all new tokens
    over the whole call, prompt and set-up included ("call"); runomp's the "achieved tok/s" it prints."""
    from fast import install
    from llama import load_pretrained
    from options import PREFIX

    prompt = prefix_tokens()
    folder = Path(checkpoint).parent
    model = install(load_pretrained(checkpoint, causal=True))
    reset_peak_rss()
    model.generate(prompt, 8, temperature=0.0)  # warm-up
    result: dict[str, Any] = {"decode": [], "call": [], "runomp": [], "runomp_peak_rss_mb": 0.0}

    def ours() -> None:
        drawn: list[float] = []  # when each new token was drawn
        tokens, seconds, contested = timed(lambda: model.generate(
            prompt, DECODE_TOKENS, temperature=0.0, on_token=lambda _: drawn.append(time.perf_counter())))
        result["decode"].append(((DECODE_TOKENS - 1) / (drawn[-1] - drawn[0]), contested))
        result["call"].append((DECODE_TOKENS / seconds, contested))
        result["tokens"] = tokens[0, prompt.shape[1]:].tolist()

    def theirs() -> None:
        run = run_runomp(folder / "runomp", Path(checkpoint).with_suffix(".bin"), PREFIX, prompt.shape[1], 1,
                         torch.get_num_threads())
        result["runomp"] += run["decode"]
        result["runomp_peak_rss_mb"] = max(result["runomp_peak_rss_mb"], run["peak_rss_mb"])

    for _ in range(repeats):
        for side in random.sample([ours, theirs], 2):
            side()
    return result


def in_turns(*calls: Callable[[Callable[[Any], None]], Any]) -> list[tuple[Any, float]]:
    """Run the calls, each given an on_token callback, taking turns token by token; return each one's result and
    the seconds it ran. Each token of one call is computed right after one of every other's, so all see the same
    moments of the machine. The calls run as greenlets in this thread, inside inference mode (which each may enter
    and leave in turn): threads would each bring their own OpenMP team, and with more threads than cores every
    parallel region's barrier slows (by ~20% here)."""
    from greenlet import getcurrent, greenlet

    scheduler = getcurrent()
    workers = [greenlet(partial(call, lambda _: scheduler.switch())) for call in calls]
    results, seconds = [None] * len(calls), [0.0] * len(calls)
    with torch.inference_mode():
        while not all(worker.dead for worker in workers):
            for i, worker in enumerate(workers):
                if not worker.dead:
                    start = time.perf_counter()
                    value = worker.switch()  # runs until its next token, or to its end
                    seconds[i] += time.perf_counter() - start
                    if worker.dead:
                        results[i] = value
    return list(zip(results, seconds))


def bench_generate(impl: str, checkpoint: str, repeats: int) -> dict:
    """Samples of "generate N" (tokens/s) and "tokens N" for N in GEN_TOKENS; for impl "recompute" two sets, "course
    …" and "plain …", the course's semantics and the causal plain loop taking turns token by token (in_turns)."""
    from fast import install
    from llama import load_pretrained

    prompt = prefix_tokens()
    if impl == "transformers":
        model = hf_llama(checkpoint)
        mask = torch.ones_like(prompt)
        generators = {"": lambda n, _: model.generate(prompt, attention_mask=mask, max_new_tokens=n,
                                                      min_new_tokens=n, do_sample=False)}
    elif impl == "causal":
        model = install(load_pretrained(checkpoint, causal=True))
        generators = {"": lambda n, _: model.generate(prompt, n, temperature=0.0)}
    else:  # both recompute the context at each step, so that their ratio is measured token by token
        course, plain = install(load_pretrained(checkpoint)), install(load_pretrained(checkpoint, causal=True))
        generators = {"course ": lambda n, on_token: course.generate(prompt, n, temperature=0.0, on_token=on_token),
                      "plain ": lambda n, on_token: plain.generate(prompt, n, temperature=0.0, use_cache=False,
                                                                   on_token=on_token)}
    reset_peak_rss()
    for generate in generators.values():
        generate(8, None)  # warm-up
    result: dict[str, list] = {}
    for n in GEN_TOKENS:
        for _ in range(repeats if impl != "recompute" or n < 100 else 1):  # the recomputing loops are slow
            names = random.sample(list(generators), len(generators))
            if impl == "recompute":
                turns, _, contested = timed(lambda: in_turns(*(partial(generators[name], n) for name in names)))
            else:
                tokens, seconds, contested = timed(lambda: generators[""](n, None))
                turns = [(tokens, seconds)]
            for name, (tokens, seconds) in zip(names, turns):
                assert tokens.shape == (1, prompt.shape[1] + n), tokens.shape
                result.setdefault(f"{name}generate {n}", []).append((n / seconds, contested))
                result[f"{name}tokens {n}"] = tokens[0, prompt.shape[1]:].tolist()
    return result


def bench_finetune(impl: str, checkpoint: str, repeats: int) -> dict:
    token_ids, lengths, labels = random_batch(FINETUNE_BATCH, seed=1)
    if impl == "transformers":
        from classifier import read_position

        llama = hf_llama(checkpoint).model  # LlamaModel: the decoder without the output projection
        head, dropout = nn.Linear(llama.config.hidden_size, NUM_LABELS), nn.Dropout(0.3)
        model = nn.ModuleList([llama, head])  # lm_head is freed with the LlamaForCausalLM around llama
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, eps=1e-6, weight_decay=0.0)  # optimizer.AdamW's

        def forward() -> torch.Tensor:
            h = read_position(llama(input_ids=token_ids).last_hidden_state, lengths, causal=True)
            return F.log_softmax(head(dropout(h)), dim=-1)
    else:
        from classifier import LlamaEmbeddingClassifier
        from config import ClassifierConfig
        from optimizer import AdamW

        model = LlamaEmbeddingClassifier(ClassifierConfig(checkpoint, NUM_LABELS, causal=impl == "causal"))
        optimizer = AdamW(model.parameters(), lr=LR)  # as trainer.fit

        def forward() -> torch.Tensor:
            return model(token_ids, lengths)
    model.train()
    reset_peak_rss()

    def step() -> None:
        optimizer.zero_grad()
        loss = F.nll_loss(forward(), labels, reduction="sum") / FINETUNE_BATCH  # trainer.train_epoch's loss
        loss.backward()
        optimizer.step()

    step()  # warm-up, which also allocates AdamW's state
    samples = []
    for _ in range(repeats):
        _, seconds, contested = timed(step)
        samples.append((FINETUNE_BATCH / seconds, contested))
    return {"finetune": samples}


def bench_zeroshot(impl: str, checkpoint: str, repeats: int) -> dict:
    from splits import read_label_names
    from tokenizer import Tokenizer

    token_ids, lengths, _ = random_batch(ZEROSHOT_BATCH, seed=2)
    tokenizer = Tokenizer(tokenizer_model=str(asset("tokenizer.model")))
    label_names = read_label_names(str(asset("data/sst-label-mapping.json")))
    if impl == "transformers":
        hf = hf_llama(checkpoint)
        label_ids = [tokenizer.encode(label, bos=False, eos=False) for label in label_names]

        def score() -> torch.Tensor:  # each label's Σ log p over its tokens, as LlamaZeroShotClassifier scores
            # logits_to_keep=1 projects the last position only, which is every row's last token here
            log_probs = F.log_softmax(hf(input_ids=token_ids, logits_to_keep=1).logits[:, -1].float(), dim=-1)
            return torch.stack([log_probs[:, ids].sum(-1) for ids in label_ids], dim=-1)
    else:
        from classifier import LlamaZeroShotClassifier
        from config import ClassifierConfig

        config = ClassifierConfig(checkpoint, NUM_LABELS, causal=impl == "causal")
        model = LlamaZeroShotClassifier(config, tokenizer, label_names).eval()

        def score() -> torch.Tensor:
            return model(token_ids, lengths)
    reset_peak_rss()
    samples = []
    with torch.inference_mode():  # as trainer.model_eval
        score()  # warm-up
        for _ in range(repeats):
            scores, seconds, contested = timed(score)
            samples.append((ZEROSHOT_BATCH / seconds, contested))
    return {"zeroshot": samples, "scores": scores.tolist()}


def bench_epoch(impl: str, checkpoint: str, repeats: int) -> dict:
    from classifier import LlamaEmbeddingClassifier
    from config import ClassifierConfig
    from optimizer import AdamW
    from options import parse_args, seed_everything
    from splits import LlamaDataset, create_data
    from tokenizer import Tokenizer
    from trainer import train_epoch

    tokenizer = Tokenizer(tokenizer_model=str(asset("tokenizer.model")))
    lines = asset("data/sst-train.txt").read_text(encoding="utf-8").splitlines(keepends=True)[:EPOCH_SENTENCES]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sst-train.txt"
        path.write_text("".join(lines), encoding="utf-8")
        args = parse_args(["--option", "finetune", "--train", str(path), "--batch_size", str(EPOCH_BATCH)] +
                          (["--group_by_length"] if impl == "grouped" else []), check_files=False)
        data = LlamaDataset(create_data(str(path), tokenizer, NUM_LABELS), tokenizer.pad_id, torch.device("cpu"))
    seed_everything(args.seed)
    model = LlamaEmbeddingClassifier(ClassifierConfig(checkpoint, NUM_LABELS))
    optimizer = AdamW(model.parameters(), lr=args.lr)  # as trainer.fit
    reset_peak_rss()
    samples, padded = [], []
    for epoch in range(repeats):  # the parent asks for one epoch: an epoch is long, its samples come from rounds
        stats, _, contested = timed(lambda: train_epoch(model, optimizer, data, epoch, args.batch_size,
                                                        args.group_by_length, args.dtype, torch.device("cpu")))
        samples.append((stats["seconds"], contested))
        padded.append((stats["padded"], False))
    return {"epoch": samples, "padded": padded}


def bench_first(impl: str, checkpoint: str, repeats: int) -> dict:
    """A process's first generate call against its second (FIRST_TOKENS greedy tokens after the FIRST_PROMPT first
    tokens of the prefix): what the first call pays once, such as timing the few-row kernel (blocked_linear)."""
    from fast import install
    from llama import load_pretrained

    model = install(load_pretrained(checkpoint, causal=impl == "causal"))
    prompt = prefix_tokens()[:, :FIRST_PROMPT]
    (_, first, contested_first), (_, second, contested_second) = (
        timed(lambda: model.generate(prompt, FIRST_TOKENS, temperature=0.0)) for _ in range(2))
    return {"first": [(first / second, contested_first or contested_second)], "seconds": [(second, False)]}


def bench_record(impl: str, checkpoint: str, repeats: int) -> dict:
    """Microseconds per epoch record added to a metrics.jsonl of RECORD_LINES earlier lines: metrics.append (one
    O_APPEND write and an fsync, under a lock) against the rewrite it replaced (the whole file read, written anew
    beside it with an fsync, and renamed onto it: files.write_atomically)."""
    import files
    import metrics

    record = {"run": "2026-12-07T00:00:00-0123abcd", "option": "finetune", "epochs": 5, "lr": LR, "epoch": 3,
              "loss": 1.2345, "train_acc": 0.5, "dev_acc": 0.4, "seconds": 12.3}
    line = json.dumps(record).encode() + b"\n"
    add = {"append": lambda path: metrics.append(path, record),
           "rewrite": lambda path: files.write_atomically(path, lambda f: f.write(path.read_bytes() + line))}[impl]
    samples = {}
    with tempfile.TemporaryDirectory(dir=".") as tmp:  # the disk a run writes to, not a RAM-backed /tmp
        for lines in RECORD_LINES:
            path = Path(tmp) / f"{lines}.jsonl"
            path.write_bytes(line * lines)
            samples[f"record {lines}"] = []
            for _ in range(repeats):
                _, seconds, contested = timed(lambda: [add(path) for _ in range(RECORDS)])
                samples[f"record {lines}"].append((seconds / RECORDS * 1e6, contested))
    return samples


def child(workload: str, impl: str, checkpoint: str, repeats: int, threads: int) -> None:
    """Run one workload × implementation and print its samples and peak RSS as one JSON line."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    bench = {"llama2c": bench_llama2c, "generate": bench_generate, "finetune": bench_finetune,
             "zeroshot": bench_zeroshot, "epoch": bench_epoch, "first": bench_first, "record": bench_record}[workload]
    result = bench(impl, checkpoint, repeats)
    print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))


# ---- the parent: rounds of children, then the table ----
def implementations(workload: str, baseline: bool) -> tuple[str, ...]:
    """The implementations that take turns in `workload`, with "baseline" for those --baseline runs too."""
    return WORKLOADS[workload] + (("baseline",) if baseline and workload in BASELINE_WORKLOADS else ())


def run_child(workload: str, impl: str, checkpoint: str, repeats: int, threads: int, env: dict[str, str],
              baseline: Path | None) -> dict:
    """One child's result; impl "baseline" is the causal implementation run by the baseline checkout's bench.py."""
    script = baseline / "bench.py" if impl == "baseline" else Path(__file__)
    cmd = [sys.executable, str(script), "--child", workload, "causal" if impl == "baseline" else impl,
           "--checkpoint", checkpoint, "--repeats", str(repeats), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1", **env})
    if proc.returncode:
        sys.exit(f"{workload}/{impl} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_runomp(folder: Path) -> Path | str:
    """llama2.c's runomp built in `folder` from llama2c/run.c, as its Makefile does; or why it could not be."""
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        return f"no C compiler found ({compiler}; set CC to name one)"
    shutil.copyfile(asset("llama2c/run.c"), folder / "run.c")
    proc = subprocess.run([compiler, *RUNOMP_BUILD], cwd=folder, capture_output=True, text=True)
    if proc.returncode:  # the compiler's first error, without the source lines and carets that follow it
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        first = next((line for line in lines if "error" in line), lines[0] if lines else f"status {proc.returncode}")
        return f"{compiler} cannot compile {asset('llama2c/run.c')}: {first}"
    return folder / "runomp"


def run_runomp(runomp: Path, weights: Path, prompt: str, prompt_len: int, repeats: int, threads: int) -> dict:
    """runomp's side of the llama2c workload: `repeats` greedy runs of DECODE_TOKENS new tokens after prompt (of
    prompt_len tokens), each sample the "achieved tok/s" it prints; its peak RSS is the largest of the runs' (Linux:
    VmHWM, read while it runs; wait4's ru_maxrss would count the Python process it was forked from)."""
    cmd = [str(runomp), str(weights), "-t", "0", "-n", str(prompt_len + DECODE_TOKENS), "-i", prompt,
           "-z", str(asset("llama2c/tokenizer.bin"))]
    samples, peak_kb = [], 0
    for _ in range(repeats):
        def run() -> tuple[str, int]:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            high_water = 0
            while proc.poll() is None:  # it prints a line or two to stderr, at the end: the pipe cannot fill
                high_water = max(high_water, vm_hwm_kb(proc.pid))
                time.sleep(0.02)
            stderr = proc.stderr.read()
            if proc.returncode:
                sys.exit(f"llama2c/runomp failed: {' '.join(cmd)}\n{stderr}")
            return stderr, high_water
        (stderr, high_water), _, contested = timed(run)
        match = re.search(r"achieved tok/s: ([0-9.]+)", stderr)
        if match is None:
            sys.exit(f"llama2c/runomp printed no \"achieved tok/s\": {' '.join(cmd)}\n{stderr}")
        samples.append((float(match.group(1)), contested))
        peak_kb = max(peak_kb, high_water)
    return {"decode": samples, "peak_rss_mb": peak_kb / 2**10}


def vm_hwm_kb(pid: int) -> int:
    """The peak RSS so far of process pid, in kB (Linux's /proc; 0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0


def write_checkpoint(path: Path) -> None:
    """Random weights with stories42M's shapes, in the course's checkpoint format."""
    from checkpoint import save_checkpoint
    from config import LlamaConfig
    from llama import Llama

    torch.manual_seed(0)
    model = Llama(LlamaConfig())
    save_checkpoint(path, asdict(model.config), model.state_dict())


def call_ratios(run: dict, key: str, other: str) -> list[float]:
    """The ratios of one child's samples `key` to its samples `other`, taken in turn, pair by pair: those of the
    pairs where neither sample was contested (of all pairs, if each had one)."""
    pairs = [(a, b) for (a, a_contested), (b, b_contested) in zip(run[key], run[other])
             if not (a_contested or b_contested)]
    return [a / b for a, b in pairs or [(a, b) for (a, _), (b, _) in zip(run[key], run[other])]]


def median(samples: list[list]) -> tuple[float, str]:
    """The median of the uncontested samples (of all, if every one was contested), and "clean/total"."""
    clean = [value for value, contested in samples if not contested]
    values = clean or [value for value, _ in samples]
    return (statistics.median(values) if values else float("nan")), f"{len(clean)}/{len(samples)}"


def revision(checkout: Path) -> str:
    """The checkout's git commit (abbreviated), or its path where git cannot tell."""
    proc = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True)
    return proc.stdout.strip() if proc.returncode == 0 else str(checkout)


def table(results: dict[str, dict[str, list[dict]]], baseline: str) -> list[str]:
    """The report: medians, ratios and their targets, peak RSS, how many samples were uncontested."""
    rows = [("measure", "minllama", "transformers", "ratio", "target", "peak RSS MB", "clean samples")]

    def stat(workload: str, impl: str, key: str) -> tuple[float, str]:
        return median([x for run in results[workload][impl] for x in run[key]])

    def rss(workload: str, *impls: str) -> str:
        return " / ".join(f"{max(run['peak_rss_mb'] for run in results[workload][impl]):.0f}" for impl in impls)

    def verdict(ratio: float, target: float) -> str:
        return f"≥ {target}× {'met' if ratio >= target else 'NOT MET'}"

    def spread(workload: str, impl: str, other: str, key: str, other_key: str | None = None) -> str:
        """The lowest and highest of the rounds' ratios impl / other (of each round's medians)."""
        rounds = [median(a[key])[0] / median(b[other_key or key])[0]
                  for a, b in zip(results[workload][impl], results[workload][other])]
        return f"rounds {min(rounds):.2f}–{max(rounds):.2f}"

    def versus(name: str, workload: str, key: str, target: float, impl: str = "causal") -> None:
        (ours, n_ours), (theirs, n_theirs) = stat(workload, impl, key), stat(workload, "transformers", key)
        rows.append((name, f"{ours:.1f}", f"{theirs:.1f}", f"{ours / theirs:.2f}×",
                     f"{verdict(ours / theirs, target)} ({spread(workload, impl, 'transformers', key)})",
                     rss(workload, impl, "transformers"), f"{n_ours}, {n_theirs}"))

    def against_baseline(name: str, workload: str, key: str) -> None:
        if "baseline" not in results[workload]:
            return
        (ours, _), (theirs, clean) = stat(workload, "causal", key), stat(workload, "baseline", key)
        rows.append((f"  causal, baseline {baseline}, {name}", f"{theirs:.1f}", "", f"{ours / theirs:.2f}×",
                     f"this / baseline ({spread(workload, 'causal', 'baseline', key)})", rss(workload, "baseline"),
                     clean))

    def course(name: str, workload: str, key: str) -> None:
        (ours, n_ours), (causal, _) = stat(workload, "course", key), stat(workload, "causal", key)
        rows.append((name, f"{ours:.1f}", "", f"{ours / causal:.2f}×", "course / causal", rss(workload, "course"),
                     n_ours))

    if "llama2c" in results:
        runs = results["llama2c"]["causal"]
        theirs, n_theirs = median([sample for run in runs for sample in run["runomp"]])
        for key, name, target in [("decode", f"decode {DECODE_TOKENS} tokens, causal, tokens/s", 0.8),
                                  ("call", "  the same, whole generate calls (prompt, set-up)", None)]:
            ours, n_ours = stat("llama2c", "causal", key)
            ratios = [call_ratios(run, key, "runomp") for run in runs]
            ratio, rounds = statistics.median(sum(ratios, [])), [statistics.median(r) for r in ratios]
            rows.append((name, f"{ours:.1f}", "", f"{ratio:.2f}×",
                         f"minllama / runomp, call by call: {verdict(ratio, target) if target else 'no target'} "
                         f"(rounds {min(rounds):.2f}–{max(rounds):.2f})", rss("llama2c", "causal"), n_ours))
        rows.append(("  llama2.c runomp (C, OpenMP), tokens/s", f"{theirs:.1f}", "", "", "",
                     f"{max(run['runomp_peak_rss_mb'] for run in runs):.0f}", n_theirs))
    if "generate" in results:
        for n in GEN_TOKENS:
            versus(f"generate {n} tokens, causal, tokens/s", "generate", f"generate {n}", 1.5)
        for n in GEN_TOKENS:
            against_baseline(f"{n} tokens", "generate", f"generate {n}")
        for n in GEN_TOKENS:
            (cached, _), (plain, clean) = stat("generate", "causal", f"generate {n}"), stat(
                "generate", "recompute", f"plain generate {n}")
            rows.append((f"  causal, use_cache=False, {n} tokens", f"{plain:.1f}", "", f"{cached / plain:.2f}×",
                         "cached / no cache" + (": " + verdict(cached / plain, 5) if n == 256 else ""),
                         rss("generate", "recompute"), clean))
        for n in GEN_TOKENS:
            recompute, clean = stat("generate", "recompute", f"course generate {n}")
            pairs = [ratio for run in results["generate"]["recompute"]
                     for ratio in call_ratios(run, f"course generate {n}", f"plain generate {n}")]
            ratio = statistics.median(pairs)
            rows.append((f"  course (recompute), {n} tokens", f"{recompute:.1f}", "", f"{ratio:.2f}×",
                         f"course / causal no cache, token by token: {verdict(ratio, 1.0)} "
                         f"(pairs {min(pairs):.2f}–{max(pairs):.2f})", rss("generate", "recompute"), clean))
    if "finetune" in results:
        versus(f"fine-tune step {FINETUNE_BATCH}×{SEQLEN}, causal, examples/s", "finetune", "finetune", 1.0)
        against_baseline("examples/s", "finetune", "finetune")
        course("  course semantics, examples/s", "finetune", "finetune")
    if "zeroshot" in results:
        versus(f"zero-shot {ZEROSHOT_BATCH}×{SEQLEN}, causal, examples/s", "zeroshot", "zeroshot", 1.0)
        against_baseline("examples/s", "zeroshot", "zeroshot")
        course("  course semantics, examples/s", "zeroshot", "zeroshot")
    if "epoch" in results:
        (shuffled, n_shuffled), (grouped, n_grouped) = (stat("epoch", impl, "epoch") for impl in ("random", "grouped"))
        padded = [stat("epoch", impl, "padded")[0] for impl in ("random", "grouped")]
        rows.append((f"SST epoch, first {EPOCH_SENTENCES}, batch {EPOCH_BATCH}, s", "", "", "", "", "", ""))
        rows.append((f"  random batches, {padded[0]:.0%} padding", f"{shuffled:.1f}", "", "", "",
                     rss("epoch", "random"), n_shuffled))
        rows.append((f"  --group_by_length, {padded[1]:.0%} padding", f"{grouped:.1f}", "",
                     f"{shuffled / grouped:.2f}×", "random / grouped: " + verdict(shuffled / grouped, 1.5),
                     rss("epoch", "grouped"), n_grouped))
    if "first" in results:
        rows.append((f"first generate call / second, {FIRST_TOKENS} tokens", "", "", "", "", "", ""))
        for impl in WORKLOADS["first"]:
            (ratio, clean), (second, _) = stat("first", impl, "first"), stat("first", impl, "seconds")
            rounds = [run["first"][0][0] for run in results["first"][impl]]
            met = "met" if ratio <= 1.5 else "NOT MET"
            rows.append((f"  {impl}, second call {second:.2f} s", "", "", f"{ratio:.2f}×",
                         f"first / second: ≤ 1.5× {met} (rounds {min(rounds):.2f}–{max(rounds):.2f})",
                         rss("first", impl), clean))
    if "record" in results:
        rows.append(("metrics.jsonl: one epoch record, µs", "", "", "", "", "", ""))
        for lines in RECORD_LINES:
            (append, clean), (rewrite, _) = (stat("record", impl, f"record {lines}") for impl in WORKLOADS["record"])
            met = "met" if append <= rewrite else "NOT MET"
            rows.append((f"  after {lines} lines: append, rewrite {rewrite:.0f}", f"{append:.0f}", "",
                         f"{rewrite / append:.2f}×", f"rewrite / append: ≥ 1× {met} "
                         f"({spread('record', 'rewrite', 'append', f'record {lines}')})", rss("record", "append"),
                         clean))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 4) else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    if "generate" in results:
        for n in GEN_TOKENS:
            ours, theirs = (results["generate"][impl][0][f"tokens {n}"] for impl in ("causal", "transformers"))
            lines.append(f"greedy {n} new tokens identical in causal minllama and transformers: {ours == theirs}")
            plain = results["generate"]["recompute"][0][f"plain tokens {n}"]
            lines.append(f"greedy {n} new tokens identical in causal minllama with and without its cache: "
                         f"{ours == plain}")
            if "baseline" in results["generate"]:
                same = ours == results["generate"]["baseline"][0][f"tokens {n}"]
                lines.append(f"greedy {n} new tokens identical in this causal minllama and the baseline's: {same}")
    if "zeroshot" in results:
        ours, theirs = (torch.tensor(results["zeroshot"][impl][0]["scores"]) for impl in ("causal", "transformers"))
        lines.append(f"zero-shot label scores, causal minllama vs transformers, largest difference: "
                     f"{(ours - theirs).abs().max():.1e}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS),
                        help="The workloads to run (default: all of them).")
    rounds = ", ".join(f"{name} {n}" for name, n in ROUNDS.items())
    parser.add_argument("--rounds", type=at_least_one,
                        help=f"Turns of every implementation, each in fresh processes (default: {rounds}).")
    parser.add_argument("--repeats", type=at_least_one, default=3,
                        help="Timed samples per process; epoch always takes one (default: %(default)s).")
    parser.add_argument("--threads", type=at_least_one, default=os.cpu_count(),
                        help="The threads torch uses, torch.set_num_threads (default: all %(default)s CPUs).")
    parser.add_argument("--default-malloc", action="store_true",
                        help=f"Run the workloads without setting {', '.join(MALLOC)} (see MALLOC).")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="Another minllama checkout, whose causal generate, finetune and zeroshot run beside ours.")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.checkpoint, args.repeats, args.threads)
        return

    from checkpoint import read_llama, write_llama2c_bin

    if args.baseline and not (args.baseline / "bench.py").is_file():
        sys.exit(f"--baseline {args.baseline}: no bench.py there; name a checkout of minllama")
    if problem := missing_asset(args.workloads):
        sys.exit(problem)
    env = {} if args.default_malloc else MALLOC
    m = machine()
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}, "
          f"transformers {m['transformers'] or 'not installed'}; torch threads: {args.threads}")
    print(f"environment: {' '.join(f'{k}={v}' for k, v in env.items()) or 'glibc malloc defaults'}")
    print(f"command: python bench.py {' '.join(sys.argv[1:])}".rstrip(), flush=True)
    start = time.perf_counter()
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "random42M.pt"
        write_checkpoint(checkpoint)
        workloads = args.workloads
        if "llama2c" in workloads:
            runomp = build_runomp(Path(tmp))
            if isinstance(runomp, str):
                print(f"llama2c: {runomp}; the runomp row is left out", flush=True)
                workloads = [w for w in workloads if w != "llama2c"]
            else:
                # the llama2c child finds both beside the checkpoint
                saved = read_llama(checkpoint)
                write_llama2c_bin(checkpoint.with_suffix(".bin"), saved.model_args, saved.state_dict, version=0)
        for workload in workloads:
            impls = implementations(workload, args.baseline is not None)
            results[workload] = {impl: [] for impl in impls}
            rounds = ROUNDS[workload] if args.rounds is None else args.rounds
            for r in range(rounds):
                for impl in random.sample(impls, len(impls)):
                    repeats = 1 if workload == "epoch" else args.repeats
                    run = run_child(workload, impl, str(checkpoint), repeats, args.threads, env, args.baseline)
                    results[workload][impl].append(run)
                    print(f"  {workload} round {r + 1}/{rounds} {impl}: done at "
                          f"{time.perf_counter() - start:.0f}s", file=sys.stderr)
    print("\n".join(table(results, revision(args.baseline) if args.baseline else "")))
    print(f"total {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
