"""The course's three tasks on a pretrained Llama: text generation, zero-shot prompting, fine-tuning a classifier.

    python run_llama.py --option generate
    python run_llama.py --option prompt --batch_size 10 --train data/sst-train.txt ...
    python run_llama.py --option finetune --epochs 5 --lr 2e-5 --batch_size 80 --train data/sst-train.txt ...

Data files hold one `label ||| sentence` per line. --dev, --test, --label-names, --dev_out and --test_out default
to the files that go with --train (data/sst-train.txt → data/sst-dev.txt, sst-dev-finetuning-output.txt, ...);
known files that are missing are fetched (see assets.py). Every file is written under a temporary name and then
renamed, so an interrupted run leaves no half-written output.

The fine-tuning checkpoint `finetune-{epochs}-{lr}.pt` is a torch.save of plain data (torch.load(...,
weights_only=True) reads it), written whenever the dev accuracy improves:
    "model_args"    the LlamaConfig fields of the model, as a dict
    "model"         the LlamaEmbeddingClassifier state dict: "llama.*" (course tensor names) and "classifier_head.*"
    "optim"         the AdamW state dict
    "model_config"  the ClassifierConfig fields (pretrained_model_path, num_labels, hidden_dropout_prob, option)
    "label_names"   the label names, label i being label_names[i]
    "args"          vars(args): the command line, plain values only
    "epoch"         the epoch (from 0) after which it was saved
    "best_dev_acc"  the dev accuracy of that epoch
"""
import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

import assets
from checkpoint import write_atomically
from classifier import ClassifierConfig, LlamaEmbeddingClassifier, LlamaZeroShotClassifier
from llama import Llama, load_pretrained
from optimizer import AdamW
from tokenizer import Tokenizer

PREFIX = ("I have wanted to see this thriller for a while, and it didn't disappoint. "
          "Keanu Reeves, playing the hero John Wick, is")
PLACEHOLDER = -1  # the label of an example whose gold label is withheld
GROUP_CHUNK = 50  # --group_by_length sorts within chunks of this many batches


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
    """A data file's sentences, gold labels and token ids, in file order (example i is on line i + 1)."""

    path: str
    sentences: list[str]
    labels: list[int]
    token_ids: list[list[int]]


def create_data(path: str, tokenizer: Tokenizer, num_labels: int, suffix_ids: list[int] | None = None,
                placeholders: bool = False) -> Split:
    """Read `label ||| sentence` lines; the token ids are BOS, the sentence's (at most max_len), then suffix_ids.

    Labels must be 0 … num_labels − 1, or PLACEHOLDER where `placeholders` allows it.
    """
    sentences, labels, token_ids = [], [], []
    with open(assets.ensure(path), "rb") as f:
        for lineno, raw in enumerate(f, 1):
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
            sentences.append(sentence)
            labels.append(label)
            token_ids.append(tokenizer.encode(sentence, bos=True, eos=False) + (suffix_ids or []))
    if not sentences:
        raise InputError(f"{path}: empty file: no 'label ||| sentence' lines")
    print(f"load {len(sentences)} data from {path}")
    return Split(path, sentences, labels, token_ids)


def read_label_names(path: str) -> list[str]:
    """The JSON list of label names; label i is named label_names[i]."""
    try:
        with open(assets.ensure(path), encoding="utf-8") as f:
            label_names = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not (isinstance(label_names, list) and len(label_names) >= 2
            and all(isinstance(name, str) and name.strip() for name in label_names)):
        raise InputError(f"{path}: expected a JSON list of at least two label names, found {label_names!r}")
    return label_names


def prompt_suffix(label_names: list[str]) -> str:
    """The course's prompt: `Is this movie a or b? This movie is ` (`a, b, c, or d` for more labels)."""
    if len(label_names) == 2:
        labels = " or ".join(label_names)
    else:
        labels = ", ".join(label_names[:-1]) + ", or " + label_names[-1]
    return f"Is this movie {labels}? This movie is "


