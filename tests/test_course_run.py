"""The course's own run_llama.py, unchanged, on minllama's modules, beside minllama's run_llama.py with the same flags
at the same seed: for generate, prompt and finetune they write the same files, byte for byte, and the fine-tune
prints the same loss, train acc and dev acc each epoch.

The course's script is read from the mirror ($MINLLAMA_ASSET_MIRROR/course/run_llama.py, the course's public
repository) and copied into the test's folder; the test is skipped without it. Both run on the tiny random Llama of
the `model_path` fixture and on lines of the real SST files chosen so that every label is in the training file, as
the course counts its labels there.
"""
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import blocked_linear
from conftest import MIRROR, REPO, UNAVAILABLE
from test_run_llama import GetAsset, run

COURSE_SCRIPT = Path("course") / "run_llama.py"  # in the mirror
SEED = ["--seed", "11711"]  # not the default 1337: the seed is passed on
DATA = ["--train", "data/sst-train.txt", "--dev", "data/sst-dev.txt", "--test", "data/sst-test.txt",
        "--label-names", "data/sst-label-mapping.json"]
RUNS = {  # the flags of each option (besides the model), and the files the course's script writes
    "generate": ([], ["generated-sentence-temp-0.txt", "generated-sentence-temp-1.txt"]),
    "prompt": (["--batch_size", "4", *DATA, "--dev_out", "sst-dev-prompting-output.txt",
                "--test_out", "sst-test-prompting-output.txt"],
               ["sst-dev-prompting-output.txt", "sst-test-prompting-output.txt"]),
    # two epochs: the second's batches follow from every draw of the first, its evaluations' too; batches of 6, so
    # that the loss is divided by a number whose inverse is not exact in binary, and the last batch is short
    "finetune": (["--epochs", "2", "--lr", "1e-3", "--batch_size", "6", *DATA, "--dev_out",
                  "sst-dev-finetuning-output.txt", "--test_out", "sst-test-finetuning-output.txt"],
                 ["sst-dev-finetuning-output.txt", "sst-test-finetuning-output.txt"]),
}
EPOCH_LINE = r"^epoch \d+: train loss :: \d+\.\d{3}, train acc :: \d\.\d{3}, dev acc :: \d\.\d{3}"  # the course's


@pytest.fixture(scope="module")
def course_script() -> Path:
    """The course's run_llama.py in the mirror; the calling test is skipped when the mirror does not hold it."""
    if not MIRROR or not (Path(MIRROR) / COURSE_SCRIPT).is_file():
        pytest.skip(f"{UNAVAILABLE}: {COURSE_SCRIPT}: not in $MINLLAMA_ASSET_MIRROR ({MIRROR})")
    return Path(MIRROR) / COURSE_SCRIPT


def first_of_each_label(lines: list[str], per_label: int) -> list[str]:
    """The first `per_label` lines of each label, in file order."""
    kept, seen = [], Counter()
    for line in lines:
        label = line.split(" ||| ", 1)[0]
        if seen[label] < per_label:
            kept.append(line)
            seen[label] += 1
    return kept


def lay_out(folder: Path, asset: GetAsset) -> None:
    """The files both runs read, in `folder`: the tokenizer (where the course's Tokenizer looks for it) and the data."""
    folder.mkdir()
    shutil.copy(asset("tokenizer.model"), folder / "tokenizer.model")
    (folder / "data").mkdir()
    lines = {name: asset(f"data/sst-{name}.txt").read_text(encoding="utf-8").splitlines(keepends=True)
             for name in ("train", "dev", "test")}
    chosen = {"train": first_of_each_label(lines["train"], 3), "dev": first_of_each_label(lines["dev"], 4),
              "test": lines["test"][:6]}
    for name, kept in chosen.items():
        (folder / "data" / f"sst-{name}.txt").write_text("".join(kept), encoding="utf-8")
    shutil.copy(asset("data/sst-label-mapping.json"), folder / "data" / "sst-label-mapping.json")


def run_course(script: Path, cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    """The course's script, copied into cwd and run there on minllama's modules. Its test() reloads its checkpoint
    with torch.load's default, which torch ≥ 2.6 refuses for the objects it pickles: this run allows them."""
    shutil.copy(script, cwd / "run_llama.py")
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    return subprocess.run([sys.executable, "run_llama.py", *flags], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("option", RUNS)
def test_the_courses_run_llama_writes_the_same_files(tmp_path: Path, course_script: Path, asset: GetAsset,
                                                     asset_cache: Path, model_path: str, option: str, monkeypatch):
    # the two processes round alike whatever the load: the few-row kernel is named for both, not timed by each
    monkeypatch.setenv(blocked_linear.KERNEL_ENV, "blocked")
    flags, outputs = RUNS[option]
    flags = ["--option", option, *SEED, *flags, "--pretrained-model-path", model_path]
    course, ours = tmp_path / "course", tmp_path / "minllama"
    for folder in (course, ours):
        lay_out(folder, asset)
    course_result = run_course(course_script, course, *flags)
    assert course_result.returncode == 0, course_result.stderr
    our_result = run(ours, asset_cache, *flags)
    assert our_result.returncode == 0, our_result.stderr

    for name in outputs:
        assert (ours / name).read_bytes() == (course / name).read_bytes(), name
    course_epochs, our_epochs = (re.findall(EPOCH_LINE, result.stdout, re.M) for result in (course_result, our_result))
    assert our_epochs == course_epochs
    assert len(our_epochs) == (2 if option == "finetune" else 0)
