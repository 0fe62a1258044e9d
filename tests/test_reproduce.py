"""reproduce.py end to end on a tiny random Llama, the real tokenizer and the first lines of the real data: two
seeds, one epoch, killed during a fine-tune and run again; and its checks of outputs and flags, in-process."""
import json
import os
import re
import signal
import stat
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import reproduce
import run_llama
from files import InputError
from llama import load_pretrained
from tokenizer import Tokenizer
from test_run_llama import GetAsset, copy_head

SCRIPT = Path(__file__).resolve().parent.parent / "reproduce.py"
README = Path(__file__).resolve().parent.parent / "README.md"
HEADS = {"sst-train.txt": 16, "sst-dev.txt": 8, "sst-test.txt": 6, "sst-label-mapping.json": 1,
         "cfimdb-train.txt": 6, "cfimdb-dev.txt": 6, "cfimdb-test.txt": 4, "cfimdb-label-mapping.json": 1}
PROGRESS = re.compile(r"^\[\d+/\d+\] ([\w-]+) seed (\d+): (starting|resuming from its -last\.pt)", re.M)


def test_the_commands_are_readme_s():
    section = README.read_text(encoding="utf-8").split("## The course's commands", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^    python run_llama\.py (.+)$", section, re.M)
    assert listed == [" ".join(command.flags) for command in reproduce.COMMANDS]


def labels(path: Path) -> list[int]:
    """The first column of a data file (gold labels) or of a prediction file (predictions)."""
    return [int(line.split(" ||| ", 1)[0]) for line in path.read_text(encoding="utf-8").splitlines()]


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_two_seeds_killed_and_run_again(tmp_path: Path, asset: GetAsset, asset_cache: Path, model_path: str,
                                        tokenizer_model: str):
    for name, lines in HEADS.items():
        copy_head(asset, tmp_path, name, lines)
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--seeds", "2", "--epochs", "1", "--out", str(out),
               "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model,
               "--data-dir", str(tmp_path / "data")]
    env = {**os.environ, "MINLLAMA_ASSET_MIRROR": str(asset_cache)}
    runs = out / "runs"
    last = runs / "finetune-sst" / "seed-1337" / "finetune-1-2e-05-last.pt"

    # killed, with every process it started, once the first fine-tune has written its -last.pt
    with open(tmp_path / "first.txt", "w") as stdout:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=stdout, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        deadline = time.monotonic() + 600  # a limit for a busy machine, not the expected time
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, (tmp_path / "first.txt").read_text()
    first = (tmp_path / "first.txt").read_text()
    assert "seeds: 1337, 1338" in first
    assert PROGRESS.findall(first) == [("generate", "1337", "starting"), ("prompt-sst", "1337", "starting"),
                                       ("prompt-cfimdb", "1337", "starting"), ("finetune-sst", "1337", "starting")]
    assert not json.loads((last.parent / "run.json").read_text())["finished"]
    # and one finished run's predictions lose their last line
    damaged = runs / "prompt-sst" / "seed-1337" / "sst-dev-prompting-output.txt"
    damaged.write_text("".join(damaged.read_text().splitlines(keepends=True)[:-1]))
    untouched = {name: mtimes(runs / name) for name in ("generate", "prompt-cfimdb")}

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "7 runs: 2 finished earlier, 5 to run" in second.stdout
    assert PROGRESS.findall(second.stdout) == [
        ("prompt-sst", "1337", "starting"), ("finetune-sst", "1337", "resuming from its -last.pt"),
        ("finetune-cfimdb", "1337", "starting"), ("finetune-sst", "1338", "starting"),
        ("finetune-cfimdb", "1338", "starting")]
    assert "its outputs do not check: " in second.stdout and "7 lines where its data file has 8" in second.stdout
    assert re.search(r"finished in [\d.]+(s| min| h); about [\d.]+(s| min| h) left", second.stdout)
    assert "resume from finetune-1-2e-05-last.pt after epoch 0" in (last.parent / "run_llama.log").read_text()
    assert {name: mtimes(runs / name) for name in untouched} == untouched
    assert not list(runs.rglob("*.pt"))  # the fine-tunes' checkpoints, deleted once their predictions checked

    third = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert "7 runs: 7 finished earlier, 0 to run" in third.stdout and not PROGRESS.findall(third.stdout)

    # the table's figures: the mean and sample std of the accuracies recomputed from the prediction files
    numbers = json.loads((out / "results.json").read_text())
    table = (out / "results.md").read_text()
    assert numbers["seeds"] == [1337, 1338] and numbers["semantics"] == "default"
    assert numbers["overrides"] == ["--epochs", "1"] and "with `--epochs 1`: not the course's commands" in table
    rows = {(row["task"], row["split"]): row for row in numbers["rows"]}
    for task, folder, seeds in (("zero-shot prompting, SST-5", "prompt-sst", [1337]),
                                ("zero-shot prompting, CFIMDB", "prompt-cfimdb", [1337]),
                                ("fine-tuning, SST-5", "finetune-sst", [1337, 1338]),
                                ("fine-tuning, CFIMDB", "finetune-cfimdb", [1337, 1338])):
        dataset, kind = folder.split("-")[1], "prompting" if folder.startswith("prompt") else "finetuning"
        for split in ("dev", "test"):
            row = rows[(task, split)]
            gold = labels(tmp_path / "data" / f"{dataset}-{split}.txt")
            assert row["runs"] == len(seeds)
            if dataset == "cfimdb" and split == "test":  # every label is 0: placeholders
                assert row["placeholder_labels"] and row["mean"] is None
                assert f"| {task} | test | not public | placeholder labels: not scored |" in table
                continue
            accuracies = []
            for seed in seeds:
                preds = labels(runs / folder / f"seed-{seed}" / f"{dataset}-{split}-{kind}-output.txt")
                assert len(preds) == len(gold)
                accuracies.append(sum(p == g for p, g in zip(preds, gold)) / len(gold))
            assert row["accuracies"] == pytest.approx(accuracies)
            assert row["mean"] == pytest.approx(statistics.mean(accuracies))
            if len(seeds) == 1:
                assert row["std"] is None
                mine, runs_cell = f"{statistics.mean(accuracies):.3f}", "1 (deterministic: run once)"
            else:
                assert row["std"] == pytest.approx(statistics.stdev(accuracies))
                mine = f"{statistics.mean(accuracies):.3f} ({statistics.stdev(accuracies):.3f})"
                runs_cell = "2"
            course = reproduce.COURSE_FIGURES[(task, split)]
            course_cell = f"{course[0]:.3f}" if course[1] is None else f"{course[0]:.3f} ({course[1]:.3f})"
            assert f"| {task} | {split} | {course_cell} | {mine} | {runs_cell} |" in table

    generate = runs / "generate" / "seed-1337"
    for key, name in (("greedy", "generated-sentence-temp-0.txt"), ("sampled", "generated-sentence-temp-1.txt")):
        text = (generate / name).read_text(encoding="utf-8")
        assert numbers["generated"][key] == text and f"> {text}" in table
    commands = {c["name"]: c for c in numbers["commands"]}
    assert [len(commands[name]["seconds"]) for name in commands] == [1, 1, 1, 2, 2]
    assert commands["finetune-sst"]["resumed"] == 1
    for name, command in commands.items():
        for seed, seconds in zip(command["seeds"], command["seconds"]):
            assert seconds == json.loads((runs / name / f"seed-{seed}" / "run.json").read_text())["seconds"] > 0
    machine = numbers["machine"]
    assert f"Python {machine['python']}, torch {machine['torch']}" in table and machine["gpu"] is None


