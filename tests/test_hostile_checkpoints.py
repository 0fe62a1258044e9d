"""Hostile checkpoints, tokenizers and resume files, given to every command that reads them: each run exits with
status 1 and one line on stderr that names the file and says what is wrong (no traceback), and leaves every file as
it was (no output written, no input changed).

The commands are run by tests/fork_runner.py, which imports torch and the project once, then forks a child per case
in which the script runs as `__main__` with its command line, as `python SCRIPT ARGS...` runs it; the child's exit
status and stderr are those of the command (`test_the_worker_runs_commands_as_python_does` compares a few with real
`python` processes). A fresh interpreter per case would take seconds each, for some 140 cases.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch

import run_llama
from checkpoint import write_llama2c_bin
from classifier import LlamaEmbeddingClassifier
from config import ClassifierConfig
from test_run_llama import GetAsset, applicable, copy_head
from trainer import checkpoint_data

REPO = Path(__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "fork_runner.py"
RUN_OPTIONS = ("generate", "prompt", "finetune", "lora")
OPTIONS = RUN_OPTIONS + ("sanity_check", "convert")


class Evil:
    """Unpickled, it would run a shell command; torch.load(weights_only=True) must refuse it unrun."""

    def __reduce__(self):
        return os.system, ("touch PWNED",)


# ---- bad model checkpoints: name -> (writer of the file at a path, what the message must say) ----
def saved_model(model_path: str) -> dict:
    return torch.load(model_path, weights_only=True)


def changed(change: Callable[[dict], None]) -> Callable[[Path, str, Path], None]:
    """A writer of the tiny model's checkpoint after `change` to its dict."""
    def write(path: Path, model_path: str, _: Path) -> None:
        saved = saved_model(model_path)
        change(saved)
        torch.save(saved, path)
    return write


def flip_a_weight_byte(path: Path, source: bytes) -> None:
    """`source` with one byte of its largest tensor inverted: the zip stays whole, the entry's CRC-32 does not."""
    archive = zipfile.ZipFile(path.with_suffix(".src"))
    entry = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(source)
    data[entry.header_offset + 30 + len(entry.filename) + len(entry.extra) + entry.file_size // 2] ^= 0xFF
    path.write_bytes(data)


def corrupt_bytes(path: Path, model_path: str, _: Path) -> None:
    shutil.copyfile(model_path, path.with_suffix(".src"))
    flip_a_weight_byte(path, Path(model_path).read_bytes())
    path.with_suffix(".src").unlink()


def lora_checkpoint(path: Path, model_path: str, _: Path) -> None:
    config = ClassifierConfig(model_path, 5, option="lora")
    torch.save(checkpoint_data(LlamaEmbeddingClassifier(config), {}, config, list("abcde"), 0, 0.5), path)


def wrong_size_bin(path: Path, model_path: str, _: Path) -> None:
    saved = saved_model(model_path)
    write_llama2c_bin(path, saved["model_args"], saved["model"])
    path.write_bytes(path.read_bytes()[:-4])


def one_nan(saved: dict) -> None:
    saved["model"]["layers.1.feed_forward.w2.weight"][3, 5] = float("nan")


def reshaped(saved: dict) -> None:
    saved["model"]["norm.weight"] = saved["model"]["norm.weight"][:-1]


def nested(depth: int) -> list:
    """A list in a list ..., `depth` deep."""
    inner = []
    for _ in range(depth):
        inner = [inner]
    return inner


def deeply_nested(path: Path, model_path: str, _: Path) -> None:
    saved = saved_model(model_path)
    saved["extra"] = nested(3000)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)  # pickling recurses in C, one level per list
    try:
        torch.save(saved, path)
    finally:
        sys.setrecursionlimit(limit)


def shared_pairs(levels: int) -> list:
    """x = [x, x], `levels` times over: `levels` + 1 lists, 2^levels paths to the innermost."""
    x = []
    for _ in range(levels):
        x = [x, x]
    return x


