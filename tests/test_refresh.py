"""benchmarks/refresh.py: a table is stale when a file it depends on changed after the
commit its section names."""
import importlib.util
import sys

from tests.helpers import ROOT

spec = importlib.util.spec_from_file_location("refresh", ROOT / "benchmarks" / "refresh.py")
refresh = sys.modules.setdefault("refresh", importlib.util.module_from_spec(spec))
spec.loader.exec_module(refresh)

DOC = """# Results

## A table

Command: `python x.py`. Commit {commit}, a machine, a date (since commit 0000000 ...).

| a | b |
| --- | --- |

### A part of it

## Benchmarks

Models: commit {other}, machines.

## Models

| c |
"""


def test_a_table_is_stale_when_a_file_it_depends_on_changed_after_its_commit():
    head = refresh.git("rev-parse", "--short", "HEAD")
    # the commit before the last one that changed models/training.py
    older = refresh.git("log", "--format=%h", "-n", "2", "--", "models/training.py").split()[-1]
    doc = DOC.format(commit=head, other=older)
    mine = refresh.Table("mine", "## A table", (), ("models/training.py",))
    inherited = refresh.Table("models", "## Models", (), ("models/training.py",), commit_heading="## Benchmarks")
    assert refresh.measured_at(mine, doc) == head and refresh.measured_at(inherited, doc) == older
    found = refresh.stale((mine, inherited), text=doc)
    assert [t.name for t, _, _ in found] == ["models"]  # measured at HEAD: current
    (_, commit, changed) = found[0]
    assert commit == older and changed  # the commits since, which touched models/training.py


def test_every_table_names_its_commit_in_the_results():
    text = refresh.RESULTS_MD.read_text()
    for table in refresh.TABLES:
        assert len(refresh.measured_at(table, text)) >= 7, table.name


def test_the_stale_tables_are_marked_under_their_headings_once():
    head = refresh.git("rev-parse", "--short", "HEAD")
    older = refresh.git("log", "--format=%h", "-n", "2", "--", "models/training.py").split()[-1]
    doc = DOC.format(commit=head, other=older)
    tables = (refresh.Table("mine", "## A table", (), ("models/training.py",)),
              refresh.Table("models", "## Models", (), ("models/training.py",), commit_heading="## Benchmarks"))
    once = refresh.marked(doc, refresh.stale(tables, text=doc), tables)
    twice = refresh.marked(once, refresh.stale(tables, text=once), tables)
    assert once == twice and once.count(refresh.STALE_MARK) == 1
    lines = once.splitlines()
    k = lines.index("## Models")
    assert lines[k + 1] == "" and lines[k + 2].startswith(f"{refresh.STALE_MARK} measured at {older}")
    assert refresh.marked(once, [], tables) == doc  # fresh again: the mark goes


def test_a_table_is_written_from_its_runs_outputs_into_its_section(tmp_path):
    """--write: the block under the heading (the Stale line dropped) holds the commands, the
    commit, machine and date and the table rendered from the RESULT lines; a second write
    replaces the block, the prose around it stays."""
    import json

    folder = tmp_path / "conv-abc1234"
    folder.mkdir()
    runs = {}
    for k, (arch, acc) in enumerate((("resnet", 0.9215), ("verlet", 0.9219))):
        result = {"architecture": arch, "test_acc": acc, "train_acc": 0.97, "train_time_s": 300.0 + k}
        (folder / f"{k}.out").write_text(f"epoch    1  loss 0.4  train acc 0.8  test acc 0.8  24.50s\n"
                                         f"epoch    2  loss 0.3  train acc 0.9  test acc 0.9  35.20s\n"
                                         f"RESULT {json.dumps(result)}\n")
        runs[str(k)] = {"command": f"python scripts/{arch}.py", "seconds": 60.0, "date": "2026-12-02",
                        "machine": "2-core CPU"}
    (folder / "meta.json").write_text(json.dumps({"commit": "abc1234", "runs": runs}))
    table = refresh.Table("conv", "## Conv", ((), ()), (), render=refresh.render_conv)
    doc = "# Results\n\n## Conv\n\n> **Stale:** measured at 0000000; ...\n\nWhat it means.\n\n## Next\n"
    first = refresh.written(doc, table, refresh.block(table, refresh.Outputs(folder)))
    assert "Stale" not in first and first.index("<!-- generated: conv") < first.index("What it means.")
    assert "| verlet | 0.9219 | 0.970 | 301 s | 24-35 s |" in first
    assert "Commit abc1234, 2-core CPU, 2026-12-02; 2 minutes in all." in first
    assert refresh.measured_at(table, first) == "abc1234"
    again = refresh.written(first, table, refresh.block(table, refresh.Outputs(folder)))
    assert again == first and again.count("<!-- generated: conv") == 1
