"""Which tables of docs/RESULTS.md are stale, and the commands that measure them again.

Each table is a section of docs/RESULTS.md that names the commit it was measured at
("Commit abc1234"); TABLES lists, per table, its section, the commands that measure it
and the files its figures depend on.  A table is stale when one of those files changed
after its commit (``git log <commit>..HEAD -- <files>``).

    python benchmarks/refresh.py --check        # the stale tables and the commits that made them so
    python benchmarks/refresh.py --list         # every table, its commit and its commands
    python benchmarks/refresh.py --mark         # a "Stale" line under each stale table's heading
    python benchmarks/refresh.py --only stability [--only conv]   # run those tables' commands

A run writes each command's output to benchmarks/results/refresh/<table>-<commit>/
(k.out, the benchmark's JSON as k.json, and meta.json: the commit, machine, date and
seconds of each command) and skips a command whose output for the current commit is
already there, so that the long tables (bench_sg, the races) can be measured in pieces
across sessions.

    python benchmarks/refresh.py --write conv   # the table from its latest complete run

``--write`` replaces the table's generated block in docs/RESULTS.md (between its
``<!-- generated: NAME -->`` and ``<!-- end: NAME -->`` lines, placed under its heading
when there is none yet): the commands, the commit, machine and date, and the table,
rendered from the outputs by the table's ``render``.  What the figures mean stays in
the prose around it.  --check is a report, not a test.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import time
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "docs" / "RESULTS.md"
OUT = ROOT / "benchmarks" / "results" / "refresh"

TRAINING = ["models/base.py", "models/architectures.py", "models/units.py", "models/training.py",
            "datasets/batching.py", "harness/launch.py"]
PIPELINE = ["synthetic/", "harness/pipeline_experiments.py"]


# ---- the tables, rendered from a run's outputs -----------------------------------------

class Outputs:
    """A table's run folder: each command's output text, RESULT and benchmark JSON, and meta.json."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.count = len(self.meta["runs"])
        self.text = [(self.folder / f"{k}.out").read_text() for k in range(self.count)]

    def result(self, k):
        line = next(line for line in reversed(self.text[k].splitlines()) if line.startswith("RESULT "))
        return json.loads(line[len("RESULT "):])

    def json(self, k=0):
        return json.loads((self.folder / f"{k}.json").read_text())

    def epoch_seconds(self, k):
        """The seconds of each epoch from a training script's progress lines."""
        return [float(m) for m in re.findall(r"^epoch\s+\d+\s+loss.*?\s([0-9.]+)s$", self.text[k], re.M)]


def _rows(header, rows):
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def render_toy(out):
    rows = []
    for k in range(out.count):
        r = out.result(k)
        seed = re.search(r"--seed (\d+)", out.meta["runs"][str(k)]["command"]).group(1)
        rows.append((f"{r['dataset']}, {seed}", *(f"{x['test_acc']:.4f}" for x in r["results"].values()),
                     f"{r['train_time_s']:.0f} s"))
    archs = list(out.result(0)["results"])
    return _rows(("set, seed", *archs, "training time (4 networks)"), rows)


def render_conv(out):
    rows = []
    for k in range(out.count):
        r, epochs = out.result(k), out.epoch_seconds(k)
        digits = 0 if epochs and max(epochs) >= 10 else 1
        per_epoch = f"{min(epochs):.{digits}f}-{max(epochs):.{digits}f} s" if epochs else ""
        rows.append((r["architecture"], f"{r['test_acc']:.4f}", f"{r['train_acc']:.3f}", f"{r['train_time_s']:.0f} s",
                     per_epoch))
    return _rows(("network", "test accuracy", "train accuracy", "training time", "per epoch"), rows)


