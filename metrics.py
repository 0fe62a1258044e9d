"""What a training run measured: one JSON line per epoch in `metrics.jsonl`, and, when matplotlib is installed, a
picture of the loss and accuracy curves beside the dev-set confusion matrix; and the machine that measured it.
"""
import fcntl
import importlib.metadata
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import confusion_matrix

import files
from files import InputError, write_atomically


def machine(use_gpu: bool = False) -> dict:
    """Where figures were measured: the platform, the CPU's model name, its cores, the GPU when one is used, and
    the versions that matter (transformers: None where it is not installed)."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    try:
        transformers = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        transformers = None
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "gpu": gpu_name() if use_gpu else None, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers}


def gpu_name() -> str | None:
    """The GPU that --use_gpu runs on (options.gpu): CUDA's by its name, else Apple's; None where there is neither."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "Apple GPU (mps)" if torch.backends.mps.is_available() else None


FILE = "metrics.jsonl"  # where finetune and lora runs append a line per epoch
RESUMED = "resumed_after"  # the key of the line a resumed run appends (`supersede`)


def append(path: str | os.PathLike, record: dict) -> None:
    """Add `record` as one JSON line at the end of `path`: one write, with O_APPEND, while holding the file's lock
    (flock), so that runs appending to one file side by side never lose or interleave a line, and what it costs does
    not grow with the file. The lines there are never rewritten; an earlier line left without its newline (a run
    killed mid-write, by an earlier minllama) gets one first. A failed write is undone: nothing of it stays."""
    line = json.dumps(record).encode() + b"\n"
    with files.writing(path):
        descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            size = os.fstat(descriptor).st_size
            if size and os.pread(descriptor, 1, size - 1) != b"\n":
                line = b"\n" + line
            try:
                written = 0
                while written < len(line):
                    written += os.write(descriptor, line[written:])
                os.fsync(descriptor)  # on disk before the checkpoints that follow it, as write_atomically's files
            except OSError:
                os.ftruncate(descriptor, size)
                raise
        finally:
            os.close(descriptor)


def supersede(path: str | os.PathLike, run: str, epoch: int) -> None:
    """Mark the records of `run` after `epoch` in `path` as superseded, by appending {"run": run, "resumed_after":
    epoch}: a resumed run goes on from its last checkpoint, and the epochs that the interrupted run recorded after it
    are recorded again. `records` reads the file so."""
    append(path, {"run": run, RESUMED: epoch})


def records(path: str | os.PathLike) -> list[dict]:
    """The epoch records of `path` that stand, in the order of their lines: of each (run, epoch), the last one that
    no later `supersede` line of its run marks (lines that are not JSON objects with a "run" and an int "epoch" are
    left out). A file that is not there yet holds none."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    standing: dict[tuple[str, int], tuple[int, dict]] = {}
    for number, line in enumerate(data.splitlines()):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, not UTF-8
            continue
        if not isinstance(record, dict) or not isinstance(record.get("run"), str):
            continue
        after = record.get(RESUMED)
        if isinstance(after, int) and not isinstance(after, bool):
            for key in [key for key in standing if key[0] == record["run"] and key[1] > after]:
                del standing[key]
        elif isinstance(record.get("epoch"), int) and not isinstance(record["epoch"], bool):
            standing[record["run"], record["epoch"]] = (number, record)
    return [record for _, record in sorted(standing.values(), key=lambda pair: pair[0])]


def plot(
    records: list[dict], true: list[int], pred: list[int], label_names: list[str], path: str | os.PathLike
) -> bool:
    """Draw loss and accuracy per epoch and the confusion matrix of (true, pred) into the PNG `path`.

    Returns False, after a one-line note, when matplotlib is not installed: the picture is optional.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no window
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        print(f"note: matplotlib is not installed, so {path} was not drawn (pip install matplotlib)")
        return False
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc, ax_cm) = plt.subplots(1, 3, figsize=(15, 4.5))
    ax_loss.plot(epochs, [r["loss"] for r in records], marker="o")
    ax_loss.set(title="training loss", xlabel="epoch")
    for split in ("train", "dev"):
        ax_acc.plot(epochs, [r[f"{split}_acc"] for r in records], marker="o", label=f"{split} accuracy")
    ax_acc.set(title="accuracy", xlabel="epoch", ylim=(0, 1))
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
    counts = confusion_matrix(true, pred, labels=np.arange(len(label_names)))
    ax_cm.imshow(counts, cmap="Blues")
    for (i, j), n in np.ndenumerate(counts):
        ax_cm.text(j, i, str(n), ha="center", va="center", color="white" if n > counts.max() / 2 else "black")
    ticks = np.arange(len(label_names))
    label_names = [name.replace("$", r"\$") for name in label_names]  # text, not matplotlib's $math$
    ax_cm.set(title="dev confusion matrix", xlabel="predicted", ylabel="true", xticks=ticks, yticks=ticks,
              xticklabels=label_names, yticklabels=label_names)
    ax_cm.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    try:
        write_atomically(Path(path), lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
    return True
