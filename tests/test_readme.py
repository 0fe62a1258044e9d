"""The README's first screen holds the course's work, the whole README stays short, and every link between it and
docs/ leads somewhere."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MAX_LINES = 220
FIRST_SCREEN = 60
LINK = re.compile(r"\]\(([^)\s]+)\)")  # the target of a Markdown link [text](target)

# What a student looks for first: the two make commands, the venv, the course's three uses with the derived paths,
# generation from their own prompt, and the assignment's three checks.
FIRST_SCREEN_ITEMS = (
    "make generate", "make test", "source .venv/bin/activate", ".venv/bin/python",
    "python run_llama.py --option generate", "python run_llama.py --option prompt",
    "python run_llama.py --option finetune",
    "--dev`", "--test`", "--label-names`", "--dev_out`", "--test_out`", "NAME-train.txt",
    "--prompt", "--max_new_tokens", "--temperature", "--top_k", "--stream",
    "python sanity_check.py", "python rope_test.py", "python optimizer_test.py",
)


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)}


def local_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(path.read_text(encoding="utf-8"))
            if not re.match(r"[a-z]+:", target)]  # http:, https:, mailto: lead elsewhere


def test_the_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; move long material into docs/"


@pytest.mark.parametrize("item", FIRST_SCREEN_ITEMS)
def test_the_first_screen_holds_the_course_s_work(item: str):
    first = "\n".join(README.read_text(encoding="utf-8").splitlines()[:FIRST_SCREEN])
    assert item in first, f"{item!r} is not in README.md's first {FIRST_SCREEN} lines"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_leads_somewhere(page: Path):
    for target in local_links(page):
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        assert linked.is_file(), f"{page.name} links to {target}, which is not a file"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name} links to {target}, which has no such heading"


def test_every_page_of_docs_is_linked_from_the_readme():
    linked = {(REPO / target.partition("#")[0]).resolve() for target in local_links(README)}
    assert DOCS, "docs/ holds no page"
    assert [page.name for page in DOCS if page not in linked] == []


def test_every_script_named_exists():
    for page in [README, *DOCS]:
        for script in re.findall(r"(?:python|torchrun [^`\n]*?) (\w+\.py)\b", page.read_text(encoding="utf-8")):
            assert (REPO / script).is_file(), f"{page.name} names {script}, which is not in the repository"


def test_the_module_table_lists_every_module():
    text = README.read_text(encoding="utf-8").split("## Modules", 1)[1].split("\n## ", 1)[0]
    listed = {name for row in re.findall(r"^\| (.+?) \|", text, re.M) for name in re.findall(r"`(\w+\.py)`", row)}
    assert listed == {path.name for path in REPO.glob("*.py")}
