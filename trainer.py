"""run_llama.py's fine-tuning and evaluation: the run's processes (`processes`), the course's loop over epochs with
checkpoints that a run can be resumed from (`fit`, an epoch of it being train_epoch, on example indices and their
lengths), on several processes on torchrun, and the predictions of a classifier written to a file (`evaluate`).

Distributed data parallel. `torchrun --nproc_per_node=N run_llama.py --option finetune ...` starts N copies of the
run, each told its rank by environment variables (RANK, LOCAL_RANK, WORLD_SIZE). Each joins the process group (gloo
on the CPU or mps; nccl on CUDA, process r on cuda:LOCAL_RANK) and holds the whole model, wrapped in
DistributedDataParallel, which averages the N processes' gradients during backward(). All processes take rank 0's
batches of --batch_size examples, and process r computes examples r, r + N, r + 2N, ... of each
(`split_among_processes`, the split of DistributedSampler): --batch_size is the global batch, of which each process
computes about batch_size / N.
Each scales its Σ nll by N / batch_size, so that the average of the N gradients is the gradient of the course's
loss Σ nll / batch_size over the whole batch: N processes take the steps that one process takes, up to float
rounding and dropout (process r seeds its generators with --seed + r, so that the processes' masks differ; rank 0,
drawing masks for its share alone, then draws later epochs' batches from another point of its generator).
Evaluation, printing, progress bars, metrics and checkpoints are rank 0's; the others wait at a barrier.
Without torchrun there is no process group, and each function here does what one process alone does.

The course's random draws. The course's run_llama.py shuffles with a DataLoader, whose every pass draws from torch's
global generator, the one that dropout draws from too; a run here makes the same draws in the same order
(splits.shuffled_batches, splits.loader_seed): a pass for each epoch's training, then, with dropout off, a pass
over the training set for its accuracy and one over dev. So at a given --seed a run takes the batches and the
dropout masks of the course's run at that seed on these modules, and keeps the checkpoint it keeps.

Checkpoints and resuming. After each epoch rank 0 writes the checkpoint of the best dev accuracy when it improves
(save_model) and that of the last epoch (save_last); their keys, and how they are read and written, are described
in checkpoint.py. --resume loads the last checkpoint and goes on with the next epoch (resume). As the last
checkpoint holds the random generators' states after the epoch's last draw, from which the batches and the dropout
masks of the next are drawn, the resumed run ends with the weights that it would have ended with uninterrupted.
A resumed run must compute what the interrupted one would have: it refuses other flags (bar RESUME_MAY_CHANGE), and
other bytes in the files of RESUME_SAME_BYTES or other label names, wherever the files now are. It appends to
metrics.jsonl a line that supersedes the records the interrupted run appended after its last checkpoint
(metrics.supersede), so that metrics.records holds each epoch once; the file itself is only ever appended to.
"""
import argparse
import contextlib
import math
import os
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import files
import metrics
from checkpoint import read_classifier_checkpoint, save_classifier_checkpoint
from classifier import LlamaEmbeddingClassifier, base_digest, load_weights
from config import ATTENTION_PROJECTIONS, DEFAULT_TARGETS, ClassifierConfig
from files import InputError
from lora import lora_state_dict, merge_lora
from optimizer import AdamW
from options import TRAINING_OPTIONS, autocast, get_device, seed_everything
from splits import (LlamaDataset, Split, eval_order, loader_seed, padded_fraction, report, scores, shuffled_batches,
                    write_predictions_to_file)

RESUME_MAY_CHANGE = ("resume", "use_gpu", "test", "dev_out", "test_out")  # flags that change nothing a run keeps
RESUME_SAME_BYTES = {"train": "--train", "dev": "--dev", "tokenizer_model": "--tokenizer-model",  # may move, but must
                     "pretrained_model_path": "--pretrained-model-path"}  # hold what they held (resume_inputs)


# ---- processes ----
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # torchrun sets them all


