"""The course's tasks on a pretrained Llama: text generation, zero-shot prompting, fine-tuning a classifier, and
fine-tuning LoRA adapters (Hu et al. 2021) with a classifier head, on one process or several (torchrun).

    python run_llama.py --option generate [--prompt TEXT --max_new_tokens N --temperature T ... --top_k K --stream]
    python run_llama.py --option prompt --batch_size 10 --train data/sst-train.txt ...
    python run_llama.py --option finetune --epochs 5 --lr 2e-5 --batch_size 80 --train data/sst-train.txt ...
    python run_llama.py --option lora --epochs 5 --lr 2e-5 --batch_size 80 --train data/sst-train.txt ...
    torchrun --nproc_per_node=2 run_llama.py --option finetune ...   (see trainer.py)

Data files hold one `label ||| sentence` per line. --dev, --test, --label-names, --dev_out and --test_out default
to the files that go with --train (data/sst-train.txt → data/sst-dev.txt, sst-dev-finetuning-output.txt, ...);
known files that are missing are fetched before any work (see assets.py). Every file is written under a temporary
name and then renamed, so an interrupted run leaves no half-written output. --option finetune and --option lora
write the checkpoint of the best dev accuracy, {option}-{epochs}-{lr}.pt, and that of the last epoch, which --resume
goes on from (their contents: checkpoint.py); they append a line per epoch to metrics.jsonl, and at the end, with
matplotlib, draw {option}-{epochs}-{lr}.png (metrics.py). Before any work, validate_args checks every flag and
refuses an output that is an input of the run or another output, or that cannot be written.
"""
import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

import assets
import files
import metrics
from checkpoint import CheckpointError, read_classifier_checkpoint
from classifier import LlamaEmbeddingClassifier, LlamaZeroShotClassifier
from config import ATTENTION_PROJECTIONS, DEFAULT_TARGETS, ClassifierConfig, lora_problem
from llama import Llama, NonFiniteError, load_pretrained
from lora import merge_lora
from optimizer import AdamW
from tokenizer import Tokenizer, TokenizerError
from trainer import (all_reduce_sum, barrier, checkpoint_data, distributed, drop_metrics_after, gather,
                     init_distributed, launched_by_torchrun, load_weights, printing_on_rank_0, rank_and_world_size,
                     resume, rng_state, save_last, save_model, split_among_processes, LaunchError, Progress,
                     TORCHRUN_ENV)

PREFIX = ("I have wanted to see this thriller for a while, and it didn't disappoint. "
          "Keanu Reeves, playing the hero John Wick, is")
PLACEHOLDER = -1  # the label of an example whose gold label is withheld
GROUP_CHUNK = 50  # --group_by_length sorts within chunks of this many batches
METRICS = metrics.FILE  # where finetune and lora runs append a line per epoch


class InputError(Exception):
    """A data file, label file, model or command line that run_llama.py cannot work with."""


def seed_everything(seed: int = 11711) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA), and make cuDNN deterministic, so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


# ---- data ----
@dataclass
class Split:
    """A data file's sentences, gold labels and token ids, in file order (example i is on line i + 1), and how many
    of each example's last ids are the prompt after the sentence, and the sha256 of the file as it was read."""

    path: str
    sentences: list[str]
    labels: list[int]
    token_ids: list[list[int]]
    suffix_len: int = 0
    sha256: str = ""