def render_race(out):
    """Each race: per trainer, time per epoch, final test accuracy (mean, range over the
    seeds), time to the target per seed and on the mean, and against backprop on every core."""
    tables = []
    for k in range(out.count):
        r = out.result(k)
        seeds = len(r["targets"])
        rows = []
        for t, s in r["summary"].items():
            acc = f"{s['final_test_acc']:.4f}" + (f" ({s['final_test_acc_min']:.4f}-{s['final_test_acc_max']:.4f})"
                                                   if seeds > 1 else "")
            times = " / ".join("never" if x is None else f"{x:.1f} s" for x in s["time_to_target_per_seed"])
            mean = "-" if s["time_to_target_s"] is None else f"{s['time_to_target_s']:.1f} s" + (
                f" ({s['reached']} of {seeds})" if s["reached"] < seeds else "")
            ratio = "-" if s["speedup_vs_all_cores"] is None else f"{s['speedup_vs_all_cores']:.2f}"
            rows.append((t, f"{s['time_per_epoch_s']:.2f}", acc, times, mean, ratio))
        targets = ", ".join(f"{x:.4f}" for x in r["targets"])
        tables.append(f"{r['architecture']} on {r['dataset']}, target {targets}; first: {r['winner'] or 'none'}"
                      f" ({seeds} seed{'s' if seeds > 1 else ''})\n\n" + _rows(
                          ("trainer", "s/epoch", "final test acc", "to target, per seed", "mean", "vs bp all"), rows))
    return "\n\n".join(tables)


def render_stability(out):
    r = out.result(0)
    depths, res = [str(d) for d in r["depths"]], r["results"]
    archs = list(res)
    lo, hi = depths[0], depths[-1]

    def pair(a, key, fmt):
        return " / ".join(format(res[a][f"{key}_{when}"][d], fmt) for when, d in (("init", lo), ("trained", hi)))

    rows = [
        [f"end-to-end growth at N = {lo} / {hi}, at initialisation"]
        + [f"{res[a]['growth_init'][lo]:.2f} / {res[a]['growth_init'][hi]:.2f}" for a in archs],
        ["the same after training"]
        + [f"{res[a]['growth_trained'][lo]:.2f} / {res[a]['growth_trained'][hi]:.2f}" for a in archs],
        [f"largest singular value of dY_N/dY_0, N = {hi}, init / trained"]
        + [f"{res[a]['sigma_init'][hi]:.2f} / {res[a]['sigma_trained'][hi]:.2f}" for a in archs],
        ["largest step-map eigenvalue modulus, init / trained"]
        + [f"{res[a]['max_abs_step_eigenvalue_init']:.4f} / {res[a]['max_abs_step_eigenvalue']:.4f}" for a in archs],
        [f"test accuracy at N = {' / '.join(depths)}"]
        + [" / ".join(f"{res[a]['accuracy_by_depth'][d]:.3f}" for d in depths) for a in archs],
    ]
    schemes = list(next(iter(r["phase_plane"].values())))
    phase = [[label] + [f"{growth[s]:.3f}" for s in schemes] for label, growth in r["phase_plane"].items()]
    return _rows(["", *archs], rows) + "\n\nPhase plane (growth of the mean pairwise distance):\n\n" + \
        _rows(["K", *schemes], phase)


def render_checkpoints(out):
    b = out.json()
    c, r = b["checkpoint"], b["restart"]
    f, u = r["faulted"], r["unfaulted"]
    return _rows(("what", "figure"), [
        (f"one checkpoint of the training state ({c['checkpoint_mb']:.1f} MB), `models.checkpoint.save`",
         f"{c['checkpoint_s']:.3f} s against {c['epoch_s']:.1f} s for one epoch "
         f"({100 * c['checkpoint_s'] / c['epoch_s']:.1f} %)"),
        ("a stage killed (SIGKILL), `--max-restarts 1`: from the kill to the stages resuming",
         f"{r['kill_to_resume_s']:.2f} s"),
        ("the restarted run against an unfaulted one: test accuracy, train accuracy, training time",
         f"{f['test_acc']:.4f} / {u['test_acc']:.4f}; {f['train_acc']:.5f} / {u['train_acc']:.5f}; "
         f"{f['train_time_s']:.1f} s / {u['train_time_s']:.1f} s"),
    ])


