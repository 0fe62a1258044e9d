"""The course's accuracy table in one command: the five commands of README.md's "The course's commands" (generate;
prompt on SST and CFIMDB; finetune on SST and CFIMDB), each run over seeds, their accuracies averaged.

    python reproduce.py                            # 10 seeds (the course's count), the course's semantics, the CPU
    python reproduce.py --causal --use_gpu         # run_llama.py --causal, on a GPU
    python reproduce.py --seeds 2 --epochs 1       # a quick trial (the table says it is not the course's commands)
    python reproduce.py -- --dtype bfloat16        # flags after -- go to every command that takes them

Only four of run_llama.py's flags may follow --: --dtype, --group_by_length, --hidden_dropout_prob and --lr, which
change how the runs compute or train (the table then says it is not the course's commands), not which files they
read and write, nor what the table reads. The others are refused before any run: those reproduce.py sets itself
(--option, the data, the outputs, --seed, --epochs and --batch_size, which are its own flags, ...), and those that
change the generated text or the sentences (--prompt, --temperature, --max_new_tokens, --top_k, --stream,
--max_sentence_len) or apply to --option lora only, which none of the commands runs. --seeds is at most 1000.

Each (command, seed) runs `python run_llama.py` with the command's flags, `--seed`, and absolute paths to the data,
tokenizer and checkpoint, in its own folder OUT/runs/COMMAND/seed-SEED, so that the files it names (predictions,
finetune-5-2e-05.pt, metrics.jsonl, ...) land there; its output goes to run_llama.log beside them, and run.json records
its flags (their paths relative to OUT, and where OUT was), whether it finished, and its wall time. Generation at
temperature 0 and zero-shot prompting do not depend on the seed, so they run once, with the first seed (which also
draws the one sampled continuation shown).

Stopped by Ctrl-C, SIGTERM or SIGHUP, reproduce.py stops the run under way (SIGTERM, and waits for it to end) and
ends with one line. A rerun of the same command skips the runs that finished, after checking their outputs (each
prediction file has one `pred ||| ...` line per line of its data file, every pred a label as run_llama.py writes it:
ASCII digits), runs again those whose outputs or run.json do not check, and continues an interrupted fine-tune with
run_llama.py --resume when its -last.pt is there. OUT may be moved or copied meanwhile, alone or with the files the
runs read: a run's recorded flags are its flags when their paths name its files from where OUT is, or where it was.
Once a fine-tune has finished and its predictions check, its two checkpoints (about 1 GB together for stories42M) are
deleted unless --keep-checkpoints: the table needs only the predictions.

Accuracy is computed here from the prediction files against the gold labels of the data files, line by line; a file
whose labels are placeholders (some -1, or all one value: cfimdb-test.txt's are all 0) is not scored.
The table gives mean (sample standard deviation, n − 1) over the seeds beside the course's published figures, and goes
to OUT/results.md, with the same numbers in OUT/results.json. While it runs, reproduce.py holds those two files
(files.claim), so that a second one with the same --out is refused at once.
"""
import argparse
import contextlib
import io
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import assets
import files
from config import DEFAULT_CHECKPOINT, DEFAULT_SEED, DEFAULT_TOKENIZER
from files import InputError, write_atomically
from metrics import machine
from options import APPLIES_TO, PREFIX, TRAINING_OPTIONS, parse_args
from splits import placeholder_labels, read_gold, read_label_names

RUN_LLAMA = Path(__file__).resolve().parent / "run_llama.py"
COURSE_SEEDS = 10  # the course reports mean (std) over 10 seeds
MAX_SEEDS = 1000  # 2003 runs, more than a table needs; planned and checked in seconds
FIRST_SEED = DEFAULT_SEED  # run_llama.py's default --seed, so the first run of each command is exactly the README's
# run_llama.py's flags after --, each in one of three sets (tests/test_reproduce.py checks that every flag is):
# those reproduce.py sets itself, --epochs and --batch_size through its own flags; refused after --
RESERVED = {"--option", "--train", "--dev", "--test", "--label-names", "--dev_out", "--test_out", "--seed",
            "--pretrained-model-path", "--tokenizer-model", "--generated_sentence_low_temp_out",
            "--generated_sentence_high_temp_out", "--resume", "--use_gpu", "--causal", "--epochs", "--batch_size"}