def batch_order(lengths: list[int], batch_size: int, shuffle: bool, group_by_length: bool) -> list[list[int]]:
    """The example indices of each batch.

    shuffle draws a permutation from torch's global generator (seeded by --seed). group_by_length sorts the
    examples by length within chunks of GROUP_CHUNK batches (all of them when not shuffling), so that a batch
    holds sentences of similar length and little padding; shuffled, the batches are then put in random order.
    """
    n = len(lengths)
    order = torch.randperm(n).tolist() if shuffle else list(range(n))
    if group_by_length:
        chunk = batch_size * GROUP_CHUNK if shuffle else n
        chunks = (order[start : start + chunk] for start in range(0, n, chunk))
        order = [i for c in chunks for i in sorted(c, key=lengths.__getitem__)]
    batches = [order[start : start + batch_size] for start in range(0, n, batch_size)]
    if shuffle and group_by_length:
        batches = [batches[i] for i in torch.randperm(len(batches)).tolist()]
    return batches


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

    def batches(self, order: list[list[int]]) -> Iterator[tuple[torch.Tensor, ...]]:
        """(example indices, token ids, lengths, labels) of each batch in `order`, all on the device."""
        index = torch.tensor([i for batch in order for i in batch]).to(self.token_ids.device)
        start = 0
        for batch in order:
            rows = index[start : start + len(batch)]
            start += len(batch)
            width = max(self.lengths[i] for i in batch)
            yield rows, self.token_ids[rows, :width], self.device_lengths[rows], self.labels[rows]


# ---- metrics ----
def macro_f1(y_true: list[int], y_pred: list[int]) -> float:
    """The mean over classes (those in y_true or y_pred) of F1 = 2·TP / (2·TP + FP + FN)."""
    scores = []
    for c in sorted(set(y_true) | set(y_pred)):
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        wrong = sum((t == c) != (p == c) for t, p in zip(y_true, y_pred))  # FP + FN
        scores.append(2 * tp / (2 * tp + wrong))
    return sum(scores) / len(scores)


def accuracy(y_true: list[int], y_pred: list[int]) -> float:
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def report(name: str, split: Split, preds: list[int]) -> str:
    """Accuracy and macro-F1, or why they mean nothing: placeholder labels, or one label throughout."""
    if PLACEHOLDER in split.labels:
        return (f"{name} acc :: meaningless: {split.path} has placeholder labels ({PLACEHOLDER}); "
                f"its {len(preds)} predictions are written all the same")
    line = f"{name} acc :: {accuracy(split.labels, preds):.3f}, macro-F1 :: {macro_f1(split.labels, preds):.3f}"
    if len(set(split.labels)) == 1:
        line += (f" (every label in {split.path} is {split.labels[0]}: if these are placeholders, as in the "
                 "course's cfimdb-test.txt, this accuracy is meaningless)")
    return line


# ---- running the models ----
def autocast(args: argparse.Namespace, device: torch.device) -> torch.autocast:
    """bfloat16 autocast with --dtype bfloat16, else a context that changes nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")


def check_fits(llama: Llama, tokenizer: Tokenizer, args: argparse.Namespace, splits: list[Split]) -> None:
    """Refuse a tokenizer with more pieces than the model has embeddings, and sentences longer than its context."""
    vocab_size, max_seq_len = llama.config.vocab_size, llama.config.max_seq_len
    if tokenizer.n_words > vocab_size:
        raise InputError(f"the tokenizer {args.tokenizer_model} has {tokenizer.n_words} pieces, more than the "
                         f"{vocab_size} embeddings of the model {args.pretrained_model_path}: they do not belong "
                         "together (pass the model's own tokenizer with --tokenizer-model)")
    for split in splits:
        for i, ids in enumerate(split.token_ids):
            if len(ids) > max_seq_len:
                raise InputError(f"{split.path}:{i + 1}: {len(ids)} tokens, more than the model's max_seq_len="
                                 f"{max_seq_len}; pass --max_sentence_len to truncate sentences")


@torch.inference_mode()
def model_eval(model: torch.nn.Module, data: LlamaDataset, batches: list[list[int]], args: argparse.Namespace,
               device: torch.device) -> list[int]:
    """The model's prediction (argmax) for every example, in file order whatever the batches."""
    model.eval()
    preds = torch.empty(len(data), dtype=torch.long, device=device)
    for rows, token_ids, lengths, _ in tqdm(data.batches(batches), total=len(batches), desc="eval"):
        with autocast(args, device):
            preds[rows] = model(token_ids, lengths).argmax(dim=-1)
    return preds.tolist()


def write_text(path: str, text: str) -> None:
    write_atomically(Path(path), lambda f: f.write(text.encode("utf-8")))


def write_predictions_to_file(outfile: str, preds: list[int], sentences: list[str]) -> None:
    write_text(outfile, "".join(f"{pred} ||| {sentence}\n" for pred, sentence in zip(preds, sentences)))
    print(f"wrote {len(preds)} predictions to {outfile}")


