"""bench.py's report and its --baseline checks (the benchmark itself is not run here: it takes minutes)."""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import bench

REPO = Path(__file__).resolve().parent.parent


def runs(*medians: float) -> list[dict]:
    """One child's result per round, each with three uncontested samples around `median`."""
    return [{"finetune": [[m * 0.9, False], [m, False], [m * 1.1, False]], "peak_rss_mb": 100.0} for m in medians]


def test_baseline_row_gives_the_ratio_and_the_rounds_range():
    results = {"finetune": {"causal": runs(10.0, 9.0), "course": runs(10.0, 10.0), "transformers": runs(8.0, 8.0),
                            "baseline": runs(8.0, 10.0)}}
    lines = bench.table(results, "abc1234")
    row = next(line for line in lines if "baseline abc1234" in line)
    # medians of all six samples: ours 9.45 (9.0 and 9.9 in the middle), the baseline's 8.9 (8.8 and 9.0);
    # of each round's: 10 / 8 and 9 / 10
    assert " 8.9 " in row and f"{9.45 / 8.9:.2f}×" in row and "(rounds 0.90–1.25)" in row
    versus = next(line for line in lines if line.startswith("fine-tune step"))  # 10 / 8 and 9 / 8
    assert f"{9.45 / 8.0:.2f}×" in versus and "≥ 1.0× met (rounds 1.12–1.25)" in versus
    assert not any("baseline" in line for line in bench.table({"finetune": {
        impl: results["finetune"][impl] for impl in ("causal", "course", "transformers")}}, ""))


def test_baseline_runs_beside_the_workloads_that_have_a_causal_child_of_their_own():
    assert bench.implementations("generate", baseline=True) == ("causal", "recompute", "transformers", "baseline")
    assert bench.implementations("generate", baseline=False) == ("causal", "recompute", "transformers")
    # llama2c's child runs runomp itself, which an older checkout's does not; epoch has no causal child
    assert bench.implementations("llama2c", baseline=True) == ("causal",)
    assert bench.implementations("epoch", baseline=True) == ("random", "grouped")


def test_baseline_without_bench_py_is_refused_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench.py"), "--baseline", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"--baseline {tmp_path}: no bench.py there; name a checkout of minllama"


def test_llama2c_rows_give_the_median_of_call_by_call_ratios_and_the_rounds_range():
    def samples(*values: float, contested: int | None = None) -> list[list]:
        return [[v, i == contested] for i, v in enumerate(values)]

    # a pair with a contested sample on either side is left out: per round the ratios 0.9, 1.0 and 0.8, 0.8
    runs = [{"decode": samples(90, 100, 110, contested=2), "call": samples(45, 50, 55),
             "runomp": samples(100, 100, 90), "runomp_peak_rss_mb": 180.0, "peak_rss_mb": 700.0},
            {"decode": samples(80, 72, 88), "call": samples(40, 36, 44),
             "runomp": samples(100, 90, 100, contested=2), "runomp_peak_rss_mb": 190.0, "peak_rss_mb": 720.0}]
    lines = bench.table({"llama2c": {"causal": runs}}, "")
    row = next(line for line in lines if line.startswith("decode 256 tokens"))
    # the median of 0.9, 1.0, 0.8 and 0.8, the rounds' 0.95 and 0.8; minllama's the median of 90, 100, 80, 72, 88
    assert " 88.0 " in row and "0.85×" in row and "call by call: ≥ 0.8× met (rounds 0.80–0.95)" in row
    assert " 720 " in row and "5/6" in row
    call = next(line for line in lines if "whole generate calls" in line)  # 0.45, 0.5, 0.61 and 0.4, 0.4: no target
    assert "0.45×" in call and "call by call: no target (rounds 0.40–0.50)" in call and "met" not in call
    runomp = next(line for line in lines if "llama2.c runomp" in line)  # 100, 100, 90, 100, 90 uncontested
    assert " 100.0 " in runomp and " 190 " in runomp and "5/6" in runomp


def test_course_rows_give_the_median_of_call_by_call_ratios():
    def samples(*values: float) -> list[list]:
        return [[v, False] for v in values]

    short, long = bench.GEN_TOKENS
    tokens = {f"{name}tokens {n}": [1, 2] for name in ("", "course ", "plain ") for n in bench.GEN_TOKENS}
    recompute = [{f"course generate {short}": samples(9.0, 12.0, 10.0), f"plain generate {short}": samples(10, 10, 8),
                  f"course generate {long}": samples(5.0), f"plain generate {long}": samples(4.0),
                  "peak_rss_mb": 300.0} | tokens for _ in range(2)]
    cached = [{f"generate {n}": samples(60.0) for n in bench.GEN_TOKENS} | {"peak_rss_mb": 150.0} | tokens]
    lines = bench.table({"generate": {"causal": cached, "recompute": recompute, "transformers": cached}}, "")
    course_short, course_long = (next(line for line in lines if line.startswith(f"  course (recompute), {n} "))
                                 for n in bench.GEN_TOKENS)
    # pair by pair 0.9, 1.2 and 1.25 in each round, median 1.2, where the medians of the rates give 10 / 10
    assert "1.20×" in course_short and "≥ 1.0× met (pairs 0.90–1.25)" in course_short and " 300 " in course_short
    assert "1.25×" in course_long and "(pairs 1.25–1.25)" in course_long
    plain = next(line for line in lines if line.startswith(f"  causal, use_cache=False, {long} "))
    assert " 4.0 " in plain and "15.00×" in plain and "≥ 5× met" in plain
    assert f"greedy {long} new tokens identical in causal minllama with and without its cache: True" in lines