def test_causal_runs_every_command_causal(tmp_path: Path, asset: GetAsset, asset_cache: Path, model_path: str,
                                         tokenizer_model: str):
    """--causal reaches every run_llama.py command, the table says so, and the greedy text is the causal model's."""
    for name in HEADS:
        copy_head(asset, tmp_path, name, 1 if name.endswith(".json") else 3)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(SCRIPT), "--causal", "--seeds", "1", "--epochs", "1", "--out",
                             str(out), "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model,
                             "--data-dir", str(tmp_path / "data")], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "MINLLAMA_ASSET_MIRROR": str(asset_cache)}, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    numbers = json.loads((out / "results.json").read_text())
    assert numbers["semantics"] == "causal"
    assert "causal: Llama 2 as llama2.c and transformers compute it" in (out / "results.md").read_text()
    for state in (out / "runs").glob("*/seed-*/run.json"):
        assert json.loads(state.read_text())["argv"][-1] == "--causal"
        assert "'causal': True" in (state.parent / "run_llama.log").read_text()
    model = load_pretrained(model_path, causal=True)
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model)
    prompt = torch.tensor([tokenizer.encode(run_llama.PREFIX, bos=True, eos=False)])
    greedy = tokenizer.decode(model.generate(prompt, 75, temperature=0.0)[0].tolist())
    assert numbers["generated"]["greedy"] == greedy


