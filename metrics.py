"""What a training run measured: one JSON line per epoch in `metrics.jsonl`, and, when matplotlib is installed, a
picture of the loss and accuracy curves beside the dev-set confusion matrix; and the machine that measured it.
"""
import importlib.metadata
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import confusion_matrix

import files
from files import write_atomically


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


def logged(path: str | os.PathLike) -> bytes:
    """The bytes of the log `path`, b"" if there is none yet. It is an output, which other runs in the same folder may
    append to, so it is read anew each time (not by files.read, which holds an input to what it first read)."""
    with files.writing(path):
        return Path(path).read_bytes() if Path(path).exists() else b""


def append(path: str | os.PathLike, record: dict) -> None:
    """Add `record` as one JSON line at the end of `path`; the file is replaced whole, so it never holds half a line.
    Its other lines are kept as bytes, whatever they hold."""
    before = logged(path)
    if before and not before.endswith(b"\n"):
        before += b"\n"
    write_atomically(path, lambda f: f.write(before + json.dumps(record).encode() + b"\n"))


def drop_after(path: str | os.PathLike, run: dict, epoch: int) -> int:
    """Remove the records of `run` past `epoch` from `path` (replaced whole, as by `append`); return how many. A
    record is the run's when it has each of the keys and values of `run` (its id, option, epochs and lr).

    A run killed after appending an epoch's line but before saving its last checkpoint, then resumed from the epoch
    before, would otherwise record that epoch twice. Lines of other runs, and lines that are not JSON, stay."""
    lines = logged(path).splitlines(keepends=True)
    kept = [line for line in lines if not _past(line, run, epoch)]
    if len(kept) < len(lines):
        write_atomically(path, lambda f: f.write(b"".join(kept)))
    return len(lines) - len(kept)


def _past(line: bytes, run: dict, epoch: int) -> bool:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, not UTF-8
        return False
    return isinstance(record, dict) and all(record.get(key) == value for key, value in run.items()) \
        and isinstance(record.get("epoch"), int) and record["epoch"] > epoch


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
    ax_cm.set(title="dev confusion matrix", xlabel="predicted", ylabel="true", xticks=ticks, yticks=ticks,
              xticklabels=label_names, yticklabels=label_names)
    ax_cm.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    try:
        write_atomically(Path(path), lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
    return True
