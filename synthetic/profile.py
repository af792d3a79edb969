"""Where a pipeline stage's time goes: compute, waiting, communication, and a timeline."""
from __future__ import annotations

from collections import deque
from contextlib import contextmanager

from models.devices import clock_for

# kind -> category of the per-stage table; every other kind (a rule's own: Rule.kinds) is compute
CATEGORIES = {"forward": "compute", "backward": "compute", "step": "compute",
              "wait input": "wait_input", "wait gradient": "wait_gradient", "send": "communication"}
BUSY = ("compute",)
IDLE = ("wait_input", "wait_gradient")


class StageProfile:
    """Accumulates the seconds of each kind of work of one stage (``with prof("forward"):``)
    and keeps the intervals of the first ``timeline_batches`` batches for a Gantt chart.

    The intervals are read on the clock of the stage's device (models.devices): the host's
    clock on the CPU; on a GPU, CUDA events recorded on the compute stream, whose times
    are read once they have completed (``summary``, or as later intervals are opened).
    Nothing here waits for the device, so a receive posted on a communication stream
    keeps overlapping the compute that follows it."""

    def __init__(self, device, timeline_batches=8):
        self.device = device
        self.clock = clock_for(device)
        self.seconds = {k: 0.0 for k in CATEGORIES}
        self.events = []  # (kind, batch, start, end), seconds from ``start``
        self.timeline_batches = timeline_batches
        self.batch = 0
        self.origin = self.clock.mark()
        self.end = None
        self._open = deque()  # (kind, batch, start mark, end mark) not yet read

    def start(self):
        """The clock's origin: the moment every stage leaves the starting barrier."""
        self.origin = self.clock.mark()

    def stop(self):
        self.end = self.clock.mark()

    @contextmanager
    def __call__(self, kind):
        t0 = self.clock.mark()
        try:
            yield
        finally:
            self._open.append((kind, self.batch, t0, self.clock.mark()))
            self._read(wait=False)

    def _read(self, wait):
        """Book the intervals whose end mark has completed (all of them with ``wait``)."""
        clock = self.clock
        while self._open and (wait or clock.done(self._open[0][3])):
            kind, batch, t0, t1 = self._open.popleft()
            if wait:
                clock.wait(t1)
            self.seconds[kind] = self.seconds.get(kind, 0.0) + clock.seconds(t0, t1)
            if batch < self.timeline_batches:
                self.events.append((kind, batch, clock.seconds(self.origin, t0), clock.seconds(self.origin, t1)))

    @property
    def wall(self):
        if self.end is None:
            return 0.0
        self.clock.wait(self.end)
        return self.clock.seconds(self.origin, self.end)

    def summary(self):
        """{busy_s, idle_s, communication_s, other_s, wall_s, per category and kind}."""
        self._read(wait=True)
        by_cat = {}
        for kind, s in self.seconds.items():
            category = CATEGORIES.get(kind, "compute")
            by_cat[category] = by_cat.get(category, 0.0) + s
        busy = sum(by_cat.get(c, 0.0) for c in BUSY)
        idle = sum(by_cat.get(c, 0.0) for c in IDLE)
        comm = by_cat.get("communication", 0.0)
        wall = self.wall
        return {"busy_s": busy, "idle_s": idle, "communication_s": comm,
                "other_s": max(wall - busy - idle - comm, 0.0), "wall_s": wall,
                "busy_fraction": busy / wall if wall > 0 else 0.0,
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
