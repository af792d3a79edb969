"""Small utilities shared by the tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def operator_matrix(apply, shape):
    """The dense matrix of a linear map on tensors of ``shape`` (one sample)."""
    n = 1
    for d in shape:
        n *= d
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return apply(basis).reshape(n, n).t()


def assert_true_gradients_equal_backprop(cnet, data, epochs=1, samples=128):
    """``cnet`` trained as a pipeline with the exact rule (its stages taking turns in this
    process) ends where ``fit`` (backprop of the whole network: a copy, the same Adam, the
    same batches) ends, on the first ``samples`` training images; returns that copy."""
    import copy

    import datasets
    from models.training import fit
    from synthetic import PipelineConfig, train_serial

    part = datasets.Data(data.x_train[:samples], data.y_train[:samples], data.x_test[:64], data.y_test[:64], data.info)
    whole = copy.deepcopy(cnet.net)
    train_serial(cnet, part, PipelineConfig(rule="exact", epochs=epochs, lr=1e-2, batch_size=64))
    fit(whole, part.x_train, part.y_train, epochs=epochs, lr=1e-2, batch_size=64)
    for (name, a), b in zip(cnet.net.named_parameters(), whole.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    return whole


def run_script(name, *args, timeout=300, env=None):
    """Run scripts/<name>.py with the given arguments; returns the CompletedProcess."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)


def refused(name, *args):
    """Run scripts/<name>.py's main in this process on arguments it must refuse (bad
    input stops it before any work, so no interpreter start is needed); returns its exit
    status and what it printed on stderr."""
    import contextlib
    import importlib
    import io

    from harness.entry import run

    module = importlib.import_module(f"scripts.{name}")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            run(module.main, [str(a) for a in args])
        except SystemExit as exc:
            return exc.code, err.getvalue()
    return 0, err.getvalue()


def run_main(name, *args):
    """Run scripts/<name>.py's main in this process (a one-process script: no interpreter
    start-up); returns (its RESULT as a dict, what it printed)."""
    import contextlib
    import importlib
    import io

    from harness.entry import run

    module = importlib.import_module(f"scripts.{name}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run(module.main, [str(a) for a in args])
    text = out.getvalue()
    last = text.strip().splitlines()[-1]
    assert last.startswith("RESULT "), text[-2000:]
    return json.loads(last[len("RESULT "):]), text


def result_of(proc):
    """The JSON object of a script's RESULT line (its last line)."""
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    return json.loads(last[len("RESULT "):])


def leftover_processes(marker):
    """PIDs of live processes whose environment holds ``marker`` (a unique string)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def run_failing(script, *args, timeout=60):
    """Run a script with a unique marker in its environment and a temporary directory of
    its own; returns (proc, seconds, leftovers: its processes still running and the
    files it left in that directory, but torch's compile cache, kept there by design)."""
    import tempfile
    import time
    import uuid

    marker = f"STABLE_TEST_{uuid.uuid4().hex}"
    with tempfile.TemporaryDirectory(prefix="run-failing-") as tmp:
        t0 = time.perf_counter()
        proc = run_script(script, *args, timeout=timeout, env={marker: "1", "TMPDIR": tmp})
        seconds = time.perf_counter() - t0
        time.sleep(0.5)
        files = sorted(p.name for p in Path(tmp).iterdir() if not p.name.startswith("torchinductor_"))
        return proc, seconds, leftover_processes(marker) + files


def interrupt_after(script, *args, wait_for="", timeout=60):
    """Start a script in its own session, send Ctrl-C (SIGINT to its process group) once
    ``wait_for`` appears in its output; returns (returncode, seconds to exit, leftovers, output)."""
    import signal
    import time
    import uuid

    marker = f"STABLE_TEST_{uuid.uuid4().hex}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", marker: "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / f"{script}.py"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        out.append(line)
        if wait_for in line or time.monotonic() > deadline:
            break
    t0 = time.perf_counter()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        rest, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate()
    seconds = time.perf_counter() - t0
    time.sleep(0.5)
    return proc.returncode, seconds, leftover_processes(marker), "".join(out) + rest


def slow_checkpoints_stage_worker(ctx, *args):
    """synthetic.distributed.stage_worker with every checkpoint write made 1 s slower
    (module level: spawned workers import it)."""
    import time

    import synthetic.distributed as distributed

    save = distributed._save
    distributed._save = lambda *a: (time.sleep(1.0), save(*a))[1]
    return distributed.stage_worker(ctx, *args)


def environment_worker(ctx, names):
    """{name: os.environ.get(name)} in a worker, for each of ``names``."""
    return {name: os.environ.get(name) for name in names}
