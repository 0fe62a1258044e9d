"""Run a Python script many times, each run in a process of its own, without paying for its imports each time.

A fresh interpreter spends seconds importing torch before run_llama.py even reads its flags. This program imports
the script's modules once, then, for each request, forks: the child changes to the request's folder, sends its
stdout and stderr to files, and executes the script as `__main__` with the request's arguments, exiting as the
interpreter would (a `sys.exit("message")` prints the message and exits 1; an uncaught exception prints its
traceback and exits 1). The parent computes nothing with torch, so each child starts with torch's threads unstarted.

    python fork_runner.py SCRIPT MODULE...   then one JSON request per line on stdin: {"cwd", "argv", "timeout"},
                                             and "script" to run another script than SCRIPT; one JSON reply per
                                             line on stdout: {"returncode", "stdout", "stderr"}
"""
import importlib
import json
import os
import runpy
import signal
import sys
import tempfile
import traceback
from pathlib import Path


def exit_code(e: SystemExit) -> int:
    """The exit status the interpreter gives a SystemExit, printing a message code as it does."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


def child(script: str, argv: list[str], cwd: str, timeout: int, out: int, err: int) -> None:
    """Run `script` in this forked process with stdout and stderr on the descriptors out and err; never returns."""
    code = 1
    try:
        signal.alarm(timeout)  # SIGALRM ends a run that hangs
        os.chdir(cwd)
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.argv = [script, *argv]
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:
            code = exit_code(e)
        except BaseException:
            traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(script: str, request: dict) -> dict:
    """Fork a child that runs `script` as `request` asks; its exit status and output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            child(request.get("script", script), request["argv"], request["cwd"], request["timeout"], out.fileno(),
                  err.fileno())
        _, status = os.waitpid(pid, 0)
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode("utf-8", errors="replace"))
    return {"returncode": os.waitstatus_to_exitcode(status), "stdout": texts[0], "stderr": texts[1]}


def main() -> None:
    script, *modules = sys.argv[1:]
    sys.path.insert(0, str(Path(script).resolve().parent))
    for module in modules:
        importlib.import_module(module)
    for line in sys.stdin:
        print(json.dumps(run(script, json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