# ---- in-process ----
def plan(args) -> list[reproduce.Run]:
    """reproduce.plan of these parsed flags, as main calls it."""
    return reproduce.plan(args.seed_list, args.out, args.data_dir, args.epochs, args.batch_size, args.run_flags)



def test_outputs_that_do_not_check(tmp_path: Path):
    good = "3 ||| a sentence\n0 ||| another Is this movie bad or good? This movie is \n"
    assert reproduce.read_predictions(write(tmp_path / "ok.txt", good), 5, 2) == [3, 0]
    for text, message in (("3 ||| a sentence\n", "1 lines where its data file has 2"),
                          ("3 ||| a sentence\n1 ||| cut", "its last line is incomplete"),
                          ("3 ||| a sentence\n5 ||| no such label\n", r":2: expected 'pred \|\|\| \.\.\.' with pred "
                                                                     r"in 0 … 4, found '5 \|\|\| no such label'"),
                          ("3 ||| a sentence\n-1 ||| placeholder\n", ":2: expected"),
                          ("3 ||| a sentence\n3 | one bar\n", ":2: expected")):
        with pytest.raises(reproduce.OutputError, match=message):
            reproduce.read_predictions(write(tmp_path / "bad.txt", text), 5, 2)
    with pytest.raises(reproduce.OutputError, match="missing"):
        reproduce.read_predictions(tmp_path / "absent.txt", 5, 2)
    # gold labels as run_llama.py reads its data files; a UTF-8 BOM and trailing blank lines are not lines
    assert reproduce.read_gold(write(tmp_path / "d.txt", "\ufeff4 ||| x\n0 ||| y\n\n")) == [4, 0]
    with pytest.raises(InputError, match=r"d\.txt:2: the label 'four' is not an integer"):
        reproduce.read_gold(write(tmp_path / "d.txt", "4 ||| x\nfour ||| y\n"))


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_overrides_go_where_they_mean_something(tmp_path: Path):
    args = reproduce.get_reproduce_args(["--seeds", "3", "--epochs", "1", "--batch_size", "4", "--data-dir",
                                         str(tmp_path), "--", "--max_sentence_len", "32"])
    assert args.seed_list == [1337, 1338, 1339] and args.out == "reproduce-default"
    runs = plan(args)
    assert [(run.command.name, run.seed) for run in runs] == [
        ("generate", 1337), ("prompt-sst", 1337), ("prompt-cfimdb", 1337), ("finetune-sst", 1337),
        ("finetune-cfimdb", 1337), ("finetune-sst", 1338), ("finetune-cfimdb", 1338), ("finetune-sst", 1339),
        ("finetune-cfimdb", 1339)]
    generate, prompt, finetune = runs[0].argv, runs[1].argv, runs[3].argv
    assert "--batch_size" not in generate and "--epochs" not in prompt
    assert prompt[prompt.index("--batch_size") + 1] == "4" and finetune[finetune.index("--epochs") + 1] == "1"
    assert finetune[finetune.index("--train") + 1] == str(tmp_path / "sst-train.txt")
    assert finetune[-2:] == ("--max_sentence_len", "32") and runs[3].folder == Path("reproduce-default/runs/"
                                                                                       "finetune-sst/seed-1337")
    course = plan(reproduce.get_reproduce_args(["--causal", "--use_gpu"]))[4]
    assert course.argv[:len(course.command.flags)] == tuple(
        flag.replace("data/", str(Path("data").resolve()) + "/") for flag in course.command.flags)
    assert course.argv[-2:] == ("--causal", "--use_gpu") and course.folder.parts[0] == "reproduce-causal"


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--", "--seed", "3"], "--seed after -- : reproduce.py sets those itself"),
    (["--", "--dev_out=mine.txt"], "--dev_out after --"),
    (["--", "--see", "7"], "--see (for --seed) after -- : reproduce.py sets those itself"),
    (["--", "--max_sentence_len", "64", "--se=7"], "--se (for --seed) after -- : reproduce.py sets those itself"),
    (["--seed", "42"], "unrecognized arguments: --seed 42"),  # not --seeds 42: 87 runs
])
def test_bad_flags_are_refused(capsys, argv: list[str], message: str):
    with pytest.raises(SystemExit):
        reproduce.get_reproduce_args(argv)
    assert message in capsys.readouterr().err


