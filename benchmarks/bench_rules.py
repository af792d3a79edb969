"""Accuracy against the depth of the pipeline: each rule of synthetic.rules against
backprop on the same network, seeds and batches.

A run trains the network as a pipeline of M stages (even cuts) whose stages take turns in
this process (the loopback transport): each stage trains at the delay it has on M devices
when every device is kept busy (M - 1 - i batches at stage i; serial = distributed is
tested), so that the accuracy is the one M devices would reach.  Backprop is the exact
rule, whose arithmetic is backprop's whatever M (tested).  Adam, 5 epochs, batch 256,
the whole of Fashion-MNIST, dense Verlet and ResNet of 16 layers of width 784.

    python benchmarks/bench_rules.py --phase screen          # every rule, M = 4, seed 0
    python benchmarks/bench_rules.py --phase depth --rules delayed,local,predicted   # M = 2, 4, 8, seeds 0-2
    python benchmarks/bench_rules.py --phase conv --rules local          # multi-unit conv Verlet, M = 2, 4
    python benchmarks/bench_rules.py --nets verlet --rules pipemare --stages 8 --seeds 0   # anything else
    python benchmarks/bench_rules.py --report                 # the tables and the figure, nothing trained
    python benchmarks/bench_rules.py --work --stages 4,8      # each rule's work a batch, on a quiet machine

Every run (network, rule, M, seed) is kept in the JSON (--out) as it ends, with its
commit, and a run already there is skipped: the benchmark runs in pieces, across
sessions.  The report gives, per network and M, each rule's test accuracy (mean and
standard deviation over its seeds), its gap to backprop in points (mean of the per-seed
differences, with its standard error), its work per batch (every stage's busy seconds,
from the stage profiles; from --work where it ran, else from the training runs) against
delayed's, and writes rules_depth.png (the gap against
M, one line per rule, error bars one standard error) beside the JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import time
from pathlib import Path

from common import ROOT, machine  # noqa: I001

import torch

import datasets
from datasets.files import write_json
from models import build_model
from synthetic import RULES, ComplexNet, PipelineConfig, train_serial
from synthetic.complex import layers_per_stage

NETS = {  # name -> build_model arguments (Fashion-MNIST's 1 x 28 x 28 in, 10 classes)
    "verlet": ("verlet", 16, {}),
    "resnet": ("resnet", 16, {}),
    "conv-verlet": ("verlet", 12, {"conv": True, "units": (8, 16, 32)}),
}
STEP, LR, SG_LR, BATCH, EPOCHS = 0.5, 1e-3, 3e-4, 256, 5
PHASES = {  # the plan; flags override each field
    "screen": {"nets": "verlet,resnet", "rules": ",".join(r for r in RULES if r != "exact"), "stages": "4",
               "seeds": "0"},
    "depth": {"nets": "verlet,resnet", "rules": "delayed,local", "stages": "2,4,8", "seeds": "0,1,2"},
    "conv": {"nets": "conv-verlet", "rules": "local", "stages": "2,4", "seeds": "0,1,2"},
}
GOALS = {4: 0.3, 8: 0.5}  # M -> the best rule's largest gap to backprop (points, mean of 3 seeds)
EXTRA_WORK_GOAL = 0.10  # the best rule's work per batch at most 10 % above delayed's


def key(net, rule, stages, seed):
    return f"{net}/backprop/seed{seed}" if rule == "exact" else f"{net}/{rule}/M{stages}/seed{seed}"


def network(net, info, seed):
    choice, layers, kw = NETS[net]
    torch.manual_seed(seed)
    return build_model(choice, info.shape, info.classes, layers, STEP, **kw)


def pipelined(net, rule, stages, seed, data, epochs):
    """``net`` trained with ``rule`` as M = ``stages`` stages in this process: (the
    ComplexNet, train_serial's history)."""
    cnet = ComplexNet(network(net, data.info, seed), stages)
    cfg = PipelineConfig(rule=rule, rule_options={"sg_learn_rate": SG_LR}, epochs=epochs, lr=LR,
                         batch_size=BATCH, seed=seed)
    return cnet, train_serial(cnet, data, cfg)


def train(net, rule, stages, seed, data, epochs):
    """One run: its per-epoch test accuracies, training seconds and work per batch."""
    t0 = time.perf_counter()
    cnet, hist = pipelined(net, rule, stages, seed, data, epochs)
    batches = epochs * -(-len(data.y_train) // BATCH)
    return {"test_acc": hist["test_acc"], "final": hist["test_acc"][-1], "train_s": sum(hist["seconds"]),
            "wall_s": time.perf_counter() - t0, "stages": stages, "layers_per_stage": layers_per_stage(cnet.bounds),
            "work_s_per_batch": sum(p["busy_s"] for p in hist["profile"]) / batches,
            "stage_work_s_per_batch": [p["busy_s"] / batches for p in hist["profile"]]}


def work_per_batch(nets, rules, stages, data, batches=40, rounds=3):
    """{net: {M: {rule: seconds of work a batch}}}: every stage's busy seconds (the stage
    profiles) over ``batches`` batches, the median of ``rounds`` rounds in which every
    rule runs once, so that a drift of the machine's speed falls on all of them alike."""
    sub = data.head(batches * BATCH)
    out = {}
    for net in nets:
        for m in stages:
            runs = {r: [] for r in rules}
            for _ in range(rounds):
                for rule in rules:
                    _, hist = pipelined(net, rule, m, 0, sub, 1)
                    runs[rule].append(sum(p["busy_s"] for p in hist["profile"]) / batches)
            out.setdefault(net, {})[str(m)] = {r: statistics.median(v) for r, v in runs.items()}
            print(f"{net}, M = {m}: work a batch " + ", ".join(f"{r} {1e3 * v:.0f} ms" for r, v in
                                                             out[net][str(m)].items()), flush=True)
    return out


def commit():
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


def run_all(args, out):
    results = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    data = datasets.load("FASHION")
    if args.samples:
        data = data.head(args.samples)
    todo = [(n, r, m, s) for n in args.nets for s in args.seeds
            for r, ms in [("exact", [2])] + [(r, args.stages) for r in args.rules] for m in ms]
    todo = [t for t in dict.fromkeys(todo) if key(*t) not in results["runs"]]
    print(f"{len(todo)} runs to go ({len(results['runs'])} in {out})", flush=True)
    for k, (net, rule, m, seed) in enumerate(todo, 1):
        run = train(net, rule, m, seed, data, args.epochs)
        run.update(commit=commit(), date=time.strftime("%Y-%m-%d"), samples=len(data.y_train), epochs=args.epochs)
        results["runs"][key(net, rule, m, seed)] = run
        results["machine"] = machine()
        write_json(out, results)  # after every run: an interrupted benchmark resumes here
        print(f"[{k}/{len(todo)}] {key(net, rule, m, seed)}: test acc {run['final']:.4f}, "
              f"{run['wall_s']:.0f} s, {1e3 * run['work_s_per_batch']:.0f} ms of work a batch", flush=True)
    return results


def mean_sd(xs):
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else float("nan")


def summarise(results):
    """{net: {M: {rule: {n, mean, sd, gap, gap_se, seeds, work_vs_delayed}}}} over the runs
    kept: the gap is backprop's accuracy minus the rule's in points, the mean of the
    per-seed differences (seeds where both ran), with its standard error."""
    runs, table = results["runs"], {}
    for k, run in runs.items():
        net, rule, *rest = k.split("/")
        if rule == "backprop":
            continue
        m, seed = int(rest[0][1:]), int(rest[1][4:])
        table.setdefault(net, {}).setdefault(m, {}).setdefault(rule, {})[seed] = run
    out = {}
    for net, by_m in table.items():
        for m, by_rule in sorted(by_m.items()):
            for rule, by_seed in by_rule.items():
                seeds = sorted(s for s in by_seed if f"{net}/backprop/seed{s}" in runs)
                if not seeds:
                    continue
                accs = [by_seed[s]["final"] for s in seeds]
                gaps = [100 * (runs[f"{net}/backprop/seed{s}"]["final"] - by_seed[s]["final"]) for s in seeds]
                acc, sd = mean_sd(accs)
                gap, gap_sd = mean_sd(gaps)
                quiet = results.get("work", {}).get(net, {}).get(str(m), {})
                delayed = by_rule.get("delayed", {})
                common = [s for s in seeds if s in delayed]
                if quiet:  # measured on its own (--work) for this net and M: only those figures
                    work = quiet[rule] / quiet["delayed"] if rule in quiet and "delayed" in quiet else None
                else:
                    work = (statistics.fmean(by_seed[s]["work_s_per_batch"] for s in common)
                            / statistics.fmean(delayed[s]["work_s_per_batch"] for s in common)) if common else None
                out.setdefault(net, {}).setdefault(m, {})[rule] = {
                    "n": len(seeds), "seeds": seeds, "mean": acc, "sd": sd, "gap": gap,
                    "gap_se": gap_sd / math.sqrt(len(seeds)) if len(seeds) > 1 else float("nan"),
                    "work_vs_delayed": work}
    return out


def backprop_line(results, net):
    accs = [r["final"] for k, r in sorted(results["runs"].items()) if k.startswith(f"{net}/backprop/")]
    if not accs:
        return f"{net}: no backprop run"
    mean, sd = mean_sd(accs)
    spread = " (one seed)" if len(accs) == 1 else f" +- {sd:.4f} (sd, {len(accs)} seeds)"
    return f"{net}: backprop {mean:.4f}{spread}"


def report(results, summary):
    """The tables, the goals and the total time (markdown)."""
    lines = []
    for net, by_m in summary.items():
        lines += ["", f"**{backprop_line(results, net)}**", "",
                  "| M | rule | seeds | test acc (mean +- sd) | gap to backprop, points (mean +- SE) "
                  "| work a batch / delayed's |", "| --- | --- | --- | --- | --- | --- |"]
        for m, by_rule in sorted(by_m.items()):
            for rule, r in sorted(by_rule.items(), key=lambda kv: kv[1]["gap"]):
                spread = "one seed" if r["n"] == 1 else f"{r['sd']:.4f}"
                se = "" if r["n"] == 1 else f" +- {r['gap_se']:.2f}"
                work = "" if r["work_vs_delayed"] is None else f"{r['work_vs_delayed']:.2f}"
                lines.append(f"| {m} | {rule} | {r['n']} | {r['mean']:.4f} +- {spread} | {r['gap']:+.2f}{se} "
                             f"| {work} |")
    lines += ["", "Goals (the best rule, mean of 3 seeds):"]
    for m, goal in GOALS.items():
        for net in ("verlet", "resnet"):
            rows = {r: v for r, v in summary.get(net, {}).get(m, {}).items() if v["n"] >= 3}
            if not rows:
                lines.append(f"- {net}, M = {m}: not measured on 3 seeds")
                continue
            best = min(rows, key=lambda r: rows[r]["gap"])
            b = rows[best]
            work = b["work_vs_delayed"]
            lines.append(f"- {net}, M = {m}: best {best}, gap {b['gap']:+.2f} +- {b['gap_se']:.2f} points "
                         f"(goal <= {goal}: {'met' if b['gap'] <= goal else 'not met'}); work a batch "
                         + ("not compared with delayed" if work is None else
                            f"{work:.2f}x delayed's (goal <= {1 + EXTRA_WORK_GOAL:.2f}: "
                            f"{'met' if work <= 1 + EXTRA_WORK_GOAL else 'not met'})"))
    total = sum(r["wall_s"] for r in results["runs"].values())
    lines += ["", f"{len(results['runs'])} runs, {total / 3600:.2f} hours in all "
              f"(commits {', '.join(sorted({r['commit'] for r in results['runs'].values()}))})"]
    return "\n".join(lines)


def figure(summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = list(summary)
    if not nets:
        return None
    fig, axes = plt.subplots(1, len(nets), figsize=(5 * len(nets), 4), squeeze=False)
    every = sorted({r for by_m in summary.values() for by_rule in by_m.values() for r in by_rule})
    colour = {r: f"C{k % 10}" for k, r in enumerate(every)}  # one colour a rule in every panel
    for ax, net in zip(axes[0], nets):
        rules = sorted({r for by_rule in summary[net].values() for r in by_rule})
        for rule in rules:
            pts = [(m, v[rule]) for m, v in sorted(summary[net].items()) if rule in v]
            ax.errorbar([m for m, _ in pts], [r["gap"] for _, r in pts],
                        yerr=[0 if r["n"] == 1 else r["gap_se"] for _, r in pts], marker="o", capsize=3,
                        label=rule, color=colour[rule])
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("pipeline stages M (the delay of M busy devices)")
        ax.set_ylabel("backprop - rule, test accuracy (points)")
        ax.set_title(net)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def csv(value, kind=str):
    return [kind(v) for v in value.split(",") if v]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--phase", choices=PHASES, help="the plan's settings (flags override them)")
    parser.add_argument("--nets", help=f"of {', '.join(NETS)}")
    parser.add_argument("--rules", help=f"of {', '.join(RULES)} (backprop always runs)")
    parser.add_argument("--stages", help="pipeline depths M, e.g. 2,4,8")
    parser.add_argument("--seeds", help="e.g. 0,1,2")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--samples", type=int, default=0, help="training images (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "data" / "rules.json"))
    parser.add_argument("--report", action="store_true", help="only the tables and the figure")
    parser.add_argument("--work", action="store_true",
                        help="only each rule's work a batch (40 batches, 3 interleaved rounds) at --stages, kept "
                             "in the JSON: the report's work column, measured on a quiet machine")
    args = parser.parse_args()
    preset = PHASES.get(args.phase, PHASES["screen"])
    for name in ("nets", "rules", "stages", "seeds"):
        setattr(args, name, getattr(args, name) or preset[name])
    try:
        args.nets, args.rules = csv(args.nets), csv(args.rules)
        args.stages, args.seeds = csv(args.stages, int), csv(args.seeds, int)
    except ValueError as e:
        parser.error(f"--stages and --seeds take integers: {e}")
    for bad, valid, what in ((set(args.nets) - set(NETS), NETS, "--nets"), (set(args.rules) - set(RULES), RULES,
                                                                            "--rules")):
        if bad:
            parser.error(f"{what}: unknown {', '.join(sorted(bad))}; valid: {', '.join(valid)}")
    if any(m < 2 for m in args.stages):
        parser.error("--stages: a pipeline has at least 2 stages")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    out = Path(args.out)
    if args.work:
        results = json.loads(out.read_text()) if out.exists() else {"runs": {}}
        data = datasets.load("FASHION")
        work = work_per_batch(args.nets, sorted(set(args.rules) | {"delayed"}), args.stages, data)
        for net, by_m in work.items():
            for m, by_rule in by_m.items():
                results.setdefault("work", {}).setdefault(net, {}).setdefault(m, {}).update(by_rule)
        results["work_commit"] = commit()
        write_json(out, results)
    results = json.loads(out.read_text()) if args.report or args.work else run_all(args, out)
    summary = summarise(results)
    print(report(results, summary))
    path = figure(summary, out.with_name("rules_depth.png"))
    if path:
        print(f"figure: {path}")


if __name__ == "__main__":
    main()
