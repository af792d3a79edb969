"""Start P worker processes under torch.distributed, or join a torchrun launch.

``launch(fn, P, args)`` runs ``fn(ctx, *args)`` in P processes, ``ctx`` telling the
rank, world size, device and backend (``rank_device``: gloo on the CPU; NCCL when every
process has a GPU of its own; gloo when the ranks share a GPU).  Started by the script
itself: torch.distributed.elastic's agent (what torchrun runs) starts the workers on a
free loopback port, restarts the group up to ``max_restarts`` times, and hands rank 0's
return value back.  The workers are forked from multiprocessing's fork server, which
imports torch once (``WORKER_PRELOAD``): a launch takes a third of a second, not the
three seconds of a fresh interpreter importing torch.  Under torchrun (RANK/WORLD_SIZE
set) the current process is one of the workers and every rank gets its own return value.

A worker that raises or dies takes the whole run down: the others are terminated, and
``WorkerFailed`` carries the failing worker's traceback.  Ctrl-C stops every process.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import functools
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from models.checkpoint import restart_count

GRACE_S = 5.0  # after a failure, seconds before SIGTERM, then SIGKILL, for the others
# What the fork server imports once, before it forks any worker: torch, torch._dynamo (that
# the optimisers import at their first step: models.training.preload), this module, and the
# launching script (which a worker would otherwise import again, as a spawned one does).
# It never computes, so its children start with no threads and no CUDA.
WORKER_PRELOAD = ("torch", "torch.distributed", "torch._dynamo", "harness.launch", "__main__")
_ENVIRONMENT_AT_IMPORT = dict(os.environ)  # in a forked worker: the fork server's, from when it started


class WorkerFailed(RuntimeError):
    """A worker process raised or died; the message holds its traceback."""


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device  # where this rank computes
    backend: str

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def wire(self):
        """Where a tensor sent to another rank must lie: the device itself, except for a
        GPU under gloo, whose point-to-point messages and gathers travel through the CPU."""
        return self.device if self.backend == "nccl" or self.device.type == "cpu" else torch.device("cpu")


def under_torchrun():
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_threads(local_world):
    """Each process's share of the cores (at least one)."""
    return max(1, (os.cpu_count() or 1) // max(local_world, 1))


def rank_device(request, local_rank, local_world):
    """(device, backend) of the process of local rank ``local_rank`` among ``local_world``
    on this machine, for the device asked for (DEVICE):

    - "cpu": the CPU, gloo (whatever GPUs are present);
    - "auto": as "cuda" when a GPU is present, else as "cpu";
    - "cuda": GPU ``local_rank`` and NCCL when the machine has a GPU for every local rank;
      with fewer, the ranks share the GPUs (rank r on GPU r mod count) over gloo;
    - "cuda:k": every local rank on GPU k, over gloo when there are several (NCCL cannot
      put two ranks on one GPU), NCCL for one."""
    from models.devices import pick_device

    device = pick_device(request)  # ValueError for a device this machine does not have
    if device.type != "cuda":
        return torch.device("cpu"), "gloo"
    count = torch.cuda.device_count()
    if device.index is not None:
        return device, "nccl" if local_world == 1 else "gloo"
    if count >= local_world:
        return torch.device("cuda", local_rank), "nccl"
    return torch.device("cuda", local_rank % count), "gloo"


def this_rank_device(request, nprocs):
    """The device a rank started from here computes on: under torchrun this process's own
    (LOCAL_RANK's), else rank 0's of ``nprocs``.  Costs measured for the ranks are
    measured there."""
    if under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", world))
    else:
        local = 0, nprocs
    device, _ = rank_device(request, *local)
    if device.type == "cuda" and under_torchrun():
        torch.cuda.set_device(device)  # this process is the rank: its context on its own GPU
    return device


# glibc's mallopt parameters, and the values every process of a run sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: activations and batches come from the heap
TRIM_THRESHOLD = 1 << 30  # freed memory stays in the process


def steady_allocator():
    """Keep the memory a training loop frees for its next batch (Linux, glibc).

    By default glibc maps every block over 128 KiB (a batch of 128 Fashion-MNIST images
    is 400 KB; a conv activation several MB) afresh and returns it when freed, raising
    that threshold only as it sees such blocks freed.  Each batch then faults in and
    zeroes its pages again: 6.6-8.6 million page faults in two epochs of the race's conv
    network, 11-25 % of its time, and more in a process's first run than in its later
    ones.  Fixed thresholds make every trainer start from the same state."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):
        pass


def prepare_process():
    """What every process of a run does before its clock starts: the allocator's settings
    and torch's lazy imports (models.training.preload)."""
    from models.training import preload

    steady_allocator()
    preload()


def _die_with_parent():
    """Linux: have the kernel send SIGTERM to this worker if its parent dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def init_worker(rank, world_size, local_rank, local_world, *, threads=0, device="auto", timeout_s=120):
    """Set threads, pick device and backend (``rank_device``), join the process group;
    returns the context."""
    prepare_process()
    torch.set_num_threads(threads or default_threads(local_world))
    device, backend = rank_device(device, local_rank, local_world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    store, rank, world_size = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
    # A restarted group (torchrun, or our launcher) meets in the elastic agent's store, which
    # still holds the previous attempt's keys: the workers would read the dead workers' gloo
    # addresses ("connectFullMesh failed ... Connection refused").  A prefix per attempt.
    store = dist.PrefixStore(f"attempt_{restart_count()}/", store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    return DistContext(rank, world_size, device, backend)


# Errors a worker raises because a peer went away: secondary to that peer's own error.
_PEER_ERRORS = ("Connection closed by peer", "Connection reset by peer", "DistBackendError", "DistNetworkError",
                "Broken pipe", "Timed out", "timed out", "ProcessGroupGloo", "ProcessGroupNCCL")


def _run_rank(ctx, fn, args):
    """fn(ctx, *args) on one rank; returns its value.  A failure that the launcher will
    answer with a restart is told here (after the last one, WorkerFailed tells it)."""
    count, allowed = restart_count(), int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    if count and ctx.is_main:
        print(f"worker group restarted ({count} of {allowed} restarts): continuing from the latest checkpoint",
              file=sys.stderr, flush=True)
    try:
        out = fn(ctx, *args)
        devices = [None] * ctx.world_size
        dist.all_gather_object(devices, str(ctx.device))  # also: nobody tears the group down while a peer uses it
        return out, {"backend": ctx.backend, "rank_devices": devices}
    except Exception:
        if count < allowed:
            trace = traceback.format_exc()
            if any(p in trace for p in _PEER_ERRORS):
                trace = trace.strip().splitlines()[-1] + "\n"
            print(f"worker {ctx.rank} failed (the group will restart):\n{trace}", file=sys.stderr, end="", flush=True)
        raise
    finally:
        dist.destroy_process_group()


def _adopt_environment(launcher):
    """A worker forked from the fork server holds the environment that the server started
    with, and what the elastic agent set over it: make it the launching process's
    environment now (``launcher``) with the agent's settings over it."""
    by_agent = {k: v for k, v in os.environ.items() if _ENVIRONMENT_AT_IMPORT.get(k) != v}
    os.environ.clear()
    os.environ.update({**launcher, **by_agent})


def _elastic_entry(fn, args, threads, device, timeout_s, environment):
    """One worker of the scripts' own launcher: joins the group from the environment the
    elastic agent sets (RANK, WORLD_SIZE, MASTER_ADDR, ..., as torchrun does)."""
    _die_with_parent()  # the fork server, which ends with the launching process
    _adopt_environment(environment)
    ctx = init_worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]),
                      int(os.environ["LOCAL_WORLD_SIZE"]), threads=threads, device=device, timeout_s=timeout_s)
    out = _run_rank(ctx, fn, args)
    sys.exit = functools.partial(_exit_now, sys.exit)  # how the spawned process ends, once its value is handed back
    return out