def create_data(path: str, tokenizer: Tokenizer, num_labels: int, suffix: str | None = None,
                placeholders: bool = False) -> Split:
    """Read `label ||| sentence` lines; the token ids are BOS and the sentence's (at most max_len).

    With a prompt `suffix`, an example is the sentence, a space and the suffix, as in the course, and its token ids
    end with the suffix's, which max_len does not cut. Labels must be 0 … num_labels − 1, or PLACEHOLDER where
    `placeholders` allows it. A byte order mark and blank lines at the end are ignored; a blank line before the last
    sentence is an error.
    """
    suffix_ids = tokenizer.sp_model.encode(suffix) if suffix else []
    sentences, labels, token_ids = [], [], []
    data, sha256 = files.read(path)  # once: a FIFO cannot be read again
    for lineno, raw in enumerate(files.data_lines(data), 1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{where}: not UTF-8 text ({e})") from None
        label_text, separator, sentence = line.partition(" ||| ")
        sentence = sentence.strip()
        if not separator or not sentence:
            raise InputError(f"{where}: expected 'label ||| sentence', found {line.rstrip()[:80]!r}")
        try:
            label = int(label_text)
        except ValueError:
            raise InputError(f"{where}: the label {label_text!r} is not an integer") from None
        if not (0 <= label < num_labels or placeholders and label == PLACEHOLDER):
            allowed = f"0 … {num_labels - 1}" + (f" or {PLACEHOLDER}" if placeholders else "")
            raise InputError(f"{where}: label {label} is not one of {allowed} ({num_labels} label names)")
        sentences.append(f"{sentence} {suffix}" if suffix else sentence)
        labels.append(label)
        token_ids.append(tokenizer.encode(sentence, bos=True, eos=False) + suffix_ids)
    if not sentences:
        raise InputError(f"{path}: empty file: no 'label ||| sentence' lines")
    print(f"load {len(sentences)} data from {path}")
    return Split(path, sentences, labels, token_ids, len(suffix_ids), sha256)


def read_label_names(path: str) -> list[str]:
    """The JSON list of label names (UTF-8, a byte order mark allowed); label i is named label_names[i]. At least
    two, each a different non-blank string."""
    try:
        label_names = json.loads(files.read(path)[0].decode("utf-8-sig"))
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply to be a list of label names") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(label_names, list):
        raise InputError(f"{path}: expected a JSON list of label names, found {str(label_names)[:80]!r}")
    first_of: dict[str, int] = {}
    for i, name in enumerate(label_names):
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{path}: label name {i} is {name!r}: each label name must be a non-blank string")
        if name.strip() in first_of:
            raise InputError(f"{path}: label names {first_of[name.strip()]} and {i} are both {name.strip()!r}: "
                             "each label needs a name of its own")
        first_of[name.strip()] = i
    if len(label_names) < 2:
        raise InputError(f"{path}: expected at least two label names, found {len(label_names)}")
    return label_names


def prompt_suffix(label_names: list[str]) -> str:
    """The course's prompt: `Is this movie a or b? This movie is ` (`a, b, c, or d` for more labels)."""
    if len(label_names) == 2:
        labels = " or ".join(label_names)
    else:
        labels = ", ".join(label_names[:-1]) + ", or " + label_names[-1]
    return f"Is this movie {labels}? This movie is "


def batch_order(lengths: list[int], batch_size: int, shuffle: bool, group_by_length: bool,
                generator: torch.Generator | None = None) -> list[list[int]]:
    """The example indices of each batch.

    shuffle draws a permutation from `generator` (default: torch's global generator, seeded by --seed).
    group_by_length sorts the examples by length within chunks of GROUP_CHUNK batches (all of them when not
    shuffling), so that a batch holds sentences of similar length and little padding; shuffled, the batches are
    then put in random order.
    """
    n = len(lengths)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    if group_by_length:
        chunk = batch_size * GROUP_CHUNK if shuffle else n
        chunks = (order[start : start + chunk] for start in range(0, n, chunk))
        order = [i for c in chunks for i in sorted(c, key=lengths.__getitem__)]
    batches = [order[start : start + batch_size] for start in range(0, n, batch_size)]
    if shuffle and group_by_length:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def eval_order(lengths: list[int], batch_size: int, group_by_length: bool, causal: bool) -> list[list[int]]:
    """The batches of an evaluation: the course's (file order, batch_size rows each) unless --group_by_length
    with --causal. Without a mask every position attends to the pads, so a row's batch changes its prediction;
    with the causal mask it does not, and grouping only saves time."""
    return batch_order(lengths, batch_size, shuffle=False, group_by_length=group_by_length and causal)


def padded_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """The fraction of the token positions computed in these batches that are padding."""
    computed = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1 - sum(lengths) / computed


class LlamaDataset:
    """A split's token ids right-padded into one tensor that is moved to the device once. A batch is then a slice of
    a device-side index into it, cut to the batch's longest sentence, so the loops copy nothing between host and
    device."""

    def __init__(self, split: Split, pad_id: int, device: torch.device):
        self.lengths = [len(ids) for ids in split.token_ids]  # kept on the host too: they set each batch's width
        rows = [torch.tensor(ids) for ids in split.token_ids]
        self.token_ids = pad_sequence(rows, batch_first=True, padding_value=pad_id).to(device)
        self.device_lengths = torch.tensor(self.lengths).to(device)
        self.labels = torch.tensor(split.labels).to(device)

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self, order: list[list[int]], widths: list[int] | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """(example indices, token ids, lengths, labels) of each batch in `order`, all on the device, padded to the
        batch's longest sentence or to `widths` (a process's share of a batch is padded as the whole batch is)."""
        index = torch.tensor([i for batch in order for i in batch]).to(self.token_ids.device)
        widths = widths or [max(self.lengths[i] for i in batch) for batch in order]
        start = 0
        for batch, width in zip(order, widths):
            rows = index[start : start + len(batch)]
            start += len(batch)
            yield rows, self.token_ids[rows, :width], self.device_lengths[rows], self.labels[rows]


# ---- metrics ----
def scores(labels: list[int], preds: list[int]) -> tuple[float, float]:
    """Accuracy and macro-F1, as Python floats (checkpoints hold plain data, not NumPy scalars)."""
    return float(accuracy_score(labels, preds)), float(f1_score(labels, preds, average="macro"))


def report(name: str, split: Split, preds: list[int]) -> str:
    """Accuracy and macro-F1, or why they mean nothing: placeholder labels, or one label throughout."""
    if PLACEHOLDER in split.labels:
        return (f"{name} acc :: meaningless: {split.path} has placeholder labels ({PLACEHOLDER}); "
                f"its {len(preds)} predictions are written all the same")
    acc, f1 = scores(split.labels, preds)
    line = f"{name} acc :: {acc:.3f}, macro-F1 :: {f1:.3f}"
    if len(set(split.labels)) == 1:
        line += (f" (every label in {split.path} is {split.labels[0]}: if these are placeholders, as in the "
                 "course's cfimdb-test.txt, this accuracy is meaningless)")
    return line


# ---- running the models ----
def autocast(dtype: str, device: torch.device) -> torch.autocast:
    """bfloat16 autocast where `dtype` (--dtype) is "bfloat16", else a context that changes nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def check_fits(llama: Llama, tokenizer: Tokenizer, splits: list[Split], tokenizer_model: str, model_path: str) -> None:
    """Refuse a tokenizer of another vocabulary size than the model's, and sentences longer than its context.
    `tokenizer_model` and `model_path` are the files they were read from, which the refusal names."""
    vocab_size, max_seq_len = llama.config.vocab_size, llama.config.max_seq_len
    if tokenizer.n_words != vocab_size:
        raise InputError(f"the tokenizer {tokenizer_model} has {tokenizer.n_words} pieces, "
                         f"{'more' if tokenizer.n_words > vocab_size else 'fewer'} than the "
                         f"{vocab_size} embeddings of the model {model_path}: they do not belong "
                         "together (pass the model's own tokenizer with --tokenizer-model)")
    for split in splits:
        for i, ids in enumerate(split.token_ids):
            if len(ids) > max_seq_len:
                raise InputError(f"{split.path}:{i + 1}: {len(ids)} tokens, more than the model's max_seq_len="
                                 f"{max_seq_len}; {fitting_advice(tokenizer.max_len, split.suffix_len, max_seq_len)}")


def fitting_advice(max_sentence_len: int | None, suffix_len: int, max_seq_len: int) -> str:
    """What makes an example of BOS, a sentence cut to max_sentence_len tokens and suffix_len prompt tokens fit in
    max_seq_len tokens."""
    prompt = f"the prompt after the sentence takes {suffix_len} tokens" if suffix_len else ""
    room = max_seq_len - 1 - suffix_len  # for the sentence's tokens
    if room < 1:
        return f"{prompt}, which leaves no room for a sentence: use shorter label names"
    if max_sentence_len is None:
        return "pass --max_sentence_len to truncate sentences" + (f" ({prompt})" if prompt else "")
    return (f"--max_sentence_len {max_sentence_len} is too long" + (f" because {prompt}" if prompt else "") +
            f": pass --max_sentence_len {room} or less")


@torch.inference_mode()
def model_eval(model: torch.nn.Module, data: LlamaDataset, batches: list[list[int]], dtype: str,
               device: torch.device) -> list[int]:
    """The model's prediction (argmax) for every example, in file order whatever the batches."""
    model.eval()
    preds = torch.empty(len(data), dtype=torch.long, device=device)
    for rows, token_ids, lengths, _ in tqdm(data.batches(batches), total=len(batches), desc="eval"):
        with autocast(dtype, device):
            preds[rows] = model(token_ids, lengths).argmax(dim=-1)
    return preds.tolist()


def write_text(path: str, text: str) -> None:
    files.write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def write_predictions_to_file(outfile: str, preds: list[int], sentences: list[str]) -> None:
    write_text(outfile, "".join(f"{pred} ||| {sentence}\n" for pred, sentence in zip(preds, sentences)))
    print(f"wrote {len(preds)} predictions to {outfile}")


def evaluate_and_write(model: torch.nn.Module, splits: dict[str, tuple[Split, str]], tokenizer: Tokenizer,
                       batch_size: int, group_by_length: bool, causal: bool, dtype: str,
                       device: torch.device) -> dict[str, list[int]]:
    """For each split name → (split, output file): predict in the batches of eval_order, print the report, write
    `<pred> ||| <sentence>` lines. Returns each split's predictions."""
    predictions = {}
    for name, (split, outfile) in splits.items():
        data = LlamaDataset(split, tokenizer.pad_id, device)
        batches = eval_order(data.lengths, batch_size, group_by_length, causal)
        start = time.perf_counter()
        preds = model_eval(model, data, batches, dtype, device)
        seconds = time.perf_counter() - start
        print(f"{name}: {len(data)} examples in {seconds:.1f}s ({len(data) / seconds:.1f} examples/s), "
              f"padding {padded_fraction(data.lengths, batches):.1%}")
        print(report(name, split, preds))
        write_predictions_to_file(outfile, preds, split.sentences)
        predictions[name] = preds
    return predictions


# ---- the options ----
def generation_outputs(args: argparse.Namespace) -> dict[float, str]:
    """The file of each --temperature: the course's two flags for 0.0 and 1.0, generated-sentence-temp-{T}.txt for
    any other T (0.7 → generated-sentence-temp-0.7.txt)."""
    named = {0.0: args.generated_sentence_low_temp_out, 1.0: args.generated_sentence_high_temp_out}
    return {t: named.get(t, f"generated-sentence-temp-{t:g}.txt") for t in args.temperature}


def generate_sentence(args: argparse.Namespace, prefix: str, outfile: str, max_new_tokens: int = 75,
                      temperature: float = 0.0, llama: Llama | None = None) -> None:
    """Continue `prefix` (greedy at temperature 0.0, else sampled, from the --top_k likeliest tokens if given) with
    `llama` (loaded from --pretrained-model-path when None); print the text, token by token with --stream or on a
    terminal, and write it to outfile."""
    device = get_device(args.use_gpu, args.dtype)
    llama = llama or load_pretrained(args.pretrained_model_path, causal=args.causal, device=device)
    tokenizer = Tokenizer(args.max_sentence_len, tokenizer_model=args.tokenizer_model)
    ids = tokenizer.encode(prefix, bos=True, eos=False)
    x = torch.tensor([ids], device=device)
    stream = args.stream or sys.stdout.isatty()
    printed = ""

    def show(token: torch.Tensor) -> None:  # print what the text gained, once it ends in whole characters
        nonlocal printed
        ids.append(int(token[0, 0]))
        text = tokenizer.decode(ids)
        if text.startswith(printed) and not text.endswith("\ufffd"):
            print(text[len(printed):], end="", flush=True)
            printed = text

    print(f"Temperature is {temperature}")
    if stream:
        printed = tokenizer.decode(ids)
        print(printed, end="", flush=True)
    with autocast(args.dtype, device):
        y = llama.generate(x, max_new_tokens, temperature=temperature, top_k=args.top_k,
                           on_token=show if stream else None)
    sentence = tokenizer.decode(y[0].tolist())
    print(sentence[len(printed):] if stream else sentence)
    print("---------------")
    write_text(outfile, sentence)
    print(f"Wrote generated sentence to {outfile}.")


def test_with_prompting(args: argparse.Namespace, tokenizer: Tokenizer, label_names: list[str],
                        dev: Split, test_split: Split, device: torch.device) -> None:
    """Zero-shot classification of dev and test by the prompt's continuation."""
    config = ClassifierConfig(args.pretrained_model_path, len(label_names), args.hidden_dropout_prob, args.option,
                              causal=args.causal)
    model = LlamaZeroShotClassifier(config, tokenizer, label_names)
    check_fits(model.llama, tokenizer, [dev, test_split], args.tokenizer_model, args.pretrained_model_path)
    model = model.to(device)
    outputs = {"dev": (dev, args.dev_out), "test": (test_split, args.test_out)}
    evaluate_and_write(model, outputs, tokenizer, args.batch_size, args.group_by_length, args.causal, args.dtype,
                       device)


def train_epoch(model: torch.nn.Module, optimizer: AdamW, data: LlamaDataset, epoch: int, seed: int,
                batch_size: int, group_by_length: bool, dtype: str, device: torch.device) -> dict[str, float]:
    """One pass over the training set in fresh batches, loss = Σ nll / batch_size per batch (the course's).

    The batches depend on the seed and the epoch only, so that every process draws the same ones; under torchrun
    each process computes its share of each batch, its loss weighted to give the course's gradient
    (split_among_processes).
    Returns the mean batch loss, the accuracy and macro-F1 of the predictions made while training (dropout on), the
    seconds, examples per second and the padded fraction of the computed token positions, all over all processes.
    """
    rank, world_size = rank_and_world_size()
    model.train()
    generator = torch.Generator().manual_seed(seed + epoch)
    batches = batch_order(data.lengths, batch_size, True, group_by_length, generator)
    total_loss = torch.zeros((), device=device)
    preds = torch.zeros(len(data), dtype=torch.long, device=device)
    start = time.perf_counter()
    rows, widths, loss_weights = split_among_processes(data.lengths, batches, batch_size)  # alone: whole batches
    mine = zip(data.batches(rows, widths), loss_weights)
    for (rows, token_ids, lengths, labels), loss_weight in tqdm(mine, total=len(batches), desc=f"train-{epoch}",
                                                                disable=rank != 0):
        optimizer.zero_grad()
        with autocast(dtype, device):
            log_probs = model(token_ids, lengths)
        loss = F.nll_loss(log_probs, labels, reduction="sum") * loss_weight
        loss.backward()
        optimizer.step()
        total_loss += loss.detach()
        if loss_weight:  # else a stand-in example, which another process predicts
            preds[rows] = log_probs.argmax(dim=-1)
    all_reduce_sum(total_loss)
    preds = all_reduce_sum(preds).tolist()  # each example was predicted by one process, 0 elsewhere
    labels = data.labels.tolist()
    seconds = time.perf_counter() - start
    acc, f1 = scores(labels, preds)
    # the processes' losses add up to world_size × the course's loss of each batch
    return {"loss": total_loss.item() / world_size / len(batches), "acc": acc, "f1": f1, "seconds": seconds,
            "examples_per_s": len(data) / seconds,
            "padded": padded_fraction(data.lengths, batches)}


def build_classifier(config: ClassifierConfig) -> LlamaEmbeddingClassifier:
    """LlamaEmbeddingClassifier(config); a checkpoint or LoRA rank it cannot be built from is an InputError."""
    try:
        return LlamaEmbeddingClassifier(config)
    except ValueError as e:
        raise InputError(str(e)) from None


def divergence_reason(loss: float, model: torch.nn.Module) -> str | None:
    """Why training has diverged: a non-finite loss, or a trained weight that is no longer finite; None if not."""
    if not math.isfinite(loss):
        return f"the training loss became {loss}"
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param).all():
            return f"the weight {name} is no longer finite"
    return None