def render_models(out):
    b = out.json()
    rows = [(arch, f"{t['ours_samples_per_s']:.0f} / {t['minimal_samples_per_s']:.0f}", f"{t['ratio']:.3f}",
             f"{t['ratio_quartiles'][0]:.2f}-{t['ratio_quartiles'][1]:.2f}") for arch, t in b["throughput"].items()]
    f = b["feeding"]
    return (_rows(("model", "ours / minimal (samples/s)", "ratio (median of the rounds)", "quartiles"), rows)
            + f"\n\n(b) one epoch of {f['samples']} images ({f['source']}): in-memory batches {f['ours_s']:.3f} s, "
              f"torchvision Dataset + DataLoader {f['dataloader_s']:.2f} s: **{f['ratio']:.0f}x**.")


def render_pvd(out):
    b = out.json()
    rounds = b["rounds"]

    def spread(key):
        values = [x[key] for x in rounds]
        return f"{min(values):.2f}-{max(values):.2f} s"
    return _rows(("comparison", "figure"), [
        (f"(a) 2 processes x 1 thread ({spread('parallel_s')}) against the serial mode with 1 thread "
         f"({spread('serial_1_thread_s')})", f"speed-up **{b['a_speedup_same_threads']:.2f}** (limit 2.0)"),
        ("(a) the same counting the processes' start-up", f"{b['a_speedup_with_startup']:.2f}"),
        (f"(a') against the serial mode with both cores ({spread('serial_all_cores_s')})",
         f"speed-up **{b['a_prime_speedup_serial_all_cores']:.2f}**"),
        ("serial mode's theoretical parallel time", spread("serial_theoretical_s")),
        (f"(b) time to the target: PVD, 2 processes ({b['b_pvd_iterations']} iterations) "
         f"{b['b_pvd_to_target_s']:.2f} s; plain Adam, one process ({b['b_adam_epochs']} epochs) "
         f"{b['b_adam_to_target_s']:.2f} s",
         f"Adam / PVD = **{b['b_ratio_adam_over_pvd']:.2f}**"),
        ("the 2-process run's parameters equal the serial run's", str(b["parallel_equals_serial"]).lower()),
    ])


@dataclass(frozen=True)
class Table:
    name: str
    heading: str  # the start of its section's heading in docs/RESULTS.md
    commands: tuple  # each a list of arguments, run from the repository root
    depends: tuple  # files and folders whose changes make the table stale
    commit_heading: str = ""  # a section above that names the commit, when its own does not
    render: object = None  # render(outputs) -> the markdown table (``Outputs``); None: edited by hand
    writes: str = ""  # the JSON a benchmark writes under benchmarks/results/, kept beside its output


