"""run_llama.py's command line: its flags with the course's names and defaults (arg_parser), their checks and the paths
derived from --train (validate_args, before any work), the seed, the device (CUDA, else Apple's mps, with
--use_gpu) and the dtype."""
import argparse
import math
import os
import random
from pathlib import Path

import numpy as np
import torch

import files
import metrics
from config import DEFAULT_CHECKPOINT, DEFAULT_SEED, DEFAULT_TOKENIZER, lora_problem
from files import InputError

PREFIX = ("I have wanted to see this thriller for a while, and it didn't disappoint. "
          "Keanu Reeves, playing the hero John Wick, is")  # the course's prompt: generate's unless given --prompt
TRAINING_OPTIONS = ("finetune", "lora")  # the options that train, write checkpoints and may run on torchrun
METRICS = metrics.FILE  # where the training options append a line per epoch
MAX_SEED = 2**31 - 1  # NumPy takes seeds below 2**32, and process r seeds with --seed + r
DATA_FLAGS = ("--train", "--dev", "--test", "--label-names")
DERIVED = {"dev": "--dev", "test": "--test", "label_names": "--label-names", "dev_out": "--dev_out",
           "test_out": "--test_out"}
CLASSIFYING = ("prompt", *TRAINING_OPTIONS)
GENERATION = ("--prompt", "--max_new_tokens", "--temperature", "--top_k", "--stream",
              "--generated_sentence_low_temp_out", "--generated_sentence_high_temp_out")
APPLIES_TO = {  # the options each flag means something to, where not all of them; elsewhere it is refused
    **{flag: CLASSIFYING for flag in (*DATA_FLAGS, "--dev_out", "--test_out", "--batch_size", "--max_sentence_len",
                                      "--group_by_length")},
    **{flag: TRAINING_OPTIONS for flag in ("--epochs", "--lr", "--hidden_dropout_prob", "--resume")},
    **{flag: ("lora",) for flag in ("--lora_rank", "--lora_alpha", "--lora_dropout", "--lora_all_projections")},
    **{flag: ("generate",) for flag in GENERATION}}
MIN_TEMPERATURE = 1e-6  # below it sampling is greedy decoding, and logits / T overflow float32 long before 1e-45
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def seed_everything(seed: int = 11711) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA), and make cuDNN deterministic, so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def derived_paths(train: str, option: str, seed: int = DEFAULT_SEED) -> dict[str, str] | None:
    """The defaults of the DERIVED flags from --train NAME-train.txt, --option and, for a fine-tune's predictions,
    --seed (seed_suffix); None where --train is not named so."""
    train_path = Path(train)
    name = train_path.name.removesuffix("-train.txt")
    if name == train_path.name:
        return None
    kind = {"finetune": "finetuning", "lora": "lora"}.get(option, "prompting")
    seed = seed_suffix(seed) if option in TRAINING_OPTIONS else ""  # zero-shot predictions draw nothing at random
    return {"dev": str(train_path.with_name(f"{name}-dev.txt")), "test": str(train_path.with_name(f"{name}-test.txt")),
            "label_names": str(train_path.with_name(f"{name}-label-mapping.json")),
            "dev_out": f"{name}-dev-{kind}-output{seed}.txt", "test_out": f"{name}-test-{kind}-output{seed}.txt"}


