"""Resumable, crash-safe runs: a run stopped after an epoch and resumed with --resume ends with the weights of an
uninterrupted run, and a run killed with SIGKILL leaves its previous checkpoint loadable."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import blocked_linear
import metrics
import run_llama
import trainer
from run_llama import InputError
from test_run_llama import SCRIPT, GetAsset, copy_head
from trainer import rng_state, set_rng_state


def sst(asset: GetAsset, cwd: Path, n_train: int) -> None:
    copy_head(asset, cwd, "sst-train.txt", n_train)
    copy_head(asset, cwd, "sst-dev.txt", 6)
    copy_head(asset, cwd, "sst-test.txt", 4)
    copy_head(asset, cwd, "sst-label-mapping.json", 1)


def weights(saved: dict) -> dict[str, torch.Tensor]:
    return saved["model"] if "model" in saved else saved["lora"]


def assert_same_run(a: Path, b: Path, name: str) -> None:
    """The runs in folders a and b saved the same weights, optimizer state and metrics."""
    for filename in (f"{name}.pt", f"{name}-last.pt"):
        saved_a, saved_b = (torch.load(d / filename, weights_only=True) for d in (a, b))
        assert saved_a["epoch"] == saved_b["epoch"] and saved_a["best_dev_acc"] == saved_b["best_dev_acc"]
        assert weights(saved_a).keys() == weights(saved_b).keys()
        for key, tensor in weights(saved_a).items():
            assert torch.equal(tensor, weights(saved_b)[key]), key
    last_a, last_b = (torch.load(d / f"{name}-last.pt", weights_only=True) for d in (a, b))
    for state_a, state_b in zip(last_a["optim"]["state"].values(), last_b["optim"]["state"].values()):
        assert all(torch.equal(state_a[k], state_b[k]) for k in ("exp_avg", "exp_avg_sq"))
    drop_time = lambda records: [{k: v for k, v in r.items() if k not in ("run", "seconds", "examples_per_s")}
                                 for r in records]
    assert drop_time(last_a["metrics"]) == drop_time(last_b["metrics"])
    assert [r["epoch"] for r in last_b["metrics"]] == list(range(last_b["epoch"] + 1))


def test_rng_state_is_plain_data_that_restores_every_generator(tmp_path: Path):
    cpu = torch.device("cpu")
    torch.save(rng_state(cpu), tmp_path / "rng.pt")
    draws = random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), cpu)
    assert (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist()) == draws


class Crash(Exception):
    pass


def test_lora_run_stopped_after_an_epoch_resumes_to_the_same_weights(tmp_path: Path, monkeypatch, capsys,
                                                                     asset: GetAsset, model_path: str,
                                                                     tokenizer_model: str):
    """Dropout on the head and the adapters draws from the generators, so only restored ones give the same end."""
    flags = ["--option", "lora", "--train", "data/sst-train.txt", "--epochs", "2", "--lr", "0.01", "--batch_size", "4",
             "--lora_dropout", "0.2", "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    for folder in (whole, stopped):
        folder.mkdir()
        sst(asset, folder, 12)
    monkeypatch.chdir(whole)
    run_llama.main(flags + ["--resume"])  # nothing to resume yet: the run starts at epoch 0
    assert "there is no lora-2-0.01-last.pt yet, so the run starts at epoch 0" in capsys.readouterr().out

    monkeypatch.chdir(stopped)
    save_last = trainer.save_last

    def save_last_then_crash(*args):
        save_last(*args)
        raise Crash

    monkeypatch.setattr(trainer, "save_last", save_last_then_crash)
    with pytest.raises(Crash):
        run_llama.main(flags)
    assert torch.load("lora-2-0.01-last.pt", weights_only=True)["epoch"] == 0
    monkeypatch.setattr(trainer, "save_last", save_last)
    with pytest.raises(InputError, match=r"--resume: lora-2-0\.01-last\.pt was written by a run with other "
                                              r"flags \(lora_dropout 0\.2 → 0\.3\)"):
        run_llama.main(flags + ["--lora_dropout", "0.3", "--resume"])
    run_llama.main(flags + ["--resume"])
    assert "resume from lora-2-0.01-last.pt after epoch 0" in capsys.readouterr().out
    assert_same_run(whole, stopped, "lora-2-0.01")
    for name in ("sst-dev-lora-output.txt", "sst-test-lora-output.txt"):
        assert (whole / name).read_text() == (stopped / name).read_text()
    epochs = [[r["epoch"] for r in metrics.records(d / metrics.FILE)] for d in (whole, stopped)]
    assert epochs == [[0, 1], [0, 1]]


def test_run_killed_while_training_leaves_a_checkpoint_to_resume_from(tmp_path: Path, monkeypatch,
                                                                      asset: GetAsset, asset_cache: Path,
                                                                      model_path: str, tokenizer_model: str):
    flags = ["--option", "finetune", "--train", "data/sst-train.txt", "--epochs", "3", "--lr", "0.001",
             "--batch_size", "4", "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        folder.mkdir()
        sst(asset, folder, 40)
    last = killed / "finetune-3-0.001-last.pt"
    # the two processes round alike whatever the load: the few-row kernel is named, not timed by each
    monkeypatch.setenv(blocked_linear.KERNEL_ENV, "blocked")
    env = {**os.environ, "MINLLAMA_ASSET_MIRROR": str(asset_cache)}
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen([sys.executable, str(SCRIPT), *flags], cwd=killed, env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 120
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)  # after epoch 0, while it trains epoch 1 (or writes its checkpoints)
    assert process.wait() == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] < 2 and saved["optim"]["state"]
    torch.load(killed / "finetune-3-0.001.pt", weights_only=True)

    monkeypatch.chdir(killed)
    run_llama.main(flags + ["--resume"])
    monkeypatch.chdir(whole)
    run_llama.main(flags)
    assert_same_run(whole, killed, "finetune-3-0.001")


def crash_before_the_last_checkpoint_of(epoch: int, monkeypatch, flags: list[str]) -> None:
    """Run with `flags` in the current folder, stopped after epoch `epoch` was appended to metrics.jsonl and before
    its last checkpoint was written."""
    save_last = trainer.save_last

    def crash_at_epoch(path: str, saved: dict, *rest):
        if saved["epoch"] == epoch:
            raise Crash
        save_last(path, saved, *rest)

    monkeypatch.setattr(trainer, "save_last", crash_at_epoch)
    with pytest.raises(Crash):
        run_llama.main(flags)
    monkeypatch.setattr(trainer, "save_last", save_last)


def finetune_flags(model_path: str, tokenizer_model: str) -> list[str]:
    return ["--option", "finetune", "--train", "data/sst-train.txt", "--epochs", "2", "--lr", "0.001", "--batch_size",
            "4", "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model]


def test_resume_supersedes_the_metrics_recorded_after_the_last_checkpoint(tmp_path: Path, monkeypatch,
                                                                            asset: GetAsset, model_path: str,
                                                                            tokenizer_model: str):
    """The interrupted run's epoch 1 stays in metrics.jsonl, which is only appended to, and metrics.records reads
    the one the resumed run recorded."""
    monkeypatch.chdir(tmp_path)
    sst(asset, tmp_path, 8)
    flags = finetune_flags(model_path, tokenizer_model)
    (tmp_path / "metrics.jsonl").write_text('{"run": "an earlier run", "epoch": 1}\n')
    crash_before_the_last_checkpoint_of(1, monkeypatch, flags)
    before = (tmp_path / "metrics.jsonl").read_bytes()
    interrupted = [json.loads(line) for line in before.splitlines()]
    assert [(r["run"] == "an earlier run", r["epoch"]) for r in interrupted] == [(True, 1), (False, 0), (False, 1)]
    run_llama.main(flags + ["--resume"])
    after = (tmp_path / "metrics.jsonl").read_bytes()
    assert after.startswith(before)
    appended = [json.loads(line) for line in after[len(before):].splitlines()]
    assert [(r.get("epoch"), r.get("resumed_after")) for r in appended] == [(None, 0), (1, None)]
    assert [r["epoch"] for r in metrics.records("metrics.jsonl")] == [1, 0, 1]
    assert metrics.records("metrics.jsonl")[2] == appended[1] != interrupted[2]  # epoch 1 once, as trained again
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.fixture
def interrupted(tmp_path: Path, monkeypatch, asset: GetAsset, model_path: str, tokenizer_model: str) -> list[str]:
    """A fine-tune in tmp_path (the current folder) interrupted before the last checkpoint of its epoch 1: its flags."""
    monkeypatch.chdir(tmp_path)
    sst(asset, tmp_path, 8)
    flags = finetune_flags(model_path, tokenizer_model)
    crash_before_the_last_checkpoint_of(1, monkeypatch, flags)
    return flags


def files_and_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_resume_on_another_training_file_is_refused(tmp_path: Path, interrupted: list[str]):
    flags = interrupted
    train = tmp_path / "data" / "sst-train.txt"
    train.write_text(train.read_text().replace("4 |||", "0 |||"))  # same path, same flags, other labels
    before = files_and_bytes(tmp_path)
    with pytest.raises(InputError, match=r"--resume: finetune-2-0\.001-last\.pt was written by a run whose --train "
                                         r"held other bytes than data/sst-train\.txt holds \(their sha256 differs"):
        run_llama.main(flags + ["--resume"])
    assert files_and_bytes(tmp_path) == before


def test_last_checkpoint_of_an_earlier_version_is_refused_saying_so(interrupted: list[str]):
    flags = interrupted
    saved = torch.load("finetune-2-0.001-last.pt", weights_only=True)
    del saved["inputs_sha256"]
    torch.save(saved, "finetune-2-0.001-last.pt")
    with pytest.raises(InputError, match=r"finetune-2-0\.001-last\.pt: written by an earlier minllama, which did "
                                         r"not record the sha256 of the dev set, tokenizer and base checkpoint: train "
                                         r"it again"):
        run_llama.main(flags + ["--resume"])


def test_resume_without_its_best_checkpoint_is_refused_before_training(tmp_path: Path, interrupted: list[str]):
    (tmp_path / "finetune-2-0.001.pt").unlink()
    before = files_and_bytes(tmp_path)
    with pytest.raises(InputError, match=r"--resume: finetune-2-0\.001-last\.pt goes on after epoch 0, but the best "
                                         r"checkpoint finetune-2-0\.001\.pt of its run is missing"):
        run_llama.main(interrupted + ["--resume"])
    assert files_and_bytes(tmp_path) == before


@pytest.mark.parametrize("content, error", [
    (b"", r"finetune-2-0\.001-last\.pt: empty file"),
    (b"PK\x03\x04" + bytes(100), r"finetune-2-0\.001-last\.pt: corrupt: a damaged or truncated zip archive"),
])
def test_unreadable_last_checkpoint_is_an_input_error(tmp_path: Path, monkeypatch, asset: GetAsset,
                                                          model_path: str, tokenizer_model: str, content, error):
    monkeypatch.chdir(tmp_path)
    sst(asset, tmp_path, 8)
    (tmp_path / "finetune-2-0.001-last.pt").write_bytes(content)
    with pytest.raises(InputError, match=error):
        run_llama.main(finetune_flags(model_path, tokenizer_model) + ["--resume"])
