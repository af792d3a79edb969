"""The forecast's schedules and messages checked beyond this machine's cores: stages whose
compute is a timed sleep, run as real processes whose tensors travel over gloo.

Each pipeline stage sleeps its stage's forward, backward and step durations; what it
sends is real (a state of the cut's width for every sample of the batch, its gradient
back) and goes through the same code as training:
  pipeline   our transport (``synthetic.transport.PointToPoint``), each stage in the order
             of ``harness.simulate.decoupled_programs`` (our stage generator's order);
  gpipe/1f1b torch.distributed.pipelining's ScheduleGPipe and Schedule1F1B over stages of
             sleeping layers (``SleepLayer``: an autograd function that sleeps in both
             passes), one step per stage per batch;
  ddp        torch's DistributedDataParallel over sleeping layers whose parameters are the
             layers' sizes, on 2 processes (``ddp_sleep_worker``: each schedule's own work,
             ``harness.forecast.measure_overheads``).
Sleeps need no core, so M processes on 2 cores stand for M devices, as long as each
process's own work per message (about a millisecond here) stays small beside its sleeps:
the durations are scaled so that the shortest sleep is ``min_sleep_s`` (100 ms in the
validation), which keeps that work to about 1-2 % of a stage's time; the host's cores
are not modelled.  DDP's all-reduce sums on the host's cores, so it has no sleep workload
beyond 2 processes.  Every run times its batches after a first, untimed one (its
processes' first messages and operations) at a tenth of its durations (``WARM_UP``).
Several runs on one count of processes share one group of processes (``SleepRun``,
``measure_sleep``), which starts once.
With ``Work`` instead of sleeps (``runs_worker``'s ``busy``) the stages compute, and a
schedule's own work is measured on cores that its processes compute on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import simulate


class Work:
    """Compute instead of a sleep: ``Work(unit)(seconds)`` runs as many of one fixed
    one-thread matrix product as take ``seconds`` on this process alone (``unit``: one
    product's seconds, ``calibrate``), so that the cores are busy and another process
    computing at once, or a transport's thread, makes it last longer."""

    a, b = torch.ones(128, 256), torch.ones(256, 256)

    def __init__(self, unit):
        self.unit = unit

    def __call__(self, seconds):
        for _ in range(round(seconds / self.unit)):
            torch.mm(self.a, self.b)

    @classmethod
    def calibrate(cls, seconds=0.3):
        """One product's seconds, the mean over ``seconds`` of them (after a few unmeasured)."""
        for _ in range(20):
            torch.mm(cls.a, cls.b)
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            torch.mm(cls.a, cls.b)
            count += 1
        return (time.perf_counter() - t0) / count


class _Sleep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, forward_s, backward_s, pause):
        pause(forward_s)
        ctx.backward_s, ctx.pause, ctx.shape = backward_s, pause, weight.shape
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.pause(ctx.backward_s)
        # the weight's gradient left unfilled: a layer's backward writes it within its
        # profiled time, so filling it here would be work the layer does not add
        return grad, grad.new_empty(ctx.shape), None, None, None


class SleepLayer(nn.Module):
    """Passes its input on, sleeping (or ``pause``: ``Work``) ``forward_s`` forward and
    ``backward_s`` backward; its parameter of ``params`` floats gets a gradient (the
    schedule's gradient bookkeeping, DDP's all-reduce), as a trainer's do: a new tensor
    each batch, not filled here."""

    def __init__(self, forward_s, backward_s, pause=time.sleep, params=1):
        super().__init__()
        self.forward_s, self.backward_s, self.pause = forward_s, backward_s, pause
        self.weight = nn.Parameter(torch.ones(params))

    def forward(self, x):
        return _Sleep.apply(x, self.weight, self.forward_s, self.backward_s, self.pause)


WARM_UP = 0.1  # a run's first, untimed batch at this fraction of its durations: its messages and operations


