"""The hidden temporary files that minllama writes beside a file before renaming them to it, and the removal of
those that a killed process left behind.

NAME is written as `.NAME.PID.tmp` (assets.py's downloads: `.NAME.PID.part`) in NAME's folder, PID being the writing
process's id, and then renamed to NAME. A process killed with SIGKILL, or by a power cut, cannot remove its
temporary; the next process that writes into the same folder does (`remove_stale`): only names of this pattern, and
only those whose process no longer exists, so the temporaries of a run still going on are left alone.
"""
import os
import re
import shutil
from pathlib import Path

PATTERN = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]{1,10})\.(?:tmp|part)")


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