def launched_by_torchrun() -> bool:
    """Whether torchrun started this process, which it tells by setting every variable of TORCHRUN_ENV; refused when
    only some of them are set (left over in the shell, say), naming them: neither torchrun's process nor a plain
    one."""
    present = [name for name in TORCHRUN_ENV if name in os.environ]
    if 0 < len(present) < len(TORCHRUN_ENV):
        missing = [name for name in TORCHRUN_ENV if name not in os.environ]
        raise InputError(f"the environment sets {', '.join(f'{name}={os.environ[name]}' for name in present)} but "
                         f"not {', '.join(missing)}, which torchrun sets together: to run as one process, unset "
                         f"{' '.join(present)}")
    return bool(present)


def init_distributed(device: torch.device) -> None:
    """Join the process group of torchrun's processes: nccl on CUDA (this process on `device`), gloo elsewhere."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the number of processes: (0, 1) without torchrun."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def printing_on_rank_0() -> Iterator[None]:
    """Discard what processes other than rank 0 print, so that each line is printed once."""
    if rank_and_world_size()[0] == 0:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


@contextlib.contextmanager
def processes(args: argparse.Namespace) -> Iterator[int]:
    """The run's processes, around its work, which is given this process's rank: under torchrun, which runs only
    the TRAINING_OPTIONS, join the process group and leave it at the end; print on rank 0 only; seed this process
    with --seed + rank, so that the processes' dropout masks differ (the batches are rank 0's, see from_rank_0)."""
    device = get_device(args.use_gpu, args.dtype)
    if launched_by_torchrun():
        if args.option not in TRAINING_OPTIONS:
            raise InputError(f"--option {args.option} runs as a single process, but {', '.join(TORCHRUN_ENV)} are "
                             "set, as torchrun sets them: start it with python, not torchrun, and with those unset")
        init_distributed(device)
    rank, _ = rank_and_world_size()
    try:
        with printing_on_rank_0():
            seed_everything(args.seed + rank)
            yield rank
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def distributed(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel (which starts by copying rank 0's weights to every process) under
    torchrun; `model` itself otherwise."""
    if not dist.is_initialized():
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def split_among_processes(lengths: list[int], batches: list[list[int]]
                          ) -> tuple[list[list[int]], list[int], list[int]]:
    """For each of `batches` (example indices into `lengths`), the examples of it that this process computes, the
    width they are padded to and the factor of their summed loss, which is then divided by --batch_size.

    Process r of N computes examples r, r + N, r + 2N, ... of each batch, padded to the width of the whole batch, as
    one process pads them (without a mask the padding changes the results). Their loss Σ nll × N / batch_size makes
    the average of the N gradients that of the course's loss Σ nll / batch_size over the whole batch. A process
    with no example of a short last batch must still join the averaging of the gradients and step: it computes the
    batch's first example with factor 0, and its prediction is not one to keep. Without torchrun (N = 1) this is
    each whole batch, with factor 1: the course's loss, to the last bit.
    """
    rank, world_size = rank_and_world_size()
    shares = [batch[rank::world_size] for batch in batches]
    rows = [share or batch[:1] for share, batch in zip(shares, batches)]
    widths = [max(lengths[i] for i in batch) for batch in batches]
    return rows, widths, [world_size if share else 0 for share in shares]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, summed in place over the processes."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def gather(obj: object) -> list:
    """`obj` of every process, by rank."""
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return [obj]
    objects = [None] * world_size
    dist.all_gather_object(objects, obj)
    return objects


def from_rank_0(obj: object) -> object:
    """Rank 0's `obj`, in every process."""
    if not dist.is_initialized():
        return obj
    objects = [obj]
    dist.broadcast_object_list(objects, src=0)
    return objects[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---- checkpoints ----
def rng_state(device: torch.device) -> dict:
    """The states of Python's, NumPy's and torch's random generators (and CUDA's or mps's on `device`), as tensors,
    lists and numbers, which torch.load(weights_only=True) reads back."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, cached_gaussian],
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore the generators to an `rng_state` (CUDA's or mps's only where both that state and `device` are of
    that type)."""
    version, internal_state, gauss_next = state["python"]
    random.setstate((version, tuple(internal_state), gauss_next))
    name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    if "mps" in state and device.type == "mps":
        torch.mps.set_rng_state(state["mps"])


def checkpoint_data(model: LlamaEmbeddingClassifier, flags: dict, config: ClassifierConfig, label_names: list[str],
                    epoch: int, best_dev_acc: float) -> dict:
    """What both checkpoints hold (checkpoint.py): all the weights, or with LoRA only the adapters and the head;
    `flags` is the run's command line (vars of its arguments)."""
    if config.option == "lora":
        weights = {"lora": lora_state_dict(model, "classifier_head."), "base_digest": base_digest(model)}
    else:
        weights = {"model": model.state_dict()}
    return {"model_args": asdict(model.llama.config), **weights, "model_config": asdict(config),
            "label_names": label_names, "args": flags, "epoch": epoch, "best_dev_acc": best_dev_acc}


def save_model(path: str, saved: dict, optimizer: torch.optim.Optimizer) -> None:
    """Write the best-dev checkpoint `saved` (checkpoint_data) to path; finetune's keeps the optimizer state too
    (the course's)."""
    if saved["model_config"]["option"] == "finetune":
        saved = {**saved, "optim": optimizer.state_dict()}
    save_classifier_checkpoint(path, saved)
    print(f"save the model to {path}")


def save_last(path: str, saved: dict, optimizer: torch.optim.Optimizer, progress: "Progress", rng: list[dict],
              inputs: dict[str, str]) -> None:
    """Write the last checkpoint to path: `saved` (checkpoint_data, which holds the epoch and best dev accuracy), the
    run's id and metrics records from `progress`, the optimizer state, every process's random generators `rng` and
    the sha256 of the run's `inputs` (resume_inputs)."""
    save_classifier_checkpoint(path, {**saved, "optim": optimizer.state_dict(), "rng": rng, "run": progress.run,
                                      "metrics": progress.metrics, "inputs_sha256": inputs}, last=True)


def resume_inputs(args: argparse.Namespace, train_data: LlamaDataset, dev_data: LlamaDataset) -> dict[str, str]:
    """The sha256 of each file of RESUME_SAME_BYTES, as this run read it."""
    return {"train": train_data.split.sha256, "dev": dev_data.split.sha256,
            "tokenizer_model": files.digest(args.tokenizer_model),
            "pretrained_model_path": files.digest(args.pretrained_model_path)}


@dataclass
class Progress:
    """How far a run has come: the last epoch done (-1 before the first), the best dev accuracy so far, the run's id in
    metrics.jsonl (the time it started and a random part, unique even among runs started in one second) and its
    metrics records so far."""

    epoch: int = -1
    best_dev_acc: float = -1.0
    run: str = field(default_factory=lambda: f"{time.strftime('%Y-%m-%dT%H:%M:%S')}-{secrets.token_hex(4)}")
    metrics: list[dict] = field(default_factory=list)


def resume(path: str, flags: dict, inputs: dict[str, str], label_names: list[str], model: LlamaEmbeddingClassifier,
           optimizer: torch.optim.Optimizer, device: torch.device) -> Progress:
    """The Progress saved in the last checkpoint `path`, with `model`, `optimizer` and this process's
    random generators restored from it; a new run when there is none yet.

    The run that wrote it must have had the same `flags` (the command line) bar RESUME_MAY_CHANGE, files of the same
    sha256 (`inputs`, resume_inputs) and the same label names: otherwise it would not compute, or keep as its best,
    what it would have uninterrupted. The first difference is refused in one line.
    """
    if not Path(path).exists():
        print(f"--resume: there is no {path} yet, so the run starts at epoch 0")
        return Progress()
    saved = read_classifier_checkpoint(path, last=True)
    start_over = "pass what it was given, or leave out --resume to start over"
    by_content = (*RESUME_SAME_BYTES, "label_names")  # their files may move: what they hold is compared below
    changed = [f"{name} {saved['args'].get(name)!r} → {value!r}" for name, value in flags.items()
               if name not in RESUME_MAY_CHANGE + by_content and saved["args"].get(name) != value]
    if changed:
        raise InputError(f"--resume: {path} was written by a run with other flags ({', '.join(changed)}): "
                         f"{start_over}")
    for name, flag in RESUME_SAME_BYTES.items():
        if saved["inputs_sha256"].get(name) != inputs[name]:
            raise InputError(f"--resume: {path} was written by a run whose {flag} held other bytes than "
                             f"{flags[name]} holds (their sha256 differs; it was {saved['args'].get(name)}): "
                             f"{start_over}")
    if saved["label_names"] != label_names:
        raise InputError(f"--resume: {path} was written by a run with the label names {saved['label_names']}, not "
                         f"{label_names} ({flags['label_names']}): {start_over}")
    load_weights(model, saved, path)
    rank, world_size = rank_and_world_size()
    if not saved["rng"]:
        raise InputError(f"{path}: 'rng' holds no random generators' state")
    if len(saved["rng"]) != world_size:
        print(f"note: {path} was written by {len(saved['rng'])} processes, resumed by {world_size}: "
              "the dropout masks will differ from those of an uninterrupted run")
    try:
        optimizer.load_state_dict(saved["optim"])
        set_rng_state(saved["rng"][rank % len(saved["rng"])], device)
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as e:
        raise InputError(f"{path}: its optimizer or random generators' state cannot be restored "
                         f"({type(e).__name__}: {' '.join(str(e).split())})") from None
    print(f"resume from {path} after epoch {saved['epoch']} (best dev acc {saved['best_dev_acc']:.3f})")
    return Progress(**{f.name: saved[f.name] for f in fields(Progress)})


# ---- training ----
def train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: LlamaDataset, epoch: int,
                batch_size: int, group_by_length: bool, dtype: str, device: torch.device) -> dict[str, float]:
    """One pass over the training set in fresh batches, loss = Σ nll / batch_size per batch (the course's).

    The batches are those of a pass of the course's shuffling DataLoader (splits.shuffled_batches), rank 0's in
    every process; under torchrun each process computes its share of each batch, its loss scaled to give the
    course's gradient (split_among_processes).
    Returns the mean batch loss, the running accuracy and macro-F1 (of the predictions made while training, dropout
    on), the seconds, examples per second and the padded fraction of the computed token positions, all over all
    processes.
    """
    rank, world_size = rank_and_world_size()
    model.train()
    batches = from_rank_0(shuffled_batches(data.lengths, batch_size, group_by_length))
    total_loss = torch.zeros((), device=device)
    preds = torch.zeros(len(data), dtype=torch.long, device=device)
    start = time.perf_counter()
    rows, widths, factors = split_among_processes(data.lengths, batches)  # alone: whole batches, factor 1
    mine = zip(data.batches(rows, widths), factors)
    for (rows, token_ids, lengths, labels), factor in tqdm(mine, total=len(batches), desc=f"train-{epoch}",
                                                           disable=rank != 0):
        optimizer.zero_grad()
        with autocast(dtype, device):
            log_probs = model(token_ids, lengths)
        loss = F.nll_loss(log_probs, labels, reduction="sum") * factor / batch_size
        loss.backward()
        optimizer.step()
        total_loss += loss.detach()
        if factor:  # else a stand-in example, which another process predicts
            preds[rows] = log_probs.argmax(dim=-1)
    all_reduce_sum(total_loss)
    preds = all_reduce_sum(preds).tolist()  # each example was predicted by one process, 0 elsewhere
    labels = data.labels.tolist()
    seconds = time.perf_counter() - start
    acc, f1 = scores(labels, preds)
    # the processes' losses add up to world_size × the course's loss of each batch
    return {"loss": total_loss.item() / world_size / len(batches), "running_acc": acc, "running_f1": f1,
            "seconds": seconds, "examples_per_s": len(data) / seconds, "padded": padded_fraction(data.lengths, batches)}


