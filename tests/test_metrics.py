"""metrics.jsonl is appended line by line, by runs side by side too, and read by metrics.records; the picture is
drawn with matplotlib and skipped, with a note, without it."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import metrics
from files import InputError

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


def test_records_take_the_last_of_each_run_and_epoch_that_no_resume_superseded(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = ['{"run": "a", "epoch": 0, "loss": 3}', '{"run": "b", "epoch": 2}', '{"run": "a", "epoch": 1, "loss": 2}',
             "not JSON", '{"run": "a", "epoch": 2}', "[1, 2]", '{"epoch": 5}']
    path.write_text("\n".join(lines) + "\n")
    metrics.supersede(path, "a", 0)  # a resumed after epoch 0: its epochs 1 and 2 are to be recorded again
    metrics.append(path, {"run": "a", "epoch": 1, "loss": 1})
    assert path.read_text().splitlines()[:len(lines)] == lines  # never rewritten
    assert metrics.records(path) == [{"run": "a", "epoch": 0, "loss": 3}, {"run": "b", "epoch": 2},
                                     {"run": "a", "epoch": 1, "loss": 1}]
    assert metrics.records(tmp_path / "none.jsonl") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_runs_appending_side_by_side_lose_no_line(tmp_path):
    """Four processes append 200 records each to one file that already holds 100,000 lines: all 800 are there,
    whole, and every earlier line is kept (rewriting the file to add a line lost most of them)."""
    path = tmp_path / "metrics.jsonl"
    earlier = b"".join(b'{"run": "earlier", "epoch": %d}\n' % i for i in range(100_000))
    path.write_bytes(earlier)
    script = ("import sys, metrics\n"
              "for i in range(200):\n"
              "    metrics.append(sys.argv[1], {'run': sys.argv[2], 'epoch': i, 'pad': 'x' * 5000})\n")
    root = Path(metrics.__file__).parent
    writers = [subprocess.Popen([sys.executable, "-c", script, str(path), f"w{k}"], cwd=root) for k in range(4)]
    assert [w.wait(timeout=120) for w in writers] == [0] * 4
    data = path.read_bytes()
    assert data.startswith(earlier)
    added = [json.loads(line) for line in data[len(earlier):].splitlines()]
    assert sorted((r["run"], r["epoch"]) for r in added) == sorted((f"w{k}", i) for k in range(4) for i in range(200))


def test_a_failed_append_leaves_nothing_of_its_record(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"run": "a", "epoch": 0}\n')
    real_write = os.write

    def half_then_full(descriptor: int, data: bytes) -> int:
        if len(data) > 20:
            return real_write(descriptor, data[:20])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metrics.os, "write", half_then_full)
    with pytest.raises(InputError, match=r"cannot write .*metrics\.jsonl: no space left on its device"):
        metrics.append(path, {"run": "a", "epoch": 1, "loss": 0.5})
    assert path.read_bytes() == b'{"run": "a", "epoch": 0}\n'


def test_plot_draws_label_names_as_text(tmp_path):
    """A label name with $ signs is text, not matplotlib's math (which failed on "$\\foo$" after training)."""
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    assert metrics.plot(RECORDS, [0, 1], [0, 1], ["$\\foo$", "5$"], path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
