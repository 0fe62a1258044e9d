"""trainer.py: distributed fine-tuning, two processes on torchrun (gloo, on the CPU) taking the steps one process
takes, and the split of each batch between processes."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import run_llama
from run_llama import InputError
from test_run_llama import SCRIPT, GetAsset, applicable, copy_head, files, plotted
from trainer import TORCHRUN_ENV, split_among_processes


def test_split_among_processes_splits_each_batch(monkeypatch):
    """Process r of N has every N-th example from the r-th on, padded to the whole batch's width, with loss factor
    N (its Σ nll × N / batch_size); one with no example of a batch has the batch's first one, with factor 0."""
    lengths = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    batches = [list(range(10)), [7, 3]]

    def shares(world_size: int) -> list[list[tuple[list[int], int, int]]]:
        """Each process's (examples, width, loss factor) of each batch."""
        found = []
        for rank in range(world_size):
            monkeypatch.setattr("trainer.rank_and_world_size", lambda: (rank, world_size))
            found.append(list(zip(*split_among_processes(lengths, batches))))
        return found

    assert shares(4) == [[([0, 4, 8], 9, 4), ([7], 6, 4)], [([1, 5, 9], 9, 4), ([3], 6, 4)],
                         [([2, 6], 9, 4), ([7], 6, 0)], [([3, 7], 9, 4), ([7], 6, 0)]]
    assert shares(1) == [[(list(range(10)), 9, 1), ([7, 3], 6, 1)]]  # alone: the course's Σ nll / batch_size


def test_two_processes_end_with_the_weights_of_one(tmp_path: Path, monkeypatch, asset: GetAsset, asset_cache: Path,
                                                   model_path: str, tokenizer_model: str):
    """9 examples in batches of 4: in the last batch, of 1 example, process 1 has none and still takes the step."""
    flags = ["--option", "finetune", "--train", "data/sst-train.txt", "--epochs", "2", "--lr", "0.001",
             "--batch_size", "4", "--hidden_dropout_prob", "0", "--pretrained-model-path", model_path,
             "--tokenizer-model", tokenizer_model]
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
        for name, n in (("sst-train.txt", 9), ("sst-dev.txt", 5), ("sst-test.txt", 3), ("sst-label-mapping.json", 1)):
            copy_head(asset, folder, name, n)
    before = files(two)
    env = {**os.environ, "MINLLAMA_ASSET_MIRROR": str(asset_cache)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(SCRIPT), *flags], cwd=two, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    monkeypatch.chdir(one)
    run_llama.main(flags)
    assert not dist.is_initialized()  # a plain run has no process group

    assert files(two) == files(one) == before | {
        "finetune-2-0.001.pt", "finetune-2-0.001-last.pt", "metrics.jsonl", "sst-dev-finetuning-output.txt",
        "sst-test-finetuning-output.txt"} | plotted(two, "finetune-2-0.001.png", result.stdout)
    assert result.stdout.count("epoch 0: train loss") == result.stdout.count("epoch 1: train loss") == 1  # rank 0's
    weights_one, weights_two = (torch.load(d / "finetune-2-0.001-last.pt", weights_only=True)["model"]
                                for d in (one, two))
    base = torch.load(model_path, weights_only=True)["model"]
    for name, tensor in weights_one.items():
        torch.testing.assert_close(weights_two[name], tensor, atol=1e-5, rtol=0)
    assert not torch.allclose(weights_one["llama.norm.weight"], base["norm.weight"], atol=1e-4)  # it trained
    records_one, records_two = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
                                for d in (one, two))
    assert [r["epoch"] for r in records_two] == [0, 1]
    for record_one, record_two in zip(records_one, records_two):  # over all examples, whichever process had them
        assert record_two["train_acc"] == record_one["train_acc"] and record_two["padded"] <= record_one["padded"]
        assert record_two["loss"] == pytest.approx(record_one["loss"], abs=1e-5)


def test_torchrun_runs_only_the_training_options(monkeypatch):
    for name, value in zip(TORCHRUN_ENV, ("1", "1", "2", "127.0.0.1", "29500")):
        monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match="--option prompt runs as a single process, but RANK, LOCAL_RANK, "
                                         "WORLD_SIZE, MASTER_ADDR, MASTER_PORT are set, as torchrun sets them: "
                                         "start it with python"):
        run_llama.main(["--option", "prompt"])
    assert not dist.is_initialized()


@pytest.mark.parametrize("option, stray", [("prompt", {"WORLD_SIZE": "1"}), ("finetune", {"WORLD_SIZE": "1"}),
                                           ("finetune", {"RANK": "0", "LOCAL_RANK": "0"})])
def test_a_stray_torchrun_variable_is_one_line_saying_what_to_unset(tmp_path: Path, asset, model_path: str,
                                                                     tokenizer_model: str, option: str,
                                                                     stray: dict[str, str]):
    """Started with python in a shell that holds some of torchrun's variables: not torchrun's process, not a plain
    one either; the line names what is set and what to unset."""
    for name in ("sst-train.txt", "sst-dev.txt", "sst-test.txt", "sst-label-mapping.json"):
        shutil.copy(asset(f"data/{name}"), tmp_path)
    env = {name: value for name, value in os.environ.items() if name not in TORCHRUN_ENV} | stray
    result = subprocess.run([sys.executable, SCRIPT, "--option", option, *applicable(option, "--epochs", "1"),
                             "--train", "sst-train.txt", "--pretrained-model-path", model_path,
                             "--tokenizer-model", tokenizer_model], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    set_, unset = ", ".join(f"{name}={value}" for name, value in stray.items()), " ".join(stray)
    assert result.returncode == 1 and result.stderr.startswith(f"error: the environment sets {set_} but not ")
    assert result.stderr.endswith(f"which torchrun sets together: to run as one process, unset {unset}\n")
    assert result.stderr.count("\n") == 1 and "torchrun sets them" not in result.stderr
