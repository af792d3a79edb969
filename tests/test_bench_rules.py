"""benchmarks/bench_rules.py's statistics: the gap to backprop is the mean of the per-seed
differences with its standard error, a single seed says so, work is against delayed's."""
import importlib.util
import math
import sys

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
spec = importlib.util.spec_from_file_location("bench_rules", ROOT / "benchmarks" / "bench_rules.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def run(final, work=0.1):
    return {"final": final, "work_s_per_batch": work, "wall_s": 60.0, "commit": "abc1234"}


RESULTS = {"runs": {
    **{f"verlet/backprop/seed{s}": run(a) for s, a in enumerate((0.88, 0.87, 0.86))},
    **{f"verlet/delayed/M4/seed{s}": run(a) for s, a in enumerate((0.87, 0.85, 0.86))},
    **{f"verlet/local/M4/seed{s}": run(a, work=0.12) for s, a in enumerate((0.885, 0.87, 0.86))},
    "verlet/delayed/M8/seed0": run(0.80),
    "verlet/local/M8/seed5": run(0.80),  # no backprop on seed 5: left out
}}


def test_the_gap_is_the_mean_per_seed_difference_with_its_standard_error():
    summary = bench.summarise(RESULTS)
    delayed = summary["verlet"][4]["delayed"]
    assert delayed["n"] == 3 and delayed["gap"] == pytest.approx(1.0)  # (1 + 2 + 0) / 3 points
    assert delayed["gap_se"] == pytest.approx(1.0 / math.sqrt(3))  # sd of (1, 2, 0) is 1
    assert delayed["mean"] == pytest.approx(0.86) and delayed["sd"] == pytest.approx(0.01)
    local = summary["verlet"][4]["local"]
    assert local["gap"] == pytest.approx(-0.5 / 3) and local["work_vs_delayed"] == pytest.approx(1.2)
    assert summary["verlet"][8] == {"delayed": summary["verlet"][8]["delayed"]}  # seed 5 has no backprop
    assert summary["verlet"][8]["delayed"]["n"] == 1


def test_the_report_says_one_seed_and_which_goals_are_met(tmp_path):
    summary = bench.summarise(RESULTS)
    text = bench.report(RESULTS, summary)
    assert "| 8 | delayed | 1 | 0.8000 +- one seed | +8.00 |" in text
    assert "verlet, M = 4: best local, gap -0.17 +- 0.17 points (goal <= 0.3: met); work a batch 1.20x " \
           "delayed's (goal <= 1.10: not met)" in text
    assert "verlet, M = 8: not measured on 3 seeds" in text
    assert bench.figure(summary, tmp_path / "rules_depth.png").stat().st_size > 0