# those that change the text generate writes (which the table shows as the course's prompt continued at temperatures
# 0 and 1), the sentences every run reads, or apply to --option lora, which no command runs; refused after --
CHANGING = {"--prompt", "--temperature", "--max_new_tokens", "--top_k", "--stream", "--max_sentence_len",
            "--lora_rank", "--lora_alpha", "--lora_dropout", "--lora_all_projections"}
# those that change how the runs compute or train, not which files they read and write: a trial, as the table says
ALLOWED = ("--dtype", "--group_by_length", "--hidden_dropout_prob", "--lr")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # each stops the run under way, then reproduce.py


@dataclass(frozen=True)
class Command:
    """One of the course's commands: its run folder's name, its flags as README.md lists them, the accuracy table's
    name for its task (None for generate), and whether its outputs are the same for every seed."""

    name: str
    flags: tuple[str, ...]
    task: str | None
    deterministic: bool


def _flags(text: str) -> tuple[str, ...]:
    return tuple(text.split())


COMMANDS = (
    Command("generate", _flags("--option generate"), None, True),
    Command("prompt-sst", _flags(
        "--option prompt --batch_size 10 --train data/sst-train.txt --dev data/sst-dev.txt --test data/sst-test.txt "
        "--label-names data/sst-label-mapping.json --dev_out sst-dev-prompting-output.txt "
        "--test_out sst-test-prompting-output.txt"), "zero-shot prompting, SST-5", True),
    Command("prompt-cfimdb", _flags(
        "--option prompt --batch_size 10 --train data/cfimdb-train.txt --dev data/cfimdb-dev.txt "
        "--test data/cfimdb-test.txt --label-names data/cfimdb-label-mapping.json "
        "--dev_out cfimdb-dev-prompting-output.txt --test_out cfimdb-test-prompting-output.txt"),
        "zero-shot prompting, CFIMDB", True),
    Command("finetune-sst", _flags(
        "--option finetune --epochs 5 --lr 2e-5 --batch_size 80 --train data/sst-train.txt --dev data/sst-dev.txt "
        "--test data/sst-test.txt --label-names data/sst-label-mapping.json --dev_out sst-dev-finetuning-output.txt "
        "--test_out sst-test-finetuning-output.txt"), "fine-tuning, SST-5", False),
    Command("finetune-cfimdb", _flags(
        "--option finetune --epochs 5 --lr 2e-5 --batch_size 10 --train data/cfimdb-train.txt "
        "--dev data/cfimdb-dev.txt --test data/cfimdb-test.txt --label-names data/cfimdb-label-mapping.json "
        "--dev_out cfimdb-dev-finetuning-output.txt --test_out cfimdb-test-finetuning-output.txt"),
        "fine-tuning, CFIMDB", False),
)

# The course's published accuracies, mean (std) over 10 seeds, as in README.md's table; None: a single figure, or
# (CFIMDB test) labels that are not public.
COURSE_FIGURES: dict[tuple[str, str], tuple[float, float | None] | None] = {
    ("zero-shot prompting, SST-5", "dev"): (0.213, None),
    ("zero-shot prompting, SST-5", "test"): (0.224, None),
    ("zero-shot prompting, CFIMDB", "dev"): (0.498, None),
    ("zero-shot prompting, CFIMDB", "test"): None,
    ("fine-tuning, SST-5", "dev"): (0.414, 0.014),
    ("fine-tuning, SST-5", "test"): (0.418, 0.017),
    ("fine-tuning, CFIMDB", "dev"): (0.800, 0.115),
    ("fine-tuning, CFIMDB", "test"): None,
}


class OutputError(InputError):
    """A run's outputs or its run.json are missing, incomplete or not what run_llama.py and reproduce.py write: the
    run must go again."""


# ---- the runs ----
@dataclass(frozen=True)
class Run:
    """One command with one seed: the run_llama.py flags, the folder it runs in, and OUT, which holds that folder."""

    command: Command
    seed: int
    argv: tuple[str, ...]
    folder: Path
    out: Path

    @property
    def title(self) -> str:
        return f"{self.command.name} seed {self.seed}"