def course_scores(model: torch.nn.Module, train_data: LlamaDataset, dev_data: LlamaDataset,
                  dev_batches: list[list[int]], args: argparse.Namespace) -> dict[str, float]:
    """The accuracy and macro-F1 on the training set and on dev after an epoch, as the course computes them: in
    passes of their own with dropout off, the training set in the batches of another pass of the course's shuffling
    DataLoader (splits.shuffled_batches), dev in `dev_batches` (eval_order), after the base seed that its
    DataLoader draws."""
    train_batches = shuffled_batches(train_data.lengths, args.batch_size, args.group_by_length)
    train_acc, train_f1 = scores(train_data.split.labels, model_eval(model, train_data, train_batches, args.dtype))
    loader_seed()  # dev's pass, though not shuffled, draws its base seed
    dev_acc, dev_f1 = scores(dev_data.split.labels, model_eval(model, dev_data, dev_batches, args.dtype))
    return {"train_acc": train_acc, "dev_acc": dev_acc, "train_f1": train_f1, "dev_f1": dev_f1}


def classifier_config(args: argparse.Namespace, num_labels: int) -> ClassifierConfig:
    """The classifier the command line asks for, over num_labels labels."""
    targets = ATTENTION_PROJECTIONS if args.lora_all_projections else DEFAULT_TARGETS
    return ClassifierConfig(args.pretrained_model_path, num_labels, hidden_dropout_prob=args.hidden_dropout_prob,
                            option=args.option, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                            lora_dropout=args.lora_dropout, lora_targets=targets, causal=args.causal)


