"""Hostile command lines and data files, each given to run_llama.py as a user would give it: every one ends with
one line saying what is wrong (after argparse's usage, for a bad flag), never a traceback, and every file of the run,
inputs included, is left as it was, byte for byte, with no file added.

Each case runs in a process of its own, forked by fork_runner.py from one that has imported run_llama.py's modules
once: a fresh interpreter per case would spend most of the test importing torch.
"""
import hashlib
import json
import os
import re
import resource
import shlex
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import options
from test_run_llama import SCRIPT, GetAsset, copy_head

RUNNER = Path(__file__).resolve().parent / "fork_runner.py"
REPO = RUNNER.parent.parent
BASE = ["--option", "finetune", "--train", "data/sst-train.txt", "--epochs", "1", "--batch_size", "4",
        "--pretrained-model-path", "model.pt", "--tokenizer-model", "tokenizer.model"]
LONG_SENTENCE = "3 ||| " + "very " * 1100 + "long .\n"  # more tokens than the model's max_seq_len of 1024


@dataclass
class Case:
    flags: list[str]  # after BASE, so they may override its flags
    code: int  # 2: argparse's exit for a bad flag; 1: a bad file
    message: str  # a regular expression found in the error line
    prepare: Callable[[Path], object] = lambda folder: None


def write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(content)


def fifo(name: str) -> Callable[[Path], None]:
    return lambda folder: os.mkfifo(folder / name)


def device(name: str) -> Callable[[Path], None]:
    """A character device, as /dev/null is, made in the test's folder (needs the right to mknod: root)."""
    return lambda folder: os.mknod(folder / name, stat.S_IFCHR | 0o666, os.makedev(1, 3))


def link(name: str, to: str, make: Callable[[Path], None] = lambda folder: None) -> Callable[[Path], None]:
    """A symbolic link `name` to `to`, made after `make`."""
    return lambda folder: (make(folder), (folder / name).symlink_to(to))


def immutable(name: str) -> Callable[[Path], None]:
    """A file that no one may replace (chattr +i; the test removes the flag)."""
    def make(folder: Path) -> None:
        (folder / name).write_text("mine")
        subprocess.run(["chattr", "+i", str(folder / name)], check=True, capture_output=True)
    return make


# every output flag of every option, given what may not be replaced: the error names the flag and the file
OUTPUT_FLAGS = {"--dev_out": [], "--test_out": [], "--generated_sentence_low_temp_out": ["--option", "generate"],
                "--generated_sentence_high_temp_out": ["--option", "generate"]}
NOT_REPLACED = {  # name -> (what is there, a regular expression of the reason)
    "a FIFO": (fifo("out"), r"it is a FIFO, which is neither written through nor replaced"),
    "a character device": (device("out"), r"it is a character device, which is neither written through nor replaced"),
    "a link to nothing": (link("out", "gone/out.txt"), r"it is a link to .*/gone/out\.txt, which does not exist"),
    "a link to a FIFO": (link("out", "p", fifo("p")), r"it is a FIFO"),
    "a link to a character device": (link("out", "null", device("null")), r"it is a character device"),
    "an immutable file": (immutable("out"), r"cannot replace it: it is immutable"),
}
OUTPUT_CASES = {
    f"{flag} is {what}": Case([*option, flag, "out"], 1, f"cannot write {flag} out: {reason}", prepare)
    for flag, option in OUTPUT_FLAGS.items() for what, (prepare, reason) in NOT_REPLACED.items()
} | {
    f"{flag} ends in /": Case([*option, flag, "results/"], 1,
                              f"cannot write {flag} results/: it ends in '/', which names a folder")
    for flag, option in OUTPUT_FLAGS.items()
} | {
    f"prompt's {flag} is {what}": Case(["--option", "prompt", flag, "out"], 1, f"cannot write {flag} out: {reason}",
                                       prepare)
    for flag in ("--dev_out", "--test_out") for what, (prepare, reason) in list(NOT_REPLACED.items())[:2]
} | {
    f"the {role} is {what}": Case(["--option", option], 1, f"cannot write the {role} {name}: {reason}",
                                  prepare(name))
    for option, role, name in (("finetune", "metrics file", "metrics.jsonl"),
                               ("lora", "best checkpoint", "lora-1-2e-05.pt"),
                               ("finetune", "last checkpoint", "finetune-1-2e-05-last.pt"),
                               ("lora", "plot", "lora-1-2e-05.png"))
    for what, prepare, reason in (("a FIFO", fifo, "it is a FIFO"), ("a character device", device,
                                                                     "it is a character device"))
}