def command_argv(command: Command, seed: int, data_dir: str, epochs: int | None, batch_size: int | None,
                 run_flags: tuple[str, ...]) -> tuple[str, ...]:
    """The command's flags with the data files under data_dir (absolute: the run's working directory is its own
    folder), the --epochs and --batch_size overrides, the seed, then those of run_flags that its --option takes
    (run_llama.py refuses the others)."""
    data_dir = Path(data_dir).resolve()
    flags = [str(data_dir / flag.removeprefix("data/")) if flag.startswith("data/") else flag
             for flag in command.flags]
    option = flags[flags.index("--option") + 1]
    if epochs is not None and option in TRAINING_OPTIONS:
        flags[flags.index("--epochs") + 1] = str(epochs)
    if batch_size is not None and option != "generate":
        flags[flags.index("--batch_size") + 1] = str(batch_size)
    return (*flags, "--seed", str(seed), *taken_by(option, run_flags))


def taken_by(option: str, run_flags: tuple[str, ...]) -> list[str]:
    """Of run_flags, the flags (with their values) that run_llama.py --option takes (options.APPLIES_TO)."""
    kept, taken = [], True
    for item in run_flags:
        if item.startswith("--"):
            taken = option in APPLIES_TO.get(item.split("=")[0], (option,))
        if taken:
            kept.append(item)
    return kept


def plan(seeds: list[int], out: str, data_dir: str, epochs: int | None, batch_size: int | None,
         run_flags: tuple[str, ...]) -> list[Run]:
    """Every (command, seed) run, seed after seed; the deterministic commands with the first seed only."""
    runs = []
    for seed in seeds:
        for command in COMMANDS:
            if seed == seeds[0] or not command.deterministic:
                folder = Path(out) / "runs" / command.name / f"seed-{seed}"
                runs.append(Run(command, seed, command_argv(command, seed, data_dir, epochs, batch_size, run_flags),
                                folder, Path(out)))
    return runs


def run_args(run: Run) -> argparse.Namespace:
    """The run's run_llama.py command line, parsed and checked, but not its files: run_llama.py checks those in the
    run's own folder, where it writes them."""
    return parse_args(list(run.argv), check_files=False)


def portable(argv: tuple[str, ...], out: str | Path) -> tuple[str, ...]:
    """argv with each absolute path made relative to the folder `out` (its absolute path), as run.json records it:
    the same wherever out and the files it names are moved or copied together."""
    base = Path(out).resolve()
    return tuple(os.path.relpath(arg, base) if os.path.isabs(arg) else arg for arg in argv)


def state_problem(state: object) -> str | None:
    """What makes `state` something other than a record write_state writes, or None."""
    if not isinstance(state, dict):
        return "not a JSON object"
    if not isinstance(state.get("argv"), list) or not all(isinstance(arg, str) for arg in state["argv"]):
        return "no 'argv' list of flags"
    if not isinstance(state.get("out"), str):
        return "no 'out' path"
    if not isinstance(state.get("finished"), bool):
        return "no 'finished' true or false"
    seconds = state.get("seconds")
    if state["finished"] and (not isinstance(seconds, (int, float)) or isinstance(seconds, bool)
                              or not 0 <= seconds < math.inf):
        return f"'seconds' is {seconds!r}, not a wall time"
    if state["finished"] and not isinstance(state.get("resumed"), bool):
        return "no 'resumed' true or false"
    return None


def read_state(run: Run) -> dict | None:
    """run.json of an earlier attempt, or None. One that is not a record write_state writes raises OutputError (the
    run goes again); one of a run with other flags, InputError (pick another --out). The flags are the same when
    their paths name the same files from where OUT is (moved or copied with them) or from where it was (alone)."""
    path = run.folder / "run.json"
    if not os.path.lexists(path):
        return None
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, or nested too deeply
        raise OutputError(f"{path} is not JSON ({e})") from None
    if problem := state_problem(state):
        raise OutputError(f"{path}: {problem}")
    recorded = tuple(state["argv"])
    if recorded not in (portable(run.argv, run.out), portable(run.argv, state["out"])):
        raise InputError(f"{path}: this folder holds a run with other flags ({' '.join(recorded)}); pass "
                         "another --out, or delete the folder to run it again")
    return state


