"""Each trainer's schedule on M devices as events with their dependencies, and the time
it takes: the simulation behind ``scripts/forecast.py``.

A schedule is a list of operations, each on one resource (a device, or the link from one
device to another, or the ring of DDP's all-reduce) for a duration, after the operations
it depends on.  A resource does one thing at a time, in the order the schedule gives it
(the order its program runs them: torch's Schedule1F1B's, our stage's generator's), so
that one pass over the operations in dependency order gives every start and end time
(``Timeline.run``): no event queue is needed, because no resource chooses between
waiting operations at run time (a link carries its messages in the order its one sender
sends them).  What a device's program does while it waits is not modelled: it waits.

Costs come per stage (``StageCost``), at the batch size the operation runs: forward and
backward seconds, the rule's extra work, the optimiser's step, the bytes each message
carries.  A message takes ``Link.seconds(bytes)`` = latency + bytes / bandwidth on its
link, and links are full duplex (one resource per direction).

Trainers (``schedule``):
  backprop       one device: forward, backward, step per batch
  ddp            M devices, each B/M of every batch; the gradients all-reduced in buckets
                 (ring: 2 (M-1)/M of a bucket's bytes per device, 2 (M-1) latencies), each
                 bucket as soon as its layers' backward is done, overlapping the rest
  gpipe, 1f1b    M stages, ``microbatches`` per batch, torch's orders (ScheduleGPipe:
                 every forward, then every backward; Schedule1F1B: M - s forwards, then
                 one backward, one forward, ...), one step per stage per batch
  pipeline       our stages with a decoupling rule: stage s runs batch b's forward,
                 sends it on, then the backward of batch b - k_s (k_s its delay, 0 for the
                 exact rule) once that batch's gradient has come back; a local rule
                 (no gradients travel back) runs its own backward at once
"""
from __future__ import annotations

import bisect
import contextlib
import gc
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Link:
    """A point-to-point link: ``latency_s`` per message and ``gbps`` (gigabits a second)."""

    gbps: float
    latency_s: float
    name: str = ""
    reduce_gbps: float = 0.0  # measured: a 2-process all-reduce's bytes a second (its sums included); 0: gbps

    def seconds(self, nbytes):
        return self.latency_s + 8 * nbytes / (self.gbps * 1e9) if nbytes else 0.0


# Named links: nominal one-direction bandwidth and a typical small-message latency.
LINKS = {
    "nvlink4": Link(3600.0, 2e-6, "NVLink 4 (H100: 450 GB/s a direction, ~2 us)"),
    "pcie4": Link(256.0, 5e-6, "PCIe 4.0 x16 (32 GB/s a direction, ~5 us)"),
    "ib100": Link(100.0, 3e-6, "InfiniBand 100 Gb/s (~3 us)"),
    "10gbe": Link(10.0, 30e-6, "10 Gb Ethernet over TCP (~30 us)"),
    "free": Link(float("inf"), 0.0, "a free link: no latency, no transfer time"),
}


@dataclass
class StageCost:
    """One stage's seconds and bytes for one (micro)batch."""

    forward: float
    backward: float
    step: float = 0.0  # the optimiser's step of its parameters
    extra: float = 0.0  # what its rule adds (a module, a local head, a second forward pass, stashing)
    out_bytes: int = 0  # the state it sends to the next stage (its gradient travels back alike)
    param_bytes: int = 0  # its parameters (DDP's all-reduce; memory)
    activation_bytes: int = 0  # what its forward keeps for its backward (memory)


@dataclass
class Op:
    name: str
    resource: str
    duration: float
    deps: tuple = ()
    start: float = 0.0
    end: float = 0.0
    args: dict = field(default_factory=dict)
    before: list = field(default_factory=list, repr=False)  # what it waits for, its resource's previous op too (run)