def evaluate_and_write(model: torch.nn.Module, splits: dict[str, tuple[Split, str]], tokenizer: Tokenizer,
                       args: argparse.Namespace, device: torch.device) -> None:
    """For each split name → (split, output file): predict, print the report, write `<pred> ||| <sentence>` lines."""
    for name, (split, outfile) in splits.items():
        data = LlamaDataset(split, tokenizer.pad_id, device)
        batches = batch_order(data.lengths, args.batch_size, shuffle=False, group_by_length=args.group_by_length)
        start = time.perf_counter()
        preds = model_eval(model, data, batches, args, device)
        seconds = time.perf_counter() - start
        print(f"{name}: {len(data)} examples in {seconds:.1f}s ({len(data) / seconds:.1f} examples/s), "
              f"padding {padded_fraction(data.lengths, batches):.1%}")
        print(report(name, split, preds))
        write_predictions_to_file(outfile, preds, split.sentences)


# ---- the three options ----
def generate_sentence(llama: Llama, tokenizer: Tokenizer, prefix: str, outfile: str, device: torch.device,
                      max_new_tokens: int = 75, temperature: float = 0.0) -> None:
    """Continue `prefix` (greedy at temperature 0.0, else sampled); print the text and write it to outfile."""
    x = torch.tensor([tokenizer.encode(prefix, bos=True, eos=False)], device=device)
    y = llama.generate(x, max_new_tokens, temperature=temperature)
    sentence = tokenizer.decode(y[0].tolist())
    print(f"Temperature is {temperature}")
    print(sentence)
    print("---------------")
    write_text(outfile, sentence)
    print(f"Wrote generated sentence to {outfile}.")


def test_with_prompting(args: argparse.Namespace, tokenizer: Tokenizer, label_names: list[str],
                        dev: Split, test_split: Split, device: torch.device) -> None:
    """Zero-shot classification of dev and test by the prompt's continuation."""
    config = ClassifierConfig(args.pretrained_model_path, len(label_names), args.hidden_dropout_prob, args.option)
    model = LlamaZeroShotClassifier(config, tokenizer, label_names)
    check_fits(model.llama, tokenizer, args, [dev, test_split])
    model = model.to(device)
    outputs = {"dev": (dev, args.dev_out), "test": (test_split, args.test_out)}
    evaluate_and_write(model, outputs, tokenizer, args, device)