def write_state(run: Run, state: dict) -> None:
    """Record the run's state in its run.json, with its flags as portable makes them and where OUT is."""
    record = {"argv": list(portable(run.argv, run.out)), "out": str(run.out.resolve()), **state}
    write_atomically(run.folder / "run.json", lambda f: f.write(json.dumps(record, indent=1).encode("utf-8")))


def checkpoints(run: Run) -> tuple[Path, Path] | None:
    """The fine-tune's best and last checkpoints, as run_llama.py names them; None for the other options."""
    args = run_args(run)
    return (run.folder / args.filepath, run.folder / args.last_filepath) if args.option in TRAINING_OPTIONS else None


def delete_checkpoints(run: Run) -> None:
    for path in checkpoints(run) or ():
        path.unlink(missing_ok=True)


class Children:
    """Runs run_llama.py's processes (`run`), one at a time, and takes SIGTERM, SIGINT and SIGHUP while `stoppable`
    lasts: between runs, each raises KeyboardInterrupt, as Ctrl-C does; during one, it ends the child (SIGTERM; a
    second signal, SIGKILL), and `run` raises KeyboardInterrupt once the child has ended. No exception is raised
    while a child starts, so none can leave one running."""

    def __init__(self) -> None:
        self.running = False  # whether `run` is starting or waiting for a child
        self.child: subprocess.Popen | None = None
        self.stopped = False  # whether a signal came during this run

    def stop(self, signum: int, frame: object) -> None:
        """The signal handler."""
        if not self.running:
            raise KeyboardInterrupt
        if self.child is not None and self.stopped:
            self.child.kill()
        elif self.child is not None:
            self.child.terminate()
        self.stopped = True

    @contextlib.contextmanager
    def stoppable(self) -> Iterator[None]:
        """While this lasts, STOP_SIGNALS go to `stop`; one that is ignored (nohup's SIGHUP) stays ignored."""
        previous = {number: signal.signal(number, self.stop) for number in STOP_SIGNALS
                    if signal.getsignal(number) != signal.SIG_IGN}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def run(self, argv: list[str], cwd: Path, output: TextIO) -> int:
        """Run argv in cwd, its stdout and stderr to `output`, and return its exit code; KeyboardInterrupt once it
        has ended, if a signal stopped it."""
        self.running, self.stopped = True, False
        try:
            child = self.child = subprocess.Popen(argv, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
            if self.stopped:  # the signal came while it started
                child.terminate()
            code = child.wait()
        finally:
            self.running, self.child = False, None
        if self.stopped:
            raise KeyboardInterrupt
        return code


CHILDREN = Children()


def execute(run: Run, resume: bool) -> float:
    """Run run_llama.py in the run's folder, its output appended to run_llama.log; return its wall time."""
    argv = [sys.executable, str(RUN_LLAMA), *run.argv] + ["--resume"] * resume
    log = run.folder / "run_llama.log"
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        start = time.perf_counter()
        code = CHILDREN.run(argv, run.folder, out)
        seconds = time.perf_counter() - start
    if code != 0:
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        raise InputError(f"{run.title} failed (exit code {code}): {lines[-1] if lines else 'no output'} "
                             f"(its output: {log})")
    return seconds


# ---- reading outputs ----
def read_predictions(path: Path, num_labels: int, expected: int) -> list[int]:
    """The prediction of each line of a run_llama.py output file, `pred ||| ...`; the text after the separator is
    not read. Raises OutputError unless there are `expected` lines, each a label 0 … num_labels − 1 as run_llama.py
    writes it: ASCII digits, without a sign, a separator or a leading zero."""
    if not path.is_file():
        raise OutputError(f"{path} is missing")
    text = path.read_bytes().decode("utf-8", errors="replace")
    if not text.endswith("\n"):
        raise OutputError(f"{path}: its last line is incomplete")
    lines = text.split("\n")[:-1]
    if len(lines) != expected:
        raise OutputError(f"{path}: {len(lines)} lines where its data file has {expected}")
    labels = {str(label): label for label in range(num_labels)}
    preds = []
    for lineno, line in enumerate(lines, 1):
        pred, separator, _ = line.partition(" ||| ")
        if not separator or pred not in labels:
            raise OutputError(f"{path}:{lineno}: expected 'pred ||| ...' with pred in 0 … {num_labels - 1}, "
                              f"found {line[:40]!r}")
        preds.append(labels[pred])
    return preds


def read_generated(path: Path) -> str:
    if not path.is_file():
        raise OutputError(f"{path} is missing")
    text = path.read_bytes().decode("utf-8", errors="replace")
    if not text.startswith(PREFIX) or len(text) == len(PREFIX):
        raise OutputError(f"{path}: not a continuation of the course's prompt")
    return text


def outputs(run: Run) -> dict:
    """What the run wrote, checked: {"greedy", "sampled"} texts for generate, else {split: predictions} for dev and
    test. Raises OutputError."""
    args = run_args(run)
    if args.option == "generate":
        return {"greedy": read_generated(run.folder / args.generated_sentence_low_temp_out),
                "sampled": read_generated(run.folder / args.generated_sentence_high_temp_out)}
    num_labels = len(read_label_names(args.label_names))
    return {split: read_predictions(run.folder / out, num_labels, len(read_gold(data)))
            for split, data, out in (("dev", args.dev, args.dev_out), ("test", args.test, args.test_out))}


def accuracy(preds: list[int], gold: list[int]) -> float:
    return sum(p == g for p, g in zip(preds, gold, strict=True)) / len(gold)


# ---- running them all ----
def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def time_left(pending: list[Run], timings: dict[str, list[float]]) -> str:
    """The time the pending runs should take, by the mean wall time of each command's finished runs."""
    if not pending:
        return "nothing left"
    known = [statistics.mean(timings[run.command.name]) for run in pending if timings.get(run.command.name)]
    untimed = ", ".join(sorted({run.command.name for run in pending if not timings.get(run.command.name)}))
    if not untimed:
        return f"about {duration(sum(known))} left"
    if not known:
        return f"time left not known until {untimed} ran once"
    return f"about {duration(sum(known))} left, plus {untimed} (not timed yet)"


def finished(run: Run) -> tuple[dict | None, str]:
    """The run's state if it finished and its outputs check, else None; and why it must run (again)."""
    try:
        state = read_state(run)
    except OutputError as e:
        return None, f"its run.json does not check: {e}"
    if state is None:
        return None, "not run yet"
    if not state.get("finished"):
        return None, "interrupted"
    try:
        outputs(run)
    except OutputError as e:
        return None, f"its outputs do not check: {e}"
    return state, "finished"


def run_all(runs: list[Run], keep_checkpoints: bool) -> dict[Run, dict]:
    """Run every run that has not finished, printing a line as each starts and ends; return each run's state."""
    states, pending = {}, []
    for run in runs:
        state, why = finished(run)
        if state is None:
            pending.append((run, why))
        else:
            states[run] = state
    print(f"{len(runs)} runs: {len(states)} finished earlier, {len(pending)} to run")
    timings: dict[str, list[float]] = {}
    for run, state in states.items():
        timings.setdefault(run.command.name, []).append(state["seconds"])
        if not keep_checkpoints:
            delete_checkpoints(run)
    for i, (run, why) in enumerate(pending, 1):
        run.folder.mkdir(parents=True, exist_ok=True)
        resume = checkpoints(run) is not None and checkpoints(run)[1].exists()
        how = "resuming from its -last.pt" if resume else "starting"
        why = "" if why == "not run yet" else f" ({why})"
        print(f"[{i}/{len(pending)}] {run.title}: {how}{why}; "
              f"{time_left([r for r, _ in pending[i - 1:]], timings)}", flush=True)
        write_state(run, {"finished": False, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "resumed": resume})
        seconds = execute(run, resume)
        try:
            outputs(run)
        except OutputError as e:
            raise InputError(f"{run.title} ended without error, but {e}") from None
        states[run] = {"finished": True, "seconds": seconds, "resumed": resume}
        write_state(run, states[run])
        if not keep_checkpoints:
            delete_checkpoints(run)
        timings.setdefault(run.command.name, []).append(seconds)
        print(f"[{i}/{len(pending)}] {run.title}: finished in {duration(seconds)}; "
              f"{time_left([r for r, _ in pending[i:]], timings)}", flush=True)
    return states


# ---- the table ----
def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def results(runs: list[Run], states: dict[Run, dict]) -> dict:
    """The measured part of results.json: per task and split, the accuracy of each run and their mean (std); each
    command's wall times; the generated text."""
    rows, commands, generated = [], [], None
    for command in COMMANDS:
        mine = [run for run in runs if run.command == command]
        seconds = [states[run]["seconds"] for run in mine]
        commands.append({"name": command.name, "argv": list(mine[0].argv), "seeds": [run.seed for run in mine],
                         "deterministic": command.deterministic, "seconds": seconds,
                         "resumed": sum(states[run]["resumed"] for run in mine)})
        if command.task is None:
            generated = {"seed": mine[0].seed, **outputs(mine[0])}
            continue
        flags = run_args(mine[0])
        predictions = [outputs(run) for run in mine]
        for split, data in (("dev", flags.dev), ("test", flags.test)):
            gold = read_gold(data)
            course = COURSE_FIGURES[(command.task, split)]
            row = {"task": command.task, "split": split, "data": data, "runs": len(mine),
                   "deterministic": command.deterministic,
                   "course": None if course is None else {"mean": course[0], "std": course[1]}}
            if placeholder_labels(gold):
                row.update(placeholder_labels=True, accuracies=None, mean=None, std=None)
            else:
                accuracies = [accuracy(p[split], gold) for p in predictions]
                mean, std = mean_std(accuracies)
                row.update(placeholder_labels=False, accuracies=accuracies, mean=mean, std=std)
            rows.append(row)
    return {"rows": rows, "commands": commands, "generated": generated}


def figure(mean: float, std: float | None) -> str:
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ({std:.3f})"


def quoted(text: str) -> str:
    return "\n".join(f"> {line}" for line in text.split("\n"))


def markdown(numbers: dict) -> str:
    """results.md: the table, the generated text, the machine and the wall times."""
    semantics = ("default: the course's reference (attention without a mask)" if numbers["semantics"] == "default"
                 else "causal: Llama 2 as llama2.c and transformers compute it (run_llama.py --causal)")
    m = numbers["machine"]
    lines = ["# minllama on the course's commands", "",
             f"- semantics: {semantics}",
             f"- seeds: {', '.join(map(str, numbers['seeds']))} ({len(numbers['seeds'])})",
             "- commands: the five of README.md, unchanged" if not numbers["overrides"] else
             f"- commands: README.md's, with `{' '.join(numbers['overrides'])}`: not the course's commands, so "
             "the figures are not comparable with the course's",
             f"- model: {numbers['model']}", f"- data: {numbers['data_dir']}",
             f"- machine: {m['cpu']}, {m['cores']} cores" + (f", GPU {m['gpu']}" if m["gpu"] else ", CPU only")
             + f"; {m['platform']}; Python {m['python']}, torch {m['torch']}", "",
             "Accuracy, mean (sample std) over the runs; the course's figures are over 10 seeds.", "",
             "| task | split | course | minllama | runs |", "|---|---|---|---|---|"]
    for row in numbers["rows"]:
        course = "not public" if row["course"] is None else figure(row["course"]["mean"], row["course"]["std"])
        mine = ("placeholder labels: not scored" if row["placeholder_labels"] else figure(row["mean"], row["std"]))
        runs = "1 (deterministic: run once)" if row["deterministic"] else str(row["runs"])
        lines.append(f"| {row['task']} | {row['split']} | {course} | {mine} | {runs} |")
    generated = numbers["generated"]
    lines += ["", f"## The course's prompt, continued (seed {generated['seed']})", "",
              "Greedy (temperature 0.0, generated-sentence-temp-0.txt):", "", quoted(generated["greedy"]), "",
              "Sampled (temperature 1.0, generated-sentence-temp-1.txt):", "", quoted(generated["sampled"]), "",
              "## Wall time", "", "| command | runs | per run, mean | total |", "|---|---|---|---|"]
    for command in numbers["commands"]:
        seconds = command["seconds"]
        note = f" ({command['resumed']} resumed: the time before the interruption is not counted)" \
            if command["resumed"] else ""
        lines.append(f"| {command['name']} | {len(seconds)}{note} | {duration(statistics.mean(seconds))} | "
                     f"{duration(sum(seconds))} |")
    return "\n".join(lines) + "\n"


# ---- command line ----
def reproduce_parser() -> argparse.ArgumentParser:
    """reproduce.py's own flags."""
    parser = argparse.ArgumentParser(prog="reproduce.py", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=COURSE_SEEDS,
                        help=f"Runs of each fine-tune, one per seed, at most {MAX_SEEDS} (default: %(default)s, the "
                             "course's count).")
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED,
                        help="The seeds are this one and the next ones (default: %(default)s).")
    parser.add_argument("--causal", action="store_true", help="Pass --causal to run_llama.py.")
    parser.add_argument("--use_gpu", action="store_true", help="Pass --use_gpu to run_llama.py.")
    parser.add_argument("--epochs", type=int, help="Epochs instead of the fine-tunes' 5 (a trial, not the course's).")
    parser.add_argument("--batch_size", type=int, help="A batch size instead of the commands' 10 and 80 (a trial).")
    parser.add_argument("--pretrained-model-path", default=DEFAULT_CHECKPOINT,
                        help="The pretrained checkpoint every run reads (default: %(default)s).")
    parser.add_argument("--tokenizer-model", default=DEFAULT_TOKENIZER,
                        help="The tokenizer every run reads (default: %(default)s).")
    parser.add_argument("--data-dir", default="data",
                        help="The folder of the data files the commands name (default: %(default)s).")
    parser.add_argument("--out", help="Where the runs and the results go (default: reproduce-default, or "
                                      "reproduce-causal with --causal).")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="Keep the fine-tunes' checkpoints (about 1 GB per run for stories42M).")
    return parser


