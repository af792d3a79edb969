"""Checkpoints, resume and restarts: a stopped run continues to the uninterrupted result."""
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest
import torch

from models import checkpoint
from tests.helpers import ROOT, leftover_processes, refused, result_of, run_main, run_script


def same_tensors(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---- the checkpoint files ---------------------------------------------------------------

def test_a_checkpoint_keeps_the_previous_one_and_falls_back_to_it(tmp_path):
    checkpoint.save(tmp_path, {"epoch": 1, "w": torch.ones(3)})
    checkpoint.save(tmp_path, {"epoch": 2, "w": torch.zeros(3)})
    state, path = checkpoint.load(tmp_path)
    assert state["epoch"] == 2 and path.name == "checkpoint.pt"
    current = tmp_path / "checkpoint.pt"
    current.write_bytes(current.read_bytes()[:40])  # truncated, as by a kill while writing
    state, path = checkpoint.load(tmp_path)
    assert state["epoch"] == 1 and path.name == "checkpoint.prev.pt" and torch.equal(state["w"], torch.ones(3))
    (tmp_path / "checkpoint.prev.pt").write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint"):
        checkpoint.load(tmp_path)
    assert checkpoint.load(tmp_path / "nothing-here") == (None, None)
    assert not list(tmp_path.glob("*.tmp"))


class NotPlainData:
    pass


def test_a_checkpoint_holding_other_objects_is_refused(tmp_path):
    torch.save({"epoch": 1, "thing": NotPlainData()}, tmp_path / "checkpoint.pt")
    with pytest.raises(checkpoint.CheckpointError, match="objects other than tensors and plain values"):
        checkpoint.load(tmp_path)


# ---- resume: the single-process trainers, bit for bit ----------------------------------

def _stop_and_resume(tmp_path, script, first, full, grow, *extra):
    """Run ``first`` epochs, resume to ``full``; and ``full`` in one go (each in this
    process, as a fresh process would run it). Returns both results."""
    part, _ = run_main(script, *extra, grow, first, "--results-dir", tmp_path / "a")
    res, printed = run_main(script, "--resume", part["run_dir"], grow, full)
    assert res["run_dir"] == part["run_dir"] and "resuming" in printed
    whole, _ = run_main(script, *extra, grow, full, "--results-dir", tmp_path / "b")
    return res, whole


@pytest.mark.slow
def test_fit_resumed_after_epoch_2_ends_bit_for_bit_as_the_uninterrupted_run(tmp_path):
    res, whole = _stop_and_resume(tmp_path, "verletTest", 2, 4, "--epochs", "--dataset", "DIGITS",
                                  "--lr-schedule", "halve:1", "--n", 2)
    same_tensors(torch.load(f"{res['run_dir']}/model.pt"), torch.load(f"{whole['run_dir']}/model.pt"))
    assert res["test_acc"] == whole["test_acc"]
    history = json.loads(open(f"{res['run_dir']}/metrics.json").read())["history"]
    assert history["epoch"] == [1, 2, 3, 4]


@pytest.mark.slow
def test_pvd_serial_resumed_ends_bit_for_bit(tmp_path):
    res, whole = _stop_and_resume(tmp_path, "PVD", 2, 4, "--iterations", "--parallel", 0, "--steps", 10,
                                  "--target-acc", 2)
    same_tensors(torch.load(f"{res['run_dir']}/model.pt"), torch.load(f"{whole['run_dir']}/model.pt"))
    assert res["iterations"] == 4 and res["test_acc"] == whole["test_acc"]


@pytest.mark.slow
def test_serial_synthetic_gradients_resumed_end_bit_for_bit(tmp_path):
    res, whole = _stop_and_resume(tmp_path, "run_standard_sg", 1, 3, "--epochs", "--n", 2)
    a = checkpoint.load(res["run_dir"])[0]["model"]
    b = checkpoint.load(whole["run_dir"])[0]["model"]
    same_tensors(a, b)
    assert res["test_acc"] == whole["test_acc"]


@pytest.mark.slow
def test_a_truncated_checkpoint_resumes_from_the_previous_one(tmp_path):
    part, _ = run_main("verletTest", "--dataset", "DIGITS", "--n", 2, "--epochs", 3, "--results-dir", tmp_path)
    current = os.path.join(part["run_dir"], "checkpoint.pt")
    with open(current, "r+b") as f:
        f.truncate(100)
    _, printed = run_main("verletTest", "--resume", part["run_dir"], "--epochs", 4)
    assert "checkpoint.prev.pt (epoch 2)" in printed
    history = json.loads(open(os.path.join(part["run_dir"], "metrics.json")).read())["history"]
    assert history["epoch"] == [1, 2, 3, 4]


@pytest.fixture
def short_run(tmp_path):
    """The run directory of a 2-epoch verletTest run on DIGITS (its config.json, as the run
    writes it), to resume: refusals happen before anything is trained."""
    from harness.cli import configure
    from harness.configs import ArchitectureRun
    from harness.rundir import RunDir
    from scripts import verletTest

    cfg = configure(ArchitectureRun, verletTest.__file__, vars(verletTest),
                    ["--dataset", "DIGITS", "--n", "2", "--epochs", "2", "--results-dir", str(tmp_path)])
    return str(RunDir(cfg).path)


@pytest.mark.parametrize("args,message", [
    (["--n", 3], "RESUME: N differs from the run's (2 -> 3)"),
    (["--dataset", "ELLIPSE"], "RESUME: DATASET differs from the run's ('DIGITS' -> 'ELLIPSE')"),
    (["--epochs", 1], "RESUME: EPOCHS may grow, not shrink (2 -> 1)"),
])
def test_changing_the_network_or_data_on_resume_exits_2(short_run, args, message):
    code, err = refused("verletTest", "--resume", short_run, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_resuming_an_unsafe_or_missing_run_exits_2_with_one_line(tmp_path, short_run):
    code, err = refused("verletTest", "--resume", tmp_path / "nope")
    assert code == 2 and "is not a run directory" in err
    torch.save({"epoch": 1, "thing": NotPlainData()}, os.path.join(short_run, "checkpoint.pt"))
    code, err = refused("verletTest", "--resume", short_run)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "objects other than tensors and plain values" in err


# ---- restarts: torchrun and the scripts' own elastic launcher --------------------------

def _launch(cmd, timeout=240):
    marker = f"STABLE_TEST_{uuid.uuid4().hex}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", marker: "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    time.sleep(0.5)
    return proc, leftover_processes(marker)


def _torchrun(script, *args):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    return _launch([torchrun, "--nproc-per-node", "2", "--max-restarts", "1", f"scripts/{script}.py",
                    *map(str, args)])


def _own(script, *args):
    return _launch([sys.executable, f"scripts/{script}.py", "--max-restarts", "1", *map(str, args)])


RESTARTS = {  # the run, the fault, the unit of the history
    "distSg": (["--epochs", 4, "--rule", "delayed", "--balance", "even"], ["--fail-stage", 1, "--fail-epoch", 3],
               "epoch"),
    "PVD": (["--iterations", 4, "--steps", 20, "--target-acc", 2], ["--fail-rank", 1, "--fail-iteration", 3],
            "iteration"),
}


@pytest.fixture(scope="module")
def unfaulted(tmp_path_factory):
    """The result of each script's run without a fault (computed once per module)."""
    cache = {}

    def get(script):
        if script not in cache:
            cache[script] = result_of(run_script(script, *RESTARTS[script][0], "--results-dir",
                                                 tmp_path_factory.mktemp("clean")))
        return cache[script]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("script,launcher", [("distSg", "torchrun"), ("distSg", "own"), ("PVD", "own")])
def test_a_worker_failing_once_is_restarted_and_the_run_ends_as_an_unfaulted_one(tmp_path, launcher, script,
                                                                                  unfaulted):
    args, fault, unit = RESTARTS[script]
    faulted_args = [*args, *fault, "--fail-mode", "kill" if launcher == "torchrun" else "raise",
                    "--results-dir", tmp_path / "faulted"]
    proc, leftovers = (_torchrun if launcher == "torchrun" else _own)(script, *faulted_args)
    res = result_of(proc)
    assert leftovers == []
    assert "worker group restarted (1 of 1 restarts)" in proc.stderr
    (run_dir,) = (tmp_path / "faulted" / script).glob("2*")  # one run directory
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    series = history["distributed"] if script == "distSg" else history
    last = args[args.index("--epochs" if unit == "epoch" else "--iterations") + 1]
    assert series[unit] == list(range(1, last + 1))  # every epoch (iteration) counted once
    clean = unfaulted(script)  # PVD and the delayed rule on fixed cuts are deterministic: the same accuracy
    assert res["test_acc"] == clean["test_acc"] and res["train_acc"] == clean["train_acc"]


# ---- a run killed at any moment leaves whole files -------------------------------------

def _is_whole(path):
    """Load a run directory's file by its kind; raises if it is truncated or damaged."""
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".pt":
        torch.load(path, weights_only=True)
    elif path.suffix == ".png":
        import matplotlib.image

        matplotlib.image.imread(path)
    elif path.name.startswith("events.out.tfevents"):
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        assert list(EventFileLoader(str(path)).Load())  # TensorBoard's reader: whole records
    else:
        assert path.name.startswith(".launch-") or path.name.startswith("."), path


# A verletTest run whose nth atomic write of a file named TARGET pauses between its
# temporary file and the rename, and says so: the test kills it there, in that write.
_PAUSING_WRITES = """
import contextlib, pathlib, runpy, sys, time
sys.path.insert(0, {root!r})
import datasets.files as files
real, seen = files.atomic, []

@contextlib.contextmanager
def pausing(path):
    with real(path) as tmp:
        yield tmp
        if pathlib.Path(path).name == {target!r}:
            seen.append(path)
            if len(seen) == {nth}:
                print("WRITING", path, flush=True)
                time.sleep(60)

files.atomic = pausing
sys.argv = ["verletTest.py", *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("target,nth", [("config.json", 1), ("checkpoint.pt", 2), ("model.pt", 1)])
def test_a_run_killed_in_the_middle_of_a_write_leaves_every_file_whole(tmp_path, target, nth):
    """SIGKILL a run while it writes ``target`` for the ``nth`` time (its temporary file
    written, not yet renamed): every file it left loads, the one being written is as it
    was before, and a resume of the run finishes."""
    import signal

    code = _PAUSING_WRITES.format(root=str(ROOT), script=str(ROOT / "scripts" / "verletTest.py"), target=target,
                                  nth=nth)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, "--dataset", "DIGITS", "--n", "2", "--epochs", "3",
                             "--checkpoint-every", "1", "--results-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    output = []
    for line in proc.stdout:
        output.append(line)
        if line.startswith("WRITING "):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert output and output[-1].startswith("WRITING "), "".join(output)[-2000:]
    (run_dir,) = (tmp_path / "verletTest").iterdir()
    assert list(run_dir.glob(f".{target}.*.tmp")), "the kill did not land in the write"
    for path in run_dir.iterdir():
        if not path.name.endswith(".tmp"):  # an unfinished temporary: never read, removed on resume
            _is_whole(path)
    if target == "checkpoint.pt":  # the write being replaced fell back on the previous checkpoint
        state, path = checkpoint.load(run_dir)
        assert state["epoch"] == nth - 1
    if target != "config.json":
        result_of(run_script("verletTest", "--resume", run_dir))
        assert not list(run_dir.glob(".*.tmp"))
        for path in run_dir.iterdir():
            _is_whole(path)


def test_pvd_stopping_early_at_its_target_checkpoints_that_iteration(tmp_path):
    """With CHECKPOINT_EVERY 5, a PVD run that reaches TARGET_ACC at an iteration that is no
    multiple of 5 still saves that iteration: a resume continues from where it stopped."""
    import datasets
    from harness.configs import PVDRun
    from harness.resume import Checkpointer
    from models import build_model
    from pvd import PVDConfig, run_serial

    data = datasets.load("ELLIPSE", seed=0)
    torch.manual_seed(0)
    model = build_model("verlet", (2,), 2, 4, 0.5, width=4)
    cfg = PVDConfig(iterations=20, steps=10, target_acc=0.85, seed=0)
    saver = Checkpointer(tmp_path, PVDRun(CHECKPOINT_EVERY=5), cfg.iterations)
    out = run_serial(model, data, cfg, saver=saver)
    stopped = out["history"]["iteration"][-1]
    assert stopped < cfg.iterations and stopped % 5, f"the run should stop early, off the 5s: {stopped}"
    state, _ = checkpoint.load(tmp_path)
    assert state["iteration"] == stopped and out["history"]["test_acc"][-1] >= 0.85


def test_a_rule_option_given_beside_resume_is_checked_like_any_constant(tmp_path):
    """A pipeline run's rule options are constants of its config.json: a resume keeps them,
    and one given beside RESUME that differs is refused."""
    from harness.cli import UsageError
    from harness.configs import PipelineRun
    from harness.resume import resume_constants

    saved = PipelineRun(RULE="delayed", rule_options={"max_in_flight": 2, "shrink": 0.5})
    (tmp_path / "config.json").write_text(json.dumps({"constants": saved.as_dict()}))
    fresh = PipelineRun(rule_options={"max_in_flight": 0, "shrink": 1.0}, RESUME=str(tmp_path))
    cfg, path = resume_constants(fresh)
    assert path == tmp_path and cfg.RULE == "delayed" and cfg.rule_options == {"max_in_flight": 2, "shrink": 0.5}
    with pytest.raises(UsageError, match=r"RESUME: SHRINK differs from the run's \(0.5 -> 1.0\)"):
        resume_constants(fresh.replace(given=frozenset({"SHRINK", "RESUME"})))