def train_epoch(model: LlamaEmbeddingClassifier, optimizer: AdamW, data: LlamaDataset, epoch: int,
                args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """One pass over the training set in fresh batches, loss = Σ nll / batch_size per batch (the course's).

    Returns the mean batch loss, the accuracy of the predictions made while training (dropout on), the seconds,
    examples per second and the padded fraction of the computed token positions.
    """
    model.train()
    batches = batch_order(data.lengths, args.batch_size, shuffle=True, group_by_length=args.group_by_length)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    start = time.perf_counter()
    for _, token_ids, lengths, labels in tqdm(data.batches(batches), total=len(batches), desc=f"train-{epoch}"):
        optimizer.zero_grad()
        with autocast(args, device):
            log_probs = model(token_ids, lengths)
        loss = F.nll_loss(log_probs, labels, reduction="sum") / args.batch_size
        loss.backward()
        optimizer.step()
        total_loss += loss.detach()
        correct += (log_probs.argmax(dim=-1) == labels).sum()
    loss, acc = total_loss.item() / len(batches), correct.item() / len(data)  # waits for the device to finish
    seconds = time.perf_counter() - start
    return {"loss": loss, "acc": acc, "seconds": seconds, "examples_per_s": len(data) / seconds,
            "padded": padded_fraction(data.lengths, batches)}


def save_model(model: LlamaEmbeddingClassifier, optimizer: AdamW, args: argparse.Namespace,
               config: ClassifierConfig, label_names: list[str], epoch: int, best_dev_acc: float) -> None:
    """Write the checkpoint described in the module docstring to args.filepath, atomically."""
    checkpoint = {
        "model_args": asdict(model.llama.config),
        "model": model.state_dict(),
        "optim": optimizer.state_dict(),
        "model_config": asdict(config),
        "label_names": label_names,
        "args": vars(args),
        "epoch": epoch,
        "best_dev_acc": best_dev_acc,
    }
    write_atomically(Path(args.filepath), lambda f: torch.save(checkpoint, f))
    print(f"save the model to {args.filepath}")


def train(args: argparse.Namespace, tokenizer: Tokenizer, label_names: list[str], train_split: Split,
          dev: Split, test_split: Split, device: torch.device) -> None:
    """Fine-tune LlamaEmbeddingClassifier with AdamW, keeping the checkpoint of the best dev accuracy."""
    config = ClassifierConfig(args.pretrained_model_path, len(label_names), args.hidden_dropout_prob, args.option)
    model = LlamaEmbeddingClassifier(config)
    check_fits(model.llama, tokenizer, args, [train_split, dev, test_split])
    model = model.to(device)
    optimizer = AdamW(model.parameters(), lr=args.lr)
    train_data = LlamaDataset(train_split, tokenizer.pad_id, device)
    dev_data = LlamaDataset(dev, tokenizer.pad_id, device)
    dev_batches = batch_order(dev_data.lengths, args.batch_size, shuffle=False, group_by_length=args.group_by_length)
    best_dev_acc = -1.0
    for epoch in range(args.epochs):
        stats = train_epoch(model, optimizer, train_data, epoch, args, device)
        dev_acc = accuracy(dev.labels, model_eval(model, dev_data, dev_batches, args, device))
        if dev_acc > best_dev_acc:
            best_dev_acc = dev_acc
            save_model(model, optimizer, args, config, label_names, epoch, best_dev_acc)
        print(f"epoch {epoch}: train loss :: {stats['loss']:.3f}, train acc :: {stats['acc']:.3f}, "
              f"dev acc :: {dev_acc:.3f}, {stats['seconds']:.1f}s, {stats['examples_per_s']:.1f} examples/s, "
              f"padding {stats['padded']:.1%}")


def test(args: argparse.Namespace, tokenizer: Tokenizer, dev: Split, test_split: Split, device: torch.device) -> None:
    """Reload the best fine-tuned checkpoint and write its dev and test predictions."""
    saved = torch.load(args.filepath, map_location="cpu", weights_only=True)
    model = LlamaEmbeddingClassifier(ClassifierConfig(**saved["model_config"]))
    model.load_state_dict(saved["model"])
    model = model.to(device)
    print(f"load model from {args.filepath} (epoch {saved['epoch']}, dev acc {saved['best_dev_acc']:.3f})")
    outputs = {"dev": (dev, args.dev_out), "test": (test_split, args.test_out)}
    evaluate_and_write(model, outputs, tokenizer, args, device)


# ---- command line ----
DERIVED = {"dev": "--dev", "test": "--test", "label_names": "--label-names", "dev_out": "--dev_out",
           "test_out": "--test_out"}


def derive_paths(args: argparse.Namespace) -> list[str]:
    """Fill in the DERIVED flags left out from --train NAME-train.txt; return those that cannot be derived."""
    train = Path(args.train)
    name = train.name.removesuffix("-train.txt")
    kind = "finetuning" if args.option == "finetune" else "prompting"
    derived = {"dev": str(train.with_name(f"{name}-dev.txt")), "test": str(train.with_name(f"{name}-test.txt")),
               "label_names": str(train.with_name(f"{name}-label-mapping.json")),
               "dev_out": f"{name}-dev-{kind}-output.txt", "test_out": f"{name}-test-{kind}-output.txt"}
    missing = []
    for key, value in derived.items():
        if getattr(args, key) is None:
            if name == train.name:
                missing.append(DERIVED[key])
            else:
                setattr(args, key, value)
    return missing


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=str, default="data/cfimdb-train.txt")
    parser.add_argument("--dev", type=str, help="default: NAME-dev.txt beside --train NAME-train.txt")
    parser.add_argument("--test", type=str, help="default: NAME-test.txt beside --train NAME-train.txt")
    parser.add_argument("--label-names", type=str, help="default: NAME-label-mapping.json beside --train")
    parser.add_argument("--pretrained-model-path", type=str, default="stories42M.pt")
    parser.add_argument("--tokenizer-model", type=str, default="tokenizer.model")
    parser.add_argument("--max_sentence_len", type=int, default=None, help="truncate sentences to this many tokens")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--option", type=str, choices=("generate", "prompt", "finetune"), default="generate",
                        help="prompt: the Llama parameters are frozen; finetune: Llama parameters are updated")
    parser.add_argument("--use_gpu", action="store_true")
    parser.add_argument("--generated_sentence_low_temp_out", type=str, default="generated-sentence-temp-0.txt")
    parser.add_argument("--generated_sentence_high_temp_out", type=str, default="generated-sentence-temp-1.txt")
    outputs = "default: NAME-{}-prompting-output.txt, or NAME-{}-finetuning-output.txt with --option finetune"
    parser.add_argument("--dev_out", type=str, help=outputs.format("dev", "dev"))
    parser.add_argument("--test_out", type=str, help=outputs.format("test", "test"))
    parser.add_argument("--batch_size", type=int, default=8, help="sst: 64, cfimdb: 8 can fit a 12GB GPU")
    parser.add_argument("--hidden_dropout_prob", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=2e-5, help="learning rate")
    parser.add_argument("--group_by_length", action="store_true",
                        help="batch sentences of similar length (less padding, so faster; changes the results)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: compute in bfloat16 under torch.autocast (the weights stay float32)")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "max_sentence_len"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not 0.0 <= args.hidden_dropout_prob < 1.0:
        parser.error(f"--hidden_dropout_prob must be in [0, 1), got {args.hidden_dropout_prob}")
    missing = derive_paths(args)
    if missing and args.option != "generate":
        parser.error(f"--train {args.train} is not named NAME-train.txt, so {', '.join(missing)} cannot be derived "
                     "from it: pass them")
    args.filepath = f"{args.option}-{args.epochs}-{args.lr}.pt"  # the fine-tuning checkpoint
    return args


