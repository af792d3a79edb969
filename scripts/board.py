"""TensorBoard scalars of a run, written into its run directory, so that
``tensorboard --logdir results`` compares any runs.

A history ({key: [one value per step]}) becomes one scalar series per key; a key whose
values are lists (one per stage or per cut) becomes ``key/0``, ``key/1``, ...  Each
event's wall time is a common origin plus the training seconds at its step, so that
TensorBoard's "relative" axis shows training time.
"""
from __future__ import annotations

import math
import sys
import time

_WARNED = []


def _writer(path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # tensorboard is in requirements.txt; a bare install still runs
        if not _WARNED:
            print(f"note: no TensorBoard scalars ({exc}); pip install tensorboard", file=sys.stderr)
            _WARNED.append(True)
        return None
    return SummaryWriter(str(path))


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
    writer = _writer(path)
    if writer is None:
        return
    steps = history.get(step_key, [])
    seconds = history.get(seconds_key) or [0.0] * len(steps)
    if cumulative:
        seconds = [sum(seconds[:k + 1]) for k in range(len(seconds))]
    origin = time.time() if origin is None else origin
    integral = all(float(s).is_integer() for s in steps)
    try:
        for k, step in enumerate(steps):
            at = int(step) if integral else k
            for key, values in history.items():
                if key == step_key or not isinstance(values, list) or len(values) != len(steps):
                    continue
                for suffix, v in _numbers(values[k]).items():
                    writer.add_scalar(f"{prefix}{key}{suffix}", v, at, walltime=origin + seconds[k])
    finally:
        writer.close()


def write_scalars(path, values, step=0):
    """Single values (a run's summary: each stage's busy fraction, ...) at one step."""
    writer = _writer(path)
    if writer is None:
        return
    try:
        for key, value in values.items():
            for suffix, v in _numbers(value).items():
                writer.add_scalar(f"{key}{suffix}", v, step)
    finally:
        writer.close()
