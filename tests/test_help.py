"""Every entry point answers --help with whole sentences, exits 0, and fetches and writes nothing; none of them
takes an abbreviation of a flag for the flag."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import assets

REPO = Path(__file__).resolve().parent.parent
ENTRY_POINTS = ("run_llama.py", "reproduce.py", "convert.py", "bench.py", "sanity_check.py", "rope_test.py",
                "optimizer_test.py", "assets.py", "check.py")
SENTENCE_END = re.compile(r"[.:][)\"'`]?$")  # a paragraph may end with ":" before its indented lines


def run_offline(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python script args` from the empty folder cwd, with an empty HOME, no asset mirror and every URL refused
    by an unreachable proxy, and help lines as wide as they come (so that each option's help is one line)."""
    home = cwd / "home"
    home.mkdir(exist_ok=True)
    env = {name: value for name, value in os.environ.items() if name != assets.MIRROR_ENV}
    env |= {"HOME": str(home), "COLUMNS": "1000", "PYTHONDONTWRITEBYTECODE": "1",
            "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def description_and_options(help_text: str) -> tuple[list[str], dict[str, str]]:
    """The prose paragraphs between the usage and the first list of arguments (indented lines left out), and
    each argument's help, from argparse's --help output."""
    blocks = help_text.split("\n\n")
    first_list = next(i for i, block in enumerate(blocks) if re.match(r"(options|positional arguments):", block))
    paragraphs = [" ".join(line.strip() for line in block.splitlines() if not line.startswith(" "))
                  for block in blocks[1:first_list]]
    options: dict[str, str] = {}
    name = None
    for block in blocks[first_list:]:
        for line in block.splitlines()[1:]:
            if re.match(r"  \S", line):  # an argument, then its help after two spaces, or on the next lines
                name, *text = re.split(r"\s{2,}", line.strip(), maxsplit=1)
                options[name] = " ".join(text)
            elif name is not None:
                options[name] = f"{options[name]} {line.strip()}".strip()
    return [p for p in paragraphs if p], options


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help_is_whole_sentences_and_fetches_nothing(tmp_path: Path, script: str):
    result = run_offline(script, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script} ") and result.stderr == ""
    paragraphs, options = description_and_options(result.stdout)
    assert paragraphs, "no description"
    for paragraph in paragraphs:
        assert SENTENCE_END.search(paragraph), f"the description stops mid-sentence: {paragraph!r}"
    for name, text in options.items():
        if name != "-h, --help":  # argparse's own line
            assert text.endswith("."), f"{name}: {text!r} is not a whole sentence"
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert written == ["home"], f"--help wrote {written}"


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_an_abbreviated_flag_is_refused(tmp_path: Path, script: str):
    """--hel would be --help to a parser that takes abbreviations (run_llama.py --cau would be --causal)."""
    result = run_offline(script, "--hel", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == "" and f"{script}: error: " in result.stderr
