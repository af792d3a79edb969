"""benchmarks/bench_floor.py's goal_chance: how often a validation made of the machine's
floor runs meets the goals, from each workload's mean error and the pooled residuals."""
import importlib.util
import random
import sys

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
spec = importlib.util.spec_from_file_location("bench_floor", ROOT / "benchmarks" / "bench_floor.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def runs(errors_by_workload, processes=2):
    return [{"workload": w, "devices": processes, "error": e} for w, errors in errors_by_workload.items()
            for e in errors]


def test_steady_runs_meet_the_goals_and_a_biased_workload_misses_the_worst_row():
    steady = runs({"a": [0.01, -0.01, 0.0], "b": [0.02, 0.0, 0.01]})
    chance = bench.goal_chance(steady, rows={2: 6}, draws=500)
    assert chance["worst_met"] == chance["median_met"] == chance["both_met"] == 1.0
    assert chance["rows"] == 12 and chance["worst_row"][2] < 0.04
    biased = runs({"a": [0.20, 0.19, 0.21], "b": [0.0, 0.01, -0.01]})  # a's profile 20 % off: every row of a
    chance = bench.goal_chance(biased, rows={2: 6}, draws=500)
    assert chance["worst_met"] == 0.0 and chance["worst_row"][0] > 0.17


def test_the_more_rows_the_less_often_noisy_runs_meet_the_worst_row_goal():
    rng = random.Random(1)
    noisy = runs({w: [rng.gauss(0, 0.08) for _ in range(5)] for w in "abcdef"})
    few = bench.goal_chance(noisy, rows={2: 1}, draws=2000)
    many = bench.goal_chance(noisy, rows={2: 6}, draws=2000)
    assert 0 < many["worst_met"] < few["worst_met"] < 1
    assert many["worst_row"][1] > few["worst_row"][1]
    assert bench.goal_chance(noisy, rows={2: 6}, draws=2000) == many  # seeded: the same draws


def test_a_workload_needs_two_runs():
    with pytest.raises(ValueError, match="at least two runs"):
        bench.goal_chance(runs({"a": [0.1], "b": [0.0, 0.1]}), rows={2: 1}, draws=10)
