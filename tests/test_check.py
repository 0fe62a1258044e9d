"""check.py on course-shaped implementations: a copy of this project's modules (its llama.py, rope.py, optimizer.py
and classifier.py keep the course's API) passes; each mistake of the catalogue, put into such a copy, fails its
component with the catalogue's hint and leaves every independent component matching; the course's skeleton, fetched
with --start from the mirror, is refused in one line where it cannot be imported."""
import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import assets
from conftest import MIRROR, UNAVAILABLE

REPO = Path(__file__).resolve().parent.parent
ALL = ["rope", "rmsnorm", "attention", "layer", "model", "generate", "adamw", "classifier", "zeroshot"]
ON_THE_MODEL = ["layer", "model", "classifier", "zeroshot"]  # built on rope, rmsnorm and attention
DECAY = "                if weight_decay:\n                    p.mul_(1 - lr * weight_decay)  # θ ← θ − lr·λ·θ\n"
STEP = "                p.addcdiv_(m, v.sqrt().add_(eps), value=-alpha)\n"
FIRST = "hidden_state_at(self.llama, input_ids, last_column(input_ids) * 0)"

# component, file, [(old, new)], the hint's words, the components that differ with it
CATALOGUE = {
    "eps outside the square root": ("rmsnorm", "llama.py", [(
        "torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)",
        "1 / (x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps)")], "eps outside the square root"),
    "halves instead of interleaved pairs": ("rope", "rope.py", [
        ("x.float().unflatten(-1, (-1, 2)).unbind(-1)", "x.float().chunk(2, -1)"),
        ("rotated.flatten(-2).type_as(x)", "torch.cat(rotated.unbind(-1), -1).type_as(x)")], "pairs of halves"),
    "1/d instead of 1/sqrt(d)": ("attention", "llama.py", [
        ("/ math.sqrt(self.head_dim)", "/ self.head_dim")], "scaled by 1/d instead of 1/√d"),
    "the mask applied": ("attention", "llama.py", [
        ("if self.causal and seqlen > 1:", "if seqlen > 1:")], "a causal mask applied"),
    "the first token in the classifier": ("classifier", "classifier.py", [(
        "        return F.log_softmax(self.classifier_head(self.dropout(h)), dim=-1)",
        f"        h = {FIRST}\n        return F.log_softmax(self.classifier_head(self.dropout(h)), dim=-1)")],
        "the first token read instead of the last"),
    "the first column in the zero-shot classifier": ("zeroshot", "classifier.py", [(
        "        logits = finite(self.llama.output(h))", f"        h = {FIRST}\n        logits = finite(self.llama.output(h))")],
        "the first position read instead of the last"),
    "logits of the first position in generate": ("generate", "llama.py", [(
        "sample(logits[:, -1], temperature, top_k)", "sample(logits[:, 0], temperature, top_k)")],
        "the first position read instead of the last"),
    "decay before the Adam step": ("adamw", "optimizer.py", [(STEP + DECAY, DECAY + STEP)],
                                   "weight decay applied before the Adam step"),
    "the inefficient bias correction": ("adamw", "optimizer.py", [(STEP, (
        "                p.addcdiv_(m / (1 - beta1**t), (v / (1 - beta2**t)).sqrt().add_(eps), value=-lr)\n"))],
        "the inefficient bias correction"),
}


def course_shaped(tmp_path: Path) -> Path:
    """A course-shaped implementation built from this project's modules: a copy of its Python files."""
    impl = tmp_path / "impl"
    impl.mkdir(parents=True)
    for path in REPO.glob("*.py"):
        if path.name != "check.py":
            shutil.copy(path, impl)
    return impl


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "check.py"), *args], capture_output=True, text=True,
                          timeout=300)


def differing(stdout: str) -> list[str]:
    """The components the report's first line names as differing, first first; [] when all match."""
    first = stdout.splitlines()[0]
    return first.removeprefix("differs: ").split(" (first")[0].split(", ") if first.startswith("differs: ") else []


