"""How far this machine alone puts a forecast validation's rows: the floor under its errors.

On the validation's own workloads (``python scripts/forecast.py --validate 1``: dense
Verlet, dense ResNet and the multi-unit conv network, each at two batch sizes), runs
that the forecast models with nothing but the machine (``harness.forecast.floor_run``):
one process, and two processes each stepping backprop on the whole batch on its own
(no schedule, no message), an epoch to start and an epoch timed, forecast exactly as a
validation run is: the one-thread profile's step at the machine's pace read just before
and just after the run in this process, by the sharing factor measured before each
round when two compute at once.  A run's error is then the machine's wander between
the pace's windows and the run's epoch; a row of the validation is the median of three
runs minutes apart, so each workload's rows here are every three of its rounds.

It then says how often a validation made of such runs would meet the validation's goals
(``goal_chance``): a forecast whose only error is the machine's, over as many rows as
the validation has.

    python benchmarks/bench_floor.py [--rounds 5] [--workloads 0,5]
    python benchmarks/bench_floor.py --from benchmarks/results/bench_floor.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time

from common import ROOT, save  # noqa: I001

from harness import forecast as fc
from harness.configs import ForecastRun

GOAL = 0.12  # the validation's goal for its worst row
MEDIAN_GOAL = 0.05  # and for its median row
VALIDATION_ROWS = {1: 1, 2: 6}  # processes -> the default validation's rows a workload (bp-1t; six trainers)


def rows_of(errors, runs=3):
    """The error of every row that ``runs`` of these runs' errors would make (the median run)."""
    return [sorted(c)[(runs - 1) // 2] for c in itertools.combinations(errors, runs)]


def run_figures(errors):
    return {"runs": len(errors), "run_median": statistics.median(map(abs, errors)),
            "run_rms": statistics.fmean(e * e for e in errors) ** 0.5, "run_worst": max(map(abs, errors))}


def summary(errors):
    """One workload's runs: ``run_figures`` and its rows' (``rows_of``)."""
    rows = rows_of(errors)
    return {**run_figures(errors), "rows_beyond_goal": sum(abs(r) > GOAL for r in rows) / len(rows),
            "row_worst": max(map(abs, rows))}


def goal_chance(runs, rows=None, draws=20000, seed=0):
    """How often a validation of ``rows`` ({processes: rows a workload}) made of these runs
    would meet the goals, each row the median of three runs: {"worst_met", "median_met",
    "both_met"} (fractions of ``draws``) and the drawn validations' worst row at its 10th,
    50th and 90th percentiles ("worst_row").

    ``runs`` holds rows as ``floor_run`` makes them (workload, devices, error).  A workload
    keeps the mean of its runs' errors at each process count (its profile, taken once, is
    common to all its rows); around it each row draws three of the residuals pooled over
    the workloads at that process count (each scaled by sqrt(n / (n - 1)) for the mean it
    lost), with replacement: a handful of runs a workload says little about the tail
    alone, and the pooled residuals are many."""
    rows = rows or VALIDATION_ROWS
    by = {}
    for x in runs:
        by.setdefault((x["workload"], x["devices"]), []).append(x["error"])
    if not all(len(v) > 1 for v in by.values()):
        raise ValueError("goal_chance needs at least two runs of each workload and process count")
    mean = {k: statistics.fmean(v) for k, v in by.items()}
    residuals = {p: [(e - mean[k]) * (len(v) / (len(v) - 1)) ** 0.5 for k, v in by.items() if k[1] == p for e in v]
                 for p in rows}
    workloads = list(dict.fromkeys(k[0] for k in by))
    rng = random.Random(seed)
    worst, met = [], {"worst_met": 0, "median_met": 0, "both_met": 0}
    for _ in range(draws):
        errors = [abs(mean[(w, p)] + sorted(rng.choices(residuals[p], k=3))[1])
                  for w in workloads for p, n in rows.items() for _ in range(n)]
        top, middle = max(errors), statistics.median(errors)
        worst.append(top)
        met["worst_met"] += top <= GOAL
        met["median_met"] += middle <= MEDIAN_GOAL
        met["both_met"] += top <= GOAL and middle <= MEDIAN_GOAL
    worst.sort()
    return {**{k: v / draws for k, v in met.items()}, "rows": sum(rows.values()) * len(workloads),
            "worst_row": [worst[int(q * (draws - 1))] for q in (0.1, 0.5, 0.9)]}


def pct(x, digits=1):
    return f"{x * 100:.{digits}f} %"


def table_line(name, processes, s):
    """A line of the printed table: a ``summary`` (or the all-workload figures) of ``name``'s runs."""
    return (f"{name:<24}{processes:>10}{s['run_median']:>14.1%}{s['run_rms']:>7.1%}{s['run_worst']:>8.1%}"
            f"{s['rows_beyond_goal']:>13.1%}{s['row_worst']:>11.1%}")


def measure(rounds, keep):
    """``rounds`` rounds of floor runs, one and two processes, on the validation's workloads
    (their indices ``keep``; None: all)."""
    cfg = ForecastRun(DATA_ROOT=str(ROOT / "data"), VALIDATE=True)  # forecast.py's defaults: its family's
    workloads = [w for i, w in enumerate(fc.validation_workloads(cfg, fc.LINKS["free"], ["bp-1t"],
                                                                 log=lambda *a, **k: None))
                 if keep is None or i in keep]
    runs = []
    for r in range(rounds):
        for w in workloads:
            for processes, row in fc.round_runs(w, (1, 2), r, fc.floor_run, w.sharing()):
                runs.append(row)
                print(f"round {r + 1}: {w.name:<22} {processes} process{'es' if processes > 1 else ''}: measured "
                      f"{row['measured_epoch_s']:5.2f} s, forecast {row['forecast_epoch_s']:5.2f} s "
                      f"({row['error']:+.1%}; pace {row['pace_s'][0] * 1e3:.1f} / {row['pace_s'][1] * 1e3:.1f} ms a "
                      f"step, sharing {row['sharing']:.3f})", flush=True)
    return runs


def report(runs):
    """Prints and returns the table of ``runs`` (per workload and process count, then over
    the workloads) and their ``goal_chance``."""
    table = {}
    print(f"\n{'workload':<24}{'processes':>10}{'runs: median':>14}{'rms':>7}{'worst':>8}"
          f"{'rows > 12 %':>13}{'worst row':>11}")
    for name in dict.fromkeys(x["workload"] for x in runs):
        for processes in (1, 2):
            s = summary([x["error"] for x in runs if x["workload"] == name and x["devices"] == processes])
            table[f"{name}, {processes}"] = s
            print(table_line(name, processes, s))
    for processes in (1, 2):  # rows lie within a workload: their figures over the workloads
        per = [v for k, v in table.items() if k.endswith(f", {processes}")]
        s = {**run_figures([x["error"] for x in runs if x["devices"] == processes]),
             "rows_beyond_goal": statistics.fmean(v["rows_beyond_goal"] for v in per),
             "row_worst": max(v["row_worst"] for v in per)}
        table[f"all, {processes}"] = s
        print(table_line("all", processes, s))
    chance = goal_chance(runs)
    low, mid, high = chance["worst_row"]
    print(f"\na validation of {chance['rows']} rows made of such runs (a forecast whose only error is the "
          f"machine's): worst row <= {pct(GOAL, 0)} in {pct(chance['worst_met'], 0)} of draws, median <= "
          f"{pct(MEDIAN_GOAL, 0)} in {pct(chance['median_met'], 0)}, both in {pct(chance['both_met'], 0)}; its worst "
          f"row {pct(mid)} (10-90 %: {pct(low)} to {pct(high)})")
    return table, chance


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each kind on each workload, a round apart")
    parser.add_argument("--workloads", help="indices of the validation's six workloads (default: all)")
    parser.add_argument("--from", dest="source", help="report the runs of a saved bench_floor.json, measuring none")
    args = parser.parse_args()
    if args.source:
        try:
            runs = json.loads(open(args.source).read())["runs"]
        except (OSError, ValueError, KeyError) as e:
            parser.error(f"--from: cannot read runs from {args.source}: {e}")
        report(runs)
        return
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (a row is the median of three runs)")
    count = len(fc.VALIDATION_NETS) * 2  # each network at BATCH_SIZE and BATCH_SIZE / 2
    try:
        keep = None if args.workloads is None else {int(i) for i in args.workloads.split(",")}
    except ValueError:
        keep = {-1}
    if keep is not None and not keep <= set(range(count)):
        parser.error(f"--workloads must be indices 0-{count - 1} separated by commas, such as 0,5; "
                     f"got {args.workloads!r}")
    t0 = time.perf_counter()
    runs = measure(args.rounds, keep)
    table, chance = report(runs)
    minutes = (time.perf_counter() - t0) / 60
    print(f"({minutes:.1f} minutes; rows: every three rounds of a workload, the median run)")
    save("bench_floor", {"rounds": args.rounds, "summary": table, "goal_chance": chance, "runs": runs,
                         "minutes": minutes})


if __name__ == "__main__":
    main()
