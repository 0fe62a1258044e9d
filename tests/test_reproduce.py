"""reproduce.py end to end on a tiny random Llama, the real tokenizer and the first lines of the real data: two
seeds, one epoch, killed during a fine-tune and run again; and its checks of outputs and flags, in-process."""
import contextlib
import json
import os
import re
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import options
import reproduce
import run_llama
import splits
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
                                         str(tmp_path), "--", "--dtype", "bfloat16"])
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
    assert finetune[-2:] == ("--dtype", "bfloat16") and runs[3].folder == Path("reproduce-default/runs/"
                                                                                       "finetune-sst/seed-1337")
    course = plan(reproduce.get_reproduce_args(["--causal", "--use_gpu"]))[4]
    assert course.argv[:len(course.command.flags)] == tuple(
        flag.replace("data/", str(Path("data").resolve()) + "/") for flag in course.command.flags)
    assert course.argv[-2:] == ("--causal", "--use_gpu") and course.folder.parts[0] == "reproduce-causal"


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be in 1 … 1000, got 0"),
    (["--", "--seed", "3"], "--seed after -- : reproduce.py sets those itself"),
    (["--", "--dev_out=mine.txt"], "--dev_out after --"),
    (["--", "--see", "7"], "--see (for --seed) after -- : reproduce.py sets those itself"),
    (["--", "--dtype", "bfloat16", "--se=7"], "--se (for --seed) after -- : reproduce.py sets those itself"),
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