class Timeline:
    """Operations on resources; ``run`` times them."""

    def __init__(self):
        self.ops = []

    def add(self, name, resource, duration, deps=(), **args):
        self.ops.append(Op(name, resource, duration, tuple(d for d in deps if d is not None), args=args))
        return len(self.ops) - 1

    def run(self):
        """Start every operation when its resource's previous one and its dependencies have
        ended (Kahn's order over both kinds of edge); a cycle is a deadlock."""
        previous, waiting, users = {}, [], [[] for _ in self.ops]
        for k, op in enumerate(self.ops):
            before = list(op.deps)
            if op.resource in previous:
                before.append(previous[op.resource])
            previous[op.resource] = k
            waiting.append(len(before))
            for d in before:
                users[d].append(k)
            op.before = before
        ready = [k for k, n in enumerate(waiting) if n == 0]
        done = 0
        while ready:
            k = ready.pop()
            op = self.ops[k]
            op.start = max((self.ops[d].end for d in op.before), default=0.0)
            op.end = op.start + op.duration
            done += 1
            for u in users[k]:
                waiting[u] -= 1
                if waiting[u] == 0:
                    ready.append(u)
        if done < len(self.ops):
            stuck = [self.ops[k].name for k, n in enumerate(waiting) if n][:5]
            raise RuntimeError(f"schedule deadlock: {stuck} wait for each other")
        return self

    def run_sharing(self, factor, rounds=4, alike=False):
        """``run``, with devices that share a host's cores: an operation on a device runs
        ``factor`` times slower while the other devices compute (its duration stretched by
        1 + (factor - 1) x the fraction of it that overlaps their work), by a fixed point
        of a few passes; with ``alike``, one device stands for several that compute the
        same operations at the same times (DDP), so each of its operations that computes
        overlaps theirs all along (``factor`` times slower).  ``factor`` is measured (two
        processes computing at once against one alone), not fitted.  Messages and
        all-reduces (``comm``) are not stretched: the link is measured with its processes
        at once."""
        base = [op.duration for op in self.ops]
        if alike:
            for op in self.ops:
                op.duration *= factor if _computes(op) else 1.0
            return self.run()
        self.run()
        if factor == 1:
            return self
        for _ in range(rounds):
            busy = {}  # device -> its operations' (start, end), in time order
            for op in self.ops:
                if _computes(op):
                    busy.setdefault(op.resource, []).append((op.start, op.end))
            for intervals in busy.values():
                intervals.sort()
            for op, d in zip(self.ops, base):
                if not _computes(op):
                    continue
                shared = sum(_overlap(op.start, op.end, busy[r]) for r in busy if r != op.resource)
                op.duration = d * (1 + (factor - 1) * min(shared / op.duration, 1.0))
            self.run()
        return self

    @property
    def makespan(self):
        return max((op.end for op in self.ops), default=0.0)

    def busy(self, resource):
        return self.busy_all().get(resource, 0.0)

    def busy_all(self):
        """{resource: seconds of its operations}, in one pass."""
        out = {}
        for op in self.ops:
            out[op.resource] = out.get(op.resource, 0.0) + op.duration
        return out

    def devices(self):
        return sorted({op.resource for op in self.ops if op.resource.startswith("device")},
                      key=lambda r: int(r.split()[1]))

    def chrome_trace(self, path=None, process="forecast"):
        """The simulated operations as a Chrome trace (``chrome_trace``)."""
        return chrome_trace([(op.resource, op.name, op.start, op.duration, op.args) for op in self.ops
                             if op.duration > 0], path, process)


def chrome_trace(events, path=None, process=""):
    """The Chrome trace JSON (torch.profiler's export format; Perfetto reads it) of
    ``events`` [(row, name, start s, duration s, args)]: one row (thread) per row name,
    in order of appearance, times in microseconds; written to ``path`` if given."""
    rows = {r: k for k, r in enumerate(dict.fromkeys(e[0] for e in events))}
    trace = [{"name": "thread_name", "ph": "M", "pid": 0, "tid": k, "args": {"name": r}} for r, k in rows.items()]
    trace.append({"name": "process_name", "ph": "M", "pid": 0, "args": {"name": process}})
    trace += [{"name": name, "ph": "X", "pid": 0, "tid": rows[row], "ts": 1e6 * start, "dur": 1e6 * dur,
               "args": args} for row, name, start, dur, args in events]
    out = {"traceEvents": trace, "displayTimeUnit": "ms"}
    if path is not None:
        from datasets.files import write_json
        write_json(Path(path), out)
    return out


def batch_of(op):
    """The batch an operation works on (its ``batch``, or its ``id``: a micro-batch's is
    (batch, micro-batch)); None for a message."""
    b = op.args.get("batch", op.args.get("id"))
    return b[0] if isinstance(b, tuple) else b


