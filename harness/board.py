"""TensorBoard scalars of a run, written into its run directory, so that
``tensorboard --logdir results`` compares any runs.

A history ({key: [one value per step]}) becomes one scalar series per key; a key whose
values are lists (one per stage or per cut) becomes ``key/0``, ``key/1``, ...  Each
event's wall time is a common origin plus the training seconds at its step, so that
TensorBoard's "relative" axis shows training time.  An event file is written in a
hidden directory and renamed into the run directory once whole.  A history is written
whole at the end of a run, so a resumed run's file replaces the one its first part
wrote: each directory keeps one file of each kind (history, summary), its whole run.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

_WARNED = []


@contextmanager
def _writer(path, kind):
    """A SummaryWriter whose event file (``*.kind``) appears in ``path`` whole: it is
    written in a hidden directory beside it and renamed into place once closed, replacing
    the earlier file of its kind (None, after one note, if tensorboard is not installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # tensorboard is in requirements.txt; a bare install still runs
        if not _WARNED:
            print(f"note: no TensorBoard scalars ({exc}); pip install tensorboard", file=sys.stderr)
            _WARNED.append(True)
        yield None
        return
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tensorboard-", suffix=".tmp", dir=path))
    try:
        writer = SummaryWriter(str(tmp), filename_suffix=f".{kind}")
        try:
            yield writer
        finally:
            writer.close()
        earlier = list(path.glob(f"events.out.tfevents.*.{kind}"))
        for f in tmp.iterdir():
            os.replace(f, path / f.name)
        for f in earlier:
            f.unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _numbers(value):
    """The finite numbers of a value, or of a list of them, as {suffix: number}."""
    if isinstance(value, (list, tuple)):
        return {f"/{i}": v for i, v in enumerate(value) if isinstance(v, (int, float)) and math.isfinite(v)}
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return {"": value}
    return {}


def write_history(path, history, *, step_key="epoch", seconds_key="seconds", cumulative=True, prefix="",
                  origin=None):
    """Write ``history`` to TensorBoard in ``path``: a scalar per key and step (the steps:
    history[step_key], rounded to integers for fractions of an epoch as point indices).
    history[seconds_key] gives the events' times (summed first with ``cumulative``)."""
    steps = history.get(step_key, [])
    seconds = history.get(seconds_key) or [0.0] * len(steps)
    if cumulative:
        seconds = [sum(seconds[:k + 1]) for k in range(len(seconds))]
    origin = time.time() if origin is None else origin
    integral = all(float(s).is_integer() for s in steps)
    with _writer(path, "history") as writer:
        for k, step in enumerate(steps):
            if writer is None:
                break
            at = int(step) if integral else k
            for key, values in history.items():
                if key == step_key or not isinstance(values, list) or len(values) != len(steps):
                    continue
                for suffix, v in _numbers(values[k]).items():
                    writer.add_scalar(f"{prefix}{key}{suffix}", v, at, walltime=origin + seconds[k])


def write_scalars(path, values, step=0):
    """Single values (a run's summary: each stage's busy fraction, ...) at one step."""
    with _writer(path, "summary") as writer:
        for key, value in values.items():
            for suffix, v in _numbers(value).items():
                if writer is not None:
                    writer.add_scalar(f"{key}{suffix}", v, step)
