"""Start P worker processes under torch.distributed, or join a torchrun launch.

``launch(fn, P, args)`` runs ``fn(ctx, *args)`` in P processes, ``ctx`` telling the
rank, world size, device and backend (gloo on CPU; NCCL when every process has its own
GPU).  Started by the script itself: spawn, a free loopback port, rank 0's return value
handed back through a file.  Under torchrun (RANK/WORLD_SIZE set) the current process
is one of the workers and every rank gets its own return value.

A worker that raises takes the whole run down: the others are terminated, and
``WorkerFailed`` carries the failing worker's traceback.  Ctrl-C stops every process.
"""
from __future__ import annotations

import ctypes
import datetime
import os
import pickle
import signal
import socket
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

GRACE_S = 5.0  # after a failure, seconds before SIGTERM, then SIGKILL, for the others


class WorkerFailed(RuntimeError):
    """A worker process raised or died; the message holds its traceback."""


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self):
        return self.rank == 0


def under_torchrun():
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_threads(local_world):
    """Each process's share of the cores (at least one)."""
    return max(1, (os.cpu_count() or 1) // max(local_world, 1))


def _die_with_parent():
    """Linux: have the kernel send SIGTERM to this worker if its parent dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def init_worker(rank, world_size, local_rank, local_world, *, threads=0, backend="auto", timeout_s=120):
    """Set threads, pick device and backend, join the process group; returns the context."""
    from models.training import preload

    preload()
    torch.set_num_threads(threads or default_threads(local_world))
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= local_world else "gloo"
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank, world_size, device, backend)


def _run_rank(ctx, fn, args, result_path=None):
    """fn(ctx, *args) on one rank; rank 0's value is saved to ``result_path`` if given."""
    try:
        out = fn(ctx, *args)
        if result_path is not None and ctx.is_main:
            tmp = result_path + ".tmp"
            torch.save(out, tmp)
            os.replace(tmp, result_path)
        dist.barrier()  # nobody tears the group down while a peer still uses it
        return out
    finally:
        dist.destroy_process_group()


def _entry(local_rank, world_size, port, fn, args, threads, backend, timeout_s, result_path):
    _die_with_parent()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = init_worker(local_rank, world_size, local_rank, world_size, threads=threads, backend=backend,
                      timeout_s=timeout_s)
    _run_rank(ctx, fn, args, result_path)


# Errors a worker raises because a peer went away: secondary to that peer's own error.
_PEER_ERRORS = ("Connection closed by peer", "Connection reset by peer", "DistBackendError", "DistNetworkError",
                "Broken pipe", "Timed out", "timed out", "ProcessGroupGloo", "ProcessGroupNCCL")


def _failure_report(procs, exc):
    """Every failed worker's traceback, the ones that are not about a lost peer first."""
    traces = []
    for rank, path in enumerate(procs.error_files):
        try:
            with open(path, "rb") as fh:
                traces.append((rank, pickle.load(fh)))
        except (OSError, EOFError, pickle.UnpicklingError):
            pass
    if not traces:
        return str(exc)
    traces.sort(key=lambda rt: any(p in rt[1] for p in _PEER_ERRORS))
    parts = [f"worker {rank} failed:\n{trace}" for rank, trace in traces[:1]]
    parts += [f"worker {rank} failed too (most likely because of the above):\n{trace.strip().splitlines()[-1]}"
              for rank, trace in traces[1:]]
    return "\n".join(parts)


def launch(fn, nprocs, args=(), *, threads=0, backend="auto", timeout_s=120):
    """Run fn(ctx, *args) on nprocs ranks; return rank 0's value (each rank's under torchrun)."""
    if under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        ctx = init_worker(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0)), local_world,
                          threads=threads, backend=backend, timeout_s=timeout_s)
        return _run_rank(ctx, fn, args)

    with tempfile.TemporaryDirectory(prefix="launch-") as tmp:
        result_path = os.path.join(tmp, "result.pt")
        procs = mp.start_processes(
            _entry, args=(nprocs, free_port(), fn, args, threads, backend, timeout_s, result_path),
            nprocs=nprocs, join=False, start_method="spawn")
        try:
            while not procs.join(timeout=0.5, grace_period=GRACE_S):
                pass
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            raise WorkerFailed(_failure_report(procs, exc)) from None
        except BaseException:  # Ctrl-C or anything else in the parent: stop every worker
            for p in procs.processes:
                if p.is_alive():
                    p.terminate()
            for p in procs.processes:
                p.join(GRACE_S)
                if p.is_alive():
                    p.kill()
                    p.join()
            raise
        return torch.load(result_path, weights_only=False)


def world_size_for(requested):
    """The number of processes: torchrun's WORLD_SIZE when launched by it, else ``requested``."""
    return int(os.environ["WORLD_SIZE"]) if under_torchrun() else requested
