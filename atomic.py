"""Writing a file so that it is never seen half-written: under a hidden temporary name beside it, then renamed to it.

NAME is written as `.NAME.PID.tmp` (assets.py's downloads: `.NAME.PID.part`; convert.py's Hugging Face export: a
folder `.NAME.PID.tmp`) in NAME's folder, PID being the writing process's id, and then renamed to NAME, which
replaces the old file in one step: a process killed at any moment leaves either the old file or the new one.
`write_atomically` does all of this for a single file; assets.py and convert.py, which write otherwise, use
`temporary` and `remove_stale` themselves.

A process killed with SIGKILL, or by a power cut, cannot remove its temporary; the next process that writes into
the same folder does (`remove_stale`): only names of this pattern, and only those whose process no longer exists,
so the temporaries of a run still going on are left alone.
"""
import os
import re
import shutil
from pathlib import Path
from typing import BinaryIO, Callable

PATTERN = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]{1,10})\.(?:tmp|part)")


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call write(f) on a temporary file beside `path`, then rename it onto `path`, so `path` is never half-written
    (fsync makes that hold after a power cut too). Stale temporaries in that folder are removed first."""
    remove_stale(path.parent)
    tmp = temporary(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temporary(path: Path, suffix: str = "tmp") -> Path:
    """This process's temporary name for `path`: `.NAME.PID.tmp` beside it."""
    return path.with_name(f".{path.name}.{os.getpid()}.{suffix}")


def running(pid: int) -> bool:
    """Whether a process `pid` exists (one of another user counts; an impossible id counts too, to keep its file)."""
    try:
        os.kill(pid, 0)  # signal 0: checks that the process exists, sends nothing
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale(folder: Path) -> list[Path]:
    """Delete the temporaries in `folder` whose process no longer exists; return them. Whatever cannot be listed or
    deleted is left as it is: cleaning up never stops the work that follows."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    removed = []
    for entry in entries:
        match = PATTERN.fullmatch(entry.name)
        if match is None or running(int(match["pid"])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):  # convert.py writes a Hugging Face export as a folder
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed
