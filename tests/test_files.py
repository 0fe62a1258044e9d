"""files.py: temporaries that a killed process left are removed by the next writer into the same folder, and only
those of this program; outputs that may not be replaced are refused, links written through; write failures are one
line; fetches that fail leave no folder; a FIFO input is read once, and a regular one may not change during a run."""
import hashlib
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import assets
import files
from files import remove_stale, write_atomically

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The id of a process that was killed with SIGKILL, as a run killed while writing is."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.pid


def leftovers(folder: Path, dead_pid: int) -> dict[str, bool]:
    """Temporaries and look-alikes in folder: name -> whether remove_stale must remove it."""
    names = {f".minllama-{dead_pid}-0.tmp": True, f".minllama-{dead_pid}-3.part": True,
             f".minllama-{dead_pid}-1.tmp/": True,  # convert.py's half-written Hugging Face folder
             f".minllama-{os.getpid()}-999999.tmp": False,  # a live process's, being written
             # the user's files, named as temporaries of other programs (or of this one before) are named
             ".notes.2024.tmp": False, ".thesis.20240101.part": False, f".out.txt.{dead_pid}.tmp": False,
             f"minllama-{dead_pid}-0.tmp": False, f".minllama-{dead_pid}-0.bak": False, "notes.txt": False}
    for name in names:
        if name.endswith("/"):
            (folder / name).mkdir()
            (folder / name / "config.json").write_text("{}")
        else:
            (folder / name).write_text("half")
    return {name.rstrip("/"): stale for name, stale in names.items()}


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
    stale = tmp_path / "data" / f".minllama-{dead_pid}-0.part"
    stale.write_text("half a download")
    monkeypatch.setenv(assets.MIRROR_ENV, str(asset_cache))
    assets.ensure(tmp_path / "data" / "sst-dev.txt")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["sst-dev.txt"]


def test_a_failed_fetch_leaves_no_folder_and_a_url_is_not_a_path(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(assets.MIRROR_ENV, str(tmp_path / "nonexistent"))
    with pytest.raises(files.InputError):
        assets.ensure(tmp_path / "newdir" / "data" / "sst-train.txt")
    url = "https://huggingface.co/karpathy/tinyllamas/resolve/main/stories42M.pt"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(files.InputError, match="a URL is not a path"):
        assets.ensure(url)
    assert list(tmp_path.iterdir()) == []


def test_a_link_is_written_through_and_a_long_name_is_written(tmp_path: Path):
    (tmp_path / "target.txt").write_text("old")
    (tmp_path / "link.txt").symlink_to("target.txt")
    write_atomically(tmp_path / "link.txt", lambda f: f.write(b"new"))
    assert (tmp_path / "link.txt").is_symlink() and (tmp_path / "target.txt").read_text() == "new"
    name = "n" * 244  # legal: its temporary name must be too
    assert files.output_problem(tmp_path / name) is None
    write_atomically(tmp_path / name, lambda f: f.write(b"long"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["target.txt", "link.txt", name])


def test_a_fifo_or_device_is_never_replaced(tmp_path: Path):
    os.mkfifo(tmp_path / "p")
    (tmp_path / "link").symlink_to("p")
    for name in ("p", "link"):
        assert files.output_problem(tmp_path / name) == "it is a FIFO, which is neither written through nor replaced"
        with pytest.raises(files.InputError, match=f"cannot write {tmp_path / name}: it is a FIFO"):
            write_atomically(tmp_path / name, lambda f: f.write(b"x"))
    assert stat.S_ISFIFO((tmp_path / "p").lstat().st_mode) and (tmp_path / "link").is_symlink()
    assert files.output_problem(f"{tmp_path}/results/") == "it ends in '/', which names a folder: name a file"
    assert files.output_problem(f"{tmp_path}/results/", folder=True) is None


def test_another_user_s_file_in_a_sticky_folder_cannot_be_replaced(tmp_path: Path, monkeypatch):
    (tmp_path / "theirs.txt").write_text("theirs")
    os.chown(tmp_path / "theirs.txt", 12345, 12345)
    tmp_path.chmod(0o1777)
    monkeypatch.setattr(os, "geteuid", lambda: 23456)  # as a user who is neither the file's nor the folder's owner
    assert files.output_problem(tmp_path / "theirs.txt") == "cannot replace it: another user's file in a sticky folder"


def test_a_full_disk_is_one_line_and_keeps_the_last_good_file(tmp_path: Path):
    """torch.save turns a failed write into "RuntimeError ... unexpected pos"; the error says "no space" instead."""
    (tmp_path / "last.pt").write_bytes(b"the last good checkpoint")
    program = ("import resource, sys, torch; sys.path.insert(0, sys.argv[1]); import files; "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)); "
               "files.cli(lambda: files.write_atomically('last.pt', lambda f: torch.save(torch.zeros(10**6), f)))")
    result = subprocess.run([sys.executable, "-c", program, str(REPO)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert (result.returncode, result.stderr) == (1, "error: cannot write last.pt: no space: the file size limit "
                                                     "(ulimit -f) was reached; nothing of it was written\n")
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert (tmp_path / "last.pt").read_bytes() == b"the last good checkpoint"


def test_data_lines_end_at_any_newline():
    assert files.data_lines(b"\xef\xbb\xbf1 ||| a\r2 ||| b\r\n3 ||| c\n\n \r") == [b"1 ||| a", b"2 ||| b", b"3 ||| c"]


def test_a_fifo_is_read_once_and_a_regular_file_may_not_change_during_a_run(tmp_path: Path):
    os.mkfifo(tmp_path / "p")
    writer = subprocess.Popen(["sh", "-c", f"printf 'once' > {tmp_path / 'p'}"])
    assert files.read(tmp_path / "p") == files.read(tmp_path / "p") == (b"once", hashlib.sha256(b"once").hexdigest())
    writer.wait()
    (tmp_path / "data.txt").write_bytes(b"first")
    with files.run():
        assert files.read(tmp_path / "data.txt")[0] == b"first"
        (tmp_path / "data.txt").write_bytes(b"other")
        with pytest.raises(files.InputError, match=r"data\.txt changed while this run was reading it"):
            files.read(tmp_path / "data.txt")
    assert files.read(tmp_path / "data.txt")[0] == b"other"  # a later run reads it as it is now
    with pytest.raises(files.InputError, match=f"^{tmp_path} is a folder, not a file$"):
        files.read(tmp_path)