BAD_MODELS = {
    "truncated.pt": (lambda p, m, _: p.write_bytes(Path(m).read_bytes()[:50_000]), "corrupt"),
    "random.pt": (lambda p, m, _: p.write_bytes(torch.randint(0, 256, (5000,), generator=torch.Generator()
                                                              .manual_seed(1), dtype=torch.uint8).numpy().tobytes()),
                  "not a checkpoint"),
    "empty.pt": (lambda p, m, _: p.write_bytes(b""), "empty file"),
    "malicious.pt": (lambda p, m, _: torch.save({"model_args": {}, "model": {}, "x": Evil()}, p), "unsafe"),
    "legacy.pt": (lambda p, m, _: torch.save(saved_model(m), p, _use_new_zipfile_serialization=False), "legacy"),
    "crc.pt": (corrupt_bytes, "CRC-32"),
    "nan.pt": (changed(one_nan), r"'model/layers.1.feed_forward.w2.weight' holds 1 NaN"),
    "wrong-shape.pt": (changed(reshaped), "tensor 'norm.weight' has shape (31,)"),
    "missing.pt": (changed(lambda s: s["model"].pop("layers.0.ffn_norm.weight")),
                   "'layers.0.ffn_norm.weight' is missing"),
    "extra.pt": (changed(lambda s: s["model"].update(bias=torch.zeros(3))), "unexpected tensor(s) ['bias']"),
    "bad-args.pt": (changed(lambda s: s["model_args"].update(n_layers=-1)), "n_layers must be positive"),
    "float-args.pt": (changed(lambda s: s["model_args"].update(dim=32.5)), "dim=32.5 is not a finite int"),
    "unknown-args.pt": (changed(lambda s: s["model_args"].update(rope_scaling=2.0)), "unknown model_args"),
    "huge-context.pt": (changed(lambda s: s["model_args"].update(max_seq_len=10**12)),
                        "max_seq_len=1000000000000: the rotary tables"),
    "list.pt": (lambda p, m, _: torch.save([torch.zeros(2)], p), "not a checkpoint"),
    "deep.pt": (deeply_nested, "not a checkpoint: its objects nest more than 100 deep (under 'extra')"),
    "meta.pt": (changed(lambda s: s["model"].update({"norm.weight": torch.empty(32, device="meta")})),
                "tensor 'model/norm.weight' (torch.float32) is on the meta device"),
    "float8.pt": (changed(lambda s: s["model"].update({"norm.weight": torch.zeros(32, dtype=torch.float8_e4m3fn)})),
                  "tensor 'model/norm.weight' holds torch.float8_e4m3fn (on cpu)"),
    "huge-eps.pt": (changed(lambda s: s["model_args"].update(layer_norm_eps=1e308)),
                    "layer_norm_eps must be in [1.18e-38, 0.1] (NORM_EPS_RANGE), got 1e+308"),
    "causal.pt": (changed(lambda s: s["model_args"].update(causal=True)),
                  "was saved as a causal model (model_args causal=True): pass --causal"),
    "short.bin": (wrong_size_bin, "wrong size"),
    "lora.pt": (lora_checkpoint, "LoRA"),
    "folder.pt": (lambda p, m, _: p.mkdir(), "is a folder"),
    "tokenizer.model": (lambda p, m, mirror: shutil.copyfile(mirror / "tokenizer.model", p), "not a checkpoint"),
}
# convert.py exports a LoRA checkpoint (merged onto its base), and a causal model as what it is: no error there
CONVERT_READS = {"lora.pt", "causal.pt"}

# ---- bad tokenizer models ----
BAD_TOKENIZERS = {
    "text.model": (lambda p, mirror: p.write_text("not a protobuf\n"), "not a sentencepiece model"),
    "truncated.model": (lambda p, mirror: p.write_bytes((mirror / "tokenizer.model").read_bytes()[:4000]),
                        "not a sentencepiece model"),
    "empty.model": (lambda p, mirror: p.write_bytes(b""), "empty file"),
    "folder.model": (lambda p, mirror: p.mkdir(), "is a folder"),
}


# ---- bad resume files: name -> (writer(path, a real last checkpoint, the model), what the message says) ----
def last_with(change: Callable[[dict], None]) -> Callable[[Path, Path, str], None]:
    def write(path: Path, last: Path, _: str) -> None:
        saved = torch.load(last, weights_only=True)
        change(saved)
        torch.save(saved, path)
    return write


def corrupt_last(path: Path, last: Path, _: str) -> None:
    shutil.copyfile(last, path.with_suffix(".src"))
    flip_a_weight_byte(path, last.read_bytes())
    path.with_suffix(".src").unlink()


def nan_optimizer_state(saved: dict) -> None:
    saved["optim"]["state"][0]["exp_avg"].view(-1)[0] = float("inf")