TABLES = (
    Table("toy", "## Toy sets",
          tuple(["python", f"scripts/{s}.py", "--seed", str(k)] for s in ("ellipse", "swiss") for k in range(6)),
          ("scripts/ellipse.py", "scripts/swiss.py", "datasets/toy.py", "harness/fit_experiments.py", *TRAINING),
          render=render_toy),
    Table("race", "## The race",
          (["python", "scripts/race.py", "--train-samples", "12000"],
           ["python", "scripts/race.py", "--choice", "resnet", "--train-samples", "12000"],
           ["python", "scripts/race.py", "--conv", "1", "--n", "6", "--train-samples", "12000"]),
          ("harness/race.py", "models/recording.py", "pvd/", *PIPELINE, *TRAINING), render=render_race),
    Table("race-conv-seeds", "#### Three seeds",
          (["python", "scripts/race.py", "--conv", "1", "--n", "6", "--train-samples", "12000", "--trainers",
            "bp-all,ddp,pipeline-local,multilevel-local", "--seeds", "0,1,2"],),
          ("harness/race.py", "models/recording.py", *PIPELINE, *TRAINING), render=render_race),
    Table("conv", "## Convolutional networks",
          tuple(["python", f"scripts/{s}Test.py", "--dataset", "FASHION", "--conv", "1"]
                for s in ("res", "verlet", "anti", "leap")),
          ("scripts/resTest.py", "scripts/verletTest.py", "scripts/antiTest.py", "scripts/leapTest.py",
           "harness/fit_experiments.py", "harness/experiment.py", *TRAINING), render=render_conv),
    Table("conv-small", "### A small training set",
          tuple(["python", f"scripts/{s}Test.py", "--dataset", "FASHION", "--conv", "1", "--train-samples", "4000"]
                for s in ("res", "verlet", "anti", "leap")),
          ("scripts/resTest.py", "scripts/verletTest.py", "scripts/antiTest.py", "scripts/leapTest.py",
           "harness/fit_experiments.py", "harness/experiment.py", *TRAINING), render=render_conv),
    Table("stability", "## Stability", (["python", "scripts/stability.py"],),
          ("scripts/stability.py", "harness/stability_experiments.py", "models/stability.py", "models/base.py",
           "models/architectures.py", "models/training.py"), render=render_stability),
    Table("checkpoints", "## Checkpoints and restarts", (["python", "benchmarks/bench_checkpoints.py"],),
          ("benchmarks/bench_checkpoints.py", "models/checkpoint.py", "datasets/files.py", "harness/resume.py",
           "harness/launch.py", "synthetic/distributed.py", "synthetic/stage.py", "synthetic/rules.py"),
          render=render_checkpoints, writes="bench_checkpoints.json"),
    Table("bench_models", "## Models and data feeding", (["python", "benchmarks/bench_models.py"],),
          ("benchmarks/bench_models.py", "datasets/vision.py", *TRAINING), commit_heading="## Benchmarks",
          render=render_models, writes="models.json"),
    Table("bench_pvd", "## PVD", (["python", "benchmarks/bench_pvd.py"],),
          ("benchmarks/bench_pvd.py", "pvd/", "harness/pvd_experiments.py", *TRAINING),
          commit_heading="## Benchmarks", render=render_pvd, writes="pvd.json"),
    Table("bench_sg", "## The pipeline and its rules", (["python", "benchmarks/bench_sg.py"],),
          ("benchmarks/bench_sg.py", "harness/race.py", *PIPELINE, *TRAINING)),
    Table("rules", "## Rules at depth", (["python", "benchmarks/bench_rules.py", "--phase", "screen"],
                                         ["python", "benchmarks/bench_rules.py", "--work", "--stages", "4"]),
          ("benchmarks/bench_rules.py", *PIPELINE, *TRAINING)),
    Table("forecast", "## The forecast on M devices",
          (["python", "scripts/forecast.py", "--validate", "1"],
           ["python", "scripts/forecast.py", "--train-samples", "12000", "--epochs", "5", "--trainers",
            "bp-all,ddp,gpipe,1f1b,pipeline-delayed,pipeline-local"],
           ["python", "scripts/forecast.py", "--conv", "1", "--n", "12", "--devices", "1,2,4,8", "--train-samples",
            "12000", "--epochs", "5", "--trainers", "bp-all,ddp,gpipe,1f1b,pipeline-delayed,pipeline-local"]),
          ("scripts/forecast.py", "harness/forecast.py", "harness/simulate.py", "harness/sleep_workload.py",
           "harness/race.py", *PIPELINE, *TRAINING)),
)

_COMMIT = re.compile(r"\b[Cc]ommit ([0-9a-f]{7,40})\b")


def sections(text):
    """{heading line: its text up to the next heading of the same or a higher level}."""
    lines = text.splitlines()
    found = {}
    for i, line in enumerate(lines):
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("#")
                        and len(lines[j]) - len(lines[j].lstrip("#")) <= level), len(lines))
            found[line] = "\n".join(lines[i:end])
    return found


