"""Where a pipeline stage's time goes: compute, waiting, communication, and a timeline."""
from __future__ import annotations

import time
from contextlib import contextmanager

from models.training import sync

# kind -> category of the per-stage table
CATEGORIES = {"forward": "compute", "backward": "compute", "module": "compute", "step": "compute",
              "replay": "compute", "head": "compute",
              "wait input": "wait_input", "wait gradient": "wait_gradient", "send": "communication"}
BUSY = ("compute",)
IDLE = ("wait_input", "wait_gradient")


class StageProfile:
    """Accumulates the seconds of each kind of work of one stage (``with prof("forward"):``)
    and keeps the intervals of the first ``timeline_batches`` batches for a Gantt chart.

    On a GPU each interval ends with a synchronisation, so that it times the work and
    not its queueing; on the CPU the clock alone suffices."""

    def __init__(self, device, timeline_batches=8):
        self.device = device
        self.seconds = {k: 0.0 for k in CATEGORIES}
        self.events = []  # (kind, batch, start, end), seconds from ``start``
        self.timeline_batches = timeline_batches
        self.batch = 0
        self.origin = time.perf_counter()
        self.wall = 0.0

    def start(self):
        """The clock's origin: the moment every stage leaves the starting barrier."""
        self.origin = time.perf_counter()

    def stop(self):
        self.wall = time.perf_counter() - self.origin

    @contextmanager
    def __call__(self, kind):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            t1 = time.perf_counter()
            self.seconds[kind] += t1 - t0
            if self.batch < self.timeline_batches:
                self.events.append((kind, self.batch, t0 - self.origin, t1 - self.origin))

    def summary(self):
        """{busy_s, idle_s, communication_s, other_s, wall_s, per category and kind}."""
        by_cat = {}
        for kind, s in self.seconds.items():
            by_cat[CATEGORIES[kind]] = by_cat.get(CATEGORIES[kind], 0.0) + s
        busy = sum(by_cat.get(c, 0.0) for c in BUSY)
        idle = sum(by_cat.get(c, 0.0) for c in IDLE)
        comm = by_cat.get("communication", 0.0)
        return {"busy_s": busy, "idle_s": idle, "communication_s": comm,
                "other_s": max(self.wall - busy - idle - comm, 0.0), "wall_s": self.wall,
                "busy_fraction": busy / self.wall if self.wall > 0 else 0.0,
                **{f"{c}_s": v for c, v in by_cat.items() if c not in ("communication",)},
                "kinds_s": dict(self.seconds), "timeline": self.events}


def profile_table(profiles):
    """The per-stage table that distSg.py prints."""
    head = f"{'stage':>5} {'busy s':>8} {'wait in s':>9} {'wait grad s':>11} {'comm s':>7} {'other s':>7} " \
           f"{'wall s':>7} {'busy':>6}"
    rows = [head]
    for i, p in enumerate(profiles):
        rows.append(f"{i:>5} {p['busy_s']:>8.2f} {p.get('wait_input_s', 0.0):>9.2f} "
                    f"{p.get('wait_gradient_s', 0.0):>11.2f} {p['communication_s']:>7.2f} {p['other_s']:>7.2f} "
                    f"{p['wall_s']:>7.2f} {p['busy_fraction']:>6.1%}")
    return "\n".join(rows)
