"""The course's accuracy table in one command: the five commands of README.md's "The course's commands" (generate;
prompt on SST and CFIMDB; finetune on SST and CFIMDB), each run over seeds, their accuracies averaged.

    python reproduce.py                            # 10 seeds (the course's count), the course's semantics, the CPU
    python reproduce.py --causal --use_gpu         # run_llama.py --causal, on a GPU
    python reproduce.py --seeds 2 --epochs 1       # a quick trial (the table says it is not the course's commands)
    python reproduce.py -- --max_sentence_len 64   # flags after -- are appended to every run_llama.py command

Each (command, seed) runs `python run_llama.py` with the command's flags, `--seed`, and absolute paths to the data,
tokenizer and checkpoint, in its own folder OUT/runs/COMMAND/seed-SEED, so that the files it names (predictions,
finetune-5-2e-05.pt, metrics.jsonl, ...) land there; its output goes to run_llama.log beside them, and run.json records
its flags, whether it finished, and its wall time. Generation at temperature 0 and zero-shot prompting do not depend
on the seed, so they run once, with the first seed (which also draws the one sampled continuation shown).

A rerun of the same command skips the runs that finished, after checking their outputs (each prediction file has one
`pred ||| ...` line per line of its data file, every pred a label), runs again those whose outputs do not check, and
continues an interrupted fine-tune with run_llama.py --resume when its -last.pt is there. Once a fine-tune has
finished and its predictions check, its two checkpoints (about 1 GB together for stories42M) are deleted unless
--keep-checkpoints: the table needs only the predictions.

Accuracy is computed here from the prediction files against the gold labels of the data files, line by line; a file
whose labels are placeholders (some -1, or all one value: cfimdb-test.txt's are all 0) is not scored.
The table gives mean (sample standard deviation, n − 1) over the seeds beside the course's published figures, and goes
to OUT/results.md, with the same numbers in OUT/results.json.
"""
import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import assets
import files
from config import DEFAULT_CHECKPOINT, DEFAULT_SEED, DEFAULT_TOKENIZER
from files import InputError, write_atomically
from metrics import machine
from options import PREFIX, TRAINING_OPTIONS, parse_args
from splits import placeholder_labels, read_gold, read_label_names

RUN_LLAMA = Path(__file__).resolve().parent / "run_llama.py"
COURSE_SEEDS = 10  # the course reports mean (std) over 10 seeds
FIRST_SEED = DEFAULT_SEED  # run_llama.py's default --seed, so the first run of each command is exactly the README's
# flags reproduce.py sets itself: passed after --, they would make the runs something other than the table's
RESERVED = {"--option", "--train", "--dev", "--test", "--label-names", "--dev_out", "--test_out", "--seed",
            "--pretrained-model-path", "--tokenizer-model", "--generated_sentence_low_temp_out",
            "--generated_sentence_high_temp_out", "--resume", "--use_gpu", "--causal"}


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
    """A run's outputs are missing, incomplete or not what run_llama.py writes: the run must go again."""


# ---- the runs ----
@dataclass(frozen=True)
class Run:
    """One command with one seed: the run_llama.py flags, and the folder it runs in."""

    command: Command
    seed: int
    argv: tuple[str, ...]
    folder: Path

    @property
    def title(self) -> str:
        return f"{self.command.name} seed {self.seed}"


def command_argv(command: Command, seed: int, data_dir: str, epochs: int | None, batch_size: int | None,
                 run_flags: tuple[str, ...]) -> tuple[str, ...]:
    """The command's flags with the data files under data_dir (absolute: the run's working directory is its own
    folder), the --epochs and --batch_size overrides, the seed, then run_flags, which every run gets."""
    data_dir = Path(data_dir).resolve()
    flags = [str(data_dir / flag.removeprefix("data/")) if flag.startswith("data/") else flag
             for flag in command.flags]
    option = flags[flags.index("--option") + 1]
    if epochs is not None and option in TRAINING_OPTIONS:
        flags[flags.index("--epochs") + 1] = str(epochs)
    if batch_size is not None and option != "generate":
        flags[flags.index("--batch_size") + 1] = str(batch_size)
    return (*flags, "--seed", str(seed), *run_flags)


def plan(seeds: list[int], out: str, data_dir: str, epochs: int | None, batch_size: int | None,
         run_flags: tuple[str, ...]) -> list[Run]:
    """Every (command, seed) run, seed after seed; the deterministic commands with the first seed only."""
    runs = []
    for seed in seeds:
        for command in COMMANDS:
            if seed == seeds[0] or not command.deterministic:
                folder = Path(out) / "runs" / command.name / f"seed-{seed}"
                runs.append(Run(command, seed, command_argv(command, seed, data_dir, epochs, batch_size, run_flags),
                                folder))
    return runs


def run_args(run: Run) -> argparse.Namespace:
    """The run's run_llama.py command line, parsed and checked, but not its files: run_llama.py checks those in the
    run's own folder, where it writes them."""
    return parse_args(list(run.argv), check_files=False)