def train(args: argparse.Namespace, tokenizer: Tokenizer, label_names: list[str], train_split: Split,
          dev: Split, test_split: Split, device: torch.device) -> list[dict]:
    """Fine-tune LlamaEmbeddingClassifier (all of it, or with LoRA its adapters and head) with AdamW, in every process.

    After each epoch rank 0 evaluates on dev, saves the checkpoint of the best dev accuracy and the last one, and
    appends the epoch's metrics, while the others wait. Returns the run's metrics records (those of rank 0).
    """
    rank, _ = rank_and_world_size()
    targets = ATTENTION_PROJECTIONS if args.lora_all_projections else DEFAULT_TARGETS
    config = ClassifierConfig(args.pretrained_model_path, len(label_names), args.hidden_dropout_prob, args.option,
                              args.lora_rank, args.lora_alpha, args.lora_dropout, targets, args.causal)
    model = build_classifier(config)
    check_fits(model.llama, tokenizer, [train_split, dev, test_split], args.tokenizer_model,
               args.pretrained_model_path)
    model = model.to(device)
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    flags = vars(args)
    progress = (resume(args.last_filepath, flags, train_split.sha256, model, optimizer, device) if args.resume
                else Progress())
    if progress.epoch >= 0 and not Path(args.filepath).is_file():
        raise InputError(f"--resume: {args.last_filepath} goes on after epoch {progress.epoch}, but the best "
                         f"checkpoint {args.filepath} of its run is missing: put it back, or leave out --resume to "
                         "start over")
    if progress.epoch >= 0:
        drop_metrics_after(progress, args.option, args.epochs, args.lr)
    trained_model = distributed(model, device)
    train_data = LlamaDataset(train_split, tokenizer.pad_id, device)
    dev_data = LlamaDataset(dev, tokenizer.pad_id, device)
    dev_batches = eval_order(dev_data.lengths, args.batch_size, args.group_by_length, args.causal)
    for epoch in range(progress.epoch + 1, args.epochs):
        stats = train_epoch(trained_model, optimizer, train_data, epoch, args.seed, args.batch_size,
                            args.group_by_length, args.dtype, device)
        failure = divergence_reason(stats["loss"], model)
        if failure:
            raise InputError(f"epoch {epoch}: {failure}, so nothing of this epoch was saved; try a lower --lr than "
                             f"{args.lr}")
        rng = gather(rng_state(device))
        if rank == 0:
            dev_preds = model_eval(model, dev_data, dev_batches, args.dtype, device)
            dev_acc, dev_f1 = scores(dev.labels, dev_preds)
            if dev_acc > progress.best_dev_acc:
                save_model(args.filepath, checkpoint_data(model, flags, config, label_names, epoch, dev_acc), optimizer)
            record = {"run": progress.run, "option": args.option, "epochs": args.epochs, "lr": args.lr,
                      "epoch": epoch, "loss": stats["loss"],
                      "train_acc": stats["acc"], "dev_acc": dev_acc, "train_f1": stats["f1"],
                      "dev_f1": dev_f1, "seconds": stats["seconds"],
                      "examples_per_s": stats["examples_per_s"], "padded": stats["padded"]}
            metrics.append(METRICS, record)
            progress = Progress(epoch, max(progress.best_dev_acc, dev_acc), progress.run, progress.metrics + [record])
            saved = checkpoint_data(model, flags, config, label_names, epoch, progress.best_dev_acc)
            save_last(args.last_filepath, saved, optimizer, progress, rng, train_split.sha256)
            print(f"epoch {epoch}: train loss :: {stats['loss']:.3f}, train acc :: {stats['acc']:.3f}, "
                  f"dev acc :: {dev_acc:.3f}, {stats['seconds']:.1f}s, {stats['examples_per_s']:.1f} examples/s, "
                  f"padding {stats['padded']:.1%}")
        barrier()
    return progress.metrics


