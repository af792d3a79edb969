"""The machine's speed now: how long a backprop step takes one process alone, and each of
two processes computing at once, timed on demand between the validation's runs.

This machine's speed wanders by 10-20 % within minutes, and how much two processes slow
each other (memory bandwidth, caches, the host's scheduling of two vCPUs) wanders with
it, so the validation (``harness.forecast.validate``) times both just before and just
after every run and forecasts the run at their means, rather than at the speed its
profile was taken at.  ``Pacer`` keeps its processes between measurements, waiting on a
pipe (no core), so that a measurement costs its steps, not a process start.
"""
from __future__ import annotations

import multiprocessing
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Pace:
    """Seconds of a whole backprop step: one process alone, and the mean of the processes
    computing at once."""

    alone: float
    together: float

    @property
    def sharing(self):
        """How much slower each of the processes computing at once is than one alone."""
        return self.together / self.alone

    @staticmethod
    def mean(paces):
        return Pace(statistics.fmean(p.alone for p in paces), statistics.fmean(p.together for p in paces))


def _serve(conn, net, x, y, min_s):
    """A pacer process: on each message, time backprop steps (``time_step``, one thread)
    and send their seconds a step back; None ends it."""
    import torch

    from .forecast import time_step

    torch.set_num_threads(1)
    while conn.recv() is not None:
        conn.send(sum(time_step(net, x, y, min_s=min_s)))


class Pacer:
    """``processes`` one-thread processes that time backprop steps of ``net`` on (x, y),
    each over ``min_s`` seconds of steps: ``measure()`` gives a Pace (the first process
    alone while the others wait, then all at once).  A context manager: the processes
    end on leaving it."""

    def __init__(self, net, x, y, processes=2, min_s=1.0):
        ctx = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        try:
            for _ in range(processes):
                here, there = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(there, net, x, y, min_s), daemon=True)
                proc.start()
                self.conns.append(here)
                self.procs.append(proc)
        except BaseException:
            self.close()
            raise

    def _time(self, conns):
        for conn in conns:
            conn.send(True)
        return [conn.recv() for conn in conns]

    def measure(self):
        (alone,) = self._time(self.conns[:1])
        return Pace(alone, statistics.fmean(self._time(self.conns)))

    def close(self):
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