# ---- a stopped reproduce.py stops its run ----
def children(pid: int) -> dict[int, str]:
    """The command line of each process whose parent is `pid`, from /proc."""
    found = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat_file.read_text().rsplit(")", 1)[1].split()[1])  # after the command's name: state, ppid
            if parent == pid:
                found[int(stat_file.parent.name)] = (stat_file.parent / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError):  # a process that ended meanwhile
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc to find the child")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["TERM", "HUP", "INT"])
def test_a_signal_stops_the_run_under_way_too(tmp_path: Path, asset: GetAsset, asset_cache: Path, model_path: str,
                                              tokenizer_model: str, signum: int):
    """kill -TERM (timeout's), a hangup or Ctrl-C sent to reproduce.py alone ends its run_llama.py as well, and
    reproduce.py with one line: nothing is left running that a rerun would run again beside it."""
    for name, lines in HEADS.items():
        copy_head(asset, tmp_path, name, lines)
    command = [sys.executable, str(SCRIPT), "--seeds", "1", "--epochs", "1", "--out", str(tmp_path / "out"),
               "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model,
               "--data-dir", str(tmp_path / "data")]
    env = {**os.environ, "MINLLAMA_ASSET_MIRROR": str(asset_cache)}
    with open(tmp_path / "stdout.txt", "w") as stdout, open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=stdout, stderr=stderr,
                                   start_new_session=True)  # its own process group, which its child joins
    try:
        deadline = time.monotonic() + 300  # a limit for a busy machine, not the expected time
        while (not any("run_llama.py" in line for line in children(process.pid).values())
               and process.poll() is None and time.monotonic() < deadline):
            time.sleep(0.005)
        assert process.poll() is None, (tmp_path / "stderr.txt").read_text()
        process.send_signal(signum)
        code = process.wait(timeout=120)
        with pytest.raises(ProcessLookupError):  # no process of its group is left: its child ended before it
            os.killpg(process.pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert code == 1 and (tmp_path / "stderr.txt").read_text() == (
        "stopped: run the same command again to go on where it stopped\n")
    states = [json.loads(path.read_text()) for path in (tmp_path / "out" / "runs").glob("*/seed-*/run.json")]
    assert states and not all(state["finished"] for state in states)  # the run under way: a rerun runs it again


# ---- flags after -- ----
def test_every_run_llama_flag_is_decided_after_dashes():
    """Each of run_llama.py's flags is set by reproduce.py, refused, or allowed after --, and only one of them."""
    flags = {name for action in options.arg_parser()._actions for name in action.option_strings} - {"-h", "--help"}
    allowed = set(reproduce.ALLOWED)
    assert flags == reproduce.RESERVED | reproduce.CHANGING | allowed
    assert not reproduce.RESERVED & reproduce.CHANGING and not allowed & (reproduce.RESERVED | reproduce.CHANGING)


@pytest.mark.parametrize("after, message", [
    (["--max_sentence_len", "4"], "--max_sentence_len after -- : they change what the runs generate or read (only "
                                  "--dtype, --group_by_length, --hidden_dropout_prob, --lr may follow --; see --help)"),
    (["--prompt", "Hello"], "--prompt after -- : they change"),
    (["--temperature", "0.7"], "--temperature after -- : they change"),
    (["--max_new_tokens=5", "--top_k", "3", "--stream"], "--max_new_tokens, --stream, --top_k after -- : they change"),
    (["--lora_rank", "8"], "--lora_rank after -- : they change"),
    (["--tem", "0.7"], "--tem (for --temperature) after -- : they change"),
    (["--epochs", "2"], "--epochs after -- : reproduce.py sets those itself (see --help)"),
    (["--batch_size", "2", "--prompt", "x"], "--batch_size after -- : reproduce.py sets those itself (see --help); "
                                             "--prompt after -- : they change"),
])
def test_flags_that_change_what_the_runs_write_are_refused_up_front(capsys, after: list[str], message: str):
    with pytest.raises(SystemExit) as e:
        reproduce.get_reproduce_args(["--", *after])
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and err[0].startswith("usage: reproduce.py ")  # the usage, then one line
    assert err[-1].startswith("reproduce.py: error: ") and message in err[-1]


def test_the_flags_allowed_after_dashes_reach_every_run_that_takes_them(tmp_path: Path):
    after = ["--dtype", "bfloat16", "--group_by_length", "--hidden_dropout_prob", "0.1", "--lr=1e-4"]
    taken = {"generate": ["--dtype", "bfloat16"], "prompt": ["--dtype", "bfloat16", "--group_by_length"],
             "finetune": after}
    args = reproduce.get_reproduce_args(["--seeds", "2", "--data-dir", str(tmp_path), "--", *after])
    assert args.overrides == after
    for run in plan(args):
        option = run.argv[run.argv.index("--option") + 1]
        assert run.argv[-len(taken[option]):] == tuple(taken[option]) and reproduce.refusal(run.argv) is None


# ---- label names, as run_llama.py reads them ----
def test_label_names_with_a_byte_order_mark_are_read_as_run_llama_reads_them(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "dev", "test"):
        write(data / f"sst-{split}.txt", "1 ||| a\n0 ||| b\n")
    write(data / "sst-label-mapping.json", '\ufeff["bad", "good"]')
    assert reproduce.read_label_names is splits.read_label_names  # the one reader
    run = plan(reproduce.get_reproduce_args(["--out", str(tmp_path / "out"), "--data-dir", str(data)]))[1]
    assert run.command.name == "prompt-sst"
    run.folder.mkdir(parents=True)
    for name in ("sst-dev-prompting-output.txt", "sst-test-prompting-output.txt"):
        write(run.folder / name, "1 ||| a\n1 ||| b\n")
    assert reproduce.outputs(run) == {"dev": [1, 1], "test": [1, 1]}


# ---- run.json: paths relative to --out ----
def finished_run(out: Path, data: Path, index: int = 3) -> reproduce.Run:
    """Run `index` of the plan for this --out and --data-dir, its run.json written as a finished run's."""
    run = plan(reproduce.get_reproduce_args(["--out", str(out), "--data-dir", str(data)]))[index]
    run.folder.mkdir(parents=True, exist_ok=True)
    reproduce.write_state(run, {"finished": True, "seconds": 1.0, "resumed": False})
    return run


def test_a_moved_or_copied_out_keeps_its_finished_runs(tmp_path: Path):
    first = tmp_path / "first"
    run = finished_run(first / "out", first / "data")
    recorded = json.loads((run.folder / "run.json").read_text())
    assert str(tmp_path) not in " ".join(recorded["argv"]) and "../data/sst-train.txt" in recorded["argv"]
    # copied with the files it names: the same paths relative to it
    shutil.copytree(first, tmp_path / "second")
    copied = plan(reproduce.get_reproduce_args(["--out", str(tmp_path / "second" / "out"), "--data-dir",
                                                str(tmp_path / "second" / "data")]))[3]
    assert reproduce.read_state(copied)["finished"]
    # moved alone: the same files as from where it was
    shutil.move(first / "out", tmp_path / "elsewhere" / "out")
    moved = plan(reproduce.get_reproduce_args(["--out", str(tmp_path / "elsewhere" / "out"), "--data-dir",
                                               str(first / "data")]))[3]
    assert reproduce.read_state(moved)["finished"]
    # other files: other flags
    other = plan(reproduce.get_reproduce_args(["--out", str(tmp_path / "elsewhere" / "out"), "--data-dir",
                                               str(tmp_path / "other")]))[3]
    with pytest.raises(InputError, match="this folder holds a run with other flags"):
        reproduce.read_state(other)


# ---- a damaged run.json or prediction file: the run goes again ----
@pytest.mark.parametrize("damage, problem", [
    (lambda state: state.pop("seconds"), "'seconds' is None, not a wall time"),
    (lambda state: state.update(seconds="3"), "'seconds' is '3', not a wall time"),
    (lambda state: state.update(seconds=True), "'seconds' is True, not a wall time"),
    (lambda state: state.pop("resumed"), "no 'resumed' true or false"),
    (lambda state: state.update(finished="yes"), "no 'finished' true or false"),
    (lambda state: state.pop("argv"), "no 'argv' list of flags"),
    (lambda state: state.pop("out"), "no 'out' path"),
], ids=["no seconds", "seconds a string", "seconds true", "no resumed", "finished a string", "no argv", "no out"])
def test_a_damaged_run_json_runs_again(tmp_path: Path, damage, problem: str):
    run = finished_run(tmp_path / "out", tmp_path / "data", index=0)
    for name in ("generated-sentence-temp-0.txt", "generated-sentence-temp-1.txt"):
        write(run.folder / name, run_llama.PREFIX + " and more")
    assert reproduce.finished(run) == (reproduce.read_state(run), "finished")
    state = json.loads((run.folder / "run.json").read_text())
    damage(state)
    (run.folder / "run.json").write_text(json.dumps(state))
    assert reproduce.finished(run) == (None, f"its run.json does not check: {run.folder / 'run.json'}: {problem}")


@pytest.mark.parametrize("text", ["{", "[" * 100_000, "\xff", "NaN", "[]"],
                         ids=["cut", "deep", "latin-1", "NaN", "list"])
def test_a_run_json_that_is_no_record_runs_again(tmp_path: Path, text: str):
    run = finished_run(tmp_path / "out", tmp_path / "data")
    (run.folder / "run.json").write_bytes(text.encode("latin-1"))
    state, why = reproduce.finished(run)
    assert state is None and why.startswith(f"its run.json does not check: {run.folder / 'run.json'}")


@pytest.mark.parametrize("pred", ["²", "١", "+1", "0_1", "01", " 1", "9" * 5000])
def test_a_prediction_is_one_of_the_labels_as_run_llama_writes_them(tmp_path: Path, pred: str):
    with pytest.raises(reproduce.OutputError, match=r":2: expected 'pred \|\|\| \.\.\.' with pred in 0 … 4"):
        reproduce.read_predictions(write(tmp_path / "bad.txt", f"3 ||| a\n{pred} ||| b\n"), 5, 2)


# ---- many seeds ----
def test_more_seeds_than_a_table_needs_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.get_reproduce_args(["--seeds", "20000"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "reproduce.py: error: --seeds must be in 1 … 1000, got 20000"


def test_the_plan_is_printed_before_any_fetch(tmp_path: Path, monkeypatch, capsys):
    def fetch(path: str) -> None:
        raise Planned
    monkeypatch.setattr(reproduce.assets, "ensure", fetch)
    with pytest.raises(Planned):
        reproduce.main(["--seeds", "1000", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path)])
    assert capsys.readouterr().out == ("seeds: 1337 … 2336 (1000); 2003 runs; semantics: default; runs and results "
                                       f"in {tmp_path / 'out'}\n")


def test_a_stream_for_the_model_or_tokenizer_is_refused_up_front(tmp_path: Path, capsys):
    """Each run reads them in a process of its own: a FIFO could be read by one, and /dev/fd/N names nothing in the
    children (it was reported there as missing, with a hint to fetch it)."""
    fifo = tmp_path / "tokenizer.fifo"
    os.mkfifo(fifo)
    with pytest.raises(SystemExit) as e:
        reproduce.get_reproduce_args(["--tokenizer-model", str(fifo), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"reproduce.py: error: --tokenizer-model {fifo} is not a regular file (a FIFO or <(...)?), which the runs, "
        "each a process of its own, cannot all read: give the file's path")


def test_a_second_reproduce_with_the_same_out_is_refused_at_once(tmp_path: Path, monkeypatch):
    """Two of them would run the same runs side by side in one folder: the second is refused before any work,
    naming the first's PID."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, files\n"
                               "with files.claim({'results': sys.argv[1]}):\n"
                               "    print('held', flush=True); time.sleep(60)\n", str(out / "results.json")],
                              cwd=Path(reproduce.__file__).parent, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        monkeypatch.setattr(reproduce.assets, "ensure", lambda path: pytest.fail("work began"))
        with pytest.raises(InputError, match=rf"^--out's results\.json {out}/results\.json is being "
                                             rf"written by another run \(PID {holder.pid}\)"):
            reproduce.main(["--seeds", "1", "--out", str(out), "--data-dir", str(tmp_path)])
    finally:
        holder.kill()
        holder.wait()
