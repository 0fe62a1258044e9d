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
matplotlib, draw {option}-{epochs}-{lr}.png (metrics.py); a --seed other than the course's enters those names and the
derived predictions' (-seedN). Before any work, options.validate_args checks every flag (refusing those the --option
does not take) and refuses an output that is an input of the run or another output, or that cannot be written; then
the run locks its outputs against other runs in the same folder (files.claim). At a given --seed,
generate, prompt and finetune write the files that the course's own run_llama.py writes on these modules (the same
random draws in the same order: docs/semantics.md).
"""
import argparse
import sys
from pathlib import Path

import torch

import assets
import fast
import files
import metrics
from classifier import LlamaZeroShotClassifier
from files import InputError
from llama import Llama, load_pretrained
from options import PREFIX, TRAINING_OPTIONS, autocast, generation_outputs, get_device, parse_args, run_outputs
from splits import LlamaDataset, check_fits, create_data, prompt_suffix, read_gold, read_label_names
from tokenizer import Tokenizer
from trainer import classifier_config, classifier_for, evaluate, fit, load_classifier, processes


def train(args: argparse.Namespace) -> list[dict]:
    """Fine-tune LlamaEmbeddingClassifier (all of it, or with LoRA its adapters and head) on --train, keeping the
    checkpoint of the best accuracy on --dev (trainer.fit). --test is read too, so that a file that cannot be
    tested is refused before the training, not after it. Returns the run's metrics records."""
    device = get_device(args.use_gpu, args.dtype)
    tokenizer = Tokenizer(args.max_sentence_len, tokenizer_model=args.tokenizer_model)
    label_names = read_label_names(args.label_names)
    model = classifier_for(args, len(label_names))  # first, so that a --lora_rank it cannot take ends it at once
    train_data = create_data(args.train, tokenizer, len(label_names))
    dev_data = create_data(args.dev, tokenizer, len(label_names))
    test_data = create_data(args.test, tokenizer, len(label_names), placeholders=True)
    check_fits(model.llama.config, tokenizer, [train_data, dev_data, test_data], args.tokenizer_model,
               args.pretrained_model_path)
    return fit(args, model.to(device), label_names, LlamaDataset(train_data, tokenizer.pad_id, device),
               LlamaDataset(dev_data, tokenizer.pad_id, device))


def test(args: argparse.Namespace) -> list[int]:
    """Reload the best checkpoint and write its dev and test predictions; return dev's."""
    model = load_classifier(args.filepath).to(get_device(args.use_gpu, args.dtype))
    tokenizer = Tokenizer(args.max_sentence_len, tokenizer_model=args.tokenizer_model)
    num_labels = len(read_label_names(args.label_names))
    dev_data = create_data(args.dev, tokenizer, num_labels)
    test_data = create_data(args.test, tokenizer, num_labels, placeholders=True)
    outputs = {"dev": (dev_data, args.dev_out), "test": (test_data, args.test_out)}
    return evaluate(model, outputs, tokenizer.pad_id, args)["dev"]


def pretrained(path: str, causal: bool, device: torch.device) -> Llama:
    """The pretrained Llama of `path`, with the speed paths installed (fast.py). generate_sentence loads it anew for
    each temperature, as the course's does: a load draws the initial weights from the random generators, so that each
    temperature samples from the point of the generator where the course's run does."""
    print(f"load model from {path}")
    return fast.install(load_pretrained(path, causal=causal, device=device))


def generate_sentence(args: argparse.Namespace, prefix: str, outfile: str, max_new_tokens: int = 75,
                      temperature: float = 0.0) -> None:
    """Continue `prefix` (greedy at temperature 0.0, else sampled, from the --top_k likeliest tokens if given); print
    the text, token by token with --stream or on a terminal, and write it to outfile."""
    device = get_device(args.use_gpu, args.dtype)
    llama = pretrained(args.pretrained_model_path, args.causal, device)
    tokenizer = Tokenizer(args.max_sentence_len, tokenizer_model=args.tokenizer_model)
    check_fits(llama.config, tokenizer, [], args.tokenizer_model, args.pretrained_model_path)
    ids = tokenizer.encode(prefix, bos=True, eos=False)
    if len(ids) > llama.config.max_seq_len:
        raise InputError(f"--prompt: {len(ids)} tokens, more than the model's max_seq_len={llama.config.max_seq_len}:"
                         " pass a shorter prompt")
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


def test_with_prompting(args: argparse.Namespace) -> None:
    """Zero-shot classification of dev and test by the prompt's continuation; the sentence is cut to
    --max_sentence_len, the prompt after it is not."""
    device = get_device(args.use_gpu, args.dtype)
    tokenizer = Tokenizer(args.max_sentence_len, tokenizer_model=args.tokenizer_model)
    label_names = read_label_names(args.label_names)
    suffix = prompt_suffix(label_names)
    dev_data = create_data(args.dev, tokenizer, len(label_names), suffix)
    test_data = create_data(args.test, tokenizer, len(label_names), suffix, placeholders=True)
    model = LlamaZeroShotClassifier(classifier_config(args, len(label_names)), tokenizer, label_names)
    check_fits(model.llama.config, tokenizer, [dev_data, test_data], args.tokenizer_model, args.pretrained_model_path)
    outputs = {"dev": (dev_data, args.dev_out), "test": (test_data, args.test_out)}
    evaluate(model.to(device), outputs, tokenizer.pad_id, args)


def main(argv: list[str] | None = None) -> None:
    """Run the --option; started by torchrun, as one of its processes (finetune and lora only). Before any work,
    the command line is validated, and the files the run reads that are missing and known (assets.py) are fetched."""
    args = parse_args(argv, description=__doc__)
    try:
        with processes(args) as rank, files.claim(run_outputs(args) if rank == 0 else {}):
            reads = [args.pretrained_model_path, args.tokenizer_model]
            if args.option != "generate":
                reads += [args.label_names, args.dev, args.test] + ([args.train] if args.option != "prompt" else [])
            for path in reads:
                assets.ensure(path)
            print(f"args: {vars(args)}")
            if args.option == "generate":
                prefix = PREFIX if args.prompt is None else args.prompt
                for temperature, outfile in generation_outputs(args).items():
                    generate_sentence(args, prefix, outfile, args.max_new_tokens, temperature)
            elif args.option == "prompt":
                test_with_prompting(args)
            else:
                records = train(args)
                if rank == 0:
                    dev_preds = test(args)
                    metrics.plot(records, read_gold(args.dev), dev_preds, read_label_names(args.label_names),
                                 args.plot_filepath)
    except KeyboardInterrupt:
        resumable = args.option in TRAINING_OPTIONS and Path(args.last_filepath).is_file()
        sys.exit("interrupted" + (f": {args.last_filepath} holds the last finished epoch; run the same command with "
                                  "--resume to go on from it" if resumable else ""))
    except fast.NonFiniteError as e:
        raise InputError(f"{args.pretrained_model_path}: {e}") from None


if __name__ == "__main__":
    files.cli(main)