def _exit_now(exit_, status=None):
    """``sys.exit`` of a worker whose function returned: with status 0 (its value handed
    back to the agent) it flushes its output and ends without the interpreter's teardown
    of torch's modules (0.7-0.9 s here, which every launch waited for); any other status
    (the value could not be handed back) through ``exit_``, as Python ends, so that the
    agent sees the failure."""
    if status not in (None, 0):
        exit_(status)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _trace(message):
    """The traceback in an elastic error message (an error file's), or the message itself
    (how a worker died, for a signal)."""
    if isinstance(message, dict):
        return message.get("extraInfo", {}).get("py_callstack") or str(message.get("message", message))
    return str(message)


def _error_files(log_dir):
    """{local rank: traceback} from the error files of the last attempt under ``log_dir``
    (the agent reports one failed worker; the others' files tell which failed first)."""
    found = {}
    attempts = sorted(Path(log_dir).glob("*/attempt_*"), key=lambda p: int(p.name.split("_")[1]))
    for path in sorted(attempts[-1].glob("*/error.json")) if attempts else ():
        try:
            found[int(path.parent.name)] = _trace(json.loads(path.read_text())["message"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return found


def _failure_report(failures, log_dir):
    """Every failed worker's traceback, the ones that are not about a lost peer first."""
    texts = {rank: _trace(f.message) for rank, f in failures.items()}
    texts.update(_error_files(log_dir))
    traces = sorted(texts.items(), key=lambda rt: (any(p in rt[1] for p in _PEER_ERRORS), rt[0]))
    if not traces:
        return "a worker failed"
    parts = [f"worker {rank} failed:\n{trace}" for rank, trace in traces[:1]]
    parts += [f"worker {rank} failed too (most likely because of the above):\n{trace.strip().splitlines()[-1]}"
              for rank, trace in traces[1:]]
    return "\n".join(parts)


@contextlib.contextmanager
def _temporary_files_in(directory):
    """Python's temporary files made in this process go to ``directory`` meanwhile:
    torch's process starter names one in the temporary directory for each worker, which
    a worker that fails writes its traceback to and nobody removes (pytorch-errorfile-*);
    in the launch's own directory they go with it.  Multiprocessing's own directory
    (the fork server's socket, which outlives the launch) is made where it belongs first."""
    import multiprocessing.util

    multiprocessing.util.get_temp_dir()
    before, tempfile.tempdir = tempfile.tempdir, str(directory)
    try:
        yield
    finally:
        tempfile.tempdir = before


def launch(fn, nprocs, args=(), *, threads=0, device="auto", timeout_s=120, max_restarts=0, on_placement=None):
    """Run fn(ctx, *args) on nprocs ranks; return rank 0's value (each rank's under torchrun).
    ``device`` (DEVICE) places the ranks and picks the backend (``rank_device``);
    ``on_placement({"backend", "rank_devices"})`` is told where the ranks ran.

    Started here, the workers are run by torch.distributed.elastic's agent (the engine of
    torchrun) on a free loopback port: a worker that fails takes the group down, and with
    ``max_restarts`` > 0 the agent starts the whole group again (the workers then continue
    from their run's latest checkpoint), up to that many times.  WorkerFailed carries the
    failing worker's traceback; Ctrl-C stops every process (KeyboardInterrupt)."""
    if under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        ctx = init_worker(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0)), local_world,
                          threads=threads, device=device, timeout_s=timeout_s)
        return _placed(*_run_rank(ctx, fn, args), on_placement)

    import multiprocessing

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # the agent logs each failure's traceback and each termination: WorkerFailed tells it once
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="launch-") as logs:
        options = {"min_nodes": 1, "max_nodes": 1, "nproc_per_node": nprocs, "max_restarts": max_restarts,
                   "run_id": f"stable-{uuid.uuid4().hex[:12]}", "rdzv_backend": "c10d",
                   "rdzv_endpoint": f"127.0.0.1:{free_port()}", "monitor_interval": 0.1, "start_method": "forkserver",
                   "shutdown_timeout": int(GRACE_S)}
        known = {f.name for f in dataclasses.fields(LaunchConfig)}
        if "logs_specs" in known:  # torch >= 2.3; before it the log directory was a field of its own
            from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs

            options["logs_specs"] = DefaultLogsSpecs(log_dir=logs)
        else:
            options["log_dir"] = logs
        config = LaunchConfig(**{k: v for k, v in options.items() if k in known})
        multiprocessing.set_forkserver_preload(list(WORKER_PRELOAD))  # read when the server starts, at the first launch
        try:
            with _temporary_files_in(logs):
                out = elastic_launch(config, _elastic_entry)(fn, args, threads, str(device), timeout_s,
                                                             dict(os.environ))
        except ChildFailedError as exc:
            raise WorkerFailed(_failure_report(exc.failures, logs)) from None
        except SignalException as exc:
            if exc.sigval == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise
    return _placed(*out[0], on_placement)


def _placed(out, placement, on_placement):
    if on_placement is not None:
        on_placement(placement)
    return out


def world_size_for(requested):
    """The number of processes: torchrun's WORLD_SIZE when launched by it, else ``requested``."""
    return int(os.environ["WORLD_SIZE"]) if under_torchrun() else requested