def arg_parser(description: str | None = None) -> argparse.ArgumentParser:
    """run_llama.py's flags, with the course's names and defaults; `description` heads its --help."""
    parser = argparse.ArgumentParser(prog="run_llama.py", description=description, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=str, default="data/cfimdb-train.txt",
                        help="The training data, one `label ||| sentence` per line (default: %(default)s).")
    parser.add_argument("--dev", type=str, help="The dev data (default: NAME-dev.txt beside --train NAME-train.txt).")
    parser.add_argument("--test", type=str,
                        help="The test data (default: NAME-test.txt beside --train NAME-train.txt).")
    parser.add_argument("--label-names", type=str,
                        help="The JSON list of label names (default: NAME-label-mapping.json beside --train).")
    parser.add_argument("--pretrained-model-path", type=str, default=DEFAULT_CHECKPOINT,
                        help="The pretrained Llama checkpoint (default: %(default)s).")
    parser.add_argument("--tokenizer-model", type=str, default=DEFAULT_TOKENIZER,
                        help="The sentencepiece tokenizer (default: %(default)s).")
    parser.add_argument("--max_sentence_len", type=int, default=None,
                        help="Truncate sentences to this many tokens (default: no truncation).")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="The seed of every random draw (default: %(default)s).")
    parser.add_argument("--epochs", type=int, default=5, help="Epochs of training (default: %(default)s).")
    parser.add_argument("--option", type=str, choices=("generate", "prompt", *TRAINING_OPTIONS), default="generate",
                        help="generate: continue a prompt (--prompt, the course's by default); prompt: zero-shot "
                             "classification, the Llama parameters are frozen; finetune: Llama parameters are updated; "
                             "lora: LoRA adapters on Llama's attention projections are trained, Llama is frozen "
                             "(default: %(default)s).")
    parser.add_argument("--use_gpu", action="store_true",
                        help="Run on a CUDA GPU, else on Apple's GPU (mps), instead of the CPU.")
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
                        help="finetune, lora: go on from the last checkpoint {option}-{epochs}-{lr}-last.pt "
                             "({option}-{epochs}-{lr}-seedN-last.pt for a --seed other than 1337), if any.")
    return parser