def test_calls_in_turns_alternate_token_by_token_each_timed_alone():
    log = []

    def call(name: str, tokens: int, pause: float):
        def run(on_token):
            for t in range(tokens):
                time.sleep(pause)
                log.append((name, torch.is_inference_mode_enabled()))
                on_token(t)
            return name * 2
        return run

    (a, a_seconds), (b, b_seconds), (c, _) = bench.in_turns(call("a", 3, 0.05), call("b", 5, 0.0), call("c", 1, 0.0))
    assert (a, b, c) == ("aa", "bb", "cc")
    assert [name for name, _ in log] == ["a", "b", "c", "a", "b", "a", "b", "b", "b"]
    assert all(inference for _, inference in log) and not torch.is_inference_mode_enabled()
    assert a_seconds >= 0.15 > b_seconds  # each call's own time only: b never waits for a's pauses


def test_without_a_c_compiler_runomp_is_not_built(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert bench.build_runomp(tmp_path) == f"no C compiler found ({tmp_path / 'no-such-cc'}; set CC to name one)"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
def test_runomp_builds_and_reports_its_speed_on_a_real_model(tmp_path, asset, monkeypatch):
    monkeypatch.setenv("MINLLAMA_ASSET_MIRROR", str(asset("llama2c/run.c").parent.parent))
    asset("llama2c/tokenizer.bin")
    runomp = bench.build_runomp(tmp_path)
    assert runomp == tmp_path / "runomp" and runomp.is_file()
    # the empty prompt (BOS alone): stories260K's 512-piece vocabulary cannot encode every text in tokenizer.bin's
    run = bench.run_runomp(runomp, asset("stories260K.bin"), "", prompt_len=1, repeats=2, threads=1)
    assert len(run["decode"]) == 2 and all(tokens_per_s > 0 for tokens_per_s, _ in run["decode"])
    assert run["peak_rss_mb"] > 0


def test_first_call_rows_give_the_median_ratio_its_rounds_and_the_bound():
    def run(ratio: float, contested: bool = False) -> dict:
        return {"first": [[ratio, contested]], "seconds": [[0.5, False]], "peak_rss_mb": 700.0}

    lines = bench.table({"first": {"course": [run(1.1), run(1.3), run(9.0, contested=True)],
                                   "causal": [run(1.6), run(1.7), run(1.4)]}}, "")
    course, causal = (next(line for line in lines if line.startswith(f"  {impl}, second call")) for impl in
                      ("course", "causal"))
    assert "1.20×" in course and "≤ 1.5× met (rounds 1.10–9.00)" in course and "2/3" in course
    assert "1.60×" in causal and "≤ 1.5× NOT MET (rounds 1.40–1.70)" in causal


@pytest.mark.parametrize("flag, value", [("--repeats", "0"), ("--rounds", "0"), ("--rounds", "-1"),
                                         ("--threads", "0")])
def test_counts_below_one_are_usage_errors(monkeypatch, capsys, flag, value):
    """--rounds 0 ran each workload's default rounds; --repeats 0 and --threads 0 ended in tracebacks."""
    monkeypatch.setattr(sys, "argv", ["bench.py", flag, value])
    monkeypatch.setattr(bench, "machine", lambda: pytest.fail("the benchmark started"))
    with pytest.raises(SystemExit) as e:
        bench.main()
    assert e.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == f"bench.py: error: argument {flag}: must be at least 1, got {value}"


def test_a_file_the_mirror_lacks_is_named_with_its_workload_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "tokenizer.model").write_bytes(b"")  # only looked for here
    monkeypatch.setenv("MINLLAMA_ASSET_MIRROR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["bench.py", "--workloads", "generate", "llama2c"])
    monkeypatch.setattr(bench, "machine", lambda: pytest.fail("the benchmark started"))
    with pytest.raises(SystemExit) as e:
        bench.main()
    assert e.value.code == (f"the llama2c workload needs llama2c/run.c: {tmp_path / 'llama2c' / 'run.c'} is missing "
                            f"(the mirror MINLLAMA_ASSET_MIRROR={tmp_path})")


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
def test_a_run_c_that_does_not_compile_is_one_line_with_the_compilers_first_error(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "llama2c").mkdir(parents=True)
    (mirror / "llama2c" / "run.c").write_text("int main(void) { return undeclared; }\n")
    monkeypatch.setenv("MINLLAMA_ASSET_MIRROR", str(mirror))
    (tmp_path / "build").mkdir()
    why = bench.build_runomp(tmp_path / "build")
    assert isinstance(why, str) and "\n" not in why and "^" not in why
    compiler = os.environ.get("CC", "cc")
    assert re.fullmatch(f"{re.escape(compiler)} cannot compile {re.escape(str(mirror / 'llama2c' / 'run.c'))}: "
                        r"run\.c:1:\d+: error: .*undeclared.*", why), why
