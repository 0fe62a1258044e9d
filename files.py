"""The user's files: how every command of minllama reads its inputs and writes its outputs.

Every input (data, label names, tokenizer, checkpoint) is read by `read`, which hashes it as it reads and keeps what
it read under the file's path: a FIFO or `<(cat data.txt)` is read once and its bytes kept for the process, so that
it works as a file does wherever it is needed again; a regular file keeps only its size and sha256 for the run
(`run`, which `cli` makes of a command), is read again, and is refused if it changed meanwhile.

Outputs are checked before any work (`output_problem`): a path names a regular file or nothing yet; a device, FIFO
or socket is refused, never replaced; a symbolic link stays a link, the file it points to being written (a link to
nothing is refused); a path ending in '/' names a folder; and a file that cannot be replaced (immutable, or another
user's in a sticky folder like /tmp) is refused before the work, not after it.

A file is written under a temporary name beside it, `.minllama-PID-N.tmp` (assets.py's downloads: `.part`), and then
renamed onto it, which replaces the old file in one step: a process killed at any moment leaves either the old file
or the new one, so a failed write keeps the last good checkpoint. A process killed with SIGKILL cannot remove its
temporary; the next one that writes into the same folder does (`remove_stale`): only names of that pattern, which
nothing else makes, and only those whose process no longer exists.

While a run works, it holds the files it will write against other runs (`claim`): a second run that would write one
of them is refused at once, naming the first's PID, so that runs side by side in one folder each end with their own
results.

Every failure is an `InputError`, the run-wide error: one line that names what is wrong, which every module raises
for what a command cannot work with. `cli` runs a command's main so that it ends with that line, never a traceback,
also on Ctrl-C, a closed pipe (`| head -1`) or a stdout that cannot be written (a full device).
"""
import codecs
import contextlib
import errno
import fcntl
import hashlib
import itertools
import os
import re
import shutil
import stat
import struct
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

PATTERN = re.compile(r"\.minllama-(?P<pid>[0-9]{1,10})-[0-9]+\.(?:tmp|part)")
_serial = itertools.count()  # tells apart the temporaries of one process
FS_IOC_GETFLAGS = 0x80086601  # ioctl reading a Linux file's attributes (chattr)
UNCHANGEABLE = 0x10 | 0x20  # FS_IMMUTABLE_FL, FS_APPEND_FL: neither replaced nor written by anyone, root included


class InputError(Exception):
    """What a command cannot work with (a file, a flag, a model), said in one line that names it: the run-wide error,
    which `cli` reports as `error: ...`."""


# what has been read, by absolute path: (the bytes, kept for the process, of a file that cannot be read twice; or
# None, for a regular file read during the run; size; sha256)
_inputs: dict[str, tuple[bytes | None, int, str]] = {}
_running = False  # whether a run (`run`) is under way


# ---- inputs ----
def read(path: str | os.PathLike, what: str = "a file", missing: str | None = None) -> tuple[bytes, str]:
    """The bytes of the input file `path` and their sha256. A file that cannot be read twice (a FIFO such as
    `<(cat data.txt)`, a device: anything but a regular file) is read on the first call of the process and its bytes
    kept for the next. A regular file is read on each call (a checkpoint is not held in memory twice); during a run
    (`run`), only its size and sha256 are kept, and it must be as it was on every later call of that run. A folder
    (which is not `what`), a missing file (`missing`: the message then) or an unreadable one is an InputError naming
    `path`."""
    key = os.path.abspath(path)
    kept = _inputs.get(key)
    if kept is not None and kept[0] is not None:
        return kept[0], kept[2]
    if problem := folder(path, what):
        raise InputError(f"{path} {problem}")
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if kept is not None and info.st_size != kept[1]:
                raise InputError(f"{path} changed while this run was reading it")
            data = f.read()
    except OSError as e:
        missed = missing is not None and isinstance(e, FileNotFoundError)
        raise InputError(missing if missed else f"cannot read {path}: {e.strerror}") from None
    sha256 = hashlib.sha256(data).hexdigest()
    if kept is not None and sha256 != kept[2]:
        raise InputError(f"{path} changed while this run was reading it")
    if _running or not stat.S_ISREG(info.st_mode):
        _inputs[key] = (None if stat.S_ISREG(info.st_mode) else data, len(data), sha256)
    return data, sha256


def digest(path: str | os.PathLike) -> str:
    """The sha256 of the input `path` as this run read it (`read`); read now if it has not been."""
    kept = _inputs.get(os.path.abspath(path))
    return kept[2] if kept is not None else read(path)[1]