BAD_RESUMES = {
    "truncated": (lambda p, last, _: p.write_bytes(last.read_bytes()[:20_000]), "corrupt"),
    "random": (lambda p, last, _: p.write_bytes(bytes(range(256)) * 8), "not a torch.save file"),
    "empty": (lambda p, last, _: p.write_bytes(b""), "empty file"),
    "malicious": (last_with(lambda s: s.update(run=Evil())), "unsafe"),
    "legacy": (lambda p, last, _: torch.save(torch.load(last, weights_only=True), p,
                                             _use_new_zipfile_serialization=False), "legacy"),
    "crc": (corrupt_last, "CRC-32"),
    "non-finite": (last_with(nan_optimizer_state), "'optim/state/0/exp_avg' holds 0 NaN and 1 infinite"),
    "no-rng": (last_with(lambda s: s.pop("rng")), "lacks ['rng']"),
    "negative-epoch": (last_with(lambda s: s.update(epoch=-5)), "'epoch' is -5, not an epoch (an int from 0)"),
    "nan-accuracy": (last_with(lambda s: s.update(best_dev_acc=float("nan"))), "'best_dev_acc' is nan, not an"),
    "junk-metrics": (last_with(lambda s: s.update(metrics=["junk"])), "'metrics' item 0 is 'junk', not a metrics"),
    "shared-args": (last_with(lambda s: s["args"].update(lr=shared_pairs(64))), "'args' item 'lr' is [[[[...]"),
    "a-model": (lambda p, last, model: shutil.copyfile(model, p), "not a last checkpoint"),
    "other-data": (lambda p, last, _: shutil.copyfile(last, p), "whose --train held other bytes than data/sst-train.txt"),
}


def tree(root: Path) -> dict[str, str]:
    """Every file under root (folders too) and the sha256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(root.rglob("*"))}


def sst(mirror: Path, cwd: Path) -> None:
    """The first lines of the SST files of `mirror` into cwd/data."""
    for name, n in (("sst-train.txt", 8), ("sst-dev.txt", 4), ("sst-test.txt", 3), ("sst-label-mapping.json", 1)):
        copy_head(lambda asset_name: mirror / asset_name, cwd, name, n)


@pytest.fixture(scope="module")
def mirror(asset: GetAsset, asset_cache: Path) -> Path:
    """The tests' asset cache, holding every public file the cases read; laid out as a mirror, it serves as one."""
    for name in ("tokenizer.model", "sanity_check.data", "stories260K.bin",
                 *(f"data/sst-{split}" for split in ("train.txt", "dev.txt", "test.txt", "label-mapping.json"))):
        asset(name)
    return asset_cache


def run_flags(option: str, model: str, tokenizer: str) -> list[str]:
    return ["--option", option, *applicable(option, "--train", "data/sst-train.txt", "--epochs", "1", "--lr", "0.001",
                                            "--batch_size", "4"),
            "--pretrained-model-path", model, "--tokenizer-model", tokenizer]


def command(option: str, model: str, tokenizer: str) -> tuple[str, list[str]]:
    """(script, arguments) that run `option` on `model`; sanity_check.py reads stories42M.pt in its folder."""
    if option == "convert":
        return "convert.py", [model, "--to", "llama2c", "out.bin"]
    if option == "sanity_check":
        return "sanity_check.py", []
    return "run_llama.py", run_flags(option, model, tokenizer)


def last_checkpoints(root: Path, mirror: Path, model_path: str, tokenizer: str) -> dict[str, Path]:
    """A real `-last.pt` of a one-epoch run of finetune and of lora."""
    lasts = {}
    for option in ("finetune", "lora"):
        cwd = root / option
        cwd.mkdir()
        sst(mirror, cwd)
        here = os.getcwd()
        os.chdir(cwd)
        try:
            run_llama.main(run_flags(option, model_path, tokenizer))
        finally:
            os.chdir(here)
        lasts[option] = cwd / f"{option}-1-0.001-last.pt"
    return lasts