def measured_at(table, text):
    """The commit a table names in the first lines of its section (or of the section
    named by ``commit_heading``): the first "Commit abc1234" before its first table or
    subsection."""
    for heading in (table.heading, table.commit_heading):
        if not heading:
            continue
        body = next((b for h, b in sections(text).items() if h.startswith(heading)), None)
        if body is None:
            raise SystemExit(f"error: docs/RESULTS.md has no section {heading!r} (table {table.name})")
        head = re.split(r"\n(?:\||#)", body.split("\n", 1)[1] if "\n" in body else "", maxsplit=1)[0]
        match = _COMMIT.search(head) or _COMMIT.search(body)
        if match:
            return match.group(1)
    raise SystemExit(f"error: the section of table {table.name} names no commit")


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def changes_since(commit, paths):
    """The commits after ``commit`` that changed any of ``paths``, oldest first."""
    return git("log", "--reverse", "--format=%h %s", f"{commit}..HEAD", "--", *paths).splitlines()


def stale(tables=TABLES, text=None):
    """[(table, its commit, [the commits that changed what it depends on])] of the stale tables."""
    text = RESULTS_MD.read_text() if text is None else text
    out = []
    for table in tables:
        commit = measured_at(table, text)
        changed = changes_since(commit, table.depends)
        if changed:
            out.append((table, commit, changed))
    return out


STALE_MARK = "> **Stale:**"


def marked(text, found, tables=TABLES):
    """``text`` with a line under each table's heading saying whether it is stale: the
    commit that first changed what it depends on (earlier marks replaced)."""
    why = {t.heading: (commit, changed[0].split()[0], len(changed)) for t, commit, changed in found}
    lines, out = text.splitlines(), []
    k = 0
    while k < len(lines):
        line = lines[k]
        out.append(line)
        k += 1
        table = next((t for t in tables if line.startswith(t.heading)), None) if line.startswith("#") else None
        if table is None:
            continue
        if k + 1 < len(lines) and lines[k] == "" and lines[k + 1].startswith(STALE_MARK):
            k += 2  # the earlier mark and its blank line
        if table.heading in why:
            commit, first, count = why[table.heading]
            out += ["", f"{STALE_MARK} measured at {commit}; {count} later commits changed the code it depends on, "
                        f"the first {first} (`python benchmarks/refresh.py --check`)."]
    return "\n".join(out) + "\n"


def machine():
    """The machine in words: CPU model, cores, memory, torch and Python."""
    cpu = platform.processor() or "unknown CPU"
    memory = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
        memory = f", {round(kib / 2 ** 20)} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    import torch

    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{os.cpu_count()}-core {cpu}{memory}{gpu}, torch {torch.__version__.split('+')[0]}, "
            f"Python {platform.python_version()}")


