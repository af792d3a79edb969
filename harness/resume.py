"""Continuing a run: its own constants, its latest intact checkpoint, and the saving of
checkpoints every CHECKPOINT_EVERY epochs (or iterations) and at the last."""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from models import checkpoint

from .cli import UsageError, check


def restart_marker(cfg):
    """Under torchrun: the file naming this launch's run directory, so that the workers a
    restart brings up (TORCHELASTIC_RESTART_COUNT > 0) continue the same run.  Keyed by the
    rendezvous id (--rdzv-id, unique per job across machines); where torchrun has none
    (a plain single-machine launch), by the launching agent's process id as well, which is
    fixed across restarts."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id is None:
        return None
    key = run_id if run_id not in ("", "none") else f"{run_id}-{os.getppid()}"
    key = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
    return Path(cfg.RESULTS_DIR) / Path(cfg.script).stem / f".launch-{key}"


# Constants a resumed run may change: where and how it runs, not what it computes.
RESUME_FREE = frozenset({"RESUME", "DEVICE", "DATA_ROOT", "RESULTS_DIR", "THREADS", "VERBOSE", "CHECKPOINT_EVERY",
                         "MAX_RESTARTS", "FAIL_RANK", "FAIL_STAGE", "FAIL_EPOCH", "FAIL_ITERATION", "FAIL_MODE"})
# Constants a resumed run may raise, to train longer.
RESUME_GROW = frozenset({"EPOCHS", "EPOCHS_F", "ITERATIONS"})


def resume_constants(cfg):
    """The constants of the run to continue, or (cfg, None) for a new run.

    A run is continued when RESUME names its directory, or when torchrun restarted the
    workers of a run this launch began.  The run's own constants are used; constants
    given on the command line beside RESUME are changes, allowed for the RESUME_FREE ones
    and as growth for RESUME_GROW, refused (UsageError) for the rest."""
    path = getattr(cfg, "RESUME", "")  # the race resumes nothing
    marker = restart_marker(cfg)
    if not path and marker is not None and checkpoint.restart_count() > 0:
        path = marker.read_text().strip() if marker.is_file() else ""
    if not path:
        return cfg, None
    path = Path(path)
    check((path / "config.json").is_file(), f"RESUME {str(path)!r} is not a run directory (it has no config.json)")
    try:
        saved = json.loads((path / "config.json").read_text())["constants"]
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"RESUME: cannot read {path / 'config.json'}: {exc}") from None
    known = cfg.as_dict()
    merged = {**known, **{k: v for k, v in saved.items() if k in known}}
    for name in sorted(cfg.given):
        new, old = known[name], saved.get(name)
        if name in RESUME_FREE or new == old or name not in saved:
            merged[name] = new
        elif name in RESUME_GROW:
            check(new >= old, f"RESUME: {name} may grow, not shrink ({old} -> {new})")
            merged[name] = new
        else:
            raise UsageError(f"RESUME: {name} differs from the run's ({old!r} -> {new!r}); a resumed run keeps the "
                             f"constants of its network, data and training (only {', '.join(sorted(RESUME_GROW))} "
                             "may grow)")
    merged["RESUME"] = str(path)
    return cfg.replace(**merged), path


def load_checkpoint(run_path, name="checkpoint", quiet=False):
    """The latest intact checkpoint of a run directory (UsageError if none is usable)."""
    try:
        state, path = checkpoint.load(run_path, name)
    except checkpoint.CheckpointError as exc:
        raise UsageError(str(exc)) from None
    if state is not None and not quiet:
        print(f"resuming from {path} (epoch {state.get('epoch', '?')})", flush=True)
    return state


def _unchanged(state):
    return state


class Checkpointer:
    """Saves a run's state into its directory every CHECKPOINT_EVERY epochs and after the
    last (``final=True``: the epoch a run stops at, early or not); counts the seconds it
    spends.  ``wrap`` turns a trainer's state into the file's."""

    def __init__(self, run_path, cfg, last_epoch, name="checkpoint", wrap=None):
        self.path, self.cfg, self.last, self.name = run_path, cfg, last_epoch, name
        self.every = cfg.CHECKPOINT_EVERY
        self.wrap = wrap or _unchanged
        self.seconds, self.count = 0.0, 0

    def __call__(self, epoch, state, final=False):
        if self.path is None or self.every <= 0 or (epoch % self.every and epoch != self.last and not final):
            return
        t0 = time.perf_counter()
        checkpoint.save(self.path, {"constants": self.cfg.as_dict(), **self.wrap(state())}, self.name)
        self.seconds += time.perf_counter() - t0
        self.count += 1


class PhaseStates:
    """The latest training state of each phase of a run (each architecture of the toy
    scripts, each level of the multilevel ones), saved together in one checkpoint."""

    def __init__(self, state=None):
        self.latest = dict(state["phases"]) if state else {}

    def get(self, phase):
        return self.latest.get(phase)

    def wrap(self, phase):
        """A Checkpointer ``wrap``: record ``phase``'s state beside the others' latest."""
        def wrap(state):
            self.latest[phase] = state
            return {"epoch": state["epoch"], "phase": phase, "phases": dict(self.latest)}
        return wrap