def get_device(args: argparse.Namespace) -> torch.device:
    """CUDA with --use_gpu, else the CPU; refused where --use_gpu or --dtype asks what the hardware lacks."""
    if args.use_gpu and not torch.cuda.is_available():
        raise InputError("--use_gpu: PyTorch sees no CUDA GPU here (run without --use_gpu to use the CPU)")
    device = torch.device("cuda" if args.use_gpu else "cpu")
    if args.dtype == "bfloat16":
        if not torch.amp.is_autocast_available(device.type):
            raise InputError(f"--dtype bfloat16: PyTorch has no autocast for {device.type}; use --dtype float32")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise InputError(f"--dtype bfloat16: the GPU {torch.cuda.get_device_name()} has no bfloat16 "
                             "arithmetic; use --dtype float32")
    return device


def output_files(args: argparse.Namespace) -> list[str]:
    """The files this run writes."""
    if args.option == "generate":
        return [args.generated_sentence_low_temp_out, args.generated_sentence_high_temp_out]
    return [args.dev_out, args.test_out] + ([args.filepath] if args.option == "finetune" else [])


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    print(f"args: {vars(args)}")
    seed_everything(args.seed)
    device = get_device(args)
    for path in output_files(args):
        if not Path(path).absolute().parent.is_dir():
            raise InputError(f"cannot write {path}: its folder does not exist")
    tokenizer = Tokenizer(args.max_sentence_len, tokenizer_model=str(assets.ensure(args.tokenizer_model)))

    if args.option == "generate":
        llama = load_pretrained(args.pretrained_model_path, device)
        print(f"load model from {args.pretrained_model_path}")
        check_fits(llama, tokenizer, args, [])
        with autocast(args, device):
            generate_sentence(llama, tokenizer, PREFIX, args.generated_sentence_low_temp_out, device, temperature=0.0)
            generate_sentence(llama, tokenizer, PREFIX, args.generated_sentence_high_temp_out, device, temperature=1.0)
        return

    label_names = read_label_names(args.label_names)
    num_labels = len(label_names)
    if args.option == "prompt":  # the sentence is truncated to --max_sentence_len, the prompt after it is not
        suffix_ids = tokenizer.sp_model.encode(prompt_suffix(label_names))
        dev = create_data(args.dev, tokenizer, num_labels, suffix_ids)
        test_split = create_data(args.test, tokenizer, num_labels, suffix_ids, placeholders=True)
        test_with_prompting(args, tokenizer, label_names, dev, test_split, device)
    else:
        train_split = create_data(args.train, tokenizer, num_labels)
        dev = create_data(args.dev, tokenizer, num_labels)
        test_split = create_data(args.test, tokenizer, num_labels, placeholders=True)
        train(args, tokenizer, label_names, train_split, dev, test_split, device)
        test(args, tokenizer, dev, test_split, device)


if __name__ == "__main__":
    try:
        main()
    except (InputError, FileNotFoundError, assets.AssetError) as e:
        sys.exit(f"error: {e}")