def vary(tl, durations, ratios, rng, slowest_of=1):
    """Set each operation's duration to ``durations``', a device's work on one batch (its
    operations of that batch but all-reduces) all scaled by one factor drawn from
    ``ratios`` (a step's seconds over the mean step's, measured), the largest of
    ``slowest_of`` draws where one device stands for that many in lock-step; without
    ``ratios``, the durations as they are."""
    factors = {}
    for op, d in zip(tl.ops, durations):
        if ratios and op.resource.startswith("device") and not op.args.get("comm"):
            key = (op.resource, batch_of(op))
            if key not in factors:
                factors[key] = max(rng.choice(ratios) for _ in range(slowest_of))
            d *= factors[key]
        op.duration = d
    return tl


def _computes(op):
    """Whether ``op`` is a device's compute: not a message, not an all-reduce (``comm``), not empty."""
    return op.resource.startswith("device") and op.duration > 0 and not op.args.get("comm")


def _overlap(start, end, intervals):
    """Seconds of [start, end) covered by the sorted, disjoint ``intervals``."""
    k = bisect.bisect_left(intervals, (start, start)) - 1
    total = 0.0
    for a, b in intervals[max(k, 0):]:
        if a >= end:
            break
        total += max(0.0, min(b, end) - max(a, start))
    return total


def _send(tl, src, dst, nbytes, link, dep, name):
    """A message from device src to dst after ``dep``; None when it takes no time."""
    duration = link.seconds(nbytes)
    if duration == 0:
        return dep
    return tl.add(name, f"link {src}->{dst}", duration, (dep,))


def backprop(stage, batches):
    """One device: the whole network is ``stage``."""
    tl = Timeline()
    for b in range(batches):
        tl.add(f"F{b}", "device 0", stage.forward, batch=b)
        tl.add(f"B{b}", "device 0", stage.backward + stage.extra, batch=b)
        tl.add(f"step{b}", "device 0", stage.step, batch=b)
    return tl


def ring_allreduce_s(nbytes, m, link):
    """A ring all-reduce of ``nbytes`` over m devices: 2 (m-1) steps of nbytes / m each
    (each step at the link's measured all-reduce rate where there is one: 2 processes
    reduce 2 x nbytes / 2 in all)."""
    if m == 1:
        return 0.0
    gbps = link.reduce_gbps or link.gbps
    return 2 * (m - 1) * (link.latency_s + 8 * nbytes / m / (gbps * 1e9))


def ddp(layers, batches, m, link, bucket_bytes=25 * 2 ** 20, host_comm=False):
    """DDP on m devices, one device simulated (they are alike): ``layers`` is a list of
    StageCost, one per layer at the per-device batch, in forward order.  Buckets are
    filled in backward order (torch's reverse-order buckets of ``bucket_bytes``), each
    all-reduced when its last layer's backward is done; the step waits for them all.
    With ``host_comm`` the all-reduce runs on the device itself (processes on CPU cores,
    whose transport sums and copies on those cores), so it overlaps nothing."""
    tl = Timeline()
    for b in range(batches):
        for j, layer in enumerate(layers):
            tl.add(f"f{b}.{j}", "device 0", layer.forward, batch=b, layer=j)
        pending, filled, reduces = 0, 0, []
        for j in reversed(range(len(layers))):
            done = tl.add(f"b{b}.{j}", "device 0", layers[j].backward, batch=b, layer=j)
            pending += layers[j].param_bytes
            filled += 1
            if pending >= bucket_bytes or j == 0:
                reduces.append(tl.add(f"allreduce{b}.{j}", "device 0" if host_comm else "ring",
                                      ring_allreduce_s(pending, m, link), (done,), batch=b, bytes=pending, comm=True))
                pending = 0
        tl.add(f"step{b}", "device 0", sum(layer.step for layer in layers), reduces, batch=b)
    return tl


def _gpipe(s, m, mbs):
    return [("F", j) for j in range(mbs)] + [("B", j) for j in range(mbs)]


def _1f1b(s, m, mbs):
    """torch's Schedule1F1B order on stage s of m: min(mbs, m - s) forwards, then a
    backward and a forward in turn while forwards are left, then the backwards left."""
    warm = min(mbs, m - s)
    ops, f, b = [("F", j) for j in range(warm)], warm, 0
    while b < mbs:
        ops.append(("B", b))
        b += 1
        if f < mbs:
            ops.append(("F", f))
            f += 1
    return ops


ORDERS = {"gpipe": _gpipe, "1f1b": _1f1b}