CASES = {
    # numbers, checked as the flags are parsed
    "lr nan": Case(["--lr", "nan"], 2, r"--lr must be a positive finite number, got nan"),
    "lr inf": Case(["--lr", "inf"], 2, r"--lr must be a positive finite number, got inf"),
    "lr -inf": Case(["--lr=-inf"], 2, r"--lr must be a positive finite number, got -inf"),
    "lr negative": Case(["--lr", "-1"], 2, r"--lr must be a positive finite number, got -1\.0"),
    "lr zero": Case(["--lr", "0"], 2, r"--lr must be a positive finite number, got 0\.0"),
    "lr underflowing to zero": Case(["--lr", "1e-400"], 2, r"--lr must be a positive finite number, got 0\.0"),
    "lr not a number": Case(["--lr", "fast"], 2, r"argument --lr: invalid float value: 'fast'"),
    "seed negative": Case(["--seed", "-1"], 2, r"--seed must be in 0 … 2147483647, got -1"),
    "seed too large": Case(["--seed", str(2**32)], 2, r"--seed must be in 0 … 2147483647, got 4294967296"),
    "epochs zero": Case(["--epochs", "0"], 2, r"--epochs must be at least 1, got 0"),
    "epochs negative": Case(["--epochs", "-3"], 2, r"--epochs must be at least 1, got -3"),
    "epochs fractional": Case(["--epochs", "1.5"], 2, r"argument --epochs: invalid int value: '1\.5'"),
    "batch_size zero": Case(["--batch_size", "0"], 2, r"--batch_size must be at least 1, got 0"),
    "max_sentence_len zero": Case(["--max_sentence_len", "0"], 2, r"--max_sentence_len must be at least 1, got 0"),
    "dropout 1": Case(["--hidden_dropout_prob", "1"], 2, r"--hidden_dropout_prob must be in \[0, 1\), got 1\.0"),
    "dropout nan": Case(["--hidden_dropout_prob", "nan"], 2, r"--hidden_dropout_prob must be in \[0, 1\), got nan"),
    "dropout negative": Case(["--hidden_dropout_prob", "-0.1"], 2, r"--hidden_dropout_prob must be in \[0, 1\)"),
    "lora_rank zero": Case(["--option", "lora", "--lora_rank", "0"], 2, r"--lora_rank must be at least 1, got 0"),
    **{f"lora_{name} {value}": Case(["--option", "lora", f"--lora_{name}={value}"], 2, rf"--lora_{name} must be {what}")
       for name, value, what in (("alpha", "0", r"a positive number, got 0\.0"),
                                 ("alpha", "nan", "a positive number, got nan"),
                                 ("alpha", "inf", "a positive number, got inf"),
                                 ("dropout", "1", r"in \[0, 1\), got 1\.0"),
                                 ("dropout", "-inf", r"in \[0, 1\), got -inf"))},
    "lr beyond float32": Case(["--lr", "1e308"], 2, r"--lr 1e\+308 is more than float32, in which the weights are "
                                                    r"updated, holds \(3\.4e\+38\)"),
    "lora_alpha beyond float32": Case(["--option", "lora", "--lora_alpha", "1e308"], 2,
                                      r"--lora_alpha 1e\+308 over --lora_rank 4, the adapters' scale, is more than "
                                      r"float32 holds"),
    "temperature 1e-45": Case(["--option", "generate", "--temperature", "1e-45"], 2,
                              r"--temperature 1e-45 is below 1e-06, where sampling is greedy decoding: pass 0"),
    "temperature 1e-300": Case(["--option", "generate", "--temperature", "0", "1e-300"], 2,
                               r"--temperature 1e-300 is below 1e-06"),
    **{f"{flag} with --option {option}": Case(["--option", option, flag, *value], 2,
                                             rf"{flag} does not apply to --option {option}, only to --option {only}: "
                                             "leave it out")
       for option, flag, value, only in (
           ("prompt", "--prompt", ["Hello"], "generate"), ("prompt", "--temperature", ["0.5"], "generate"),
           ("prompt", "--resume", [], "finetune or lora"), ("prompt", "--lora_rank", ["8"], "lora"),
           ("prompt", "--epochs", ["3"], "finetune or lora"), ("prompt", "--lr", ["1e-3"], "finetune or lora"),
           ("generate", "--resume", [], "finetune or lora"), ("generate", "--dev_out", ["d.txt"],
                                                                 "prompt or finetune or lora"),
           ("generate", "--lora_alpha", ["2"], "lora"), ("generate", "--max_sentence_len", ["2"],
                                                         "prompt or finetune or lora"),
           ("finetune", "--lora_dropout", ["0.1"], "lora"))},
    "unknown option": Case(["--option", "pretrain"], 2, r"argument --option: invalid choice: 'pretrain'"),
    "paths not derivable": Case(["--train", "reviews.txt"], 2, r"--train reviews\.txt is not named NAME-train\.txt"),
    # an output that is an input of the run, or another output
    "dev_out is dev": Case(["--option", "prompt", "--dev_out", "data/sst-dev.txt"], 2,
                           r"--dev_out data/sst-dev\.txt would overwrite --dev data/sst-dev\.txt"),
    "dev_out is train": Case(["--option", "prompt", "--dev_out", "data/sst-train.txt"], 2,
                             r"--dev_out data/sst-train\.txt would overwrite --train data/sst-train\.txt"),
    "test_out is test, spelled otherwise": Case(["--test_out", "./data/../data/sst-test.txt"], 2,
                                                r"--test_out \./data/\.\./data/sst-test\.txt would overwrite --test"),
    "test_out is the model": Case(["--test_out", "model.pt"], 2,
                                  r"--test_out model\.pt would overwrite --pretrained-model-path model\.pt"),
    "dev_out is the tokenizer": Case(["--dev_out", "tokenizer.model"], 2,
                                     r"--dev_out tokenizer\.model would overwrite --tokenizer-model"),
    "dev_out is the label names": Case(["--dev_out", "data/sst-label-mapping.json"], 2,
                                       r"--dev_out data/sst-label-mapping\.json would overwrite --label-names"),
    "dev_out is a link to dev": Case(["--dev_out", "gold.txt"], 2, r"--dev_out gold\.txt would overwrite --dev",
                                     lambda folder: (folder / "gold.txt").symlink_to("data/sst-dev.txt")),
    "dev_out is a hard link to dev": Case(["--dev_out", "gold.txt"], 2, r"--dev_out gold\.txt would overwrite --dev",
                                          lambda folder: os.link(folder / "data/sst-dev.txt", folder / "gold.txt")),
    "dev_out is the best checkpoint": Case(["--dev_out", "finetune-1-2e-05.pt"], 2,
                                           r"--dev_out finetune-1-2e-05\.pt and the best checkpoint finetune-1-2e-05"
                                           r"\.pt are one file"),
    "test_out is the resumed checkpoint": Case(["--resume", "--test_out", "finetune-1-2e-05-last.pt"], 2,
                                               r"--test_out finetune-1-2e-05-last\.pt and the last checkpoint"),
    "test_out is the metrics file": Case(["--test_out", "metrics.jsonl"], 2,
                                         r"--test_out metrics\.jsonl and the metrics file metrics\.jsonl are one file"),
    "dev_out is the plot": Case(["--option", "lora", "--dev_out", "lora-1-2e-05.png"], 2,
                                r"--dev_out lora-1-2e-05\.png and the plot lora-1-2e-05\.png are one file"),
    "dev is the best checkpoint": Case(["--dev", "finetune-1-2e-05.pt"], 2,
                                       r"the best checkpoint finetune-1-2e-05\.pt would overwrite --dev"),
    "model is the best checkpoint": Case(["--pretrained-model-path", "finetune-1-2e-05.pt"], 2,
                                         r"the best checkpoint .* would overwrite --pretrained-model-path"),
    "model is the last checkpoint": Case(["--option", "lora", "--pretrained-model-path", "lora-1-2e-05-last.pt"], 2,
                                         r"the last checkpoint .* would overwrite --pretrained-model-path"),
    "dev_out is test_out": Case(["--dev_out", "o.txt", "--test_out", "o.txt"], 2,
                                r"--dev_out o\.txt and --test_out o\.txt are one file"),
    "generate's outputs are one file": Case(["--option", "generate", "--generated_sentence_low_temp_out", "g.txt",
                                             "--generated_sentence_high_temp_out", "./g.txt"], 2,
                                            r"--generated_sentence_low_temp_out g\.txt and "
                                            r"--generated_sentence_high_temp_out \./g\.txt are one file"),
    "generate's output is the model": Case(["--option", "generate", "--generated_sentence_high_temp_out", "model.pt"],
                                           2, r"--generated_sentence_high_temp_out model\.pt would overwrite"),
    # an output that cannot be written
    "dev_out is a folder": Case(["--dev_out", "data"], 1, r"cannot write --dev_out data: it is a folder"),
    "dev_out is empty": Case(["--dev_out", ""], 1, r"cannot write --dev_out : the path is empty \(an unset shell "
                                                   r"variable\?\): name a file"),
    "dev_out in a missing folder": Case(["--dev_out", "missing/o.txt"], 1, r"the folder .*/missing does not exist"),
    "dev_out under a file": Case(["--dev_out", "data/sst-dev.txt/o.txt"], 1,
                                 r"cannot write --dev_out .*: .*data/sst-dev\.txt is not a folder"),
    "dev_out name too long": Case(["--dev_out", "o" * 300], 1, r"cannot write --dev_out o+: File name too long"),
    "metrics file is a folder": Case([], 1, r"cannot write the metrics file metrics\.jsonl: it is a folder",
                                     lambda folder: (folder / "metrics.jsonl").mkdir()),
    # data files
    "dev is a folder": Case(["--dev", "data"], 1, r"cannot read --dev data: it is a folder"),
    "train is a folder": Case(["--train", "data", "--dev", "data/sst-dev.txt", "--test", "data/sst-test.txt",
                               "--label-names", "data/sst-label-mapping.json", "--dev_out", "d.txt",
                               "--test_out", "t.txt"], 1, r"cannot read --train data: it is a folder"),
    "test is a folder": Case(["--test", "data"], 1, r"cannot read --test data: it is a folder"),
    "label names is a folder": Case(["--label-names", "data"], 1, r"cannot read --label-names data: it is a folder"),
    "dev name too long": Case(["--dev", "d" * 300], 1, r"cannot read --dev d+: File name too long"),
    "dev missing, no known asset": Case(["--dev", "mine-dev.txt"], 1, r"mine-dev\.txt does not exist"),
    "label names repeated": Case([], 1, r"label names 1 and 3 are both 'bad'",
                                 write("data/sst-label-mapping.json", b'["awful", "bad", "average", "bad", "great"]')),
    "label names repeated with a space": Case([], 1, r"label names 0 and 1 are both 'good'",
                                              write("data/sst-label-mapping.json", b'["good", " good "]')),
    "label name blank": Case([], 1, r"label name 2 is ' ': each label name must be a non-blank string",
                             write("data/sst-label-mapping.json", b'["awful", "bad", " ", "good", "great"]')),
    "label name a number": Case([], 1, r"label name 1 is 3: each label name must be a non-blank string",
                                write("data/sst-label-mapping.json", b'["awful", 3]')),
    "one label name": Case([], 1, r"expected at least two label names, found 1",
                           write("data/sst-label-mapping.json", b'["awful"]')),
    "label names not a list": Case([], 1, r"expected a JSON list of label names, found",
                                   write("data/sst-label-mapping.json", b'{"0": "awful", "1": "great"}')),
    "label names not UTF-8": Case([], 1, r"sst-label-mapping\.json: not UTF-8 text",
                                  write("data/sst-label-mapping.json", b'["caf\xe9", "bar"]')),
    "label names not JSON": Case([], 1, r"sst-label-mapping\.json:1: not valid JSON",
                                 write("data/sst-label-mapping.json", b'["awful", "great"')),
    "label names empty": Case([], 1, r"sst-label-mapping\.json:1: not valid JSON",
                              write("data/sst-label-mapping.json", b"")),
    "dev not UTF-8": Case([], 1, r"data/sst-dev\.txt:2: not UTF-8 text",
                          write("data/sst-dev.txt", b"3 ||| fine\n3 ||| caf\xe9\n")),
    "dev with a blank line inside": Case([], 1, r"data/sst-dev\.txt:2: expected 'label \|\|\| sentence', found ''",
                                         write("data/sst-dev.txt", b"3 ||| fine\n\n4 ||| more\n")),
    "dev of blank lines only": Case([], 1, r"data/sst-dev\.txt: empty file",
                                    write("data/sst-dev.txt", b"\n  \n\r\n")),
    "dev label out of range": Case([], 1, r"data/sst-dev\.txt:1: label 5 is not one of 0 … 4",
                                   write("data/sst-dev.txt", b"5 ||| too good\n")),
    "dev label not an integer": Case([], 1, r"data/sst-dev\.txt:1: the label 'four' is not an integer",
                                     write("data/sst-dev.txt", b"four ||| good\n")),
    **{f"dev label {label}": Case([], 1, rf"data/sst-dev\.txt:1: the label '{re.escape(label)}' is not an integer "
                                         "written in the digits 0-9", write("data/sst-dev.txt", f"{label} ||| good\n"
                                                                             .encode()))
       for label in ("+1", "\u0661", "0_1", "1.0")},
    "dev without separator": Case([], 1, r"data/sst-dev\.txt:1: expected 'label \|\|\| sentence'",
                                  write("data/sst-dev.txt", b"4 | good\n")),
    "train with a placeholder label": Case([], 1, r"data/sst-train\.txt:1: label -1 is not one of 0 … 4 \(",
                                           write("data/sst-train.txt", b"-1 ||| hidden\n")),
    "test empty": Case([], 1, r"data/sst-test\.txt: empty file", write("data/sst-test.txt", b"")),
    "label names nested 100,000 deep": Case([], 1, r"sst-label-mapping\.json: JSON nested too deeply",
                                            write("data/sst-label-mapping.json", b"[" * 100_000 + b"]" * 100_000)),
    # a file the user owns is not replaced by a fetched one, nor a URL taken for a path
    "dev a link to nothing": Case([], 1, r"data/sst-dev\.txt is a link to /nonexistent/gone\.txt, which does not "
                                         r"exist", link("data/sst-dev.txt", "/nonexistent/gone.txt",
                                                        lambda folder: (folder / "data/sst-dev.txt").unlink())),
    "model a URL": Case(["--pretrained-model-path", "https://huggingface.co/karpathy/tinyllamas/resolve/main/"
                                                    "stories42M.pt"], 1, r"a URL is not a path"),
    # found once the model is loaded, before any work on it
    "sentence too long": Case(["--option", "prompt"], 1,
                              r"data/sst-dev\.txt:1: \d+ tokens, more than the model's max_seq_len=1024; pass "
                              r"--max_sentence_len to truncate sentences \(the prompt after the sentence takes",
                              write("data/sst-dev.txt", LONG_SENTENCE.encode())),
    "prompt too long for max_sentence_len": Case(["--option", "prompt", "--max_sentence_len", "1020"], 1,
                                                 r"--max_sentence_len 1020 is too long because the prompt after the "
                                                 r"sentence takes (\d+) tokens: pass --max_sentence_len \d+ or less",
                                                 write("data/sst-dev.txt", LONG_SENTENCE.encode())),
    "lora_rank beyond the model, before the data": Case(["--option", "lora", "--lora_rank", "100"], 1,
                                                        r"^error: --lora_rank 100: LoRA rank must be",
                                                        write("data/sst-train.txt", b"7 ||| a bad label\n")),
    # found while training
    "lr so large that training diverges": Case(["--lr", "1e30", "--batch_size", "2"], 1,
                                               r"epoch 0: the training loss became nan, so nothing of this epoch was "
                                               r"saved; try a lower --lr than 1e\+30"),
    "lora lr so large that training diverges": Case(["--option", "lora", "--lr", "1e30", "--batch_size", "2"], 1,
                                                    r"epoch 0: .*, so nothing of this epoch was saved; try a lower "
                                                    r"--lr than 1e\+30 or --lora_alpha than 1\.0"),
}