def test(args: argparse.Namespace, tokenizer: Tokenizer, dev: Split, test_split: Split,
         device: torch.device) -> dict[str, list[int]]:
    """Reload the best checkpoint and write its dev and test predictions; return them. LoRA adapters are merged
    into the base weights first (lora.merge_lora), which changes no prediction and makes no extra work per token."""
    if not Path(args.filepath).is_file():
        raise InputError(f"{args.filepath}: the best checkpoint of this run is missing (moved or deleted while it "
                         "ran?), so there is no model to write the predictions of")
    saved = read_classifier_checkpoint(args.filepath)
    model = build_classifier(ClassifierConfig(**saved["model_config"]))
    load_weights(model, saved, args.filepath)
    if "lora" in saved:
        merge_lora(model)
    model = model.to(device)
    print(f"load model from {args.filepath} (epoch {saved['epoch']}, dev acc {saved['best_dev_acc']:.3f})")
    outputs = {"dev": (dev, args.dev_out), "test": (test_split, args.test_out)}
    return evaluate_and_write(model, outputs, tokenizer, args.batch_size, args.group_by_length, args.causal,
                              args.dtype, device)


# ---- command line ----
MAX_SEED = 2**31 - 1  # NumPy takes seeds below 2**32, and process r seeds with --seed + r
DATA_FLAGS = ("--train", "--dev", "--test", "--label-names")
DERIVED = {"dev": "--dev", "test": "--test", "label_names": "--label-names", "dev_out": "--dev_out",
           "test_out": "--test_out"}


