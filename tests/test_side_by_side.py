"""Runs side by side in one folder (a seed or lr sweep): each run holds its outputs while it runs (files.claim), so
that it ends with its own results or another that would write them is refused at once; metrics.jsonl is appended
to, never rewritten; and --resume refuses what would make it compute other than the interrupted run."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import blocked_linear
import files
import metrics
import run_llama
import trainer
from run_llama import InputError
from test_resume import finetune_flags, interrupted, sst  # noqa: F401 (interrupted: a fixture)
from test_run_llama import SCRIPT, GetAsset, copy_head


def start(cwd: Path, mirror: Path, flags: list[str], log: str) -> subprocess.Popen:
    """run_llama.py with `flags` in cwd, its output into cwd/log; the few-row kernel named, so that every process
    rounds alike whatever the load (blocked_linear.KERNEL_ENV)."""
    env = {**os.environ, "MINLLAMA_ASSET_MIRROR": str(mirror), blocked_linear.KERNEL_ENV: "blocked"}
    with open(cwd / log, "w") as out:
        return subprocess.Popen([sys.executable, str(SCRIPT), *flags], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def hold(folder: Path, process: subprocess.Popen) -> None:
    """Wait until `process` holds its outputs in `folder` (its lock file is there), then stop it (SIGSTOP), locks
    held, so that what is started beside it meets it running however fast the host."""
    deadline = time.monotonic() + 120
    while not (folder / files.LOCKS).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, "it ended before it was held"
    process.send_signal(signal.SIGSTOP)


def sweep_flags(model_path: str, tokenizer_model: str, seed: int) -> list[str]:
    return ["--option", "finetune", "--train", "data/sst-train.txt", "--epochs", "2", "--lr", "0.001",
            "--batch_size", "4", "--seed", str(seed), "--pretrained-model-path", model_path,
            "--tokenizer-model", tokenizer_model]


def test_a_seed_sweep_in_one_folder_gives_each_run_the_results_of_its_seed(tmp_path: Path, monkeypatch,
                                                                          request: pytest.FixtureRequest,
                                                                          asset: GetAsset, asset_cache: Path,
                                                                          model_path: str, tokenizer_model: str):
    """Seeds 1 and 2 started side by side in one folder end with the files of solo runs of their seeds, under names
    that carry the seed; the same command started again beside seed 1 is refused at once, naming the file and the
    running run's PID, and seed 1 is unaffected."""
    monkeypatch.setenv(blocked_linear.KERNEL_ENV, "blocked")
    sweep = tmp_path / "sweep"
    for folder in (sweep, tmp_path / "solo-1", tmp_path / "solo-2"):
        folder.mkdir()
        sst(asset, folder, 24)
    first = start(sweep, asset_cache, sweep_flags(model_path, tokenizer_model, 1), "1.log")
    request.addfinalizer(first.kill)  # a stopped run is not left behind by a failing assertion
    hold(sweep, first)
    again = subprocess.run([sys.executable, str(SCRIPT), *sweep_flags(model_path, tokenizer_model, 1)], cwd=sweep,
                           env={**os.environ, "MINLLAMA_ASSET_MIRROR": str(asset_cache)}, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 1 and again.stderr.count("\n") == 1, again.stderr
    assert (f"is being written by another run (PID {first.pid})" in again.stderr
            and again.stderr.startswith("error: --dev_out sst-dev-finetuning-output-seed1.txt ")), again.stderr
    second = start(sweep, asset_cache, sweep_flags(model_path, tokenizer_model, 2), "2.log")
    first.send_signal(signal.SIGCONT)
    assert (first.wait(timeout=600), second.wait(timeout=600)) == (0, 0), (sweep / "2.log").read_text()
    for seed in (1, 2):
        monkeypatch.chdir(tmp_path / f"solo-{seed}")
        run_llama.main(sweep_flags(model_path, tokenizer_model, seed))
    for seed in (1, 2):
        solo = tmp_path / f"solo-{seed}"
        for name in (f"sst-dev-finetuning-output-seed{seed}.txt", f"sst-test-finetuning-output-seed{seed}.txt"):
            assert (sweep / name).read_bytes() == (solo / name).read_bytes(), name
        for name in (f"finetune-2-0.001-seed{seed}.pt", f"finetune-2-0.001-seed{seed}-last.pt"):
            ours, theirs = (torch.load(d / name, weights_only=True) for d in (sweep, solo))
            assert ours["epoch"] == theirs["epoch"] and ours["args"]["seed"] == seed
            assert all(torch.equal(t, theirs["model"][k]) for k, t in ours["model"].items()), name
    one, two = (torch.load(sweep / f"finetune-2-0.001-seed{s}.pt", weights_only=True) for s in (1, 2))
    assert not torch.equal(one["model"]["classifier_head.weight"], two["model"]["classifier_head.weight"])
    assert not (sweep / files.LOCKS).exists()  # the last run to let go removed it


def test_an_lr_sweep_records_every_epoch_and_keeps_every_earlier_line(tmp_path: Path, asset: GetAsset,
                                                                      asset_cache: Path, model_path: str,
                                                                      tokenizer_model: str):
    """Three fine-tunes at once over a metrics.jsonl of 100,000 earlier lines: all 6 epoch records arrive, whole,
    after the earlier lines, which are kept byte for byte (reading and renaming the file lost most of them)."""
    sst(asset, tmp_path, 16)
    earlier = b"".join(b'{"run": "earlier", "epoch": %d, "loss": 1.0}\n' % i for i in range(100_000))
    (tmp_path / metrics.FILE).write_bytes(earlier)
    lrs = ("1e-3", "2e-3", "3e-3")
    runs = [start(tmp_path, asset_cache, [*finetune_flags(model_path, tokenizer_model), "--lr", lr, "--dev_out",
                                          f"dev-{lr}.txt", "--test_out", f"test-{lr}.txt"], f"{lr}.log")
            for lr in lrs]
    assert [run.wait(timeout=600) for run in runs] == [0, 0, 0], [(tmp_path / f"{lr}.log").read_text() for lr in lrs]
    data = (tmp_path / metrics.FILE).read_bytes()
    assert data.startswith(earlier)
    added = [json.loads(line) for line in data[len(earlier):].splitlines()]
    assert sorted((r["lr"], r["epoch"]) for r in added) == sorted((float(lr), e) for lr in lrs for e in range(2))
    assert len(metrics.records(tmp_path / metrics.FILE)) == 100_000 + 6


@pytest.mark.parametrize("change, message", [
    ("dev", r"whose --dev held other bytes than data/other-dev\.txt holds"),
    ("labels", r"with the label names \['awful', 'bad', 'average', 'good', 'excellent'\], not \['1', '2', '3', '4', "
               r"'5'\]"),
    ("tokenizer", r"whose --tokenizer-model held other bytes than copy\.model holds"),
    ("base", r"whose --pretrained-model-path held other bytes than other\.pt holds"),
    ("causal", r"with other flags \(causal False → True\)"),
])
def test_resume_refuses_what_would_compute_otherwise(tmp_path: Path, interrupted: list[str],  # noqa: F811
                                                     model_path: str, tokenizer_model: str, change: str,
                                                     message: str):
    """Another dev set decides which checkpoint writes the predictions, and other label names, tokenizer or base
    checkpoint another model: each is refused in one line naming the flag, and nothing is written."""
    flags = interrupted
    if change == "dev":
        other = tmp_path / "data" / "other-dev.txt"
        other.write_text("".join(reversed((tmp_path / "data" / "sst-dev.txt").read_text().splitlines(True))))
        extra = ["--dev", "data/other-dev.txt"]
    elif change == "labels":
        (tmp_path / "labels.json").write_text('["1", "2", "3", "4", "5"]')
        extra = ["--label-names", "labels.json"]
    elif change == "tokenizer":
        unknown_field = b"\xc0\x3e\x01"  # protobuf field 1000 = 1, which the reader of the model skips
        (tmp_path / "copy.model").write_bytes(Path(tokenizer_model).read_bytes() + unknown_field)
        flags = flags[:flags.index("--tokenizer-model")]
        extra = ["--tokenizer-model", "copy.model"]
    elif change == "base":
        saved = torch.load(model_path, weights_only=True)
        saved["model"]["norm.weight"] += 1
        torch.save(saved, tmp_path / "other.pt")
        flags = flags[:flags.index("--pretrained-model-path")] + ["--tokenizer-model", tokenizer_model]
        extra = ["--pretrained-model-path", "other.pt"]
    else:
        extra = ["--causal"]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(InputError, match=rf"^--resume: finetune-2-0\.001-last\.pt was written by a run {message}"):
        run_llama.main(flags + extra + ["--resume"])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_resume_may_find_its_files_moved(tmp_path: Path, interrupted: list[str], model_path: str,  # noqa: F811
                                         tokenizer_model: str):
    """The same bytes under other paths are the same run: a resumed run checks what its files hold."""
    (tmp_path / "data").rename(tmp_path / "moved")
    run_llama.main(interrupted + ["--dev", "moved/sst-dev.txt", "--train", "moved/sst-train.txt", "--test",
                                  "moved/sst-test.txt", "--label-names", "moved/sst-label-mapping.json",
                                  "--dev_out", "sst-dev-finetuning-output.txt", "--test_out",
                                  "sst-test-finetuning-output.txt", "--resume"])
    assert [r["epoch"] for r in metrics.records(tmp_path / metrics.FILE)] == [0, 1]


def test_a_lora_checkpoint_finds_its_base_beside_it(tmp_path: Path, monkeypatch, asset: GetAsset, model_path: str,
                                                   tokenizer_model: str):
    """A LoRA checkpoint names its base as the run was given it (here relative to the run's folder); it is read from
    beside the checkpoint, not from wherever the reader stands."""
    run = tmp_path / "run"
    run.mkdir()
    sst(asset, run, 8)
    (run / "base.pt").write_bytes(Path(model_path).read_bytes())
    monkeypatch.chdir(run)
    run_llama.main(["--option", "lora", "--train", "data/sst-train.txt", "--epochs", "1", "--batch_size", "4",
                    "--pretrained-model-path", "base.pt", "--tokenizer-model", tokenizer_model])
    monkeypatch.chdir(tmp_path)
    model = trainer.load_classifier("run/lora-1-2e-05.pt")
    assert model.llama.config.dim == 32


def test_a_base_checkpoint_that_can_be_read_once_serves_the_whole_run(tmp_path: Path, asset: GetAsset,
                                                                      asset_cache: Path, model_path: str,
                                                                      tokenizer_model: str):
    """--pretrained-model-path <(cat tiny.pt): the fine-tune and the reload of its best checkpoint for the
    predictions read the one stream once."""
    sst(asset, tmp_path, 8)
    command = (f"{sys.executable} {SCRIPT} --option finetune --train data/sst-train.txt --epochs 1 --batch_size 4 "
               f"--pretrained-model-path <(cat {model_path}) --tokenizer-model <(cat {tokenizer_model})")
    result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MINLLAMA_ASSET_MIRROR": str(asset_cache)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert len((tmp_path / "sst-test-finetuning-output.txt").read_text().splitlines()) == 4


def test_the_lock_of_a_killed_run_is_gone_with_it(tmp_path: Path):
    """kill -9 leaves no stale lock: the operating system releases it with the process."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, files\n"
                               "with files.claim({'the output': sys.argv[1]}):\n"
                               "    print('held', flush=True); time.sleep(60)\n", str(tmp_path / "out.txt")],
                              cwd=Path(files.__file__).parent, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(InputError, match=rf"the output .*out\.txt is being written by another run \(PID {holder.pid}"):
        with files.claim({"the output": str(tmp_path / "out.txt")}):
            pass
    with files.claim({"another output": str(tmp_path / "other.txt")}):  # its other files are free
        pass
    holder.kill()
    holder.wait()
    with files.claim({"the output": str(tmp_path / "out.txt")}):
        assert (tmp_path / files.LOCKS).exists()
    assert not (tmp_path / files.LOCKS).exists()


def test_where_locks_cannot_be_had_the_run_goes_on_after_a_note(tmp_path: Path, capsys):
    """A file system without locks (ENOLCK), or a lock file another user made that cannot be opened for writing:
    the run is not refused for it, and says that its outputs are not guarded."""
    def fail(error: int, message: str):
        def call(*args, **kwargs):
            raise OSError(error, message)
        return call

    for module, name, error, why in ((files.fcntl, "lockf", errno.ENOLCK, "No locks available"),
                                     (files.os, "open", errno.EACCES, ".minllama.lock: Permission denied")):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(module, name, fail(error, why.split(": ")[-1]))
            with files.claim({"the output": str(tmp_path / "out.txt")}):
                pass
        note = f"note: the output {tmp_path}/out.txt is not locked against other runs ({why})\n"
        assert capsys.readouterr().out == note