def test_a_course_shaped_copy_of_minllama_matches_everywhere_within_30_seconds(tmp_path):
    started = time.monotonic()
    result = check("--impl", str(course_shaped(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert differing(result.stdout) == []
    assert f"every component checked matches ({', '.join(ALL)})" in result.stdout
    if not (REPO / "stories42M.pt").exists():  # with it (after `make generate`), the model is also run on it
        assert time.monotonic() - started < 30


def test_the_model_is_also_checked_on_stories42M_when_it_is_in_the_repository_root(tmp_path):
    """As sanity_check.py does, on its two rows; here a small random checkpoint in the course's format stands in for
    stories42M.pt, in the root of a copy of the checkout."""
    import torch

    from config import LlamaConfig
    from llama import Llama
    checkout = course_shaped(tmp_path / "checkout")
    shutil.copy(REPO / "check.py", checkout)
    sizes = dict(vocab_size=32000, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, max_seq_len=8)  # SENT_IDS fit
    torch.save({"model_args": sizes, "model": Llama(LlamaConfig(**sizes)).state_dict()}, checkout / "stories42M.pt")
    result = subprocess.run([sys.executable, str(checkout / "check.py"), "model", "--impl",
                             str(course_shaped(tmp_path))], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "over logits, hidden_states, stories42M logits, stories42M hidden_states)" in result.stdout


@pytest.mark.parametrize("mistake", CATALOGUE)
def test_each_mistake_fails_its_component_with_its_hint_and_no_independent_one(tmp_path, mistake):
    component, file, edits, hint = CATALOGUE[mistake]
    impl = course_shaped(tmp_path)
    text = (impl / file).read_text()
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    (impl / file).write_text(text)
    result = check("--impl", str(impl))
    assert result.returncode == 1, result.stdout + result.stderr
    built_on = ON_THE_MODEL if component in ("rope", "rmsnorm", "attention") else []
    differ = differing(result.stdout)
    assert differ[0] == component and set(differ) <= {component, *built_on}, result.stdout  # independent ones match
    report = result.stdout.split(f"\n{component}: ")[1].split("\n" + ALL[ALL.index(component) + 1] + ": ")[0] \
        if component != ALL[-1] else result.stdout.split(f"\n{component}: ")[1]
    assert "DIFFERS" in report and "largest difference" in report
    assert "likely mistake: " in report and hint in report, report
    assert [line for line in result.stdout.splitlines() if "likely mistake" in line] == \
        [line for line in report.splitlines() if "likely mistake" in line]  # the hint is given where it belongs


def test_the_attention_check_catches_1_over_d_in_the_written_out_formula(tmp_path):
    """The formula a student edits is the one checked, whichever path a loaded model takes (fast.install chooses
    PyTorch's fused kernel, which a 1/d in the formula would not reach)."""
    impl = course_shaped(tmp_path)
    text = (impl / "llama.py").read_text()
    (impl / "llama.py").write_text(text.replace("/ math.sqrt(self.head_dim)", "/ self.head_dim"))
    result = check("attention", "--impl", str(impl))
    assert result.returncode == 1
    assert differing(result.stdout) == ["attention"]
    assert "likely mistake: scores scaled by 1/d instead of 1/√d" in result.stdout


def test_a_folder_missing_a_file_is_refused_in_one_line(tmp_path):
    impl = course_shaped(tmp_path)
    (impl / "rope.py").unlink()
    result = check("--impl", str(impl))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "no rope.py" in result.stderr


def test_a_module_missing_an_import_is_refused_in_one_line_naming_it(tmp_path):
    impl = course_shaped(tmp_path)
    (impl / "checkpoint.py").unlink()
    result = check("rmsnorm", "--impl", str(impl))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "llama.py cannot be imported" in result.stderr
    assert "no checkpoint.py in" in result.stderr


def test_the_skeleton_is_fetched_with_start_and_its_stubs_are_reported(tmp_path, monkeypatch):
    if not (MIRROR and (Path(MIRROR) / "course" / "llama.py").exists()):
        pytest.skip(f"{UNAVAILABLE}: course/llama.py: the course's skeleton comes from the mirror in the tests")
    impl = tmp_path / "mine"
    result = check("--start", str(impl))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in impl.iterdir()) == sorted(assets.SKELETON)
    if importlib.util.find_spec("requests") is None:
        result = check("rmsnorm", "--impl", str(impl))
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert "needs the package requests" in result.stderr
    (impl / "utils.py").write_text("import torch\nfrom torch import nn\nCONFIG_NAME = 'config.json'\n"  # the names
                                   "hf_bucket_url = cached_path = is_remote_url = None\n")  # the others import
    result = check("rope", "rmsnorm", "adamw", "--impl", str(impl))
    assert result.returncode == 1
    assert differing(result.stdout) == ["rope", "rmsnorm", "adamw"]
    assert result.stdout.count("raised NotImplementedError") == 3


def test_a_difference_within_float32_rounding_of_the_float64_model_is_said_to_match():
    """sanity_check.py's 2.86e-5 case: a correct model that rounds otherwise than minllama's is said to match, with
    the tolerance and why; one farther from the float64 model than that differs."""
    import torch

    import check
    model = check.COMPONENTS["model"]
    exact = torch.zeros(4, dtype=torch.float64)
    ref = check.Reference({}, {"logits": (exact + 1e-5).float()}, {"logits": exact})  # minllama's own error: 1e-5
    matches, lines = check.report(model, ref, {"logits": (exact - 2e-5).float()})  # 3e-5 from minllama
    assert matches and "within float32 rounding" in lines[0] and "atol 1e-05" in lines[0]
    matches, lines = check.report(model, ref, {"logits": (exact - 1e-4).float()})
    assert not matches and "DIFFERS" in lines[0]


def test_a_file_given_as_a_folder_is_refused_in_one_line_and_kept(tmp_path):
    given = tmp_path / "notes.txt"
    given.write_text("mine")
    result = check("--start", str(given))
    assert result.returncode == 1 and result.stderr == f"error: --start {given}: it is a file\n"
    result = check("rope", "--impl", str(given))
    assert result.returncode == 2 and result.stderr == f"error: {given}: not a folder\n"
    assert given.read_text() == "mine"


def test_start_keeps_a_link_the_folder_holds(tmp_path):
    if not (MIRROR and (Path(MIRROR) / "course" / "llama.py").exists()):
        pytest.skip(f"{UNAVAILABLE}: course/llama.py: the course's skeleton comes from the mirror in the tests")
    impl = tmp_path / "mine"
    impl.mkdir()
    (impl / "llama.py").symlink_to(tmp_path / "elsewhere.py")  # a link to nothing yet: the student's, not replaced
    assert check("--start", str(impl)).returncode == 0
    assert (impl / "llama.py").is_symlink() and not (tmp_path / "elsewhere.py").exists()