@contextlib.contextmanager
def run() -> Iterator[None]:
    """A run of a command: the regular files it reads must not change until it ends (`read`). A run within a run
    is part of it."""
    global _running
    outer, _running = _running, True
    try:
        yield
    finally:
        _running = outer
        if not outer:
            for key in [key for key, (data, _, _) in _inputs.items() if data is None]:
                del _inputs[key]


def folder(path: str | os.PathLike, what: str = "a file") -> str | None:
    """How a folder given where `what` is expected is refused ("is a folder, not WHAT"), or None if `path` names
    none: the one check, before a run (`unreadable`) and on reading (`read`)."""
    return f"is a folder, not {what}" if os.path.isdir(path) else None


def data_lines(data: bytes) -> list[bytes]:
    """The lines of a data file, each ended by \\n, \\r\\n or \\r, without a UTF-8 byte order mark before the first
    or blank lines after the last."""
    lines = data.splitlines()
    if lines and lines[0].startswith(codecs.BOM_UTF8):
        lines[0] = lines[0][len(codecs.BOM_UTF8):]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def unreadable(path: str) -> str | None:
    """Why the file `path` cannot be read, as far as can be told before reading it, or None: a missing file may be
    fetched (assets.py), and is reported then."""
    try:
        if problem := folder(path):
            return f"it {problem}"
        if Path(path).exists() and not os.access(path, os.R_OK):
            return "permission denied"
    except OSError as e:
        return e.strerror
    return None


# ---- outputs ----
def kind(mode: int) -> str:
    """What a file of this st_mode is, in words."""
    for test, name in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "neither a file nor a folder"


def destination(path: str | os.PathLike) -> Path:
    """Where writing `path` lands: the file a symbolic link points to (links followed to the end), else `path`."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)


def output_problem(path: str | os.PathLike, folder: bool = False) -> str | None:
    """Why `path` cannot be written as write_atomically writes it (or, with `folder`, be made or filled as a folder),
    or None if it can. Nothing is changed: a temporary is created beside it and removed."""
    name = os.fspath(path)
    if not name:
        return "the path is empty (an unset shell variable?): name " + ("a folder" if folder else "a file")
    if not folder and name.endswith("/"):
        return "it ends in '/', which names a folder: name a file"
    try:
        target = destination(name)
        if os.path.islink(name) and not target.exists():
            return f"it is a link to {target}, which does not exist"
        if target.exists():
            info = target.stat()
            if stat.S_ISDIR(info.st_mode) != folder or not (folder or stat.S_ISREG(info.st_mode)):
                return f"it is {kind(info.st_mode)}" + ("" if folder or stat.S_ISDIR(info.st_mode) else
                                                        ", which is neither written through nor replaced")
            if folder:
                return None
            problem = unreplaceable(target, info)
            if problem:
                return problem
        parent = target.absolute().parent
        if not parent.is_dir():
            return f"{parent} is not a folder" if parent.exists() else f"the folder {parent} does not exist"
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".minllama-{os.getpid()}-", suffix=".tmp"):
            pass
    except OSError as e:
        return e.strerror
    return None


def unreplaceable(path: Path, info: os.stat_result) -> str | None:
    """Why the regular file `path` cannot be replaced by a rename, or None: immutable or append-only (chattr), or
    another user's in a sticky folder that is not ours either."""
    folder = path.absolute().parent.stat()
    me = os.geteuid()
    if me != 0 and folder.st_mode & stat.S_ISVTX and me not in (info.st_uid, folder.st_uid):
        return "cannot replace it: another user's file in a sticky folder"
    try:
        with open(path, "rb") as f:
            flags = struct.unpack("l", fcntl.ioctl(f, FS_IOC_GETFLAGS, struct.pack("l", 0)))[0]
    except OSError:
        return None  # unreadable, or a file system without attributes: the rename will tell
    return "cannot replace it: it is immutable or append-only (lsattr shows it)" if flags & UNCHANGEABLE else None


