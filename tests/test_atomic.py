"""atomic.py: temporaries that a killed process left are removed by the next writer into the same folder, and only
those."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import assets
from atomic import remove_stale, write_atomically


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The id of a process that was killed with SIGKILL, as a run killed while writing is."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.pid


def leftovers(folder: Path, dead_pid: int) -> dict[str, bool]:
    """Temporaries and look-alikes in folder: name -> whether remove_stale must remove it."""
    names = {f".out.txt.{dead_pid}.tmp": True, f".data.txt.{dead_pid}.part": True, f".hf.{dead_pid}.tmp": True,
             f".out.txt.{os.getpid()}.tmp": False,  # a live process's, being written
             f"out.txt.{dead_pid}.tmp": False, f".out.txt.{dead_pid}.bak": False, f".out.txt.x{dead_pid}.tmp": False,
             "notes.txt": False}
    for name in names:
        if name.startswith(".hf."):
            (folder / name).mkdir()
            (folder / name / "config.json").write_text("{}")  # convert.py's half-written Hugging Face folder
        else:
            (folder / name).write_text("half")
    return names


def test_only_stale_temporaries_of_this_program_are_removed(tmp_path: Path, dead_pid: int):
    names = leftovers(tmp_path, dead_pid)
    removed = remove_stale(tmp_path)
    assert sorted(p.name for p in removed) == sorted(name for name, stale in names.items() if stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(name for name, stale in names.items() if not stale)


def test_writing_a_file_removes_the_stale_temporaries_of_its_folder(tmp_path: Path, dead_pid: int):
    names = leftovers(tmp_path, dead_pid)
    write_atomically(tmp_path / "other.txt", lambda f: f.write(b"whole"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [name for name, stale in names.items() if not stale] + ["other.txt"])


def test_fetching_an_asset_removes_stale_downloads(tmp_path: Path, monkeypatch, asset, asset_cache: Path,
                                                   dead_pid: int):
    asset("data/sst-dev.txt")  # in asset_cache, which serves as the mirror
    (tmp_path / "data").mkdir()
    stale = tmp_path / "data" / f".sst-dev.txt.{dead_pid}.part"
    stale.write_text("half a download")
    monkeypatch.setenv(assets.MIRROR_ENV, str(asset_cache))
    assets.ensure(tmp_path / "data" / "sst-dev.txt")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["sst-dev.txt"]