def run(table, head):
    """Run the table's commands; each one's output kept, and skipped when already there."""
    folder = OUT / f"{table.name}-{head}"
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"commit": head, "runs": {}}
    for k, command in enumerate(table.commands):
        done = folder / f"{k}.out"
        if done.is_file():
            print(f"{table.name} [{k + 1}/{len(table.commands)}] done before: {done}")
            continue
        print(f"{table.name} [{k + 1}/{len(table.commands)}] {' '.join(command)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable if command[0] == "python" else command[0], *command[1:]], cwd=ROOT,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            (folder / f"{k}.failed").write_text(proc.stdout + proc.stderr)
            raise SystemExit(f"error: {' '.join(command)} failed (exit {proc.returncode}); see {folder}/{k}.failed")
        if table.writes:
            _write(folder / f"{k}.json", (ROOT / "benchmarks" / "results" / table.writes).read_text())
        meta["runs"][str(k)] = {"command": " ".join(command), "seconds": round(time.perf_counter() - t0, 1),
                                "date": _dt.date.today().isoformat(), "machine": machine()}
        _write(meta_path, json.dumps(meta, indent=1))
        _write(done, proc.stdout)


def _write(path, text):
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def latest_run(table):
    """The folder of the table's most recent complete run (every command's output there)."""
    done = [f for f in OUT.glob(f"{table.name}-*") if re.fullmatch(rf"{re.escape(table.name)}-[0-9a-f]{{7,40}}", f.name)
            and (f / "meta.json").is_file()
            and len(json.loads((f / "meta.json").read_text())["runs"]) == len(table.commands)]
    if not done:
        raise SystemExit(f"error: table {table.name} has no complete run under {OUT} "
                         f"(python benchmarks/refresh.py --only {table.name})")
    return max(done, key=lambda f: (f / "meta.json").stat().st_mtime)


def block(table, out):
    """The generated block of a table: its commands, commit, machine and date, and the table."""
    runs = out.meta["runs"].values()
    dates = sorted({r["date"] for r in runs})
    machines = sorted({r["machine"] for r in runs})
    seconds = sum(r["seconds"] for r in runs)
    commands = "; ".join(f"`{r['command']}`" for r in runs)
    return "\n".join([
        f"<!-- generated: {table.name} (python benchmarks/refresh.py --write {table.name}) -->",
        f"Command{'s' if len(runs) > 1 else ''}: {commands}. Commit {out.meta['commit']}, {'; '.join(machines)}, "
        f"{' to '.join(dates[::max(len(dates) - 1, 1)])}; "
        f"{f'{seconds:.0f} s' if seconds < 120 else f'{seconds / 60:.0f} minutes'} in all.",
        "", table.render(out), f"<!-- end: {table.name} -->"])


def written(text, table, generated):
    """``text`` with the table's generated block replaced (or put under its heading, with
    the heading's Stale line dropped)."""
    start, end = f"<!-- generated: {table.name} ", f"<!-- end: {table.name} -->"
    if start in text:
        a = text.index(start)
        b = text.index(end, a) + len(end)
        return text[:a] + generated + text[b:]
    lines = text.splitlines()
    k = next(i for i, line in enumerate(lines) if line.startswith(table.heading))
    rest = lines[k + 1:]
    if len(rest) > 1 and rest[0] == "" and rest[1].startswith(STALE_MARK):
        rest = rest[2:]
    return "\n".join(lines[:k + 1] + ["", generated] + rest) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="list the stale tables and why")
    parser.add_argument("--list", action="store_true", help="every table, its commit and its commands")
    parser.add_argument("--mark", action="store_true", help="mark the stale tables in docs/RESULTS.md")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run these tables only")
    parser.add_argument("--write", action="append", default=[], metavar="NAME",
                        help="write these tables into docs/RESULTS.md from their latest complete runs")
    args = parser.parse_args(argv)
    names = {t.name: t for t in TABLES}
    unknown = [n for n in args.only + args.write if n not in names]
    if unknown:
        print(f"error: unknown table {unknown[0]!r}; valid: {', '.join(names)}", file=sys.stderr)
        sys.exit(2)
    text = RESULTS_MD.read_text()
    if args.list:
        for t in TABLES:
            print(f"{t.name:<16} commit {measured_at(t, text)}  {t.heading}")
            for c in t.commands:
                print(f"{'':<16} {' '.join(c)}")
        return
    if args.write:
        for name in args.write:
            table = names[name]
            if table.render is None:
                print(f"error: table {name} is edited by hand (it has no render)", file=sys.stderr)
                sys.exit(2)
            text = written(text, table, block(table, Outputs(latest_run(table))))
        RESULTS_MD.write_text(text)
        return
    if args.mark:
        RESULTS_MD.write_text(marked(text, stale(text=text)))
        return
    if args.check:
        found = stale(text=text)
        for table, commit, changed in found:
            first = changed[0] if len(changed[0]) <= 80 else changed[0][:77] + "..."
            print(f"{table.name:<16} measured at {commit}; {len(changed)} later commits changed what it depends on, "
                  f"the first: {first}")
        fresh = [t.name for t in TABLES if t.name not in {s[0].name for s in found}]
        print(f"{len(found)} of {len(TABLES)} tables stale; current: {', '.join(fresh) or 'none'}")
        return
    head = git("rev-parse", "--short", "HEAD")
    for table in [names[n] for n in args.only] or TABLES:
        run(table, head)


if __name__ == "__main__":
    main()
