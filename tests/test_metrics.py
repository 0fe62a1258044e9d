"""metrics.jsonl is appended line by line; the picture is drawn with matplotlib and skipped, with a note, without it."""
import json
import sys

import pytest

import metrics

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
    assert metrics.drop_after(path, "a", 0) == 2
    assert path.read_text().splitlines() == lines[:2] + ["not JSON"]
    assert metrics.drop_after(path, "a", 0) == 0
    assert metrics.drop_after(tmp_path / "none.jsonl", "a", 0) == 0 and not (tmp_path / "none.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
