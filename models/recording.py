"""Training curves measured fairly: points taken during training, evaluated after it.

A ``Recorder`` keeps a training clock that runs only while the trainer trains.  At
its start and at each point (``points_per_epoch`` an epoch, evenly spaced over its
batches, the last one after the epoch's end) it stops the clock, copies the parameters its process holds to
the CPU, notes the epochs done and the mean training loss of the batches since the
previous point, and starts the clock again.  The copies are evaluated after the run
(``evaluate_points``), so that neither evaluation nor the copies count as training
time.  With several processes each keeps its own points; ``gather_points`` joins them
on rank 0 (the time of a point: the latest of the processes' clocks).
"""
from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .devices import sync
from .training import OFF, Hooks, evaluate


@dataclass
class Point:
    seconds: float  # training time when the point was taken
    epoch: float  # passes over the training set done (fractions between epoch ends)
    loss: float | None  # mean training loss of the batches since the previous point (None: not here)
    state: dict = field(default_factory=dict, repr=False)  # {name: CPU tensor} of the parameters held


class Recorder(Hooks):
    """Points of one process's training (``held``: {name: parameter} it trains or holds).

    ``start()`` before the first batch; ``batch_end(loss, size)`` after every batch (the
    loss where this process has one); ``epoch_end()`` once an epoch's work is done;
    ``paused()`` around any other work that is not training (evaluation, logging)."""

    def __init__(self, held, batches_per_epoch, points_per_epoch=1, device=None, *, epoch=0, seconds=0.0,
                 states=True):
        # states=False: the points keep their times and losses, no parameters (a run timed, never evaluated)
        self.held, self.device = (dict(held) if states else {}), device
        n, p = batches_per_epoch, max(1, min(points_per_epoch, batches_per_epoch))
        self.due = {round(k * n / p) for k in range(1, p)}  # mid-epoch points: after these many batches
        self.n_batches, self.epoch, self.b = n, epoch, 0
        self.points: list[Point] = []
        self.offset, self.t0, self._pause_from = seconds, None, None
        self.loss_sum, self.loss_count = 0.0, 0

    def start(self):
        """Start the clock, and take the first point (the parameters before training)."""
        self._sync()
        self.t0 = time.perf_counter()
        if not self.points:
            self.take(self.epoch)

    def seconds(self):
        """Training time so far (not counting the pauses)."""
        now = self._pause_from if self._pause_from is not None else time.perf_counter()
        return self.offset + now - self.t0

    @contextmanager
    def paused(self):
        """The clock stands still inside."""
        self._sync()
        self._pause_from = time.perf_counter()
        try:
            yield
        finally:
            self.t0 += time.perf_counter() - self._pause_from
            self._pause_from = None

    def batch_end(self, loss=None, size=0):
        if loss is not None:
            self.loss_sum = self.loss_sum + loss.detach() * size
            self.loss_count += size
        self.b += 1
        if self.b in self.due:
            self.take(self.epoch + self.b / self.n_batches)

    def epoch_end(self, loss=None, epochs=1):
        """The epoch's last point (``loss``: its mean, for a trainer that only knows it
        then; ``epochs``: the passes over the training set since the previous point)."""
        if loss is not None:
            self.loss_sum, self.loss_count = loss, 1
        self.epoch, self.b = self.epoch + epochs, 0
        self.take(self.epoch)

    def take(self, epoch):
        with self.paused():
            loss = float(self.loss_sum) / self.loss_count if self.loss_count else None
            state = {n: p.detach().to("cpu", copy=True) for n, p in self.held.items()}
            self.points.append(Point(self.seconds(), epoch, loss, state))
            self.loss_sum, self.loss_count = 0.0, 0

    def gather(self, replicated=False):
        """``gather_points`` of this rank's points."""
        return gather_points(self.points, replicated)

    def _sync(self):
        """The clock reads after the compute queued on the device's stream (models.devices:
        a posted receive on a communication stream is not waited for)."""
        if self.device is not None:
            sync(self.device)


def recorder(held, n_samples, batch_size, points_per_epoch, device=None, epoch=0, states=True):
    """A Recorder of ``points_per_epoch`` points an epoch, or OFF when that is 0;
    ``states=False``: its points hold no parameters."""
    if points_per_epoch <= 0:
        return OFF
    return Recorder(held, -(-n_samples // batch_size), points_per_epoch, device, epoch=epoch, states=states)


def gather_points(points, replicated=False):
    """Rank 0's list of the points of every rank (None elsewhere): the time of a point
    is the latest of the ranks' clocks, its loss the mean over the ranks that have one,
    its state the union of the parameters the ranks hold (``replicated``: every rank
    holds them all, and rank 0's are taken)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    meta = [None] * world
    dist.all_gather_object(meta, [(p.seconds, p.epoch, p.loss) for p in points])
    if not replicated:
        states = [None] * world if rank == 0 else None
        dist.gather_object([p.state for p in points], states, dst=0)
    if rank != 0:
        return None
    joined = []
    for k, p in enumerate(points):
        losses = [m[k][2] for m in meta if m[k][2] is not None]
        state = p.state if replicated else {n: t for s in states for n, t in s[k].items()}
        joined.append(Point(max(m[k][0] for m in meta), p.epoch, sum(losses) / len(losses) if losses else None, state))
    return joined


@torch.no_grad()
def evaluate_points(net, points, x, y, offset=0.0):
    """Each point's test accuracy: its parameters loaded into ``net`` (a copy is changed,
    not ``net``); returns [{seconds, epoch, loss, test_acc}] with ``offset`` added to the
    times."""
    net = copy.deepcopy(net)
    out = []
    for p in points:
        net.load_state_dict(p.state, strict=False)
        out.append({"seconds": offset + p.seconds, "epoch": p.epoch, "loss": p.loss,
                    "test_acc": evaluate(net, x, y)})
    return out
