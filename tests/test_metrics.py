"""metrics.jsonl is appended line by line; the picture is drawn with matplotlib and skipped, with a note, without it."""
import dataclasses
import json
import sys
from pathlib import Path

import pytest

import metrics
import trainer

RECORDS = [{"epoch": e, "loss": 1.0 / e, "train_acc": 0.3 * e, "dev_acc": 0.25 * e} for e in (1, 2, 3)]


def test_append_adds_one_json_line_per_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}')  # an earlier run's last line without its newline
    for record in RECORDS:
        metrics.append(path, record)
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"epoch": 0}, *RECORDS]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    assert metrics.plot(RECORDS, [0, 1, 2, 2], [0, 2, 2, 1], ["neg", "neu", "pos"], path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_plot_without_matplotlib_is_a_note_not_a_crash(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    path = tmp_path / "curves.png"
    assert not metrics.plot(RECORDS, [0, 1], [0, 1], ["neg", "pos"], path)
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not path.exists()


def test_drop_after_removes_only_this_runs_later_records(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = ['{"run": "a", "epoch": 0}', '{"run": "b", "epoch": 2}', '{"run": "a", "epoch": 1}', "not JSON",
             '{"run": "a", "epoch": 2}']
    path.write_text("\n".join(lines) + "\n")
    assert metrics.drop_after(path, {"run": "a"}, 0) == 2
    assert path.read_text().splitlines() == lines[:2] + ["not JSON"]
    assert metrics.drop_after(path, {"run": "a"}, 0) == 0
    assert metrics.drop_after(tmp_path / "none.jsonl", {"run": "a"}, 0) == 0 and not (tmp_path / "none.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_a_resume_drops_only_its_own_records_of_runs_started_in_one_second(tmp_path, monkeypatch):
    """A finetune and a lora run started in the same second: resuming the finetune keeps the lora run's lines, and
    a line that is not UTF-8 is kept, not a crash."""
    monkeypatch.setattr(trainer.time, "strftime", lambda fmt: "2024-01-01T00:00:00")
    finetune, lora = trainer.Progress(), trainer.Progress()
    assert finetune.run != lora.run
    monkeypatch.chdir(tmp_path)
    Path(metrics.FILE).write_bytes(b"caf\xe9\n")
    for option, progress in (("finetune", finetune), ("lora", lora)):
        for epoch in range(2):
            metrics.append(metrics.FILE, {"run": progress.run, "option": option, "epochs": 2, "lr": 1e-3,
                                          "epoch": epoch})
    trainer.drop_metrics_after(dataclasses.replace(finetune, epoch=0), "finetune", 2, 1e-3)
    kept = Path(metrics.FILE).read_bytes().splitlines()
    assert kept[0] == b"caf\xe9"
    assert [(r["option"], r["epoch"]) for r in map(json.loads, kept[1:])] == [("finetune", 0), ("lora", 0), ("lora", 1)]
