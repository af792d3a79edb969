"""The forecast's schedules and messages checked beyond this machine's cores: stages whose
compute is a timed sleep, run as real processes whose tensors travel over gloo.

Each pipeline stage sleeps its stage's forward, backward and step durations; what it
sends is real (a state of the cut's width for every sample of the batch, its gradient
back) and goes through the same code as training:
  pipeline   our transport (``synthetic.transport.PointToPoint``), each stage in the order
             of ``harness.simulate.decoupled_programs`` (our stage generator's order);
  gpipe/1f1b torch.distributed.pipelining's ScheduleGPipe and Schedule1F1B over stages of
             sleeping layers (``SleepLayer``: an autograd function that sleeps in both
             passes), one step per stage per batch.
Sleeps need no core, so M processes on 2 cores stand for M devices, as long as each
process's own work per message (about a millisecond here) stays small beside its sleeps:
the durations are scaled so that the shortest sleep is ``min_sleep_s`` (100 ms in the
validation), which keeps that work to about 1-2 % of a stage's time; the host's cores
are not modelled.  DDP's all-reduce sums on the host's cores, so it has no sleep workload.
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import simulate


class _Sleep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, forward_s, backward_s):
        time.sleep(forward_s)
        ctx.backward_s = backward_s
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(ctx.backward_s)
        return grad, None, None


class SleepLayer(nn.Module):
    """Passes its input on, sleeping ``forward_s`` forward and ``backward_s`` backward."""

    def __init__(self, forward_s, backward_s):
        super().__init__()
        self.forward_s, self.backward_s = forward_s, backward_s
        self.scale = nn.Parameter(torch.ones(()))  # a parameter, for the schedule's gradient bookkeeping

    def forward(self, x):
        return _Sleep.apply(x * self.scale, self.forward_s, self.backward_s)  # on stage 0 too: a parameter before it


def _now(gen):
    """The value of a transport's generator that never yields (a blocking receive)."""
    from synthetic.stage import run_alone

    return run_alone(gen)


def pipeline_sleep_worker(ctx, stages, batches, batch, delays, receives):
    """Our pipeline's stage ``ctx.rank`` with sleeping compute; rank 0 returns the seconds
    from the first batch to the last stage's end (every rank's end, by a barrier)."""
    from synthetic.profile import StageProfile
    from synthetic.transport import PointToPoint

    s, m = ctx.rank, ctx.world_size
    me = stages[s]
    width = lambda nbytes: max(nbytes // (4 * batch), 1)  # noqa: E731 - floats a sample at a cut
    in_w = width(stages[s - 1].out_bytes) if s > 0 else 1
    out_w = width(me.out_bytes)
    transport = PointToPoint(s, m, 1, (in_w,), (out_w,), torch.device("cpu"), torch.float32,
                             StageProfile(torch.device("cpu")))
    program = simulate.decoupled_programs(m, batches, delays, receives)[s]
    labels = torch.zeros(batch, dtype=torch.long)
    dist.barrier()
    t0 = time.perf_counter()
    for kind, j in program:
        if kind == "F":
            if s > 0:
                state, labels = _now(transport.recv_state(j, batch))
            time.sleep(me.forward)
            if s < m - 1:
                transport.send_state(j, (torch.zeros(batch, out_w),), labels)
                if receives:
                    transport.expect_grad(j, batch)
        elif kind == "B":
            if s < m - 1 and receives:
                _now(transport.recv_grad(j))
            time.sleep(me.backward + (me.extra if s < m - 1 else 0.0))
            if s > 0 and receives:
                transport.send_grad(j, (torch.zeros(batch, in_w),))
        else:
            time.sleep(me.step)
    transport.flush()
    dist.barrier()
    return time.perf_counter() - t0 if ctx.is_main else None


def peer_sleep_worker(ctx, stages, batches, batch, microbatches, order):
    """torch's ScheduleGPipe or Schedule1F1B over sleeping stages (each stage one
    SleepLayer of its micro-batch durations, then its step's sleep); rank 0 returns the
    seconds of ``batches`` batches after a first one (in which the stages run their
    forward once more to infer the shapes they receive)."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    s, m = ctx.rank, ctx.world_size
    me = stages[s]
    width = max(me.out_bytes // (4 * (batch // microbatches)), 1)
    in_width = max(stages[s - 1].out_bytes // (4 * (batch // microbatches)), 1) if s > 0 else width
    body = nn.Sequential(SleepLayer(me.forward, me.backward), _Resize(width))
    stage = PipelineStage(body, s, m, torch.device("cpu"), input_args=(torch.zeros(batch // microbatches,
                                                                                    in_width),))
    kind = ScheduleGPipe if order == "gpipe" else Schedule1F1B
    schedule = kind(stage, microbatches, loss_fn=lambda out, y: F.mse_loss(out, torch.zeros_like(out)))
    x, y = torch.zeros(batch, in_width), torch.zeros(batch)
    for k in range(batches + 1):  # the first batch untimed: the stages infer their shapes in it
        if k == 1:
            dist.barrier()
            t0 = time.perf_counter()
        if s == 0:
            schedule.step(x)
        elif s == m - 1:
            schedule.step(target=y)
        else:
            schedule.step()
        time.sleep(me.step)
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


def with_overhead(stages, overhead):
    """``stages`` with ``overhead`` seconds added to every forward and backward operation:
    a schedule's own work per operation on the host (``harness.forecast.measure_overheads``)."""
    return [replace(c, forward=c.forward + overhead, backward=c.backward + overhead) for c in stages] \
        if overhead else stages


def sleep_timeline(trainer, stages, batches, link, *, microbatches=4, delays=None, receives=True):
    """The simulated Timeline (not yet run) of ``trainer``'s schedule over ``stages``."""
    if trainer in ("gpipe", "1f1b"):
        return simulate.synchronous_pipeline(stages, batches, microbatches, link, trainer)
    return simulate.decoupled_pipeline(stages, batches, delays, link, receives)


def run_sleep(trainer, stages, batches, batch, link, *, microbatches=4, delays=None, receives=True, overhead=0.0):
    """(measured seconds, forecast seconds) of the sleep workload of ``trainer`` (gpipe,
    1f1b, or a pipeline with ``delays``) over len(stages) processes; the forecast with
    ``overhead`` seconds of the schedule's own work per forward and backward operation."""
    from .launch import launch

    m = len(stages)
    if trainer in ("gpipe", "1f1b"):
        measured = launch(peer_sleep_worker, m, (stages, batches, batch, microbatches, trainer), threads=1,
                          device="cpu", timeout_s=600)
    else:
        measured = launch(pipeline_sleep_worker, m, (stages, batches, batch, delays, receives), threads=1,
                          device="cpu", timeout_s=600)
    tl = sleep_timeline(trainer, with_overhead(stages, overhead), batches, link, microbatches=microbatches,
                        delays=delays, receives=receives)
    return measured, tl.run().makespan