class _Dial:
    """``pause`` (a sleep, or ``Work``) at ``scale`` of the seconds asked: the untimed
    first batch at WARM_UP (``_timed_after_first``)."""

    def __init__(self, pause):
        self.pause, self.scale = pause, 1.0

    def __call__(self, seconds):
        self.pause(seconds * self.scale)


def _now(gen):
    """The value of a transport's generator that never yields (a blocking receive)."""
    from synthetic.stage import run_alone

    return run_alone(gen)


def pipeline_sleep_worker(ctx, stages, batches, batch, delays, receives, pause=time.sleep):
    """Our pipeline's stage ``ctx.rank`` with sleeping compute (or ``pause``); rank 0
    returns the seconds of ``batches`` batches, from their first to the last stage's end
    (every rank's end, by a barrier), after one batch run alone and untimed (the
    processes' first messages and operations)."""
    from synthetic.profile import StageProfile
    from synthetic.transport import PointToPoint

    s, m, pause = ctx.rank, ctx.world_size, _Dial(pause)
    me = stages[s]
    width = lambda nbytes: max(nbytes // (4 * batch), 1)  # noqa: E731 - floats a sample at a cut
    in_w = width(stages[s - 1].out_bytes) if s > 0 else 1
    out_w = width(me.out_bytes)
    transport = PointToPoint(s, m, 1, (in_w,), (out_w,), torch.device("cpu"), torch.float32,
                             StageProfile(torch.device("cpu")))
    labels = torch.zeros(batch, dtype=torch.long)

    def run(count):
        nonlocal labels
        for kind, j in simulate.decoupled_programs(m, count, delays, receives)[s]:
            if kind == "F":
                if s > 0:
                    state, labels = _now(transport.recv_state(j, batch))
                pause(me.forward)
                if s < m - 1:
                    transport.send_state(j, (torch.zeros(batch, out_w),), labels)
                    if receives:
                        transport.expect_grad(j, batch)
            elif kind == "B":
                if s < m - 1 and receives:
                    _now(transport.recv_grad(j))
                pause(me.backward + (me.extra if s < m - 1 else 0.0))
                if s > 0 and receives:
                    transport.send_grad(j, (torch.zeros(batch, in_w),))
            else:
                pause(me.step)
        transport.flush()

    return _timed_after_first(ctx, lambda: run(1), lambda: run(batches), pause)


def peer_sleep_worker(ctx, stages, batches, batch, microbatches, order, pause=time.sleep):
    """torch's ScheduleGPipe or Schedule1F1B over sleeping stages (each stage one
    SleepLayer of its micro-batch durations, then its step's sleep; or ``pause``); rank 0
    returns the seconds of ``batches`` batches after a first one (in which the stages run
    their forward once more to infer the shapes they receive)."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    s, m, pause = ctx.rank, ctx.world_size, _Dial(pause)
    me = stages[s]
    width = max(me.out_bytes // (4 * (batch // microbatches)), 1)
    in_width = max(stages[s - 1].out_bytes // (4 * (batch // microbatches)), 1) if s > 0 else width
    body = nn.Sequential(SleepLayer(me.forward, me.backward, pause), _Resize(width))
    stage = PipelineStage(body, s, m, torch.device("cpu"), input_args=(torch.zeros(batch // microbatches,
                                                                                    in_width),))
    kind = ScheduleGPipe if order == "gpipe" else Schedule1F1B
    schedule = kind(stage, microbatches, loss_fn=lambda out, y: F.mse_loss(out, torch.zeros_like(out)))
    x, y = torch.zeros(batch, in_width), torch.zeros(batch)

    def one_batch():
        if s == 0:
            schedule.step(x)
        elif s == m - 1:
            schedule.step(target=y)
        else:
            schedule.step()
        pause(me.step)

    # the first batch untimed: the stages infer their shapes in it
    return _timed_after_first(ctx, one_batch, lambda: [one_batch() for _ in range(batches)], pause)


def ddp_sleep_worker(ctx, layers, batches, batch, pause=time.sleep):
    """torch's DistributedDataParallel over sleeping layers (one SleepLayer a layer, its
    parameter the layer's size, so that its gradients fill DDP's buckets as the layer's
    would; or ``pause``), each batch's step the layers' steps' sleep; rank 0 returns the
    seconds of ``batches`` batches after a first one."""
    from torch.nn.parallel import DistributedDataParallel

    pause = _Dial(pause)
    model = DistributedDataParallel(nn.Sequential(*(SleepLayer(c.forward, c.backward, pause, max(c.param_bytes // 4, 1))
                                                    for c in layers)))
    x, step = torch.zeros(batch, 1), sum(c.step for c in layers)

    def one_batch():
        model(x).sum().backward()
        pause(step)
        model.zero_grad(set_to_none=True)  # as the trainers do: no gradient filled, none summed into

    # the first batch untimed: DDP builds its buckets in it
    return _timed_after_first(ctx, one_batch, lambda: [one_batch() for _ in range(batches)], pause)


def _timed_after_first(ctx, first, rest, dial):
    """Rank 0's seconds of ``rest()`` on every rank, after ``first()`` untimed (a schedule's
    first batch: its processes' first messages and operations, its durations at WARM_UP
    through ``dial``), from a barrier to every rank's end (a barrier); None on the
    other ranks."""
    dist.barrier()
    dial.scale = WARM_UP
    first()
    dial.scale = 1.0
    dist.barrier()
    t0 = time.perf_counter()
    rest()
    dist.barrier()
    return time.perf_counter() - t0 if ctx.is_main else None


class _Resize(nn.Module):
    """The state a stage sends on: ``width`` features a sample (the cut's)."""

    def __init__(self, width):
        super().__init__()
        self.width = width

    def forward(self, x):
        return x[:, :1].expand(-1, self.width).contiguous() if x.shape[1] != self.width else x


def scaled_stages(stages, min_sleep_s):
    """The stages' durations times one factor that makes the shortest nonzero one ``min_sleep_s``."""
    shortest = min(v for c in stages for v in (c.forward, c.backward) if v > 0)
    k = max(min_sleep_s / shortest, 1.0)
    return [simulate.StageCost(c.forward * k, c.backward * k, c.step * k, c.extra * k, c.out_bytes, c.param_bytes,
                               c.activation_bytes) for c in stages], k


def with_overhead(stages, overhead, backward=True):
    """``stages`` with ``overhead`` seconds added to every forward and, with ``backward``,
    every backward operation: a schedule's own work on the host an operation that sends
    or receives a message (``harness.forecast.measure_overheads``).  Our pipeline under
    a rule that sends no gradient back (``local``) has no message in its backwards."""
    if not overhead:
        return stages
    return [replace(c, forward=c.forward + overhead, backward=c.backward + (overhead if backward else 0.0))
            for c in stages]


def _alone_in_turn(ctx):
    """One product's seconds on this rank (``Work.calibrate``), each rank alone in turn."""
    unit = None
    for r in range(ctx.world_size):
        dist.barrier()
        if ctx.rank == r:
            unit = Work.calibrate()
    dist.barrier()
    return unit


@dataclass(frozen=True)
class SleepRun:
    """One schedule's run: ``schedule`` (pipeline: ours with ``delays`` and whether its
    stages ``receives`` gradients; gpipe, 1f1b: torch's at ``microbatches``; ddp: torch's
    DDP over ``stages`` as its layers, on ``devices``) over ``stages`` (StageCost),
    ``batches`` timed batches of ``batch``.  Called on processes, it runs as a sleep
    workload; its ``timeline`` is its simulation (the forecast's schedules:
    ``harness.forecast.trainer_run``)."""

    schedule: str
    stages: list
    batches: int
    batch: int
    microbatches: int = 4
    delays: tuple | None = None
    receives: bool = True
    devices: int = 2  # ddp's (the pipelines': one a stage)

    @property
    def processes(self):
        return self.devices if self.schedule == "ddp" else len(self.stages)

    def __call__(self, ctx, pause=time.sleep):
        """This rank's part (rank 0: the seconds), each stage's compute ``pause`` (a sleep, or ``Work``)."""
        if self.schedule == "ddp":
            return ddp_sleep_worker(ctx, self.stages, self.batches, self.batch, pause)
        if self.schedule in ("gpipe", "1f1b"):
            return peer_sleep_worker(ctx, self.stages, self.batches, self.batch, self.microbatches, self.schedule,
                                     pause)
        return pipeline_sleep_worker(ctx, self.stages, self.batches, self.batch, self.delays, self.receives, pause)

    def timeline(self, link, overhead=0.0, host_comm=False):
        """The simulated Timeline (not yet run) of this schedule, ``overhead`` seconds of its
        own work added to every forward and backward that sends or receives a message
        (``with_overhead``; ddp: ``host_comm``, its all-reduce on the devices' cores)."""
        stages = with_overhead(self.stages, overhead, backward=self.receives)
        if self.schedule == "ddp":
            return simulate.ddp(stages, self.batches, self.devices, link, host_comm=host_comm)
        if self.schedule in ("gpipe", "1f1b"):
            return simulate.synchronous_pipeline(stages, self.batches, self.microbatches, link, self.schedule)
        return simulate.decoupled_pipeline(stages, self.batches, self.delays, link, self.receives)


def runs_worker(ctx, runs, busy):
    """Every SleepRun of ``runs`` in turn in these processes; rank 0 returns [(seconds,
    sharing factor)] a run.  With ``busy`` the stages compute
    (``Work``) instead of sleeping: each rank calibrates its product alone in turn, and
    for each run every rank computes at once (their sharing factor: the mean over the
    ranks of that work's seconds over what it took alone, at least 1), the schedule runs,
    and each rank calibrates alone again; its seconds are divided by the machine's drift
    during it (the mean of the two calibrations over the first, the ranks' mean), as the
    ranks' work lasted that much longer than the durations it stood for."""
    unit = _alone_in_turn(ctx) if busy else None
    out = []
    for run in runs:
        if not busy:
            out.append((run(ctx), 1.0))
            continue
        work, t0 = Work(unit), time.perf_counter()
        work(0.5)
        sharing = (time.perf_counter() - t0) / 0.5
        seconds = run(ctx, work)
        after = _alone_in_turn(ctx)
        shared = torch.tensor([sharing, (unit + after) / 2 / unit], dtype=torch.float64)
        dist.all_reduce(shared)
        sharing, drift = (shared / ctx.world_size).tolist()
        out.append((seconds / drift if ctx.is_main else None, max(sharing, 1.0)))
        unit = after
    return out if ctx.is_main else None


def measure_sleep(runs, busy=False):
    """[(seconds, sharing factor)] a run of the SleepRuns ``runs`` (one count of processes)
    in one group of processes (``runs_worker``); without ``busy`` the stages sleep and the
    sharing factors are 1."""
    from .launch import launch

    if not runs:
        return []
    counts = {run.processes for run in runs}
    if len(counts) > 1:
        raise ValueError(f"the runs of one group of processes need one count of processes; got {sorted(counts)}")
    (m,) = counts
    return launch(runs_worker, m, (runs, busy), threads=1, device="cpu", timeout_s=600)


def run_sleep(run, link, overhead=0.0):
    """(measured seconds, forecast seconds) of the SleepRun ``run``; the forecast with
    ``overhead`` seconds of the schedule's own work per forward and backward operation."""
    ((measured, _),) = measure_sleep([run])
    return measured, run.timeline(link, overhead).run().makespan