def get_reproduce_args(argv: list[str]) -> argparse.Namespace:
    """reproduce.py's own flags, then after `--` flags for every run_llama.py command."""
    split = argv.index("--") if "--" in argv else len(argv)
    parser = reproduce_parser()
    args = parser.parse_args(argv[:split])
    args.run_llama_args = argv[split + 1:]
    if not 1 <= args.seeds <= MAX_SEEDS:
        parser.error(f"--seeds must be in 1 … {MAX_SEEDS}, got {args.seeds}")
    if problem := refused_after_dashes(args.run_llama_args):
        parser.error(problem)
    args.seed_list = list(range(args.first_seed, args.first_seed + args.seeds))
    args.out = args.out or f"reproduce-{'causal' if args.causal else 'default'}"
    if os.path.lexists(args.out) and (problem := files.output_problem(args.out, folder=True)):
        parser.error(f"--out {args.out}: {problem}: name a folder for the runs and the results")
    for flag, path in (("--pretrained-model-path", args.pretrained_model_path),
                       ("--tokenizer-model", args.tokenizer_model)):
        if os.path.exists(path) and not os.path.isfile(path):
            parser.error(f"{flag} {path} is not a regular file (a FIFO or <(...)?), which the runs, each a process of "
                         "its own, cannot all read: give the file's path")
    args.overrides = [item for flag, value in (("--epochs", args.epochs), ("--batch_size", args.batch_size))
                      if value is not None for item in (flag, str(value))] + args.run_llama_args
    args.run_flags = ("--pretrained-model-path", str(Path(args.pretrained_model_path).resolve()),
                      "--tokenizer-model", str(Path(args.tokenizer_model).resolve()),
                      *["--causal"] * args.causal, *["--use_gpu"] * args.use_gpu, *args.run_llama_args)
    return args