def read_state(run: Run) -> dict | None:
    """run.json of an earlier attempt, or None; one with other flags is an error (pick another --out)."""
    path = run.folder / "run.json"
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        recorded = tuple(state["argv"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a run record written by reproduce.py ({e}); delete it to run again")
    if recorded != run.argv:
        raise InputError(f"{path}: this folder holds a run with other flags ({' '.join(recorded)}); pass "
                             "another --out, or delete the folder to run it again")
    return state


def write_state(run: Run, state: dict) -> None:
    write_atomically(run.folder / "run.json",
                     lambda f: f.write(json.dumps({"argv": list(run.argv), **state}, indent=1).encode("utf-8")))


def checkpoints(run: Run) -> tuple[Path, Path] | None:
    """The fine-tune's best and last checkpoints, as run_llama.py names them; None for the other options."""
    args = run_args(run)
    return (run.folder / args.filepath, run.folder / args.last_filepath) if args.option in TRAINING_OPTIONS else None


def delete_checkpoints(run: Run) -> None:
    for path in checkpoints(run) or ():
        path.unlink(missing_ok=True)


def execute(run: Run, resume: bool) -> float:
    """Run run_llama.py in the run's folder, its output appended to run_llama.log; return its wall time."""
    argv = [sys.executable, str(RUN_LLAMA), *run.argv] + ["--resume"] * resume
    log = run.folder / "run_llama.log"
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        start = time.perf_counter()
        code = subprocess.run(argv, cwd=run.folder, stdout=out, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - start
    if code != 0:
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        raise InputError(f"{run.title} failed (exit code {code}): {lines[-1] if lines else 'no output'} "
                             f"(its output: {log})")
    return seconds


# ---- reading outputs ----
def read_predictions(path: Path, num_labels: int, expected: int) -> list[int]:
    """The prediction of each line of a run_llama.py output file, `pred ||| ...`; the text after the separator is
    not read. Raises OutputError unless there are `expected` lines, each a label 0 … num_labels − 1."""
    if not path.is_file():
        raise OutputError(f"{path} is missing")
    text = path.read_bytes().decode("utf-8", errors="replace")
    if not text.endswith("\n"):
        raise OutputError(f"{path}: its last line is incomplete")
    lines = text.split("\n")[:-1]
    if len(lines) != expected:
        raise OutputError(f"{path}: {len(lines)} lines where its data file has {expected}")
    preds = []
    for lineno, line in enumerate(lines, 1):
        pred, separator, _ = line.partition(" ||| ")
        if not separator or not pred.isdigit() or int(pred) >= num_labels:
            raise OutputError(f"{path}:{lineno}: expected 'pred ||| ...' with pred in 0 … {num_labels - 1}, "
                              f"found {line[:40]!r}")
        preds.append(int(pred))
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
    state = read_state(run)
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
                        help="Runs of each fine-tune, one per seed (default: %(default)s, the course's count).")
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
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    given = {flag.split("=")[0] for flag in args.run_llama_args if flag.startswith("--")}
    # an abbreviation too (--see), which a parser allowing them would take for the flag (--seed)
    reserved = {flag: sorted(name for name in RESERVED if name.startswith(flag)) for flag in sorted(given)}
    if refused := [flag if flag in RESERVED else f"{flag} (for {', '.join(names)})"
                   for flag, names in reserved.items() if names]:
        parser.error(f"{', '.join(refused)} after -- : reproduce.py sets those itself (see --help)")
    args.seed_list = list(range(args.first_seed, args.first_seed + args.seeds))
    args.out = args.out or f"reproduce-{'causal' if args.causal else 'default'}"
    if os.path.lexists(args.out) and (problem := files.output_problem(args.out, folder=True)):
        parser.error(f"--out {args.out}: {problem}: name a folder for the runs and the results")
    args.overrides = [item for flag, value in (("--epochs", args.epochs), ("--batch_size", args.batch_size))
                      if value is not None for item in (flag, str(value))] + args.run_llama_args
    args.run_flags = ("--pretrained-model-path", str(Path(args.pretrained_model_path).resolve()),
                      "--tokenizer-model", str(Path(args.tokenizer_model).resolve()),
                      *["--causal"] * args.causal, *["--use_gpu"] * args.use_gpu, *args.run_llama_args)
    return args


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
    for run in runs:  # run_llama.py's own parser refuses bad flags now, not hours into the runs
        if problem := refusal(run.argv):
            reproduce_parser().error(f"run_llama.py refuses the flags of {run.command.name}: {problem}")
    needed = {args.pretrained_model_path, args.tokenizer_model}
    needed |= {getattr(run_args(run), name) for run in runs if run.command.task
               for name in ("dev", "test", "label_names", "train")}
    for path in sorted(needed):  # fetched once, before any run, where they are known public files
        assets.ensure(path)
    print(f"seeds: {', '.join(map(str, args.seed_list))}; semantics: {'causal' if args.causal else 'default'}; "
          f"runs and results in {args.out}")
    states = run_all(runs, args.keep_checkpoints)
    numbers = {"semantics": "causal" if args.causal else "default", "seeds": args.seed_list,
               "overrides": args.overrides, "model": str(Path(args.pretrained_model_path).resolve()),
               "tokenizer": str(Path(args.tokenizer_model).resolve()), "data_dir": str(Path(args.data_dir).resolve()),
               "machine": machine(args.use_gpu), "use_gpu": args.use_gpu, **results(runs, states)}
    out = Path(args.out)
    write_atomically(out / "results.json", lambda f: f.write(json.dumps(numbers, indent=1).encode("utf-8")))
    write_atomically(out / "results.md", lambda f: f.write(markdown(numbers).encode("utf-8")))
    print(markdown(numbers))
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")


if __name__ == "__main__":
    files.cli(main, "interrupted: run the same command again to go on where it stopped")