def build_classifier(config: ClassifierConfig) -> LlamaEmbeddingClassifier:
    """LlamaEmbeddingClassifier(config); a checkpoint or LoRA rank it cannot be built from is an InputError."""
    try:
        return LlamaEmbeddingClassifier(config)
    except ValueError as e:
        raise InputError(f"--lora_rank {config.lora_rank}: {e}" if "LoRA rank" in str(e) else str(e)) from None


def classifier_for(args: argparse.Namespace, num_labels: int) -> LlamaEmbeddingClassifier:
    """The classifier to fine-tune that the command line asks for (classifier_config), as first built."""
    return build_classifier(classifier_config(args, num_labels))


def load_classifier(path: str) -> LlamaEmbeddingClassifier:
    """The classifier of the best checkpoint `path`, built from its model_config. LoRA adapters are merged into the
    base weights (lora.merge_lora), which changes no prediction and makes no extra work per token."""
    if not Path(path).is_file():
        raise InputError(f"{path}: the best checkpoint of this run is missing (moved or deleted while it ran?), so "
                         "there is no model to write the predictions of")
    saved = read_classifier_checkpoint(path)
    config = {**saved["model_config"], "pretrained_model_path": base_of(path, saved)}
    model = build_classifier(ClassifierConfig(**config))
    load_weights(model, saved, path)
    if "lora" in saved:
        merge_lora(model)
    print(f"load model from {path} (epoch {saved['epoch']}, dev acc {saved['best_dev_acc']:.3f})")
    return model


def base_of(path: str, saved: dict) -> str:
    """The pretrained checkpoint under the classifier checkpoint `path`: a relative pretrained_model_path is taken
    from the checkpoint's folder, where run_llama.py wrote it, whatever the current folder now."""
    base = saved["model_config"]["pretrained_model_path"]
    return base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)


def divergence_reason(loss: float, model: torch.nn.Module) -> str | None:
    """Why training has diverged: a non-finite loss, or a trained weight that is no longer finite; None if not."""
    if not math.isfinite(loss):
        return f"the training loss became {loss}"
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param).all():
            return f"the weight {name} is no longer finite"
    return None


