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
matplotlib, draw {option}-{epochs}-{lr}.png (metrics.py). Before any work, options.validate_args checks every flag and
refuses an output that is an input of the run or another output, or that cannot be written.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

import assets
import files
import metrics
from checkpoint import CheckpointError, read_classifier_checkpoint
from classifier import LlamaZeroShotClassifier
from config import ATTENTION_PROJECTIONS, DEFAULT_TARGETS, ClassifierConfig
from llama import Llama, NonFiniteError, load_pretrained
from lora import merge_lora
from optimizer import AdamW
from options import (METRICS, PREFIX, arg_parser, autocast, generation_outputs, get_device, seed_everything,
                     validate_args)
from splits import (PLACEHOLDER, InputError, Split, check_fits, eval_order, padded_fraction, prompt_suffix,
                    read_label_names, report, scores, write_predictions_to_file)
from tokenizer import Tokenizer, TokenizerError
from trainer import (TORCHRUN_ENV, LaunchError, Progress, barrier, build_classifier, checkpoint_data,
                     distributed, divergence_reason, drop_metrics_after, gather, init_distributed,
                     launched_by_torchrun, load_weights, printing_on_rank_0, rank_and_world_size, resume, rng_state,
                     save_last, save_model, train_epoch)


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
    files.write_text(outfile, sentence)
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


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed only: validate_args then checks it and fills in the paths."""
    return arg_parser(__doc__).parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the --option; started by torchrun, as one of its processes (finetune and lora only). Before any work,
    the command line is validated, and the files the run reads that are missing and known (assets.py) are fetched."""
    args = get_args(argv)
    validate_args(args)
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
    rank, _ = rank_and_world_size()
    try:
        with printing_on_rank_0():
            print(f"args: {vars(args)}")
            if args.group_by_length and not args.causal:
                print("note: --group_by_length groups the training batches only: without --causal, evaluation "
                      "keeps the course's batches, because there the padding changes the predictions")
            seed_everything(args.seed + rank)  # the processes' dropout masks differ; batches come from --seed, epoch
            tokenizer = Tokenizer(args.max_sentence_len, tokenizer_model=args.tokenizer_model)
            if args.option == "generate":
                llama = load_pretrained(args.pretrained_model_path, causal=args.causal, device=device)
                print(f"load model from {args.pretrained_model_path}")
                check_fits(llama, tokenizer, [], args.tokenizer_model, args.pretrained_model_path)
                prompt = PREFIX if args.prompt is None else args.prompt
                length, max_seq_len = len(tokenizer.encode(prompt, bos=True, eos=False)), llama.config.max_seq_len
                if length > max_seq_len:
                    raise InputError(f"--prompt: {length} tokens, more than the model's max_seq_len={max_seq_len}: "
                                     "pass a shorter prompt")
                for temperature, outfile in generation_outputs(args).items():
                    generate_sentence(args, prompt, outfile, args.max_new_tokens, temperature, llama)
                return
            label_names = read_label_names(args.label_names)
            if args.option == "prompt":  # the sentence is truncated to --max_sentence_len, the prompt after it is not
                suffix = prompt_suffix(label_names)
                dev = create_data(args.dev, tokenizer, len(label_names), suffix)
                test_split = create_data(args.test, tokenizer, len(label_names), suffix, placeholders=True)
                test_with_prompting(args, tokenizer, label_names, dev, test_split, device)
                return
            train_split = create_data(args.train, tokenizer, len(label_names))
            dev = create_data(args.dev, tokenizer, len(label_names))
            test_split = create_data(args.test, tokenizer, len(label_names), placeholders=True)
            records = train(args, tokenizer, label_names, train_split, dev, test_split, device)
            if rank == 0:
                dev_preds = test(args, tokenizer, dev, test_split, device)["dev"]
                metrics.plot(records, dev.labels, dev_preds, label_names, args.plot_filepath)
    except KeyboardInterrupt:
        resumable = args.option in ("finetune", "lora") and Path(args.last_filepath).is_file()
        sys.exit("interrupted" + (f": {args.last_filepath} holds the last finished epoch; run the same command with "
                                  "--resume to go on from it" if resumable else ""))
    except NonFiniteError as e:
        raise InputError(f"{args.pretrained_model_path}: {e}") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    files.cli(main, (InputError, CheckpointError, TokenizerError, FileNotFoundError, assets.AssetError,
                     LaunchError))