def failure(path: str | os.PathLike, e: OSError) -> InputError:
    """The one line saying why writing `path` failed."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on its device"
    elif e.errno == errno.EFBIG:
        why = "no space: the file size limit (ulimit -f) was reached"
    elif e.errno in (errno.EPERM, errno.EACCES, errno.EROFS, errno.EBUSY):
        why = f"cannot replace it ({e.strerror})"
    else:
        why = e.strerror or str(e)
    return InputError(f"cannot write {path}: {why}; nothing of it was written")


class _Recorded:
    """A file whose write errors are kept, for writers (torch.save) that turn them into other exceptions."""

    def __init__(self, f: BinaryIO):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str):
        return getattr(self.f, name)


def temporary(path: Path, suffix: str = "tmp") -> Path:
    """A new temporary name of this process in the folder of `path`: `.minllama-PID-N.tmp`, short whatever the name
    of `path`, so that a file of the longest legal name can still be written."""
    return path.with_name(f".minllama-{os.getpid()}-{next(_serial)}.{suffix}")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` as UTF-8 to path, atomically (write_atomically)."""
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None], suffix: str = "tmp") -> None:
    """Call write(f) on a temporary file beside `path` (beside its target, for a link), then rename it onto that,
    so that it is never half-written (fsync makes that hold after a power cut too). Stale temporaries in that
    folder are removed first. A device, FIFO or socket is refused, never replaced; a failed write is an InputError.
    What `read` knows of the file is forgotten: this process may read back what it wrote."""
    target = destination(path)
    if target.exists() and not target.is_file():
        raise InputError(f"cannot write {path}: it is {kind(target.stat().st_mode)}, which is not replaced")
    remove_stale(target.parent)
    tmp = temporary(target, suffix)
    with writing(path):
        f = open(tmp, "xb")  # x: never over an existing file, which is then not this call's to remove
    try:
        with f:
            recorded = _Recorded(f)
            try:
                write(recorded)
            except Exception:
                if recorded.error is None:
                    raise  # the writer's own failure, not the file's
                raise failure(path, recorded.error) from None
            with writing(path):
                f.flush()
                os.fsync(f.fileno())
        with writing(path):
            os.replace(tmp, target)
        for name in (path, target):
            _inputs.pop(os.path.abspath(name), None)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError into the InputError that names `path`."""
    try:
        yield
    except OSError as e:
        raise failure(path, e) from None


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
    """Delete the temporaries of this program in `folder` whose process no longer exists; return them. Whatever
    cannot be listed or deleted is left as it is: cleaning up never stops the work that follows."""
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


def make_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; return those created, the deepest first, for `remove_folders`."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def remove_folders(folders: list[Path]) -> None:
    """Remove the folders make_folders created that are still empty: no folder is left for a file that never came."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


# ---- a run's outputs, held against other runs ----
LOCKS = ".minllama.lock"  # in each folder a run writes into: one byte for each file name, locked while it is written
_FLOCK = {"linux": "hhqqi4x", "darwin": "qqihh"}.get(sys.platform)  # struct flock, which F_GETLK fills in