def fit(args: argparse.Namespace, model: LlamaEmbeddingClassifier, label_names: list[str], train_data: LlamaDataset,
        dev_data: LlamaDataset) -> list[dict]:
    """Fine-tune `model` (classifier_for the command line, on the data's device) with the course's AdamW for
    --epochs (with --resume from the epoch after the last checkpoint's), in every process.

    After each epoch rank 0 measures the accuracy on the training set and on dev as the course does (course_scores),
    saves the checkpoint of the best dev accuracy and the last one, and appends the epoch's metrics, while the others
    wait. Returns the run's metrics records (those of rank 0).
    """
    device = train_data.token_ids.device
    config = classifier_config(args, len(label_names))
    rank, _ = rank_and_world_size()
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    flags = vars(args)
    inputs = resume_inputs(args, train_data, dev_data)
    progress = (resume(args.last_filepath, flags, inputs, label_names, model, optimizer, device) if args.resume
                else Progress())
    if progress.epoch >= 0 and not Path(args.filepath).is_file():
        raise InputError(f"--resume: {args.last_filepath} goes on after epoch {progress.epoch}, but the best "
                         f"checkpoint {args.filepath} of its run is missing: put it back, or leave out --resume to "
                         "start over")
    if progress.epoch >= 0 and rank == 0:
        metrics.supersede(metrics.FILE, progress.run, progress.epoch)
    trained_model = distributed(model, device)
    dev_batches = eval_order(dev_data.lengths, args.batch_size, args.group_by_length, args.causal)
    for epoch in range(progress.epoch + 1, args.epochs):
        stats = train_epoch(trained_model, optimizer, train_data, epoch, args.batch_size, args.group_by_length,
                            args.dtype, device)
        failure = divergence_reason(stats["loss"], model)
        if failure:
            alpha = f" or --lora_alpha than {args.lora_alpha}" if args.option == "lora" else ""
            raise InputError(f"epoch {epoch}: {failure}, so nothing of this epoch was saved; try a lower --lr than "
                             f"{args.lr}{alpha}")
        measured = course_scores(model, train_data, dev_data, dev_batches, args) if rank == 0 else {}
        rng = gather(rng_state(device))  # after the epoch's last draw: the next epoch's draws follow from there
        if rank == 0:
            dev_acc = measured["dev_acc"]
            if dev_acc > progress.best_dev_acc:
                save_model(args.filepath, checkpoint_data(model, flags, config, label_names, epoch, dev_acc), optimizer)
            record = {"run": progress.run, "option": args.option, "epochs": args.epochs, "lr": args.lr,
                      "epoch": epoch, "loss": stats["loss"], **measured, "running_acc": stats["running_acc"],
                      "running_f1": stats["running_f1"], "seconds": stats["seconds"],
                      "examples_per_s": stats["examples_per_s"], "padded": stats["padded"]}
            metrics.append(metrics.FILE, record)
            progress = Progress(epoch, max(progress.best_dev_acc, dev_acc), progress.run, progress.metrics + [record])
            saved = checkpoint_data(model, flags, config, label_names, epoch, progress.best_dev_acc)
            save_last(args.last_filepath, saved, optimizer, progress, rng, inputs)
            print(f"epoch {epoch}: train loss :: {stats['loss']:.3f}, train acc :: {measured['train_acc']:.3f}, "
                  f"dev acc :: {dev_acc:.3f}, {stats['seconds']:.1f}s, {stats['examples_per_s']:.1f} examples/s, "
                  f"padding {stats['padded']:.1%}")
        barrier()
    return progress.metrics


# ---- evaluation ----
@torch.inference_mode()
def model_eval(model: torch.nn.Module, data: LlamaDataset, batches: list[list[int]], dtype: str) -> list[int]:
    """The model's prediction (argmax) for every example, in file order whatever the batches."""
    model.eval()
    device = data.token_ids.device
    preds = torch.empty(len(data), dtype=torch.long, device=device)
    for rows, token_ids, lengths, _ in tqdm(data.batches(batches), total=len(batches), desc="eval"):
        with autocast(dtype, device):
            preds[rows] = model(token_ids, lengths).argmax(dim=-1)
    return preds.tolist()


def evaluate(model: torch.nn.Module, outputs: dict[str, tuple[Split, str]], pad_id: int,
             args: argparse.Namespace) -> dict[str, list[int]]:
    """For each split name → (split, output file): predict in the batches of eval_order, print the report, write
    `<pred> ||| <sentence>` lines. Returns each split's predictions."""
    if args.group_by_length and not args.causal:
        print("note: --group_by_length groups the training batches only: without --causal, evaluation keeps the "
              "course's batches, because there the padding changes the predictions")
    device = next(model.parameters()).device
    predictions = {}
    for name, (split, outfile) in outputs.items():
        data = LlamaDataset(split, pad_id, device)
        batches = eval_order(data.lengths, args.batch_size, args.group_by_length, args.causal)
        start = time.perf_counter()
        preds = model_eval(model, data, batches, args.dtype)
        seconds = time.perf_counter() - start
        print(f"{name}: {len(data)} examples in {seconds:.1f}s ({len(data) / seconds:.1f} examples/s), "
              f"padding {padded_fraction(data.lengths, batches):.1%}")
        print(report(name, split, preds))
        write_predictions_to_file(outfile, preds, split.sentences)
        predictions[name] = preds
    return predictions