def refused_after_dashes(run_llama_args: list[str]) -> str | None:
    """Why reproduce.py refuses these flags after --, in one line, or None: a flag of RESERVED or CHANGING, or an
    abbreviation of one (--see), which a parser allowing them would take for the flag (--seed)."""
    set_here, changing = [], []
    for flag in sorted({arg.split("=")[0] for arg in run_llama_args if arg.startswith("--")} - set(ALLOWED)):
        names = sorted(name for name in RESERVED | CHANGING if name.startswith(flag))
        if names:
            shown = flag if flag in RESERVED | CHANGING else f"{flag} (for {', '.join(names)})"
            (set_here if RESERVED.intersection(names) else changing).append(shown)
    reasons = []
    if set_here:
        reasons.append(f"{', '.join(set_here)} after -- : reproduce.py sets those itself (see --help)")
    if changing:
        reasons.append(f"{', '.join(changing)} after -- : they change what the runs generate or read (only "
                       f"{', '.join(ALLOWED)} may follow --; see --help)")
    return "; ".join(reasons) or None


def seeds_text(seeds: list[int]) -> str:
    """The seeds, listed, or their range where there are more than the course's count."""
    return ", ".join(map(str, seeds)) if len(seeds) <= COURSE_SEEDS else f"{seeds[0]} … {seeds[-1]} ({len(seeds)})"


