"""bench.py's report and its --baseline checks (the benchmark itself is not run here: it takes minutes)."""
import subprocess
import sys
from pathlib import Path

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
    assert not any("baseline" in line for line in bench.table({"finetune": {
        impl: results["finetune"][impl] for impl in ("causal", "course", "transformers")}}, ""))


def test_baseline_without_bench_py_is_refused_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench.py"), "--baseline", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"--baseline {tmp_path}: no bench.py there; name a checkout of minllama"