@contextlib.contextmanager
def claim(outputs: dict[str, str]) -> Iterator[None]:
    """Hold the outputs of a run (role → path) until the block ends, so that no other run writes them meanwhile: a
    run that would write one of them is refused at once, in one line naming the file and the process writing it.

    A file is held by a POSIX lock (fcntl) on the byte of a lock file `.minllama.lock` in its folder that stands for
    its name (1 + the first 7 bytes of the name's sha256): the operating system releases it when the block ends or the
    process dies, even by kill -9, so no stale lock is left. The last run to let go of a folder's lock file removes
    it (`_let_go`). Where the folder's file system has no locks, the run goes on unguarded after a note."""
    held: dict[str, int] = {}  # folder → the lock file's descriptor, one per folder: closing any would release all
    try:
        for role, path in outputs.items():
            target = destination(path).absolute()
            folder_ = os.path.realpath(target.parent)
            byte = 1 + int.from_bytes(hashlib.sha256(os.fsencode(target.name)).digest()[:7], "big")  # 0: open
            try:
                if folder_ not in held:
                    held[folder_] = _open_lock_file(os.path.join(folder_, LOCKS))
                fcntl.lockf(held[folder_], fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
            except (BlockingIOError, PermissionError) as e:
                if folder_ not in held:  # the lock file, another user's, cannot be opened for writing
                    print(f"note: {role} {path} is not locked against other runs ({LOCKS}: {e.strerror})")
                    continue
                raise InputError(f"{role} {path} is being written by another run ({_holder(held[folder_], byte)}): "
                                 "wait for it to end, or give this run outputs of its own (docs/training.md, Runs "
                                 "side by side)") from None
            except OSError as e:  # a file system without locks (ENOLCK)
                print(f"note: {role} {path} is not locked against other runs ({e.strerror})")
        yield
    finally:
        for folder_, descriptor in held.items():
            _let_go(os.path.join(folder_, LOCKS), descriptor)


def _open_lock_file(path: str) -> int:
    """The lock file `path` opened, made if need be; held by a shared lock on its byte 0 while open, which keeps
    `_let_go` of another run from removing it, and opened anew if such a removal came first."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            fcntl.lockf(descriptor, fcntl.LOCK_SH, 1, 0)  # waits only while another run is removing the file
            if _same_file(path, descriptor):
                return descriptor
        except BaseException:
            os.close(descriptor)
            raise
        os.close(descriptor)


def _same_file(path: str, descriptor: int) -> bool:
    """Whether `path` is still the file open as `descriptor`."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (info.st_dev, info.st_ino) == (opened.st_dev, opened.st_ino)


def _let_go(path: str, descriptor: int) -> None:
    """Release this run's locks in the lock file `path` (open as `descriptor`), removing the file when no other run
    has it open (none holds a lock in it, byte 0 included)."""
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _same_file(path, descriptor):
            os.unlink(path)
    except OSError:
        pass  # another run has it open, or it is gone: it stays for them
    finally:
        os.close(descriptor)


def _holder(descriptor: int, byte: int) -> str:
    """Which process holds the lock on `byte` of the lock file open as `descriptor`, in words."""
    if _FLOCK is None:
        return "a process"
    fields = (fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0) if sys.platform == "linux" else \
        (byte, 1, 0, fcntl.F_WRLCK, os.SEEK_SET)
    try:
        answer = struct.unpack(_FLOCK, fcntl.fcntl(descriptor, fcntl.F_GETLK, struct.pack(_FLOCK, *fields)))
    except OSError:
        return "a process"
    pid = answer[4] if sys.platform == "linux" else answer[2]
    return f"PID {pid}" if pid > 0 else "a process"


# ---- checks of a command's files ----
def identity(path: str) -> object:
    """What two paths to one file share: the device and inode of an existing file (so hard links, symbolic links and
    other spellings match), else the absolute path with links resolved."""
    try:
        info = Path(path).resolve().stat()
    except (OSError, RuntimeError):  # missing, or a loop of links: compared by name
        return os.path.abspath(path)
    return info.st_dev, info.st_ino


def clash(inputs: dict[str, str], outputs: dict[str, str]) -> str | None:
    """Why these outputs (role → path) cannot be written: one is an input, or two are one file; None if neither."""
    read_ = {identity(path): f"{role} {path}" for role, path in inputs.items()}
    written: dict[object, str] = {}
    for role, path in outputs.items():
        key = identity(path)
        if key in read_:
            return f"{role} {path} would overwrite {read_[key]}: an output may not be an input of the run"
        if key in written:
            return f"{written[key]} and {role} {path} are one file: give each output its own path"
        written[key] = f"{role} {path}"
    return None


# ---- the command line ----
def status(main: Callable[[], int | None]) -> int:
    """The exit status of main(), run as one `run`: its own, or 1 once an InputError it raised is reported as one
    line `error: ...`."""
    try:
        with run():
            return main() or 0
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def cli(main: Callable[[], int | None], interrupted: str = "interrupted") -> None:
    """Run a command's main and exit with its status (`status`): an InputError as one line `error: ...`, Ctrl-C as
    one line, and a reader that stopped reading (`| head -1`) quietly. Names that are not UTF-8 are printed escaped
    where stdout is strict UTF-8."""
    if sys.stdout is None:  # started with stdout closed (>&-): what it prints is not wanted
        sys.stdout = open(os.devnull, "w")
    sys.stdout.reconfigure(errors="backslashreplace")
    stdout = sys.stdout = _Stdout(sys.stdout)
    try:
        code = status(lambda: main() or stdout.flush())
    except KeyboardInterrupt:
        sys.exit(interrupted)
    except BrokenPipeError:
        stdout.failed = True
        code = 1
    if stdout.failed:  # so that the exit's flush of what stdout still holds raises nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
    sys.exit(code)


class _Stdout:
    """Standard output, whose failure to write (a full device, say) is an InputError, not a traceback; a reader that
    stopped reading (BrokenPipeError) is left to `cli`. The files a command writes are whole whatever befalls stdout
    (write_atomically)."""

    def __init__(self, stream) -> None:
        self.stream, self.failed = stream, False

    def write(self, text: str) -> int:
        return self._guarded(self.stream.write, text)

    def flush(self) -> None:
        self._guarded(self.stream.flush)

    def _guarded(self, call: Callable, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            self.failed = True
            raise InputError(f"cannot write to standard output: {e.strerror or e}") from None

    def __getattr__(self, name: str):
        return getattr(self.stream, name)
