"""Which tables of docs/RESULTS.md are stale, and the commands that measure them again.

Each table is a section of docs/RESULTS.md that names the commit it was measured at
("Commit abc1234"); TABLES lists, per table, its section, the commands that measure it
and the files its figures depend on.  A table is stale when one of those files changed
after its commit (``git log <commit>..HEAD -- <files>``).

    python benchmarks/refresh.py --check        # the stale tables and the commits that made them so
    python benchmarks/refresh.py --list         # every table, its commit and its commands
    python benchmarks/refresh.py --mark         # a "Stale" line under each stale table's heading
    python benchmarks/refresh.py --only stability [--only conv]   # run those tables' commands

A run writes each command's output to benchmarks/results/refresh/<table>-<commit>/ and
skips a command whose output for the current commit is already there, so that the
long tables (bench_sg, the races) can be measured in pieces across sessions.  The
tables in docs/RESULTS.md are then edited from those outputs; --check is a report, not a
test.
"""
from __future__ import annotations

import argparse
import re
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


@dataclass(frozen=True)
class Table:
    name: str
    heading: str  # the start of its section's heading in docs/RESULTS.md
    commands: tuple  # each a list of arguments, run from the repository root
    depends: tuple  # files and folders whose changes make the table stale
    commit_heading: str = ""  # a section above that names the commit, when its own does not


TABLES = (
    Table("toy", "## Toy sets",
          tuple(["python", f"scripts/{s}.py", "--seed", str(k)] for s in ("ellipse", "swiss") for k in range(6)),
          ("scripts/ellipse.py", "scripts/swiss.py", "datasets/toy.py", "harness/fit_experiments.py", *TRAINING)),
    Table("race", "## The race",
          (["python", "scripts/race.py", "--train-samples", "12000"],
           ["python", "scripts/race.py", "--choice", "resnet", "--train-samples", "12000"],
           ["python", "scripts/race.py", "--conv", "1", "--n", "6", "--train-samples", "12000"]),
          ("harness/race.py", "models/recording.py", "pvd/", *PIPELINE, *TRAINING)),
    Table("race-conv-seeds", "#### Three seeds",
          (["python", "scripts/race.py", "--conv", "1", "--n", "6", "--train-samples", "12000", "--trainers",
            "bp-all,ddp,pipeline-local,multilevel-local", "--seeds", "0,1,2"],),
          ("harness/race.py", "models/recording.py", *PIPELINE, *TRAINING)),
    Table("conv", "## Convolutional networks",
          tuple(["python", f"scripts/{s}Test.py", "--dataset", "FASHION", "--conv", "1"]
                for s in ("res", "verlet", "anti", "leap")),
          ("scripts/resTest.py", "scripts/verletTest.py", "scripts/antiTest.py", "scripts/leapTest.py",
           "harness/fit_experiments.py", *TRAINING)),
    Table("stability", "## Stability", (["python", "scripts/stability.py"],),
          ("scripts/stability.py", "models/stability.py", "models/base.py", "models/architectures.py",
           "models/training.py")),
    Table("checkpoints", "## Checkpoints and restarts", (["python", "benchmarks/bench_checkpoints.py"],),
          ("benchmarks/bench_checkpoints.py", "models/checkpoint.py", "datasets/files.py", "harness/resume.py",
           "harness/launch.py", "synthetic/distributed.py", "synthetic/stage.py", "synthetic/rules.py")),
    Table("bench_models", "## Models and data feeding", (["python", "benchmarks/bench_models.py"],),
          ("benchmarks/bench_models.py", "datasets/vision.py", *TRAINING), commit_heading="## Benchmarks"),
    Table("bench_pvd", "## PVD", (["python", "benchmarks/bench_pvd.py"],),
          ("benchmarks/bench_pvd.py", "pvd/", *TRAINING), commit_heading="## Benchmarks"),
    Table("bench_sg", "## The pipeline and its rules", (["python", "benchmarks/bench_sg.py"],),
          ("benchmarks/bench_sg.py", "harness/race.py", *PIPELINE, *TRAINING)),
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


def run(table, head):
    """Run the table's commands; each one's output kept, and skipped when already there."""
    folder = OUT / f"{table.name}-{head}"
    folder.mkdir(parents=True, exist_ok=True)
    for k, command in enumerate(table.commands):
        done = folder / f"{k}.out"
        if done.is_file():
            print(f"{table.name} [{k + 1}/{len(table.commands)}] done before: {done}")
            continue
        print(f"{table.name} [{k + 1}/{len(table.commands)}] {' '.join(command)}", flush=True)
        proc = subprocess.run([sys.executable if command[0] == "python" else command[0], *command[1:]], cwd=ROOT,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            (folder / f"{k}.failed").write_text(proc.stdout + proc.stderr)
            raise SystemExit(f"error: {' '.join(command)} failed (exit {proc.returncode}); see {folder}/{k}.failed")
        tmp = done.with_suffix(".tmp")
        tmp.write_text(proc.stdout)
        tmp.replace(done)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="list the stale tables and why")
    parser.add_argument("--list", action="store_true", help="every table, its commit and its commands")
    parser.add_argument("--mark", action="store_true", help="mark the stale tables in docs/RESULTS.md")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run these tables only")
    args = parser.parse_args(argv)
    names = {t.name: t for t in TABLES}
    unknown = [n for n in args.only if n not in names]
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