def parse_args(argv: list[str] | None = None, check_files: bool = True,
               description: str | None = None) -> argparse.Namespace:
    """The command line, parsed and validated (its files too, unless not `check_files`): what the run works with;
    `description` heads its --help."""
    args = arg_parser(description).parse_args(argv)
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
    for flag, options in APPLIES_TO.items():
        name = flag.lstrip("-").replace("-", "_")
        if args.option not in options and getattr(args, name) != parser.get_default(name):
            parser.error(f"{flag} does not apply to --option {args.option}, only to --option "
                         f"{' or '.join(options)}: leave it out")
    for name in ("epochs", "batch_size", "max_sentence_len", "max_new_tokens", "top_k"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed must be in 0 … {MAX_SEED}, got {args.seed}")
    if not 0.0 < args.lr < math.inf:
        parser.error(f"--lr must be a positive finite number, got {args.lr}")
    if args.lr > FLOAT32_MAX:
        parser.error(f"--lr {args.lr} is more than float32, in which the weights are updated, holds "
                     f"({FLOAT32_MAX:.3g})")
    if not 0.0 <= args.hidden_dropout_prob < 1.0:
        parser.error(f"--hidden_dropout_prob must be in [0, 1), got {args.hidden_dropout_prob}")
    args.temperature = args.temperature or [0.0, 1.0]
    for t in args.temperature:
        if not 0.0 <= t < math.inf or args.temperature.count(t) > 1:
            parser.error(f"--temperature must be finite, at least 0 and each given once, got {t}")
        if 0.0 < t < MIN_TEMPERATURE:
            parser.error(f"--temperature {t} is below {MIN_TEMPERATURE:g}, where sampling is greedy decoding: pass 0 "
                         "for that")
    if problem := lora_problem(args.lora_rank, args.lora_alpha, args.lora_dropout):
        parser.error(f"--{problem}")
    if not args.lora_alpha / args.lora_rank <= FLOAT32_MAX:
        parser.error(f"--lora_alpha {args.lora_alpha} over --lora_rank {args.lora_rank}, the adapters' scale, is more "
                     f"than float32 holds ({FLOAT32_MAX:.3g})")
    left_out = [key for key in DERIVED if getattr(args, key) is None]
    derived = derived_paths(args.train, args.option, args.seed)
    if derived:
        for key in left_out:
            setattr(args, key, derived[key])
    elif left_out and args.option != "generate":
        parser.error(f"--train {args.train} is not named NAME-train.txt, so "
                     f"{', '.join(DERIVED[key] for key in left_out)} cannot be derived from it: pass them")
    name = f"{args.option}-{args.epochs}-{args.lr}{seed_suffix(args.seed)}"
    args.filepath, args.last_filepath, args.plot_filepath = f"{name}.pt", f"{name}-last.pt", f"{name}.png"
    if not check_files:
        return
    inputs = {"--pretrained-model-path": args.pretrained_model_path, "--tokenizer-model": args.tokenizer_model}
    if args.option != "generate":
        inputs |= {"--train": args.train, "--dev": args.dev, "--test": args.test, "--label-names": args.label_names}
    outputs = run_outputs(args)
    if args.option in TRAINING_OPTIONS:  # appended to, by every run in the folder
        outputs["the metrics file"] = METRICS
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


def run_outputs(args: argparse.Namespace) -> dict[str, str]:
    """The files the run writes, and that it holds against other runs while it runs (files.claim), by role: the
    generated texts; or the predictions and, for a fine-tune, its checkpoints (though --resume reads the last one)
    and its plot."""
    if args.option == "generate":
        flags = {0.0: "--generated_sentence_low_temp_out", 1.0: "--generated_sentence_high_temp_out"}
        return {flags.get(t, f"--temperature {t!r}"): path for t, path in generation_outputs(args).items()}
    outputs = {"--dev_out": args.dev_out, "--test_out": args.test_out}
    if args.option in TRAINING_OPTIONS:
        outputs |= {"the best checkpoint": args.filepath, "the last checkpoint": args.last_filepath,
                    "the plot": args.plot_filepath}
    return outputs


def generation_outputs(args: argparse.Namespace) -> dict[float, str]:
    """The file of each --temperature: the course's two flags for 0.0 and 1.0, generated-sentence-temp-{T}.txt for
    any other T, written as Python writes the float, so that two temperatures never share a file
    (0.7 → generated-sentence-temp-0.7.txt, 2 → generated-sentence-temp-2.txt)."""
    named = {0.0: args.generated_sentence_low_temp_out, 1.0: args.generated_sentence_high_temp_out}
    return {t: named.get(t, f"generated-sentence-temp-{repr(t).removesuffix('.0')}.txt") for t in args.temperature}


def seed_suffix(seed: int) -> str:
    """What a fine-tune's own file names carry of its --seed: nothing at the course's DEFAULT_SEED, so that the
    course's commands write the course's files, else "-seedN", so that the runs of a seed sweep write apart."""
    return "" if seed == DEFAULT_SEED else f"-seed{seed}"


def get_device(use_gpu: bool, dtype: str) -> torch.device:
    """The GPU with --use_gpu (gpu()), else the CPU; refused where --dtype asks what the hardware lacks."""
    device = gpu() if use_gpu else torch.device("cpu")
    if dtype == "bfloat16":
        if not torch.amp.is_autocast_available(device.type):
            raise InputError(f"--dtype bfloat16: PyTorch has no autocast for {device.type}; use --dtype float32")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise InputError(f"--dtype bfloat16: the GPU {torch.cuda.get_device_name()} has no bfloat16 "
                             "arithmetic; use --dtype float32")
    return device


def gpu() -> torch.device:
    """The GPU that --use_gpu runs on: CUDA's (GPU LOCAL_RANK under torchrun), else Apple's (mps); where PyTorch sees
    neither, an InputError naming what it found."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if torch.backends.mps.is_available():
        return torch.device("mps")
    cuda = f"built for CUDA {torch.version.cuda}, no CUDA GPU seen" if torch.version.cuda else "built without CUDA"
    mps = "no Apple GPU seen by its mps backend" if torch.backends.mps.is_built() else "built without Apple's mps"
    raise InputError(f"--use_gpu: PyTorch {torch.__version__} finds only the CPU here ({cuda}; {mps}): run without "
                     "--use_gpu to use the CPU")


def autocast(dtype: str, device: torch.device) -> torch.autocast:
    """bfloat16 autocast where `dtype` (--dtype) is "bfloat16", else a context that changes nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
