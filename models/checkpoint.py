"""Checkpoints of a run: written atomically, the previous one kept, loaded safely.

``save(run_dir, state)`` writes ``<name>.pt`` through a temporary file and a rename,
after moving the last complete one to ``<name>.prev.pt``; so a run killed while writing
leaves at least one whole checkpoint.  ``load(run_dir)`` returns the newest intact one
(falling back to the previous when the newest is truncated or unreadable), read with
``torch.load(weights_only=True)``: tensors and plain Python values only, so that loading
a checkpoint from someone else's run directory cannot run code.
"""
from __future__ import annotations

import os
import pickle
import re
import signal
from pathlib import Path

import torch

from datasets.files import atomic


class CheckpointError(RuntimeError):
    """No usable checkpoint: none intact, or one that holds more than plain data."""


def paths(run_dir, name="checkpoint"):
    run_dir = Path(run_dir)
    return run_dir / f"{name}.pt", run_dir / f"{name}.prev.pt"


def save(run_dir, state, name="checkpoint"):
    """Write ``state`` (tensors and plain values) as run_dir/<name>.pt, keeping the previous one."""
    current, previous = paths(run_dir, name)
    with atomic(current) as tmp:
        torch.save(state, tmp)
        if current.exists():
            os.replace(current, previous)
    return current


def read(path, map_location="cpu"):
    """One checkpoint file, tensors and plain values only; CheckpointError if it holds more."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:  # not a pickle of anything: damaged
            raise
        raise CheckpointError(f"{path} holds objects other than tensors and plain values ({found.group(1)}); "
                              "refused, since loading it could run code") from None


def intact(run_dir, name="checkpoint", map_location="cpu"):
    """The readable checkpoints of run_dir/<name>, newest first, as [(state, path)], and the
    names of those that exist but are truncated or damaged.  CheckpointError for one that
    holds more than plain data (refused, not skipped)."""
    found, broken = [], []
    for path in paths(run_dir, name):
        if not path.exists():
            continue
        try:
            found.append((read(path, map_location), path))
        except CheckpointError:
            raise
        except Exception as exc:  # truncated or damaged: the other one may do
            broken.append(f"{path.name} ({type(exc).__name__})")
    return found, broken


def load(run_dir, name="checkpoint", map_location="cpu"):
    """The newest intact checkpoint of run_dir as (state, path), or (None, None) if there is none."""
    found, broken = intact(run_dir, name, map_location)
    if found:
        return found[0]
    if broken:
        raise CheckpointError(f"no intact checkpoint in {run_dir}: {', '.join(broken)} unreadable")
    return None, None


def rng_state(generator=None):
    """The random generators' states: torch's global CPU (and CUDA) ones, and ``generator``'s."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state, generator=None):
    """Restore ``rng_state``'s states.  A run saved on more GPUs than this machine has
    restores those it has (GPU k's state onto GPU k); on a machine without CUDA, none."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for k, gpu_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, k)
    if generator is not None:
        generator.set_state(state["generator"])


def training_state(epoch, model, optimizers, generator, history, scheduler=None):
    """What continues a training loop after ``epoch``: parameters, optimiser (and scheduler)
    states, the random generators' states and the history so far."""
    return {"epoch": epoch, "model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(generator), "history": history}


def restore(state, model, optimizers, generator, scheduler=None):
    """Load a ``training_state`` into the loop's objects; returns (history, first epoch to run)."""
    model.load_state_dict(state["model"])
    for opt, saved in zip(optimizers, state["optimizers"], strict=True):
        opt.load_state_dict(saved)
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], generator)
    return {k: list(v) for k, v in state["history"].items()}, state["epoch"] + 1


def restart_count():
    """Restarts of the worker group so far (torchrun and the scripts' own elastic launcher
    set TORCHELASTIC_RESTART_COUNT; 0 outside them)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def fail_once(what, mode="raise"):
    """A testing aid for restarts: fail now (raise, or SIGKILL this process with mode
    "kill"), unless this is a restarted attempt."""
    if restart_count() > 0:
        return
    if mode == "kill":
        print(f"{what}: killing itself (SIGKILL)", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(what)