def test_a_flag_run_llama_refuses_is_shown_under_reproduces_usage(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--", "--bogus"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("usage: reproduce.py [-h] [--seeds SEEDS]")
    assert err.endswith("reproduce.py: error: run_llama.py refuses the flags of generate: unrecognized arguments: "
                        "--bogus\n")
    assert "--train TRAIN" not in err  # run_llama.py's usage
    assert list(tmp_path.iterdir()) == []


def test_a_folder_of_a_run_with_other_flags_is_not_reused(tmp_path: Path):
    run = plan(reproduce.get_reproduce_args(["--out", str(tmp_path)]))[3]
    run.folder.mkdir(parents=True)
    reproduce.write_state(run, {"finished": True, "seconds": 1.0, "resumed": False})
    assert reproduce.read_state(run)["finished"]
    other = plan(reproduce.get_reproduce_args(["--out", str(tmp_path), "--epochs", "2"]))[3]
    with pytest.raises(InputError, match=r"run\.json: this folder holds a run with other flags "
                                                       r"\(--option finetune --epochs 5 "):
        reproduce.read_state(other)


def test_gold_lines_are_run_llama_s_lines_cr_only_included(tmp_path: Path):
    assert reproduce.read_gold(write(tmp_path / "d.txt", "4 ||| x\r0 ||| y\r")) == [4, 0]


@pytest.mark.parametrize("make, problem", [
    (lambda path: path.write_text("mine"), "it is a file"),
    (lambda path: os.mkfifo(path), "it is a FIFO"),
    (lambda path: os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3)), "it is a character device"),
    (lambda path: path.symlink_to("gone"), "it is a link to .*gone, which does not exist"),
], ids=["file", "FIFO", "character device", "link to nothing"])
def test_out_that_is_not_a_folder_is_one_line(tmp_path: Path, capsys, make, problem: str):
    make(tmp_path / "results")
    before = (tmp_path / "results").lstat()
    with pytest.raises(SystemExit):
        reproduce.get_reproduce_args(["--out", str(tmp_path / "results")])
    out = re.escape(str(tmp_path / "results"))
    assert re.fullmatch(f".*: error: --out {out}: {problem}: name a folder for the runs and the results",
                        capsys.readouterr().err.splitlines()[-1])
    assert (tmp_path / "results").lstat() == before


class Planned(Exception):
    """Raised in place of the runs: main got that far."""


def test_the_working_folder_s_files_are_not_the_runs(tmp_path: Path, monkeypatch, asset: GetAsset, model_path: str,
                                                      tokenizer_model: str):
    """A folder named metrics.jsonl in a read-only working folder is no output of the runs, which run in their own
    folders under --out: run_llama.py checks the files there."""
    for name, lines in HEADS.items():
        copy_head(asset, tmp_path, name, lines)
    work = tmp_path / "work"
    (work / "metrics.jsonl").mkdir(parents=True)
    work.chmod(0o555)
    monkeypatch.chdir(work)
    monkeypatch.setattr(reproduce, "run_all", lambda runs, keep: (_ for _ in ()).throw(Planned))
    with pytest.raises(Planned):
        reproduce.main(["--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data"),
                        "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model])