def place(tl, programs, stages, link, receives_gradients=True):
    """Each stage's program (a list of ("F", id), ("B", id), ("step", id)) on its device,
    in its order.  F of stage s waits for the state of the same id from stage s - 1; B of
    a stage before the last waits for the gradient at its output (unless no gradient
    travels back: a local rule); states and gradients travel on the links.  Stages are
    placed in turns, each as far as its dependencies exist, so that every operation is
    added after those it waits for."""
    m, state, grad = len(stages), {}, {}
    at = [0] * m  # each stage's next operation in its program
    while any(at[s] < len(programs[s]) for s in range(m)):
        moved = False
        for s in range(m):
            while at[s] < len(programs[s]):
                kind, j = programs[s][at[s]]
                c = stages[s]
                if kind == "F":
                    if s > 0 and (s, j) not in state:
                        break
                    op = tl.add(f"F{j}", f"device {s}", c.forward, (state.get((s, j)),), id=j)
                    if s < m - 1:
                        state[(s + 1, j)] = _send(tl, s, s + 1, c.out_bytes, link, op, f"state{j}")
                elif kind == "B":
                    waits = receives_gradients and s < m - 1
                    if waits and (s, j) not in grad:
                        break
                    op = tl.add(f"B{j}", f"device {s}", c.backward + (c.extra if s < m - 1 else 0.0),
                                (grad.get((s, j)),), id=j)
                    if s > 0 and receives_gradients:
                        grad[(s - 1, j)] = _send(tl, s, s - 1, stages[s - 1].out_bytes, link, op, f"grad{j}")
                else:
                    tl.add(f"step{j}", f"device {s}", c.step, id=j)
                at[s] += 1
                moved = True
        if not moved:
            raise RuntimeError("schedule deadlock: " + ", ".join(f"stage {s} at {programs[s][at[s]]}"
                                                                   for s in range(m) if at[s] < len(programs[s])))
    return tl


def synchronous_pipeline(stages, batches, microbatches, link, order="gpipe"):
    """GPipe or 1F1B over len(stages) devices, ``stages`` at the micro-batch size; each
    batch ends with every stage's step (a flush)."""
    m = len(stages)
    programs = [[(kind, (b, j)) for b in range(batches)
                 for kind, j in ORDERS[order](s, m, microbatches) + [("step", None)]] for s in range(m)]
    return place(Timeline(), programs, stages, link)


def decoupled_pipeline(stages, batches, delays, link, receives_gradients=True):
    """Our pipeline with a rule: stage s (all but the last) runs the forward of batch b,
    sends its output on and, with true gradients, the backward and step of batch
    b - delays[s] (after its gradient has come back; at the end of the epoch those
    still owed); without (a local rule) its own backward and step at once.  The last
    stage runs forward, backward and step of each batch and sends the gradient back.
    ``delays[s]`` = 0 is the exact rule."""
    programs = decoupled_programs(len(stages), batches, delays, receives_gradients)
    return place(Timeline(), programs, stages, link, receives_gradients)


def decoupled_programs(m, batches, delays, receives_gradients=True):
    """Each stage's order of work in our pipeline (``decoupled_pipeline``): the order of
    synthetic.stage's generator, a rule's late backward after the forward that makes it due."""
    programs = []
    for s in range(m):
        k = 0 if s == m - 1 or not receives_gradients else delays[s]
        program = []
        for b in range(batches):
            program.append(("F", b))
            if b - k >= 0:
                program += [("B", b - k), ("step", b - k)]
        program += [op for late in range(max(batches - k, 0), batches) for op in (("B", late), ("step", late))]
        programs.append(program)
    return programs


def in_flight(tl, device):
    """The most (micro)batches whose forward ("F...") has run on ``device`` and whose
    backward ("B...") has not: how many sets of activations it keeps at once (DDP's
    per-layer operations, "f..." and "b...", are one batch's)."""
    return in_flight_all(tl).get(device, 0)


def in_flight_all(tl):
    """``in_flight`` of every resource, in one pass over the operations in time order."""
    now, peak = {}, {}
    for op in sorted(tl.ops, key=lambda op: op.start):
        r = op.resource
        now[r] = now.get(r, 0) + {"F": 1, "B": -1}.get(op.name[0], 0)
        peak[r] = max(peak.get(r, 0), now[r])
    return peak


@contextlib.contextmanager
def without_gc():
    """Python's cyclic garbage collector held off: a schedule's hundreds of thousands of
    operations hold no reference cycles, and its passes over them as they accumulate
    took half of a large forecast's time (1F1B on 16 devices, 468 batches)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