def derived_paths(train: str, option: str) -> dict[str, str] | None:
    """The defaults of the DERIVED flags from --train NAME-train.txt and --option; None where --train is not named
    so."""
    train_path = Path(train)
    name = train_path.name.removesuffix("-train.txt")
    if name == train_path.name:
        return None
    kind = {"finetune": "finetuning", "lora": "lora"}.get(option, "prompting")
    return {"dev": str(train_path.with_name(f"{name}-dev.txt")), "test": str(train_path.with_name(f"{name}-test.txt")),
            "label_names": str(train_path.with_name(f"{name}-label-mapping.json")),
            "dev_out": f"{name}-dev-{kind}-output.txt", "test_out": f"{name}-test-{kind}-output.txt"}


def arg_parser() -> argparse.ArgumentParser:
    """The command line's flags, with the course's names and defaults."""
    parser = argparse.ArgumentParser(prog="run_llama.py", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=str, default="data/cfimdb-train.txt",
                        help="The training data, one `label ||| sentence` per line (default: %(default)s).")
    parser.add_argument("--dev", type=str, help="The dev data (default: NAME-dev.txt beside --train NAME-train.txt).")
    parser.add_argument("--test", type=str,
                        help="The test data (default: NAME-test.txt beside --train NAME-train.txt).")
    parser.add_argument("--label-names", type=str,
                        help="The JSON list of label names (default: NAME-label-mapping.json beside --train).")
    parser.add_argument("--pretrained-model-path", type=str, default="stories42M.pt",
                        help="The pretrained Llama checkpoint (default: %(default)s).")
    parser.add_argument("--tokenizer-model", type=str, default="tokenizer.model",
                        help="The sentencepiece tokenizer (default: %(default)s).")
    parser.add_argument("--max_sentence_len", type=int, default=None,
                        help="Truncate sentences to this many tokens (default: no truncation).")
    parser.add_argument("--seed", type=int, default=1337, help="The seed of every random draw (default: %(default)s).")
    parser.add_argument("--epochs", type=int, default=5, help="Epochs of training (default: %(default)s).")
    parser.add_argument("--option", type=str, choices=("generate", "prompt", "finetune", "lora"), default="generate",
                        help="generate: continue the course's prompt; prompt: zero-shot classification, the Llama "
                             "parameters are frozen; finetune: Llama parameters are updated; lora: LoRA adapters on "
                             "Llama's attention projections are trained, Llama is frozen (default: %(default)s).")
    parser.add_argument("--use_gpu", action="store_true", help="Run on CUDA instead of the CPU.")
    parser.add_argument("--generated_sentence_low_temp_out", type=str, default="generated-sentence-temp-0.txt",
                        help="Where generate writes its continuation at temperature 0 (default: %(default)s).")
    parser.add_argument("--generated_sentence_high_temp_out", type=str, default="generated-sentence-temp-1.txt",
                        help="Where generate writes its continuation at temperature 1 (default: %(default)s).")
    parser.add_argument("--prompt", type=str,
                        help="generate: the text to continue (default: the course's prompt about John Wick).")
    parser.add_argument("--max_new_tokens", type=int, default=75,
                        help="generate: how many tokens to add to the prompt (default: %(default)s).")
    parser.add_argument("--temperature", type=float, nargs="+", action="extend",
                        help="generate: a continuation at each of these temperatures, greedy at 0 (the flag may be "
                             "repeated; default: 0.0 1.0, as the course). 0 and 1 go to the two files above, "
                             "another T to generated-sentence-temp-T.txt.")
    parser.add_argument("--top_k", type=int, default=None,
                        help="generate: sample only from the K likeliest tokens (default: from all of them).")
    parser.add_argument("--stream", action="store_true",
                        help="generate: print the tokens as they are drawn (always so when stdout is a terminal).")
    outputs = ("Where the {} predictions go (default: NAME-{}-prompting-output.txt; NAME-{}-finetuning-output.txt "
               "with --option finetune, NAME-{}-lora-output.txt with --option lora).")
    parser.add_argument("--dev_out", type=str, help=outputs.format("dev", "dev", "dev", "dev"))
    parser.add_argument("--test_out", type=str, help=outputs.format("test", "test", "test", "test"))
    parser.add_argument("--batch_size", type=int, default=8,
                        help="Sentences per batch: for SST 64, for CFIMDB 8 fit a 12GB GPU; on torchrun the global "
                             "batch, split among the processes (default: %(default)s).")
    parser.add_argument("--hidden_dropout_prob", type=float, default=0.3,
                        help="Dropout before the classifier head (default: %(default)s).")
    parser.add_argument("--lr", type=float, default=2e-5, help="The learning rate (default: %(default)s).")
    parser.add_argument("--group_by_length", action="store_true",
                        help="Batch training sentences of similar length (less padding, so faster; it changes the "
                             "results); with --causal evaluation batches too, where it changes no prediction.")
    parser.add_argument("--causal", action="store_true",
                        help="Compute Llama 2's causal attention (mask, KV cache, classifiers read the last real "
                             "token) instead of the course's reference, whose attention has no mask.")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: compute in bfloat16 under torch.autocast, the weights staying float32 "
                             "(default: %(default)s).")
    parser.add_argument("--lora_rank", type=int, default=4,
                        help="--option lora: the rank r of each adapter (default: %(default)s).")
    parser.add_argument("--lora_alpha", type=float, default=1.0,
                        help="--option lora: the adapters' scale α, the update being (α/r)·B·A·x "
                             "(default: %(default)s).")
    parser.add_argument("--lora_dropout", type=float, default=0.0,
                        help="--option lora: dropout on the adapters' input (default: %(default)s).")
    parser.add_argument("--lora_all_projections", action="store_true",
                        help="--option lora: adapt all four attention projections, not only query and value.")
    parser.add_argument("--resume", action="store_true",
                        help="finetune, lora: go on from the last checkpoint {option}-{epochs}-{lr}-last.pt, if any.")
    return parser


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed only: validate_args then checks it and fills in the paths."""
    return arg_parser().parse_args(argv)


def parse_args(argv: list[str] | None = None, check_files: bool = True) -> argparse.Namespace:
    """The command line, parsed and validated (its files too, unless not `check_files`): what the run works with."""
    args = get_args(argv)
    validate_args(args, check_files)
    return args


def validate_args(args: argparse.Namespace, check_files: bool = True) -> None:
    """Check every flag, fill in the paths left out, and check the run's files (files.py), before any work.

    The paths: --dev, --test, --label-names, --dev_out and --test_out from --train (derived_paths), and
    args.filepath, args.last_filepath and args.plot_filepath, the best and last checkpoints and the plot of a
    fine-tune, from --option, --epochs and --lr. A flag out of range, a path that cannot be derived, an output that
    is an input of the run or another output (after resolving links) exits as argparse does with a usage error; a
    folder given as a data file, or an output that cannot be written, is an InputError.
    """
    parser = arg_parser()
    for name in ("epochs", "batch_size", "max_sentence_len", "max_new_tokens", "top_k"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed must be in 0 … {MAX_SEED}, got {args.seed}")
    if not 0.0 < args.lr < math.inf:
        parser.error(f"--lr must be a positive finite number, got {args.lr}")
    if not 0.0 <= args.hidden_dropout_prob < 1.0:
        parser.error(f"--hidden_dropout_prob must be in [0, 1), got {args.hidden_dropout_prob}")
    args.temperature = args.temperature or [0.0, 1.0]
    for t in args.temperature:
        if not 0.0 <= t < math.inf or args.temperature.count(t) > 1:
            parser.error(f"--temperature must be finite, at least 0 and each given once, got {t}")
    if problem := lora_problem(args.lora_rank, args.lora_alpha, args.lora_dropout):
        parser.error(f"--{problem}")
    left_out = [key for key in DERIVED if getattr(args, key) is None]
    derived = derived_paths(args.train, args.option)
    if derived:
        for key in left_out:
            setattr(args, key, derived[key])
    elif left_out and args.option != "generate":
        parser.error(f"--train {args.train} is not named NAME-train.txt, so "
                     f"{', '.join(DERIVED[key] for key in left_out)} cannot be derived from it: pass them")
    name = f"{args.option}-{args.epochs}-{args.lr}"
    args.filepath, args.last_filepath, args.plot_filepath = f"{name}.pt", f"{name}-last.pt", f"{name}.png"
    if not check_files:
        return
    inputs = {"--pretrained-model-path": args.pretrained_model_path, "--tokenizer-model": args.tokenizer_model}
    if args.option == "generate":
        flags = {0.0: "--generated_sentence_low_temp_out", 1.0: "--generated_sentence_high_temp_out"}
        outputs = {flags.get(t, f"--temperature {t:g}"): path for t, path in generation_outputs(args).items()}
    else:
        inputs |= {"--train": args.train, "--dev": args.dev, "--test": args.test, "--label-names": args.label_names}
        outputs = {"--dev_out": args.dev_out, "--test_out": args.test_out}
    if args.option in ("finetune", "lora"):  # written, though --resume reads one and metrics.jsonl is appended to
        outputs |= {"the best checkpoint": args.filepath, "the last checkpoint": args.last_filepath,
                    "the metrics file": METRICS, "the plot": args.plot_filepath}
    problem = files.clash(inputs, outputs)
    if problem:
        parser.error(problem)
    for flag in DATA_FLAGS:
        problem = files.unreadable(inputs[flag]) if flag in inputs else None
        if problem:
            raise InputError(f"cannot read {flag} {inputs[flag]}: {problem}")
    for role, path in outputs.items():
        problem = files.output_problem(path)
        if problem:
            raise InputError(f"cannot write {role} {path}: {problem}")


def get_device(use_gpu: bool, dtype: str) -> torch.device:
    """CUDA with --use_gpu (GPU LOCAL_RANK under torchrun), else the CPU; refused where --use_gpu or --dtype asks
    what the hardware lacks."""
    if use_gpu and not torch.cuda.is_available():
        raise InputError("--use_gpu: PyTorch sees no CUDA GPU here (run without --use_gpu to use the CPU)")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_gpu else torch.device("cpu")
    if dtype == "bfloat16":
        if not torch.amp.is_autocast_available(device.type):
            raise InputError(f"--dtype bfloat16: PyTorch has no autocast for {device.type}; use --dtype float32")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise InputError(f"--dtype bfloat16: the GPU {torch.cuda.get_device_name()} has no bfloat16 "
                             "arithmetic; use --dtype float32")
    return device


def main(argv: list[str] | None = None) -> None:
    """Run the --option; started by torchrun, as one of its processes (finetune and lora only). Before any work,
    the command line is validated, and the files the run reads that are missing and known (assets.py) are fetched."""
    args = parse_args(argv)
    device = get_device(args.use_gpu, args.dtype)
    if launched_by_torchrun() and args.option not in ("finetune", "lora"):
        raise InputError(f"--option {args.option} runs as a single process, but {', '.join(TORCHRUN_ENV)} are set, "
                         "as torchrun sets them: start it with python, not torchrun, and with those unset")
    read = [args.pretrained_model_path, args.tokenizer_model]
    if args.option != "generate":
        read += [args.label_names, args.dev, args.test] + ([args.train] if args.option != "prompt" else [])
    for path in read:
        assets.ensure(path)
    if launched_by_torchrun():
        init_distributed(device)
    try:
        with printing_on_rank_0():
            run_option(args, device)
    except KeyboardInterrupt:
        resumable = args.option in ("finetune", "lora") and Path(args.last_filepath).is_file()
        sys.exit("interrupted" + (f": {args.last_filepath} holds the last finished epoch; run the same command with "
                                  "--resume to go on from it" if resumable else ""))
    except NonFiniteError as e:
        raise InputError(f"{args.pretrained_model_path}: {e}") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_option(args: argparse.Namespace, device: torch.device) -> None:
    """The --option's work, in this process."""
    rank, _ = rank_and_world_size()
    print(f"args: {vars(args)}")
    if args.group_by_length and not args.causal:
        print("note: --group_by_length groups the training batches only: without --causal, evaluation keeps the "
              "course's batches, because there the padding changes the predictions")
    seed_everything(args.seed + rank)  # the processes' dropout masks differ; the batches come from --seed and epoch
    tokenizer = Tokenizer(args.max_sentence_len, tokenizer_model=args.tokenizer_model)

    if args.option == "generate":
        llama = load_pretrained(args.pretrained_model_path, causal=args.causal, device=device)
        print(f"load model from {args.pretrained_model_path}")
        check_fits(llama, tokenizer, [], args.tokenizer_model, args.pretrained_model_path)
        prompt = PREFIX if args.prompt is None else args.prompt
        length, max_seq_len = len(tokenizer.encode(prompt, bos=True, eos=False)), llama.config.max_seq_len
        if length > max_seq_len:
            raise InputError(f"--prompt: {length} tokens, more than the model's max_seq_len={max_seq_len}: pass a "
                             "shorter prompt")
        for temperature, outfile in generation_outputs(args).items():
            generate_sentence(args, prompt, outfile, args.max_new_tokens, temperature, llama)
        return

    label_names = read_label_names(args.label_names)
    num_labels = len(label_names)
    if args.option == "prompt":  # the sentence is truncated to --max_sentence_len, the prompt after it is not
        suffix = prompt_suffix(label_names)
        dev = create_data(args.dev, tokenizer, num_labels, suffix)
        test_split = create_data(args.test, tokenizer, num_labels, suffix, placeholders=True)
        test_with_prompting(args, tokenizer, label_names, dev, test_split, device)
    else:
        train_split = create_data(args.train, tokenizer, num_labels)
        dev = create_data(args.dev, tokenizer, num_labels)
        test_split = create_data(args.test, tokenizer, num_labels, placeholders=True)
        records = train(args, tokenizer, label_names, train_split, dev, test_split, device)
        if rank == 0:
            dev_preds = test(args, tokenizer, dev, test_split, device)["dev"]
            metrics.plot(records, dev.labels, dev_preds, label_names, args.plot_filepath)


if __name__ == "__main__":
    files.cli(main, (InputError, CheckpointError, TokenizerError, FileNotFoundError, assets.AssetError,
                     LaunchError))
