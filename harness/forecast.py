"""Each trainer's seconds per epoch on M devices, forecast from a profile taken here.

The profile (``profile_network``) times, on this process's device and threads, each
layer's forward and backward pass and its optimiser step (Adam), the opening layer and
the classifier with its loss, at every batch size a trainer runs (B; B / MICROBATCHES for
GPipe and 1F1B; B / M for DDP), and counts the bytes of each cut's state and each layer's
parameters; for GPipe and 1F1B at each micro-batch size, a backward pass into gradients
that already hold earlier micro-batches' against one into fresh ones, and the division
of the gradients that torch's schedules make after the last (``Microbatching``); and,
with SCHEDULE_OVERHEAD, each schedule's own host work per forward or backward operation
(``measure_overheads``: two processes whose stages do nothing, over gloo; DDP's too),
added to every operation it runs; and each step's seconds over the mean step's
(``variation``), from which each device's work on a batch is drawn.  A rule's extra
work at a stage is what the balancer measures for it (``synthetic.balance.measure_costs``:
its module or head at the cut, its further passes).  Cuts are the balancer's
(``balanced_bounds``) on the rule's costs.

``forecast`` turns the profile into each stage's costs (``simulate.StageCost``), runs the
trainer's schedule over a whole epoch (``harness.simulate``) and gives its seconds per
epoch, each device's busy fraction and each device's peak memory: parameters, their
gradients and Adam's two moments (4 x the parameters' bytes), the activations of the
(micro)batches in flight at once (from the simulated order), and a stash of the stage's
weights per batch in flight for the rules that keep one (delayed, predicted,
accumulated, local-delayed).  The trainers forecast are backprop (bp-1t, bp-all: one
device), ddp, gpipe, 1f1b and pipeline-<rule>; multilevel and PVD are not.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import random
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from models.devices import sync
from models.training import make_optimizer
from synthetic.balance import Costs, balanced_bounds, forward_states, lift_parameters, measure_costs, time_pieces
from synthetic.rules import delay, rule_class

from . import simulate
from .race import threads
from .simulate import LINKS, Link, StageCost
from .sleep_workload import SleepRun

FORECAST_TRAINERS = ("bp-1t", "bp-all", "ddp", "gpipe", "1f1b")  # and pipeline-<rule>


@dataclass
class Profile:
    """What the forecast needs of a network: times per batch size, bytes per sample."""

    times: dict  # batch size -> LayerTimes
    state_bytes: list  # bytes per sample of the state entering layer j (j = 0 .. n), the cut after j - 1
    param_bytes: list  # bytes of layer j's parameters
    first_param_bytes: int = 0
    last_param_bytes: int = 0
    costs: dict = field(default_factory=dict)  # rule -> its Costs (measure_costs), for its extra work
    bounds: dict = field(default_factory=dict)  # (rule, M) -> the cuts: the balancer's, or a run's own
    microbatch: dict = field(default_factory=dict)  # micro-batch size -> Microbatching (GPipe, 1F1B)
    overhead: dict = field(default_factory=dict)  # schedule_of(trainer) -> its own work's seconds an operation
    variation: dict = field(default_factory=dict)  # batch size -> its steps' seconds over their mean (``variation``)

    def extra(self, rule, m, bounds=None):
        """Each stage's extra seconds for ``rule`` at its cuts on m devices (``bounds``, else
        the profile's; batch B): its work at the stage's cut and its further passes; the
        last stage has no cut."""
        costs, bounds = self.costs.get(rule), bounds or self.bounds.get((rule, m))
        if costs is None or bounds is None:
            return None
        return [costs.extra(s, a, b, m) for s, (a, b) in enumerate(bounds)]

    @property
    def n_layers(self):
        return len(self.param_bytes)

    def step_s(self, batch):
        """Seconds of a whole backprop step at ``batch`` (every piece's forward, backward and step)."""
        t = self.times[batch]
        return sum(t.whole(j) for j in range(self.n_layers + 2))

    @property
    def total_param_bytes(self):
        return sum(self.param_bytes) + self.first_param_bytes + self.last_param_bytes


@dataclass(frozen=True)
class Microbatching:
    """What torch's GPipe and 1F1B pay for cutting a batch into micro-batches, beyond the
    backprop of each: a micro-batch's backward pass into gradients that already hold the
    earlier ones' (``accumulate``, against one into fresh gradients), and the division of
    every gradient by the micro-batch count after the last backward pass
    (``PipelineStage.scale_grads``; ``scale_s`` for the whole network's gradients)."""

    accumulate: float = 1.0
    scale_s: float = 0.0


def _nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def _clock(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def step_rows(net, batches, steps=10, min_s=2.0):
    """{b: [(forward pass with the loss, backward pass, Adam's step) seconds of each
    backprop step]} of the whole ``net`` as ``fit`` takes it, at each batch (x, y) of
    ``batches`` ({b: (x, y)}), one step at each batch size in turn a round, so that a
    drift of the machine's speed falls on every batch size alike, over at least
    ``steps`` rounds and ``min_s`` seconds a batch size on average, after two unmeasured
    rounds."""
    nets = {b: copy.deepcopy(net).to(x.device).train() for b, (x, _) in batches.items()}
    opts = {b: make_optimizer("adam", n.parameters(), 1e-9) for b, n in nets.items()}
    rows, spent, rounds = {b: [] for b in batches}, 0.0, 0
    while rounds < steps + 2 or spent < min_s * len(batches):
        for b, (x, y) in batches.items():
            tf, loss = _clock(lambda: F.cross_entropy(nets[b](x), y), x.device)
            tb, _ = _clock(loss.backward, x.device)
            ts, _ = _clock(opts[b].step, x.device)
            opts[b].zero_grad(set_to_none=True)
            rows[b].append((tf, tb, ts))
            spent += tf + tb + ts if rounds >= 2 else 0.0
        rounds += 1
    return {b: r[2:] for b, r in rows.items()}


def time_step(net, x, y, steps=10, min_s=2.0):
    """Seconds of one backprop step (forward with the loss, backward, step), each the mean
    of ``step_rows``.  An epoch's time is a sum, so a mean predicts it, and this machine's
    speed wanders by 10-15 % from one second to the next: a second or two of steps
    averages that out."""
    return _means(step_rows(net, {len(y): (x, y)}, steps, min_s)[len(y)])


def _means(rows):
    return tuple(statistics.fmean(r[k] for r in rows) for k in range(3))


def variation(rows):
    """Each step's seconds over the mean step's, sorted: how one step differs from the next."""
    mean = sum(_means(rows))
    return tuple(sorted(sum(r) / mean for r in rows))


def time_layers(net, batches, repeats=5):
    """{b: (LayerTimes of ``net`` on the batch (x, y), its steps' ``variation``)} for each
    batch of ``batches`` ({b: (x, y)}).  Each piece is timed alone
    (``synthetic.balance.time_pieces``: the median over ``repeats`` rounds, every piece
    once a round, so that a drift of the machine's speed falls on all of them alike, as
    the balancer times them); those times give each piece's share, and the whole
    network's step (``step_rows``, the batch sizes in turn) their sum: a piece's forward
    time is its share of the whole forward pass, and so on.  Pieces timed one by one pay
    per-call costs that a whole step does not, and a few milliseconds of each are
    noisier than their sum."""
    rows = step_rows(net, batches)
    return {b: (time_pieces(copy.deepcopy(net).to(x.device).train(), x, y, repeats).scaled(_means(rows[b])),
                variation(rows[b])) for b, (x, y) in batches.items()}


def time_microbatching(net, x, y, min_s=1.0):
    """``Microbatching`` of ``net`` at micro-batch (x, y): in each round a backward pass
    into fresh gradients, a second into the gradients it left, and the division of them
    all (torch's ``scale_grads``), over at least ``min_s`` seconds of rounds after one
    unmeasured: the median of the rounds' ratios of the second to the first (a stall in
    one pass moves a mean of a few dozen by several per cent), the division's median."""
    net = copy.deepcopy(net).to(x.device).train()
    params = [p for p in net.parameters() if p.requires_grad]
    rows, spent = [], 0.0
    while len(rows) < 6 or spent < min_s:
        for p in params:
            p.grad = None
        fresh, _ = _clock(F.cross_entropy(net(x), y).backward, x.device)
        held, _ = _clock(F.cross_entropy(net(x), y).backward, x.device)
        scale, _ = _clock(lambda: [p.grad.div_(2) for p in params], x.device)
        rows.append((fresh, held, scale))
        spent += fresh + held + scale if len(rows) > 1 else 0.0
    return Microbatching(statistics.median(held / fresh for fresh, held, _ in rows[1:]),
                         statistics.median(scale for _, _, scale in rows[1:]))


def profile_network(net, x, y, batch_sizes, repeats=5, microbatch_sizes=()):
    """The Profile of ``net``, timed at each of ``batch_sizes`` on the first samples of (x,
    y), and its ``Microbatching`` at each of ``microbatch_sizes``."""
    timed = time_layers(net, {b: (x[:b], y[:b]) for b in sorted(set(batch_sizes))}, repeats)
    return Profile({b: t for b, (t, _) in timed.items()}, [_nbytes(s) for s in forward_states(net, x[:1])],
                   [_nbytes(net.layer_parameters(j, j + 1)) for j in range(net.n_layers)],
                   _nbytes(lift_parameters(net)), _nbytes(list(net.classifier.parameters())),
                   microbatch={b: time_microbatching(net, x[:b], y[:b]) for b in sorted(set(microbatch_sizes))},
                   variation={b: v for b, (_, v) in timed.items()})


def add_rule(profile, costs, rule, m):
    """``rule``'s ``costs`` (``measure_costs``) and its cuts into m stages balanced on them."""
    bounds = balanced_bounds(costs, m)
    profile.costs[rule] = costs
    profile.bounds[(rule, m)] = bounds
    return bounds


def stage_costs(profile, bounds, batch, extra=None, microbatches=1):
    """StageCost of each stage of ``bounds`` at ``batch`` samples; with ``microbatches`` > 1
    (GPipe, 1F1B: ``batch`` is a micro-batch) each backward pass is the mean of the first
    into fresh gradients and the others into held ones, and each step divides the
    stage's gradients first (``Microbatching``)."""
    t = profile.times[batch]
    mb = profile.microbatch.get(batch, Microbatching()) if microbatches > 1 else Microbatching()
    out = []
    for s, (a, b) in enumerate(bounds):
        fwd, bwd, step = sum(t.forward[a:b]), sum(t.backward[a:b]), sum(t.step[a:b])
        params = sum(profile.param_bytes[a:b])
        if s == 0:
            fwd, bwd, step, params = fwd + t.first[0], bwd + t.first[1], step + t.first[2], \
                params + profile.first_param_bytes
        if s == len(bounds) - 1:
            fwd, bwd, step, params = fwd + t.last[0], bwd + t.last[1], step + t.last[2], \
                params + profile.last_param_bytes
        bwd *= (1 + (microbatches - 1) * mb.accumulate) / microbatches
        step += mb.scale_s * params / profile.total_param_bytes
        out.append(StageCost(forward=fwd, backward=bwd, step=step, extra=(extra or [0.0] * len(bounds))[s],
                             out_bytes=profile.state_bytes[b] * batch,
                             param_bytes=params, activation_bytes=sum(profile.state_bytes[a:b]) * batch))
    return out


def microbatches_of(trainer, m, microbatches):
    """torch's Schedule1F1B needs at least as many micro-batches as stages: it runs
    max(MICROBATCHES, M); GPipe runs MICROBATCHES."""
    return max(microbatches, m) if trainer == "1f1b" else microbatches


def per_device_batches(trainer, batch, m, microbatches):
    if m == 1 or trainer in ("bp-1t", "bp-all"):
        return [batch]
    if trainer == "ddp":
        return [batch // m]
    if trainer in ("gpipe", "1f1b"):
        return [batch // microbatches_of(trainer, m, microbatches)]
    return [batch]


def ddp_layers(profile, share):
    """StageCost of each layer for DDP at ``share`` samples a device, in forward order: the
    opening layer's work and parameters on the first, the classifier's on the last, every
    step at the end."""
    t, n = profile.times[share], profile.n_layers
    layers = [StageCost(t.forward[j], t.backward[j], t.step[j], param_bytes=profile.param_bytes[j]) for j in range(n)]
    layers[0].forward += t.first[0]
    layers[0].backward += t.first[1]
    layers[0].param_bytes += profile.first_param_bytes
    layers[-1].forward += t.last[0]
    layers[-1].backward += t.last[1]
    layers[-1].step += t.last[2] + t.first[2]
    layers[-1].param_bytes += profile.last_param_bytes
    return layers


def _memory_mb(stage, in_flight_count, stash):
    state = 4 * stage.param_bytes  # weights, gradients, Adam's two moments
    kept = stage.activation_bytes * in_flight_count
    return (state + kept + (stage.param_bytes * in_flight_count if stash else 0)) / 2 ** 20


def cuts_of(profile, rule, m):
    """The bounds of ``rule``'s m stages: the profile's (the balancer's, or a run's own),
    else balanced on its times (``balanced_layers``)."""
    return profile.bounds.get((rule, m)) or balanced_layers(profile, m)


def trainer_run(profile, trainer, m, batch, batches, microbatches, max_in_flight=0):
    """The SleepRun of ``trainer`` (ddp, gpipe, 1f1b or pipeline-<rule>) on ``m`` devices
    at the profile's durations: DDP over its layers at batch / m a device; GPipe and 1F1B
    over the exact rule's cuts at their micro-batches; the pipeline over its rule's cuts
    with the rule's extra work and delays (``rule_delays``); the cuts ``cuts_of``'s.  Its
    ``timeline`` is the forecast's schedule (``_schedule``); run on processes, the sleep
    workload (``validate_sleep``)."""
    if trainer == "ddp":
        return SleepRun("ddp", ddp_layers(profile, batch // m), batches, batch, devices=m)
    rule = _rule_of(trainer)
    bounds = cuts_of(profile, rule, m)
    if trainer in ("gpipe", "1f1b"):
        mbs = microbatches_of(trainer, m, microbatches)
        return SleepRun(trainer, stage_costs(profile, bounds, batch // mbs, microbatches=mbs), batches, batch,
                        microbatches=mbs)
    return pipeline_run(profile, rule, bounds, batch, batches, max_in_flight)


def pipeline_run(profile, rule, bounds, batch, batches, max_in_flight=0, stages=None):
    """The SleepRun of our pipeline under ``rule`` over ``bounds``: its stages' costs with
    the rule's extra work (or ``stages``), at the rule's delays (``rule_delays``), its
    gradients sent back or not."""
    m = len(bounds)
    if stages is None:
        stages = stage_costs(profile, bounds, batch, profile.extra(rule, m, bounds))
    return SleepRun("pipeline", stages, batches, batch, delays=tuple(rule_delays(rule, m, max_in_flight)),
                    receives=rule_class(rule).receives_gradients)


def _schedule(profile, trainer, m, batch, batches, link, microbatches, max_in_flight, host_comm):
    """The trainer's Timeline (not yet run), the costs of its devices' stages, whether its
    rule stashes weights, and each stage's delay (the pipeline's rules; else None)."""
    n = profile.n_layers
    if m == 1 or trainer in ("bp-1t", "bp-all"):
        (whole,) = stage_costs(profile, [(0, n)], batch)
        return simulate.backprop(whole, batches), [whole], False, None
    run = trainer_run(profile, trainer, m, batch, batches, microbatches, max_in_flight)
    tl = run.timeline(link, profile.overhead.get(schedule_of(trainer), 0.0), host_comm=host_comm)
    if trainer == "ddp":
        return tl, stage_costs(profile, [(0, n)], batch // m) * m, False, None  # every device's memory
    if run.schedule != "pipeline":
        return tl, run.stages, False, None
    return tl, run.stages, rule_class(_rule_of(trainer)).stashes, list(run.delays)


def rule_delays(rule, m, max_in_flight=0):
    """Each of m stages' delay for ``rule``: 0 for the exact rule (lock-step), else the
    pipeline's (``synthetic.rules.delay``: MAX_IN_FLIGHT, or max(M - 1 - i, 1) at stage i)."""
    return [0 if rule == "exact" else delay(max_in_flight, s, m) for s in range(m)]


VARIED_BATCHES = 256  # a forecast with its steps' variation: the mean of draws over at least these batches


def forecast(profile, trainer, m, *, batch, batches, link, microbatches=4, max_in_flight=0, trace=False,
             host=None, pace=1.0, vary=True):
    """{epoch_s, busy, memory_mb, delays} of ``trainer`` on ``m`` devices for an epoch of
    ``batches`` batches of ``batch``; with ``trace``, also the simulated Timeline
    (``timeline``).  ``host``: the devices are processes sharing this
    machine's cores, their compute ``host`` times slower while others compute
    (``Timeline.run_sharing``) and DDP's all-reduce on their cores.  ``pace``: the
    machine's speed now against the profile's (a whole step's seconds now over the
    profile's), which every operation on a device is scaled by.  With ``vary`` and the
    profile's step-to-step ``variation`` at the batch size a device runs, each device's
    work on each batch is scaled by a draw from it (``simulate.vary``; DDP's one
    simulated device by the slowest of m draws, its all-reduces waiting for every
    device), and the epoch is the mean of enough draws to span VARIED_BATCHES batches:
    devices in lock-step wait for the slower one each batch."""
    with simulate.without_gc():
        tl, stages, stash, delays = _schedule(profile, trainer, m, batch, batches, link, microbatches, max_in_flight,
                                              host_comm=host is not None)
        lockstep = trainer == "ddp" and m > 1  # one device simulated: every device computes alike
        base = [op.duration * (pace if op.resource.startswith("device") else 1.0) for op in tl.ops]
        ratios = profile.variation.get(per_device_batches(trainer, batch, m, microbatches)[0]) if vary else None
        rng, spans = random.Random(0), []
        for _ in range(math.ceil(VARIED_BATCHES / batches) if ratios else 1):
            simulate.vary(tl, base, ratios, rng, m if lockstep else 1)
            if host is None:
                tl.run()
            else:
                tl.run_sharing(host, alike=lockstep)
            spans.append(tl.makespan)
        devices, last, busy, peaks = tl.devices(), tl.makespan, tl.busy_all(), simulate.in_flight_all(tl)
    memory = [_memory_mb(stages[k], max(peaks.get(d, 0), 1), stash) for k, d in enumerate(devices)]
    out = {"epoch_s": statistics.fmean(spans), "busy": [busy[d] / last if last else 0.0 for d in devices],
           "memory_mb": memory, "delays": delays}
    if trace:
        out["timeline"] = tl
    return out


def parse_link(text):
    """LINK: a preset name, or "GBPS,LATENCY_US" (ValueError otherwise); "measured" is
    handled by the caller."""
    if text in LINKS:
        return LINKS[text]
    try:
        gbps, latency = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"LINK must be measured, one of {', '.join(LINKS)}, or GBPS,LATENCY_US such as "
                         f"10,30; got {text!r}") from None
    if gbps <= 0 or latency < 0:
        raise ValueError(f"LINK {text!r}: the bandwidth must be > 0 and the latency >= 0")
    return Link(gbps, latency * 1e-6, f"{gbps:g} Gb/s, {latency:g} us")


def link_worker(ctx, sizes, repeats):
    """Rank 0 and 1 bounce a tensor of each size (bytes) ``repeats`` times over the group's
    transport; rank 0 returns {size: median one-way seconds, "all_reduce": the mean
    seconds of an all-reduce of the largest, over a second of them back to back}."""
    import torch.distributed as dist

    out = {}
    for size in sizes:
        buf = torch.zeros(max(size // 4, 1), device=ctx.device)
        times = []
        for k in range(repeats + 2):
            dist.barrier()
            t0 = time.perf_counter()
            if ctx.rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            else:
                dist.recv(buf, 0)
                dist.send(buf, 0)
            if k >= 2:
                times.append((time.perf_counter() - t0) / 2)
        out[size] = statistics.median(times)
    big = torch.ones(max(sizes) // 4, device=ctx.device)
    for _ in range(3):  # warm-up; the last one times how many make a second
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(big)
    count = torch.tensor([max(repeats, math.ceil(1.0 / max(time.perf_counter() - t0, 1e-6)))], device=ctx.device)
    dist.broadcast(count, 0)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(int(count)):  # back to back, as DDP's buckets go: the mean over a second
        dist.all_reduce(big)
    sync(ctx.device)
    out["all_reduce"] = (time.perf_counter() - t0) / int(count)
    return out if ctx.rank == 0 else None


def measure_link(device="cpu", sizes=(4, 2 ** 16, 2 ** 20, 2 ** 23), repeats=20):
    """This machine's transport between two processes as a Link: latency the one-way time
    of the smallest message, bandwidth the slope between the smallest and the largest."""
    from .launch import launch

    times = launch(link_worker, 2, (list(sizes), repeats), threads=1, device=device)
    small, large = min(sizes), max(sizes)
    slope = (times[large] - times[small]) / (large - small)
    # a 2-process all-reduce of the largest message: 2 (m-1)/m = 1 of its bytes each way, its sums included
    reduce = 8 * large / max(times["all_reduce"] - 2 * times[small], 1e-9) / 1e9
    return Link(8 / slope / 1e9 if slope > 0 else float("inf"), times[small],
                f"measured here: {8 / slope / 1e9:.2f} Gb/s, {1e6 * times[small]:.0f} us, all-reduce "
                f"{reduce:.2f} Gb/s", reduce), times


# ---- the entry script's experiment (scripts/forecast.py) ------------------------------------

VALIDATION_NETS = (("verlet", False), ("resnet", False), ("verlet", True))  # CHOICE, CONV: N layers (conv: 6)


def forecastable():
    """The trainers the forecast knows: backprop, the torch peers, the pipeline with each rule."""
    from synthetic.rules import RULES

    return (*FORECAST_TRAINERS, *(f"pipeline-{r}" for r in RULES))


def parse_devices(text):
    try:
        devices = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        devices = []
    if not devices or min(devices) < 1 or len(set(devices)) != len(devices):
        raise ValueError(f"DEVICES must be distinct counts >= 1 separated by commas, such as 1,2,4,8; got {text!r}")
    return sorted(devices)


def trainer_list(text):
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    for name in names:
        if name not in forecastable():
            raise ValueError(f"unknown or unforecast trainer {name!r}; valid: {', '.join(forecastable())}")
    if not names:
        raise ValueError("TRAINERS names no trainer")
    return names


def check_forecast(cfg):
    """forecast.py's own rules (UsageError: one line, exit status 2)."""
    from .cli import UsageError, check

    try:
        devices, names = parse_devices(cfg.DEVICES), trainer_list(cfg.TRAINERS)
        for text in (cfg.LINK, cfg.OTHER_LINK):
            if text and text != "measured":
                parse_link(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    parts = {p.strip() for p in str(cfg.VALIDATE_PARTS).split(",") if p.strip()}
    check(parts and parts <= {"real", "sleep"}, f"VALIDATE_PARTS must name real, sleep or both; got "
                                                f"{cfg.VALIDATE_PARTS!r}")
    many = [m for m in devices if m > 1]
    for t in [t for t in names if t in ("gpipe", "1f1b")]:
        for m in devices:
            mbs = microbatches_of(t, m, cfg.MICROBATCHES)
            check(cfg.BATCH_SIZE % mbs == 0, f"BATCH_SIZE {cfg.BATCH_SIZE} does not split into the {mbs} "
                                             f"micro-batches of {t} on {m} devices")
    if "ddp" in names and many:
        check(cfg.BATCH_SIZE >= max(many), f"DDP shares a batch of {cfg.BATCH_SIZE} among {max(many)} devices: "
                                           "BATCH_SIZE must be at least the largest of DEVICES")
    if any(t not in ("bp-1t", "bp-all", "ddp") for t in names) and many:
        check(cfg.N >= max(many), f"N ({cfg.N}) layers cannot be cut into {max(many)} stages (DEVICES)")


def _rule_of(trainer):
    """The rule whose cuts a staged trainer runs: pipeline-<rule>'s; the exact rule's
    (backprop's) for gpipe and 1f1b; None for the others."""
    if trainer.startswith("pipeline-"):
        return trainer.split("-", 1)[1]
    return "exact" if trainer in ("gpipe", "1f1b") else None


def rules_of(names, devices):
    """(rule, M) pairs whose cuts and extra work the forecast needs."""
    rules = {_rule_of(t) for t in names} - {None}
    return [(r, m) for r in sorted(rules) for m in devices if m > 1]


def batch_sizes(names, batch, devices, microbatches):
    return sorted({b for t in names for m in devices for b in per_device_batches(t, batch, m, microbatches)})


def take_profile(net, x, y, names, devices, microbatches, repeats, log=print):
    t0 = time.perf_counter()
    micro = batch_sizes([t for t in names if t in ("gpipe", "1f1b")], len(y), [m for m in devices if m > 1],
                        microbatches)
    profile = profile_network(net, x, y, batch_sizes(names, len(y), devices, microbatches), repeats, micro)
    costs = {}
    for rule, m in rules_of(names, devices):
        if rule not in costs:
            costs[rule] = measure_costs(net, x, y, rule=rule, repeats=repeats)
        add_rule(profile, costs[rule], rule, m)
    log(f"profile: {profile.n_layers} layers at batch sizes {sorted(profile.times)}, "
        f"{len(profile.bounds)} cuts, {time.perf_counter() - t0:.1f} s" + "".join(
            f"; micro-batches of {b}: a backward into held gradients {mb.accumulate:.2f}x one into fresh, "
            f"scaling them {1e3 * mb.scale_s:.1f} ms" for b, mb in profile.microbatch.items()))
    return profile


def schedule_of(trainer):
    """The schedule whose own work a trainer pays an operation (``measure_overheads``):
    ddp, gpipe, 1f1b, or pipeline-<rule> (ours at the rule's delays, its gradients sent
    back or not: the exact rule's stages take turns, a decoupled rule's compute at once,
    and their messages' own work differs with it); None for backprop."""
    if trainer in ("ddp", "gpipe", "1f1b") or trainer.startswith("pipeline-"):
        return trainer
    return None


def schedules_of(names):
    """The schedules of ``names`` whose own work a forecast adds."""
    return sorted({schedule_of(t) for t in names} - {None})


def overhead_for(run, link, measured, sharing=1.0, host_comm=False):
    """The seconds o that, added to every forward and backward of the SleepRun ``run``
    (``SleepRun.timeline``; their compute ``sharing`` times slower while others compute,
    ``Timeline.run_sharing``: DDP's two devices, simulated as one, all along), make it
    take ``measured`` seconds (bisection: the span grows with o; 0 when even o = 0
    takes longer)."""
    def span(o):
        tl = run.timeline(link, o, host_comm=host_comm)
        return tl.run_sharing(sharing, alike=run.schedule == "ddp").makespan

    lo, hi = 0.0, measured
    for _ in range(40 if span(0.0) < measured else 0):
        lo, hi = ((lo + hi) / 2, hi) if span((lo + hi) / 2) < measured else (lo, (lo + hi) / 2)
    return lo


def trainers_cut(profile):
    """Where the trainers on 2 devices cut: the exact rule's cut (``cuts_of``: GPipe's and
    1F1B's, balanced on the measured costs; every rule's on the validation's networks)."""
    return cuts_of(profile, "exact", 2)[0][1]


def own_work_run(profile, schedule, batch, batches, microbatches, max_in_flight=0, busy=False, cut=None):
    """The SleepRun that measures ``schedule``'s own work on 2 processes: the profile's
    states at ``cut`` (DDP: its layers' sizes at batch / 2 a device), its stages computing
    their durations with ``busy`` (a pipeline's rule's extra work too), else doing nothing;
    a pipeline at its rule's delays (``rule_delays``).  ``cut`` defaults to the middle
    layer: one figure stands for every cut on M devices, most of them inside the
    network.  A conv network's state differs from cut to cut (the first unit's is twice
    the second's), and so do its messages' costs: the validation measures at the cut
    its two-process runs take (``trainers_cut``)."""
    if schedule == "ddp":
        layers = ddp_layers(profile, batch // 2)
        return SleepRun("ddp", layers if busy else [StageCost(0.0, 0.0, param_bytes=c.param_bytes) for c in layers],
                        batches, batch)
    cut = profile.n_layers // 2 if cut is None else cut
    bounds = [(0, cut), (cut, profile.n_layers)]
    if schedule.startswith("pipeline-"):
        idle = [StageCost(0.0, 0.0, out_bytes=profile.state_bytes[cut] * batch), StageCost(0.0, 0.0)]
        return pipeline_run(profile, _rule_of(schedule), bounds, batch, batches, max_in_flight,
                            None if busy else idle)
    mbs = microbatches_of(schedule, 2, microbatches)
    stages = stage_costs(profile, bounds, batch // mbs, microbatches=mbs) if busy \
        else [StageCost(0.0, 0.0, out_bytes=profile.state_bytes[cut] * (batch // mbs)), StageCost(0.0, 0.0)]
    return SleepRun(schedule, stages, batches, batch, microbatches=mbs)


def measure_overheads(profile, names, link, batch, microbatches, max_in_flight=0, batches=40, rounds=3, busy=False,
                      log=print, cut=None):
    """{schedule: seconds of its own work per forward or backward operation} for each
    schedule of ``names`` (torch's DDP, ScheduleGPipe and Schedule1F1B, our pipeline
    under each rule: ``schedule_of``): its sleep workload (``own_work_run``, at ``cut``)
    for ``batches`` batches of ``batch`` on 2 processes over ``link``'s transport (gloo
    here), and the seconds o that make the simulated schedule, every forward and backward
    o longer, take as long (``overhead_for``), the median over ``rounds`` runs (a stall
    of a few milliseconds moves one run by half).  Every run shares one group of
    processes (``measure_sleep``).  Its stages do nothing, or with ``busy`` compute the
    profile's durations (``harness.sleep_workload.Work``, their sharing of the cores
    measured in the same run; DDP's all-reduce on those cores).  That is the host's work
    of splitting, queueing, receiving, bucketing and bookkeeping that a profile of the
    layers does not hold, on idle cores (a device's host) or on the cores the processes
    compute on (two processes on this machine, whose transports' threads take their
    compute's cores)."""
    from .sleep_workload import measure_sleep

    schedules = schedules_of(names) * rounds
    runs = [own_work_run(profile, s, batch, batches, microbatches, max_in_flight, busy, cut) for s in schedules]
    measured = measure_sleep(runs, busy)
    found = {}
    for schedule, run, (seconds, sharing) in zip(schedules, runs, measured):
        found.setdefault(schedule, []).append(overhead_for(run, link, seconds, sharing, host_comm=busy))
    out = {s: statistics.median(v) for s, v in found.items()}
    if out:
        log(f"each schedule's own work an operation{' on busy cores' if busy else ''} (the median of its runs; "
            "their range): " + ", ".join(f"{k} {1e3 * v:.2f} ms ({1e3 * min(found[k]):.2f}-{1e3 * max(found[k]):.2f})"
                                         for k, v in out.items()))
    return out


def forecast_table(profile, names, devices, *, batch, batches, link, microbatches, max_in_flight=0, vary=True):
    """{trainer: {M: {epoch_s, busy, memory_mb, delays}}}."""
    return {t: {m: forecast(profile, t, m, batch=batch, batches=batches, link=link, microbatches=microbatches,
                            max_in_flight=max_in_flight, vary=vary) for m in devices} for t in names}


def format_table(table, devices):
    head = f"{'trainer (forecast)':<24}" + "".join(f"{f'M = {m}':>22}" for m in devices)
    rows = [head]
    for t, by_m in table.items():
        cells = []
        for m in devices:
            f = by_m[m]
            cells.append(f"{f['epoch_s']:9.2f} s {statistics.fmean(f['busy']):4.0%} "
                         f"{max(f['memory_mb']):5.0f}MB")
        rows.append(f"{t:<24}" + "".join(f"{c:>22}" for c in cells))
    return "\n".join(rows) + "\n(seconds per epoch, mean busy fraction of the devices, largest device memory)"


VALIDATE_EPOCHS = 2  # a validation run's epochs: the first pays for starting, the second is measured
# batches of each run measuring a schedule's own work on busy cores (its stages compute):
# runs of 16 and of 48 batches spread alike (docs/RESULTS.md): the machine's speed swings
# over seconds, and a run's residual grows with its length
BUSY_BATCHES = 8
# runs of each schedule's own work just before each round of a workload's runs (the
# median): one run a round, so that the median run of a row takes out a figure that one
# run read far off (measured once a workload, three runs' median still spread 0.75-2.05
# ms for GPipe on one workload over four validations, and moved every run alike)
OWN_WORK_ROUNDS = 1
SHARING_S = 1.0  # seconds of steps that each of the sharing factor's rounds times, alone and together
# rounds of the sharing factor (the median) just before each round of a workload's runs:
# one round's ratio wanders 0.93-1.16, and the factor drifts with the machine over minutes
SHARING_ROUNDS = 3


def steady_epochs(curve):
    """The seconds of each epoch after the first (which pays the start-up) of a curve with
    one point an epoch and one at the start."""
    seconds = [p["seconds"] for p in curve]
    return [b - a for a, b in zip(seconds[1:], seconds[2:])]


def steady_epoch_s(curve):
    """The median of ``steady_epochs``: a burst of the machine's slowness moves one epoch,
    not the median."""
    return statistics.median(steady_epochs(curve))


def sharing_worker(ctx, net, x, y, rounds, min_s=SHARING_S):
    """Rounds of rank 0 timing backprop steps (``time_step`` over ``min_s`` seconds) alone
    while the others wait at a barrier, then every rank at once: rank 0 returns [(alone,
    the ranks' mean together)], seconds a step."""
    import torch.distributed as dist

    out = []
    for _ in range(rounds):
        dist.barrier()
        alone = sum(time_step(net, x, y, min_s=min_s)) if ctx.rank == 0 else 0.0
        dist.barrier()
        mine = torch.tensor(sum(time_step(net, x, y, min_s=min_s)), dtype=torch.float64)
        dist.all_reduce(mine)
        out.append((alone, mine.item() / ctx.world_size))
    return out if ctx.rank == 0 else None


def sharing_of(pairs):
    """How much slower a step's compute is when one-thread processes compute at once than
    when one computes alone, from ``sharing_worker``'s pairs: the median of the ratio of
    the mean step times together and alone (taken in turn by the same processes, so that
    a drift of the machine's speed falls on both), at least 1 (processes do not speed
    each other up: a ratio below 1 is the drift)."""
    return max(statistics.median(together / alone for alone, together in pairs), 1.0)


def sharing_factor(net, x, y, processes=2, rounds=SHARING_ROUNDS, min_s=SHARING_S):
    """``sharing_of`` ``rounds`` of ``sharing_worker`` (``min_s`` seconds of steps alone and
    together) on ``processes`` one-thread processes."""
    from .launch import launch

    return sharing_of(launch(sharing_worker, processes, (net, x, y, rounds, min_s), threads=1, device="cpu"))


def machine_pace(net, x, y):
    """Seconds of a whole backprop step of ``net`` on (x, y) in this process on one thread,
    over a second of steps, at least ten (``time_step``): the machine's speed now,
    against a profile's ``step_s`` taken in this process too (the machine's speed
    wanders from one second to the next: a window shorter than ten steps catches more
    of that wander)."""
    with threads(1):
        return sum(time_step(net, x, y, min_s=1.0))


def validation_row(profile, trainer, m, curve, step_s, sharing, **kw):
    """A validation run's row: its steady epoch (``steady_epoch_s``) against its forecast
    at the machine's speed now (``step_s``: a whole step's seconds around the run, over
    the profile's: ``pace``), m > 1 devices sharing the cores by ``sharing``; and the
    forecast at the profile's own speed beside it."""
    pace, host = step_s / profile.step_s(kw["batch"]), sharing if m > 1 else None
    measured, predicted = steady_epoch_s(curve), forecast(profile, trainer, m, host=host, pace=pace, **kw)["epoch_s"]
    return {"trainer": trainer, "devices": m, "measured_epoch_s": measured, "forecast_epoch_s": predicted,
            "error": predicted / measured - 1, "first_epoch_s": curve[1]["seconds"] - curve[0]["seconds"],
            "pace": pace, "sharing": host or 1.0,
            "forecast_at_profile_pace_s": forecast(profile, trainer, m, host=host, **kw)["epoch_s"]}


def median_run(rows):
    """The row of a trainer's repeated validation runs: the run whose error is the median
    (the lower of the two middle ones for an even count), every run's row under "runs";
    one run's row as it is.  A run that a burst of the machine's slowness stretched
    moves the median no further than the runs beside it."""
    if len(rows) == 1:
        return rows[0]
    middle = sorted(rows, key=lambda r: r["error"])[(len(rows) - 1) // 2]
    return {**middle, "runs": rows}


@dataclass
class Workload:
    """One network at one batch size of the validation, and what its runs are forecast from."""

    name: str
    net: object  # the network, whose steps time the machine's pace (``machine_pace``)
    x: torch.Tensor  # one batch
    y: torch.Tensor
    profile: Profile  # taken alone, one thread; its ``overhead``: the schedules' own work on busy cores
    race: object  # harness.race.Race: the trainers' runs
    kw: dict  # the forecast's arguments (batch, batches, link, ...)

    def pace(self):
        return machine_pace(self.net, self.x, self.y)

    def sharing(self):
        return sharing_factor(self.net, self.x, self.y)

    def own_work(self, names, log=print):
        """Each schedule of ``names``' own work an operation at this workload's messages and
        durations on busy cores, at the cut the runs take (``measure_overheads``)."""
        kw = self.kw
        return measure_overheads(self.profile, names, kw["link"], kw["batch"], kw["microbatches"],
                                 kw["max_in_flight"], batches=BUSY_BATCHES, rounds=OWN_WORK_ROUNDS, busy=True,
                                 log=log, cut=trainers_cut(self.profile))


def validation_workloads(cfg, link, names, log=print):
    """A Workload for each network of VALIDATION_NETS at BATCH_SIZE and BATCH_SIZE / 2, with
    its one-thread profile (``take_profile``)."""
    from .experiment import build, load_data
    from .experiment import validate as validate_cfg
    from .race import Race

    in_flight = cfg.rule_options.get("max_in_flight", 0)
    for choice, conv in VALIDATION_NETS:
        n = min(cfg.N, 6) if conv else cfg.N
        vcfg = cfg.replace(CHOICE=choice, CONV=conv, N=n, TRAIN_SAMPLES=cfg.VALIDATE_SAMPLES, DEVICES="1,2")
        meta, arch, _ = validate_cfg(vcfg)
        data = load_data(vcfg, log=lambda *a, **k: None)
        for batch in (cfg.BATCH_SIZE, cfg.BATCH_SIZE // 2):
            sub = data.head(len(data.y_train) - len(data.y_train) % batch)
            sub = dataclasses.replace(sub, x_test=sub.x_test[:batch], y_test=sub.y_test[:batch])  # times, not accuracy
            net = build(vcfg, arch, meta)
            x, y = sub.x_train[:batch], sub.y_train[:batch]
            name = f"{'conv ' if conv else ''}{choice}, batch {batch}"
            log(f"  {name}: the profile")
            with threads(1):
                profile = take_profile(net, x, y, names, [1, 2], cfg.MICROBATCHES, cfg.REPEATS, log)
            race = Race(build=lambda k, h, vcfg=vcfg, arch=arch, meta=meta: build(vcfg, arch, meta, None, k, h),
                        n_layers=n, h=vcfg.STEP, data=sub, epochs=VALIDATE_EPOCHS, batch_size=batch, lr=1e-3,
                        rule_options=cfg.rule_options, points_per_epoch=1, processes=2, threads=1,
                        microbatches=cfg.MICROBATCHES)
            kw = {"batch": batch, "batches": len(sub.y_train) // batch, "link": link,
                  "microbatches": cfg.MICROBATCHES, "max_in_flight": in_flight}
            yield Workload(name, net, x, y, profile, race, kw)


def validation_run(w, trainer, before, sharing):
    """One timed run of ``trainer`` on Workload ``w`` (``harness.race.run_timed``) and its row
    (``validation_row``), at the machine's pace read just ``before`` it (a step's seconds)
    and just after it (the row's ``pace_s``), two processes sharing the cores by
    ``sharing``."""
    from .race import run_timed

    m = 1 if trainer == "bp-1t" else 2
    with threads(1):
        curve, about = run_timed(trainer, w.race)
    pace_s = before, w.pace()
    if "bounds" in about:  # the forecast of the cuts the run took
        w.profile.bounds[(_rule_of(trainer), m)] = about["bounds"]
    return {"workload": w.name, **validation_row(w.profile, trainer, m, curve, statistics.fmean(pace_s), sharing,
                                                 **w.kw),
            "pace_s": pace_s, "epochs_s": steady_epochs(curve),
            "own_work_ms": 1e3 * w.profile.overhead.get(schedule_of(trainer), 0.0),
            **({"bounds": about["bounds"]} if "bounds" in about else {})}


def floor_worker(ctx, net, x, y, steps):
    """Each rank steps backprop of ``net`` on (x, y) on its own, no message: ``steps`` steps
    (the start-up epoch), then ``steps`` timed; rank 0 returns [0, the start-up epoch's
    end, the timed epoch's end] in seconds, the ranks' means (a curve of two epochs)."""
    import torch.distributed as dist

    net = copy.deepcopy(net).train()
    opt = make_optimizer("adam", net.parameters(), 1e-9)
    dist.barrier()
    t0, ends = time.perf_counter(), []
    for _ in range(2):
        for _ in range(steps):
            F.cross_entropy(net(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        ends.append(time.perf_counter() - t0)
    mine = torch.tensor(ends, dtype=torch.float64)
    dist.all_reduce(mine)
    return [0.0, *(mine / ctx.world_size).tolist()] if ctx.rank == 0 else None


def floor_run(w, processes, before, sharing):
    """A run that the forecast models with nothing but the machine: ``processes`` one-thread
    processes each stepping backprop on Workload ``w``'s batch on their own (no schedule,
    no message), an epoch's batches to start and an epoch's timed, forecast as a
    validation run is: the profile's step at the machine's pace read just ``before``
    and just after it in this process, by ``sharing`` when two compute at once.  Its
    error is the part of a validation row's that the machine's wander leaves, however
    exact the schedules and messages are modelled; its row is ``validation_row``'s."""
    from .launch import launch

    with threads(1):
        curve = [{"seconds": s} for s in launch(floor_worker, processes, (w.net, w.x, w.y, w.kw["batches"]),
                                                threads=1, device="cpu")]
    pace_s = before, w.pace()
    share = sharing if processes > 1 else 1.0  # each step of each process slowed alike: the pace's factor
    row = validation_row(w.profile, "bp-1t", 1, curve, statistics.fmean(pace_s) * share, 1.0, **w.kw)
    return {"workload": w.name, **row, "trainer": "floor", "devices": processes, "sharing": share, "pace_s": pace_s}


def round_runs(w, kinds, r, run, sharing):
    """Round ``r`` of runs on Workload ``w``: ``run(w, kind, before, sharing)`` for each of
    ``kinds`` (every other round in the other order, so that a drift falls on all), each
    at the machine's pace read just before it (the one after the run before it, its
    row's second ``pace_s``: ``validation_run``, ``floor_run``); yields (kind, row)."""
    before = w.pace()
    for kind in kinds if r % 2 == 0 else kinds[::-1]:
        row = run(w, kind, before, sharing)
        before = row["pace_s"][1]
        yield kind, row


def validate(cfg, link, log=print, save=None):
    """Every trainer at 1 device (bp-1t: one process, one thread) and 2 devices (2 processes
    x 1 thread) on the validation networks at BATCH_SIZE and BATCH_SIZE / 2
    (``validation_workloads``), measured (harness.race's trainers, VALIDATE_EPOCHS epochs of
    VALIDATE_SAMPLES images: ``steady_epoch_s``) against the forecast from a one-thread
    profile taken alone (its steps' variation included), over the measured link, at the
    machine's speed measured in this process just before and after each run
    (``machine_pace``; ``validation_row``; each row keeps both readings and its steady
    epochs), the devices sharing this machine's cores by the factor measured, and each
    schedule's own work at the workload's messages and durations on busy cores, just
    before the workload's round of runs (``Workload.sharing``, ``Workload.own_work``),
    DDP's all-reduce on the cores.  Every workload is profiled first; then VALIDATE_RUNS
    rounds each run every trainer on every workload, so that a workload's runs lie
    minutes apart (the machine's speed drifts over minutes), and each row is the median
    run (``median_run``): a figure measured once would shift every run of its workload
    alike, one measured a round shifts one run."""
    names = ["bp-1t", *(t for t in trainer_list(cfg.TRAINERS) if t not in ("bp-1t", "bp-all"))]
    log(f"link: {link.name}")
    workloads = list(validation_workloads(cfg, link, names, log))
    runs = {(w.name, t): [] for w in workloads for t in names}
    for r in range(cfg.VALIDATE_RUNS):
        for w in workloads:
            sharing = w.sharing() if any(t != "bp-1t" for t in names) else 1.0
            log(f"  round {r + 1}: {w.name}: two processes computing at once, each {sharing:.3f}x slower than alone")
            w.profile.overhead = w.own_work(names if cfg.SCHEDULE_OVERHEAD else [], log)
            for t, row in round_runs(w, names, r, validation_run, sharing):
                runs[(w.name, t)].append(row)
                if save is not None:
                    save([median_run(v) for v in runs.values() if v])
                log(f"  round {r + 1}: {w.name:<22} {t:<20} M={row['devices']}: measured "
                    f"{row['measured_epoch_s']:6.2f} s, forecast {row['forecast_epoch_s']:6.2f} s "
                    f"({row['error']:+.1%}; the machine's pace {row['pace']:.3f}; the first epoch "
                    f"{row['first_epoch_s']:6.2f} s)")
    return [median_run(v) for v in runs.values()]


# ---- the forecast race: accuracy per epoch (measured here) against forecast seconds ---------

def accuracy_curves(cfg, build_net, data, names, devices, log=print):
    """{trainer: {M: [test accuracy after each of EPOCHS epochs]}}, each trained in this
    process as it computes on M devices: backprop (the exact rule, whose arithmetic is
    backprop's) stands for bp-*, ddp (the mean of equal shares is the batch's mean),
    gpipe, 1f1b and pipeline-exact; pipeline-<rule> runs M stages over the loopback, each
    at its delay on M devices (serial = distributed is tested)."""
    from synthetic import ComplexNet, PipelineConfig, train_serial
    from synthetic.rules import make_rule

    def curve(rule, m):
        cnet = ComplexNet(build_net(), max(m, 2))
        cfg_p = PipelineConfig(rule=make_rule(rule, **cfg.rule_options), epochs=cfg.EPOCHS, lr=cfg.LEARN_RATE,
                               batch_size=cfg.BATCH_SIZE, seed=cfg.SEED, verbose=False)
        acc = train_serial(cnet, data, cfg_p)["test_acc"]
        log(f"  curve: {rule} at M = {m}: " + " ".join(f"{a:.4f}" for a in acc))
        return acc

    backprop = curve("exact", 2)
    out = {}
    for t in names:
        rule = _rule_of(t)
        out[t] = {m: backprop if rule in (None, "exact") or m == 1 else curve(rule, m) for m in devices}
    return out


def race_table(curves, table, target_points):
    """{trainer: {M: forecast seconds to the target}} (None: never there); the target is
    backprop's final accuracy less ``target_points`` points."""
    bp = next(iter(curves.values()))
    for t, by_m in curves.items():
        if not t.startswith("pipeline-") or t == "pipeline-exact":
            bp = by_m[min(by_m)]
            break
    target = bp[-1] - target_points / 100
    out = {}
    for t, by_m in curves.items():
        for m, acc in by_m.items():
            epoch = next((k for k, a in enumerate(acc, 1) if a >= target), None)
            out.setdefault(t, {})[m] = None if epoch is None else epoch * table[t][m]["epoch_s"]
    return target, out


def format_race(times, devices, link_name):
    head = f"{'forecast s to target':<24}" + "".join(f"{f'M = {m}':>12}" for m in devices)
    rows = [head]
    for t, by_m in times.items():
        rows.append(f"{t:<24}" + "".join(f"{'never' if by_m[m] is None else f'{by_m[m]:.1f}':>12}" for m in devices))
    return "\n".join(rows) + f"\n(forecast, link {link_name}) first: " + "; ".join(
        f"M = {m}: {w}" for m, w in winners(times, devices).items())


def winners(times, devices):
    """{M: the trainer first to the target on M devices (forecast), or "none"}."""
    return {m: min((t for t in times if times[t][m] is not None), key=lambda t: times[t][m], default="none")
            for m in devices}


SLEEP_DEVICES = (4, 8, 16)
SLEEP_BATCHES = {"gpipe": 2, "1f1b": 2, "pipeline-exact": 3}  # batches a sleep run times (the other pipelines: 8)


def validate_sleep(cfg, profile, names, link, min_sleep_s=0.1, log=print, save=None):
    """The sleep workload (``harness.sleep_workload``) of each pipeline trainer of
    ``names`` on 4, 8 and 16 processes (one group of processes for every trainer at one
    count): the profile's stage durations, scaled so that the shortest sleep is
    ``min_sleep_s``, measured against their forecast over ``link``."""
    from .sleep_workload import measure_sleep, scaled_stages

    rows = []
    for m in (m for m in SLEEP_DEVICES if m <= profile.n_layers):
        runs, scales = [], []
        for t in [t for t in names if t in ("gpipe", "1f1b") or t.startswith("pipeline-")]:
            run = trainer_run(profile, t, m, cfg.BATCH_SIZE, SLEEP_BATCHES.get(t, 8), cfg.MICROBATCHES,
                              cfg.rule_options.get("max_in_flight", 0))
            stages, k = scaled_stages(run.stages, min_sleep_s)
            runs.append(dataclasses.replace(run, stages=stages))
            scales.append((t, k))
        for run, (t, k), (seconds, _) in zip(runs, scales, measure_sleep(runs)):
            predicted = run.timeline(link, profile.overhead.get(schedule_of(t), 0.0)).run().makespan
            row = {"trainer": t, "devices": m, "workload": f"sleep x{k:.0f}", "measured_epoch_s": seconds,
                   "forecast_epoch_s": predicted, "error": predicted / seconds - 1}
            rows.append(row)
            if save is not None:
                save(rows)
            log(f"  sleep x{k:<5.0f} {t:<20} M={m:<2}: measured {seconds:6.2f} s, forecast {predicted:6.2f} s "
                f"({row['error']:+.1%})")
    return rows


def balanced_layers(profile, m, batch=None):
    """Cuts into m stages balanced on the profile's forward + backward times."""
    t = profile.times[batch or max(profile.times)]
    return balanced_bounds(Costs([f + b for f, b in zip(t.forward, t.backward)]), m)


def error_summary(rows):
    errs = sorted(abs(r["error"]) for r in rows)
    return {"median": statistics.median(errs), "max": errs[-1], "runs": len(errs)} if errs else None


def _link(text, device):
    return measure_link(str(device) if device.type == "cpu" else "cpu")[0] if text == "measured" else parse_link(text)


def _as_json(table):
    return {t: {str(m): {k: f[k] for k in ("epoch_s", "busy", "memory_mb", "delays")} for m, f in by_m.items()}
            for t, by_m in table.items()}


def profile_json(profile):
    """Every figure of ``profile`` as forecast.json keeps it, so that a forecast can be traced
    to what it was drawn from: times per batch size, bytes, each rule's costs and cuts
    (keyed "rule, M = m"), micro-batching, the schedules' own work, the steps' variation."""
    d = dataclasses.asdict(profile)
    d["bounds"] = {f"{rule}, M = {m}": [list(b) for b in bounds] for (rule, m), bounds in profile.bounds.items()}
    return d


def run_validation(cfg, run, profile, names, link):
    """VALIDATE's rows (real work, the sleep workload: VALIDATE_PARTS) and their errors;
    ``link``: this machine's transport, measured."""
    parts = {p.strip() for p in cfg.VALIDATE_PARTS.split(",")}
    save = lambda rows: run.save_json("validation.json", rows)  # noqa: E731 - as they come: a failure keeps them
    real = validate(cfg, link, save=save) if "real" in parts else []
    sleep = validate_sleep(cfg, profile, names, link, save=lambda rows: save(real + rows)) \
        if "sleep" in parts else []
    validation = real + sleep
    real_e, sleep_e, all_e = error_summary(real), error_summary(sleep), error_summary(validation)
    for what, e in (("real work", real_e), ("sleep workload", sleep_e)):
        if e:
            print(f"validation, {what}: median error {e['median']:.1%}, worst {e['max']:.1%} over {e['runs']} runs")
    return validation, {"validation_median_error": all_e["median"], "validation_max_error": all_e["max"],
                        "validation_real": real_e, "validation_sleep": sleep_e}


def run_race(cfg, o, run, tables, names, devices):
    """EPOCHS > 0: the accuracy curves, then per link the forecast time to the target,
    its table and forecast_race[_<link>].png."""
    from . import figures
    from .experiment import build

    curves = accuracy_curves(cfg, lambda: build(cfg, o.arch, o.meta, o.device), o.data, names, devices)
    out = {"curves": {t: {str(m): c for m, c in by_m.items()} for t, by_m in curves.items()}, "by_link": {}}
    for k, (name, table) in enumerate(tables.items()):
        target, times = race_table(curves, table, cfg.TARGET_POINTS)
        print(format_race(times, devices, name))
        figures.forecast_race_figure(run.file("forecast_race.png" if k == 0 else f"forecast_race_{k}.png"), curves,
                                     table, target, title=f"{o.arch}, {cfg.N} layers, {o.meta.name}, link {name}")
        out["target"] = target
        out["by_link"][name] = {"forecast_time_to_target_s": {t: {str(m): v for m, v in by_m.items()}
                                                              for t, by_m in times.items()},
                                "first": {str(m): w for m, w in winners(times, devices).items()}}
    return out


def forecast_main(cfg):
    """Profile, forecast every trainer on every M (on LINK, and OTHER_LINK from the same
    profile), write forecast.json and the traces, validate with VALIDATE, race with
    EPOCHS, and print the RESULT line."""
    from .experiment import build, open_run
    from .rundir import emit_result

    o = open_run(cfg)
    cfg, run = o.cfg, o.run
    names, devices = trainer_list(cfg.TRAINERS), parse_devices(cfg.DEVICES)
    batch = cfg.BATCH_SIZE
    batches = len(o.data.y_train) // batch
    net = build(cfg, o.arch, o.meta, o.device)
    print(f"forecast of {len(names)} trainers on {devices} devices: {cfg.N} layers of {o.arch} "
          f"({'conv' if cfg.CONV else 'dense'}) on {o.meta.name}, batch {batch}, {batches} batches an epoch; "
          f"profile on {o.device} ({torch.get_num_threads()} threads); results in {run.path}", flush=True)
    profile = take_profile(net, o.data.x_train[:batch], o.data.y_train[:batch], names, devices, cfg.MICROBATCHES,
                           cfg.REPEATS)
    links = [_link(text, o.device) for text in (cfg.LINK, cfg.OTHER_LINK) if text]
    in_flight = cfg.rule_options.get("max_in_flight", 0)
    here = None  # this machine's transport, measured: the schedules' own work and the validation run over it
    if cfg.SCHEDULE_OVERHEAD or cfg.VALIDATE:
        here = links[0] if cfg.LINK == "measured" else measure_link()[0]
    if cfg.SCHEDULE_OVERHEAD:
        profile.overhead = measure_overheads(profile, names, here, batch, cfg.MICROBATCHES, in_flight)
    kw = {"batch": batch, "link": links[0], "microbatches": cfg.MICROBATCHES, "max_in_flight": in_flight,
          "vary": cfg.VARY}
    tables = {}
    for link in links:
        tables[link.name] = forecast_table(profile, names, devices, batches=batches, **{**kw, "link": link})
        print(f"\nlink: {link.name}\n{format_table(tables[link.name], devices)}")
    top, few = max(devices), min(batches, 2 * max(devices) + 2)
    for t in names:
        tl = forecast(profile, t, top, batches=few, trace=True, **kw)["timeline"]
        tl.chrome_trace(run.file(f"forecast_trace_{t}_M{top}.json"), process=f"{t}, M = {top} (forecast)")
    validation, errors = run_validation(cfg, run, profile, names, here) if cfg.VALIDATE else ([], {})
    race = {"race": run_race(cfg, o, run, tables, names, devices)} if cfg.EPOCHS else {}
    first = links[0]
    out = {"forecast": _as_json(tables[first.name]),
           "link": {"name": first.name, "gbps": first.gbps, "latency_s": first.latency_s},
           **({"forecast_other_link": {"link": links[1].name, "forecast": _as_json(tables[links[1].name])}}
              if len(links) > 1 else {}),
           "validation": validation, **errors, **race}
    run.save_json("forecast.json", {**out, "profile": profile_json(profile)})  # the RESULT line without it
    emit_result({"dataset": o.meta.name, "architecture": o.arch, **out, "run_dir": str(run.path)},
                keys=("forecast", "validation", "run_dir"))  # it trains nothing: no accuracies