@pytest.fixture(scope="module")
def cases(tmp_path_factory, mirror: Path, model_path: str, tokenizer_model: str) -> dict[str, dict]:
    """Every hostile case, prepared, then run by one worker: name -> case, with its result."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "lasts").mkdir()
    lasts = last_checkpoints(root / "lasts", mirror, model_path, tokenizer_model)
    cases = {}

    def case(name: str, script: str, args: list[str], cwd: Path, file: str, says: str) -> None:
        cases[name] = {"script": str(REPO / script), "args": args, "cwd": str(cwd), "file": file,
                       "says": says, "before": tree(cwd)}

    for bad, (write, says) in BAD_MODELS.items():
        for option in OPTIONS:
            if option == "convert" and bad in CONVERT_READS:
                continue
            cwd = root / f"model-{bad}-{option}"
            cwd.mkdir()
            sst(mirror, cwd)
            if option == "sanity_check":  # there, not fetched during the run
                shutil.copyfile(mirror / "sanity_check.data", cwd / "sanity_check.data")
            path = cwd / ("stories42M.pt" if option == "sanity_check" else bad)
            write(path, model_path, mirror)
            case(f"model {bad} {option}", *command(option, path.name, tokenizer_model), cwd, path.name, says)
    for bad, (write, says) in BAD_TOKENIZERS.items():
        for option in RUN_OPTIONS:
            cwd = root / f"tokenizer-{bad}-{option}"
            cwd.mkdir()
            sst(mirror, cwd)
            write(cwd / bad, mirror)
            case(f"tokenizer {bad} {option}", *command(option, model_path, bad), cwd, bad, says)
    for bad, (write, says) in BAD_RESUMES.items():
        for option in ("finetune", "lora"):
            cwd = root / f"resume-{bad}-{option}"
            cwd.mkdir()
            sst(mirror, cwd)
            last = cwd / lasts[option].name
            write(last, lasts[option], model_path)
            if bad == "other-data":
                (cwd / "data" / "sst-train.txt").write_text("0 ||| Another training file .\n")
            case(f"resume {bad} {option}", "run_llama.py",
                 run_flags(option, model_path, tokenizer_model) + ["--resume"], cwd, last.name, says)
    env = {**os.environ, "MINLLAMA_ASSET_MIRROR": str(mirror), "PYTHONDONTWRITEBYTECODE": "1"}
    requests = "".join(json.dumps({"script": c["script"], "argv": c["args"], "cwd": c["cwd"], "timeout": 300}) + "\n"
                       for c in cases.values())
    # torch._dynamo: which an optimizer imports when it is first built, for seconds
    runner = subprocess.run([sys.executable, str(RUNNER), str(REPO / "run_llama.py"), "run_llama", "convert",
                             "sanity_check", "torch._dynamo"], input=requests, capture_output=True, text=True, env=env,
                            timeout=900)
    assert runner.returncode == 0, runner.stderr
    for case_, reply in zip(cases.values(), map(json.loads, runner.stdout.splitlines()), strict=True):
        case_["status"] = reply["returncode"]
        case_["stderr"] = reply["stderr"]
        case_["after"] = tree(Path(case_["cwd"]))
    return cases


NAMES = ([f"model {bad} {option}" for bad in BAD_MODELS for option in OPTIONS
          if not (option == "convert" and bad in CONVERT_READS)]
         + [f"tokenizer {bad} {option}" for bad in BAD_TOKENIZERS for option in RUN_OPTIONS]
         + [f"resume {bad} {option}" for bad in BAD_RESUMES for option in ("finetune", "lora")])


@pytest.mark.parametrize("name", NAMES)
def test_hostile_input_is_one_clear_line_and_changes_nothing(cases: dict[str, dict], name: str):
    case = cases[name]
    lines = case["stderr"].strip().splitlines()
    assert case["status"] == 1, case["stderr"]
    assert len(lines) == 1 and "Traceback" not in case["stderr"], case["stderr"]
    assert lines[0].startswith("error: ") and case["file"] in lines[0], lines[0]
    assert case["says"] in lines[0], lines[0]
    assert case["after"] == case["before"]  # no output, no input changed (and the malicious pickle did not run)


def test_the_worker_runs_commands_as_python_does(cases: dict[str, dict], mirror: Path):
    env = {**os.environ, "MINLLAMA_ASSET_MIRROR": str(mirror)}
    for name in ("model malicious.pt generate", "model legacy.pt convert", "resume empty lora"):
        case = cases[name]
        result = subprocess.run([sys.executable, case["script"], *case["args"]], cwd=case["cwd"], env=env,
                                capture_output=True, text=True, timeout=300)
        assert (result.returncode, result.stderr) == (case["status"], case["stderr"])


def test_objects_referred_to_many_times_cost_no_more_than_once(tmp_path: Path, mirror: Path, model_path: str,
                                                               tokenizer_model: str):
    """A checkpoint whose extra field is x = [x, x] 64 times over (65 lists, 2⁶⁴ paths) is read like any other."""
    saved = saved_model(model_path)
    saved["extra"] = shared_pairs(64)
    torch.save(saved, tmp_path / "shared.pt")
    env = {**os.environ, "MINLLAMA_ASSET_MIRROR": str(mirror)}
    for script, args in [("convert.py", ["shared.pt", "--to", "llama2c", "out.bin"]),
                         ("run_llama.py", ["--option", "generate", "--max_new_tokens", "2", "--pretrained-model-path",
                                           "shared.pt", "--tokenizer-model", tokenizer_model])]:
        result = subprocess.run([sys.executable, str(REPO / script), *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