@pytest.fixture(scope="module")
def run_script(asset_cache: Path) -> Iterator[Callable[[Path, list[str]], dict]]:
    """Run run_llama.py with these arguments in this folder: its returncode, stdout and stderr."""
    env = {**os.environ, "MINLLAMA_ASSET_MIRROR": str(asset_cache)}
    runner = subprocess.Popen([sys.executable, str(RUNNER), str(SCRIPT), "run_llama"], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(cwd: Path, argv: list[str], timeout: int = 300) -> dict:
        runner.stdin.write(json.dumps({"cwd": str(cwd), "argv": argv, "timeout": timeout}) + "\n")
        runner.stdin.flush()
        return json.loads(runner.stdout.readline())

    yield run
    runner.stdin.close()
    runner.wait(timeout=60)


def command_line(flags: list[str]) -> list[str]:
    """BASE and then `flags`, without the flags of BASE that the --option of `flags` does not take."""
    option = flags[flags.index("--option") + 1] if "--option" in flags else BASE[1]
    base = [item for flag, value in zip(BASE[::2], BASE[1::2])
            if option in options.APPLIES_TO.get(flag, (option,)) for item in (flag, value)]
    return base + flags


def snapshot(folder: Path) -> dict[str, tuple[bool, str]]:
    """Each entry under `folder`: whether it is a link, and the sha256 of the bytes of a file (through links: the
    model and tokenizer are links to the shared files), or the kind of anything else."""
    def content(p: Path) -> str:
        if not p.exists():  # a link to nothing
            return f"link to {os.readlink(p)}"
        if p.is_file():
            return hashlib.sha256(p.read_bytes()).hexdigest()
        return "folder" if p.is_dir() else stat.filemode(p.stat().st_mode)

    return {str(p.relative_to(folder)): (p.is_symlink(), content(p)) for p in folder.rglob("*")}


CASES |= OUTPUT_CASES


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_hostile_input_is_one_line_and_changes_no_file(tmp_path: Path, asset: GetAsset, model_path: str,
                                                       tokenizer_model: str, run_script, case: Case):
    for name in ("sst-train.txt", "sst-dev.txt", "sst-test.txt", "sst-label-mapping.json"):
        copy_head(asset, tmp_path, name, 4)
    (tmp_path / "model.pt").symlink_to(model_path)
    (tmp_path / "tokenizer.model").symlink_to(tokenizer_model)
    try:
        case.prepare(tmp_path)
    except (PermissionError, subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot make it here: {e}")
    before = snapshot(tmp_path)
    try:
        result = run_script(tmp_path, command_line(case.flags))
    finally:
        for p in tmp_path.iterdir():
            if p.is_file() and not p.is_symlink():
                subprocess.run(["chattr", "-i", str(p)], capture_output=True)
    assert result["returncode"] == case.code, result["stderr"]
    assert "Traceback" not in result["stderr"]
    lines = result["stderr"].splitlines()
    assert [line for line in lines if "error:" in line] == lines[-1:]
    prefix = "run_llama.py: error: " if case.code == 2 else "error: "
    assert lines[-1].startswith(prefix) and re.search(case.message, lines[-1]), lines[-1]
    if case.code == 2:
        assert result["stderr"].startswith("usage: run_llama.py ")
    assert snapshot(tmp_path) == before


def work_folder(folder: Path, asset: GetAsset, model_path: str, tokenizer_model: str) -> None:
    """The first lines of the SST files, and links to the tiny model and the tokenizer, in `folder`."""
    for name in ("sst-train.txt", "sst-dev.txt", "sst-test.txt", "sst-label-mapping.json"):
        copy_head(asset, folder, name, 4)
    (folder / "model.pt").symlink_to(model_path)
    (folder / "tokenizer.model").symlink_to(tokenizer_model)


def test_train_from_a_fifo_is_read_once_and_hashed_as_read(tmp_path: Path, asset: GetAsset, model_path: str,
                                                          tokenizer_model: str, run_script):
    work_folder(tmp_path, asset, model_path, tokenizer_model)
    data = (tmp_path / "data/sst-train.txt").read_bytes()
    os.mkfifo(tmp_path / "train.fifo")
    writer = threading.Thread(target=lambda: (tmp_path / "train.fifo").write_bytes(data), daemon=True)
    writer.start()
    result = run_script(tmp_path, BASE + ["--train", "train.fifo", "--dev", "data/sst-dev.txt", "--test",
                                          "data/sst-test.txt", "--label-names", "data/sst-label-mapping.json",
                                          "--dev_out", "dev.txt", "--test_out", "test.txt"], timeout=120)
    assert result["returncode"] == 0, result["stderr"]
    saved = torch.load(tmp_path / "finetune-1-2e-05-last.pt", weights_only=True)
    assert saved["inputs_sha256"]["train"] == hashlib.sha256(data).hexdigest()


def run_python(folder: Path, argv: list, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=folder, capture_output=True, timeout=300,
                          env={**os.environ, **(env or {})}, **kwargs)


def test_a_file_size_limit_during_training_is_one_line(tmp_path: Path, asset: GetAsset, model_path: str,
                                                       tokenizer_model: str):
    """(ulimit -f 1000; python run_llama.py --option finetune ...): the checkpoint cannot be written."""
    work_folder(tmp_path, asset, model_path, tokenizer_model)
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
    result = run_python(tmp_path, [SCRIPT, *BASE], preexec_fn=limit)
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    assert result.stderr.decode().splitlines()[-1] == ("error: cannot write finetune-1-2e-05.pt: no space: the file "
                                                       "size limit (ulimit -f) was reached; nothing of it was written")
    assert not (tmp_path / "finetune-1-2e-05.pt").exists()


def test_ctrl_c_is_one_line_with_the_resume_hint(tmp_path: Path, asset: GetAsset, model_path: str,
                                                 tokenizer_model: str):
    """Interrupted in its second epoch, after the first one's -last.pt was written."""
    work_folder(tmp_path, asset, model_path, tokenizer_model)
    program = ("import runpy, sys, trainer; gather = trainer.gather; calls = []\n"
               "def interrupted(obj):\n"
               "    calls.append(obj)\n"
               "    if len(calls) == 2:\n"
               "        raise KeyboardInterrupt\n"
               "    return gather(obj)\n"
               "trainer.gather = interrupted\n"
               "sys.argv = sys.argv[1:]\n"
               "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = run_python(tmp_path, ["-c", program, SCRIPT, *BASE, "--epochs", "2"], env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
    assert result.stderr.decode().splitlines()[-1] == (
        "interrupted: finetune-2-2e-05-last.pt holds the last finished epoch; run the same command with --resume to "
        "go on from it")


def test_a_closed_pipe_and_a_name_that_is_not_utf_8(tmp_path: Path, asset: GetAsset, model_path: str,
                                                     tokenizer_model: str):
    """`... | head -1` ends quietly; under a strict UTF-8 stdout a name that is not UTF-8 is printed escaped; an
    output link is written through, and a name of 244 bytes is written."""
    work_folder(tmp_path, asset, model_path, tokenizer_model)
    command = f"{shlex.join([sys.executable, str(SCRIPT), *command_line(['--option', 'generate'])])} | head -1"
    result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, timeout=300)
    assert result.returncode == 0 and b"Error" not in result.stderr, result.stderr
    (tmp_path / "mine.txt").write_text("old")
    (tmp_path / "link.txt").symlink_to("mine.txt")
    name = b"caf\xe9" + b"e" * 236 + b".txt"
    result = run_python(tmp_path, [SCRIPT, *command_line(["--option", "prompt"]), "--dev_out", "link.txt",
                                   "--test_out", name],
                        env={"PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0, result.stderr
    assert b"to caf\\udce9e" in result.stdout
    assert (tmp_path / "link.txt").is_symlink() and (tmp_path / "mine.txt").read_text().endswith(" This movie is \n")
    assert os.path.getsize(os.path.join(os.fsencode(tmp_path), name)) > 0


def test_stdout_closed_or_on_a_full_device(tmp_path: Path, asset: GetAsset, model_path: str, tokenizer_model: str):
    """With stdout closed (>&-) the run does its work and ends well; with stdout on a full device it ends in one
    line, and the files it wrote are whole."""
    work_folder(tmp_path, asset, model_path, tokenizer_model)
    command = shlex.join([sys.executable, str(SCRIPT), *command_line(["--option", "generate", "--max_new_tokens",
                                                                      "3"])])
    closed = subprocess.run(f"{command} >&-", shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert closed.returncode == 0 and "Traceback" not in closed.stderr, closed.stderr
    assert (tmp_path / "generated-sentence-temp-0.txt").read_text().startswith("I have wanted to see this thriller")
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    full = subprocess.run(f"{command} >/dev/full", shell=True, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    lines = full.stderr.splitlines()
    assert full.returncode == 1 and lines[-1] == "error: cannot write to standard output: No space left on device"
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], full.stderr