def refusal(argv: tuple[str, ...]) -> str | None:
    """run_llama.py's error line for a command line its parser refuses, without its usage; None if it accepts it."""
    error = io.StringIO()
    try:
        with contextlib.redirect_stderr(error), contextlib.redirect_stdout(io.StringIO()):
            parse_args(list(argv), check_files=False)
    except SystemExit as e:
        lines = error.getvalue().strip().splitlines()
        return lines[-1].split(" error: ", 1)[-1] if lines else f"it exits with status {e.code}, as for --help"
    return None


def main(argv: list[str] | None = None) -> None:
    args = get_reproduce_args(sys.argv[1:] if argv is None else argv)
    runs = plan(args.seed_list, args.out, args.data_dir, args.epochs, args.batch_size, args.run_flags)
    # a command's runs differ in --seed only, so its first and last seed's runs stand for all of them
    ends = [run for run in runs if run.seed in (args.seed_list[0], args.seed_list[-1])]
    for run in ends:  # run_llama.py's own parser refuses bad flags now, not hours into the runs
        if problem := refusal(run.argv):
            reproduce_parser().error(f"run_llama.py refuses the flags of {run.command.name}: {problem}")
    print(f"seeds: {seeds_text(args.seed_list)}; {len(runs)} runs; semantics: "
          f"{'causal' if args.causal else 'default'}; runs and results in {args.out}", flush=True)
    out = Path(args.out)
    created = files.make_folders(out)
    try:  # a second reproduce.py with this --out is refused at once, naming this one's PID
        with files.claim({"--out's results.json": str(out / "results.json"),
                          "--out's results.md": str(out / "results.md")}):
            table(args, runs, ends, out)
    finally:
        files.remove_folders(created)  # only if still empty: nothing arrived in it


def table(args: argparse.Namespace, runs: list[Run], ends: list[Run], out: Path) -> None:
    """Fetch the public files the runs read, run them (those that have not finished), and write the table to
    out/results.md and out/results.json."""
    needed = {args.pretrained_model_path, args.tokenizer_model}
    needed |= {getattr(run_args(run), name) for run in ends if run.command.task
               for name in ("dev", "test", "label_names", "train")}
    for path in sorted(needed):  # fetched once, before any run, where they are known public files
        assets.ensure(path)
    with CHILDREN.stoppable():
        states = run_all(runs, args.keep_checkpoints)
    numbers = {"semantics": "causal" if args.causal else "default", "seeds": args.seed_list,
               "overrides": args.overrides, "model": str(Path(args.pretrained_model_path).resolve()),
               "tokenizer": str(Path(args.tokenizer_model).resolve()), "data_dir": str(Path(args.data_dir).resolve()),
               "machine": machine(args.use_gpu), "use_gpu": args.use_gpu, **results(runs, states)}
    write_atomically(out / "results.json", lambda f: f.write(json.dumps(numbers, indent=1).encode("utf-8")))
    write_atomically(out / "results.md", lambda f: f.write(markdown(numbers).encode("utf-8")))
    print(markdown(numbers))
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")

if __name__ == "__main__":
    files.cli(main, "stopped: run the same command again to go on where it stopped")
