"""The race: every trainer on the same network, data and seed, as test accuracy against
training wall-clock time.

A trainer takes the points of its training curve with ``models.recording`` (the clock
stopped while it copies its parameters); the points are evaluated once it has
finished, so that neither evaluation nor process start-up counts as training time.
``run_trainer`` runs one trainer and returns its curve; ``time_to_target``,
``summarise`` and ``table`` turn curves into the race's figures.  benchmarks/bench_sg.py
computes its accuracy rows with the same functions.
"""
from __future__ import annotations

import copy
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from harness.cli import UsageError, check
from harness.launch import default_threads, launch, rank_device
from harness.pipeline_experiments import rank_costs
from models.recording import evaluate_points, recorder
from models.training import evaluate, fit
from synthetic import ComplexNet, PipelineConfig, train_serial
from synthetic.balance import balanced_bounds
from synthetic.complex import layers_per_stage
from synthetic.distributed import stage_worker
from synthetic.peers import PeerConfig, ddp_worker, pipeline_worker
from synthetic.rules import RULES, make_rule

BACKPROP = ("bp-1t", "bp-all")  # backprop in one process: one thread, every core
PEERS = ("ddp", "gpipe", "1f1b")  # what a user would pick instead (torch)


def trainers():
    """Every trainer's name: the pipeline and multilevel ones for each registered rule."""
    return (*BACKPROP, *PEERS, *(f"pipeline-{r}" for r in RULES), *(f"multilevel-{r}" for r in RULES), "pvd")


@dataclass
class Race:
    """What every trainer of a race shares."""
    build: object  # build(n_layers, h) -> a freshly initialised network (seeded)
    n_layers: int
    h: float
    data: object  # datasets.Data, on the CPU
    epochs: int
    batch_size: int
    lr: float
    rule_options: dict = field(default_factory=dict)  # the rules' options (synthetic.rules: max_in_flight, ...)
    seed: int = 0
    points_per_epoch: int = 2
    processes: int = 2  # ranks of the multi-process trainers
    threads: int = 0  # intra-op threads of each rank (0: the cores shared out)
    microbatches: int = 4  # GPipe and 1F1B
    coarse_epochs: int = 1  # multilevel: epochs of the coarse network (of ``epochs``)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # DEVICE: every trainer
    on_placement: object = None  # told where a launch's ranks ran (harness.launch.launch)
    point_states: bool = True  # the points hold the parameters, to be evaluated (False: times and losses alone)
    cuts: dict = field(default_factory=dict, repr=False)  # (rule, multiple) -> its cuts, balanced once a race

    def network(self, n_layers=None, h=None):
        torch.manual_seed(self.seed)
        return self.build(n_layers or self.n_layers, h or self.h)

    def rank_threads(self):
        return self.threads or default_threads(self.processes)


@contextmanager
def threads(n):
    """torch's intra-op threads set to ``n`` inside."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- the trainers: each returns [(network, points)] (the points' times and epochs absolute)
# ---- and what it tells of itself (the pipeline: its cuts and each stage's busy fraction) ----

def _in_process(race, net):
    """The data on the race's device, and a recorder of every parameter of ``net``."""
    rec = recorder(dict(net.named_parameters()), len(race.data.y_train), race.batch_size, race.points_per_epoch,
                   race.device, states=race.point_states)
    return race.data.to(race.device), rec


def _backprop(race, n_threads):
    net = race.network().to(race.device)
    data, rec = _in_process(race, net)
    with threads(n_threads):
        fit(net, data.x_train, data.y_train, epochs=race.epochs, lr=race.lr, batch_size=race.batch_size,
            seed=race.seed, recorder=rec)
    return [(net, rec.points)], {}


def _launch(race, worker, *args):
    return launch(worker, race.processes, args, threads=race.rank_threads(), device=str(race.device),
                  on_placement=race.on_placement)


def _about(out):
    """What a pipeline run tells of itself: its cuts and each stage's busy fraction."""
    return {"bounds": [tuple(b) for b in out["bounds"]], "layers_per_stage": layers_per_stage(out["bounds"]),
            "busy_fraction": [p["busy_fraction"] for p in out["profiles"]]}


def _peer(race, schedule):
    net = race.network()
    bounds = () if schedule == "ddp" else tuple(_cuts(race, net, "exact"))  # DDP: the whole network a rank
    cfg = PeerConfig(epochs=race.epochs, lr=race.lr, batch_size=race.batch_size, seed=race.seed, schedule=schedule,
                     microbatches=race.microbatches, points_per_epoch=race.points_per_epoch, bounds=bounds,
                     point_states=race.point_states)
    out = _launch(race, ddp_worker if schedule == "ddp" else pipeline_worker, net, race.data, cfg)
    return [(net, out["points"])], {} if schedule == "ddp" else {"bounds": list(bounds)}


def _cuts(race, net, rule, multiple=1):
    """Cuts balanced on the rule's costs, measured as a rank would (``rank_costs``), once a
    race (``race.cuts``): GPipe, 1F1B and the exact rule cut alike, and a trainer run again
    takes the cuts it took."""
    if (rule, multiple) not in race.cuts:
        costs = rank_costs(net, race.data, race.batch_size, race.processes, device=str(race.device),
                           threads=race.rank_threads(), rule=rule)
        race.cuts[(rule, multiple)] = balanced_bounds(costs, race.processes, multiple)
    return race.cuts[(rule, multiple)]


def _pipeline_config(race, rule, epochs, teach=False):
    rule = make_rule(rule, **{**race.rule_options, "teach": True} if teach else race.rule_options)
    return PipelineConfig(rule=rule, epochs=epochs, lr=race.lr, batch_size=race.batch_size, seed=race.seed,
                          verbose=False, points_per_epoch=race.points_per_epoch, point_states=race.point_states)


def _pipeline(race, rule):
    net = race.network()
    torch.manual_seed(race.seed)
    cnet = ComplexNet(net, race.processes, bounds=_cuts(race, net, rule))
    out = _launch(race, stage_worker, cnet, race.data, _pipeline_config(race, rule, race.epochs))
    return [(cnet, out["points"])], _about(out)


def _multilevel(race, rule):
    """The coarse network (half the layers, twice the step) as a pipeline in this process
    on every core, its modules learning from true gradients; prolonged; the fine network
    as a pipeline of ``processes`` ranks with ``rule``.  The prolongation counts."""
    fine_bounds = _cuts(race, race.network(), rule, multiple=2)
    coarse = ComplexNet(race.network(race.n_layers // 2, 2 * race.h), race.processes,
                        bounds=[(a // 2, b // 2) for a, b in fine_bounds]).to(race.device)
    data, rec = _in_process(race, coarse)
    with threads(os.cpu_count() or 1):
        train_serial(coarse, data, _pipeline_config(race, "synthetic", race.coarse_epochs, teach=True), recorder=rec)
        t0 = time.perf_counter()
        fine = coarse.prolong(h=race.h).cpu()
        prolong_s = time.perf_counter() - t0
    cfg = _pipeline_config(race, rule, race.epochs - race.coarse_epochs)
    out = _launch(race, stage_worker, fine, race.data, cfg)
    offset = rec.points[-1].seconds + prolong_s
    for p in out["points"]:
        p.seconds, p.epoch = p.seconds + offset, p.epoch + race.coarse_epochs
    return [(coarse, rec.points), (fine, out["points"])], _about(out)


def _pvd(race):
    """PVD on ``processes`` blocks; an iteration is 1 / points_per_epoch of an epoch of
    parallel phase (whole batches: the run's epochs are as near ``epochs`` as they come),
    its direction and scoring on a quarter as many batches."""
    from pvd import PVDConfig, parallel_worker

    net = race.network()
    n_batches = -(-len(race.data.y_train) // race.batch_size)
    steps = max(1, n_batches // race.points_per_epoch)
    cfg = PVDConfig(num_proc=race.processes, iterations=max(1, round(race.epochs * n_batches / steps)), steps=steps,
                    lr=race.lr, batch_size=race.batch_size, direction_batches=max(1, steps // 4),
                    sync_batches=max(1, steps // 4), target_acc=2.0, seed=race.seed)
    return [(net, _launch(race, parallel_worker, net, race.data, cfg, False, None, True)["points"])], {}


def _trainer(name):
    if name in BACKPROP:
        return lambda race: _backprop(race, 1 if name == "bp-1t" else os.cpu_count() or 1)
    if name in PEERS:
        return lambda race: _peer(race, name)
    if name == "pvd":
        return _pvd
    kind, rule = name.split("-", 1)
    return lambda race: (_pipeline if kind == "pipeline" else _multilevel)(race, rule)


def check_trainers(names):
    """The trainer names, or ValueError naming the first unknown one."""
    for name in names:
        if name not in trainers():
            raise ValueError(f"unknown trainer {name!r}; valid: {', '.join(trainers())}")
    if len(set(names)) != len(names):
        raise ValueError(f"a trainer is named twice in {','.join(names)}")
    return list(names)


# ---- one trainer's curve --------------------------------------------------------------------

def run_trainer(name, race):
    """Train with ``name``; returns its curve [{seconds, epoch, loss, test_acc}], the
    final network's accuracy on the training set, and what the trainer tells of itself."""
    segments, about = _trainer(name)(race)
    data = race.data.to(race.device)
    curve = []
    with threads(os.cpu_count() or 1):
        for net, points in segments:
            curve += evaluate_points(net.to(race.device), points, data.x_test, data.y_test)
        net, points = segments[-1]
        final = copy.deepcopy(net).to(race.device)
        final.load_state_dict(points[-1].state, strict=False)
        train_acc = evaluate(final, data.x_train, data.y_train)
    return curve, train_acc, about


def run_timed(name, race):
    """Train with ``name`` for its times alone: its points [{seconds, epoch, loss}] (no
    accuracy: none of them is evaluated, nor holds the parameters) and what the trainer
    tells of itself."""
    segments, about = _trainer(name)(replace(race, point_states=False))
    return [{"seconds": p.seconds, "epoch": p.epoch, "loss": p.loss} for _, points in segments for p in points], about


# ---- figures of a race ----------------------------------------------------------------------

def parse_target(text):
    """TARGET: an accuracy in (0, 1] -> ("absolute", value); "bp-X" -> ("bp", X points
    below backprop's final test accuracy).  ValueError otherwise."""
    text = str(text).strip()
    try:
        if text.startswith("bp-"):
            points = float(text[3:])
            if points >= 0:
                return "bp", points
        else:
            value = float(text)
            if 0 < value <= 1:
                return "absolute", value
    except ValueError:
        pass
    raise ValueError(f"TARGET must be an accuracy in (0, 1] such as 0.85, or bp-X (X points below backprop's final "
                     f"test accuracy, such as bp-0.5); got {text!r}")


def target_value(target, curves):
    """The accuracy a TARGET asks for, given the curves of one seed ({trainer: curve}):
    relative targets take backprop on every core (else on one thread)."""
    kind, value = parse_target(target)
    if kind == "absolute":
        return value
    bp = next((curves[t] for t in ("bp-all", "bp-1t") if t in curves), None)
    if bp is None:
        raise ValueError(f"TARGET {target} is relative to backprop: TRAINERS needs bp-all or bp-1t")
    return bp[-1]["test_acc"] - value / 100


def time_to_target(curve, target):
    """(seconds, epochs) of the first point of ``curve`` at or above ``target``; (None,
    None) if it never gets there."""
    for p in curve:
        if p["test_acc"] >= target:
            return p["seconds"], p["epoch"]
    return None, None


def _ratio(a, b):
    return a / b if a is not None and b else None


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarise(runs, target):
    """``runs``: {trainer: [(curve, train_acc) per seed]} -> (targets per seed, per-trainer
    figures): time per epoch, final test accuracy (mean, min, max), time and epochs to the
    target (mean over the seeds that reach it, and how many do), and the speed-up to the
    target over backprop on every core and over the best torch peer (each seed's ratio,
    averaged over the seeds where both reach it)."""
    seeds = len(next(iter(runs.values())))
    targets = [target_value(target, {t: r[k][0] for t, r in runs.items()}) for k in range(seeds)]
    reach = {t: [time_to_target(r[k][0], targets[k]) for k in range(seeds)] for t, r in runs.items()}
    out = {}
    for t, per_seed in runs.items():
        finals = [c[-1]["test_acc"] for c, _ in per_seed]
        times = [s for s, _ in reach[t]]
        vs_bp = [_ratio(reach["bp-all"][k][0], times[k]) if "bp-all" in reach else None for k in range(seeds)]
        peers = [min((reach[p][k][0] for p in PEERS if p in reach and reach[p][k][0] is not None), default=None)
                 for k in range(seeds)]
        out[t] = {"time_per_epoch_s": _mean([c[-1]["seconds"] / c[-1]["epoch"] for c, _ in per_seed]),
                  "train_time_s": _mean([c[-1]["seconds"] for c, _ in per_seed]),
                  "final_test_acc": _mean(finals), "final_test_acc_min": min(finals), "final_test_acc_max": max(finals),
                  "final_train_acc": _mean([a for _, a in per_seed]),
                  "time_to_target_s": _mean(times), "epochs_to_target": _mean([e for _, e in reach[t]]),
                  "reached": sum(s is not None for s in times), "seeds": seeds,
                  "time_to_target_per_seed": times,
                  "speedup_vs_all_cores": _mean(vs_bp),
                  "speedup_vs_best_peer": _mean([_ratio(p, s) for p, s in zip(peers, times)])}
    return targets, out


def winner(summary):
    """The trainer that reaches the target first (mean time), or None."""
    reached = {t: s["time_to_target_s"] for t, s in summary.items() if s["reached"] == s["seeds"]}
    return min(reached, key=reached.get) if reached else None


def table(summary, targets):
    """The printed table of a race."""
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    target_text = ", ".join(f"{t:.4f}" for t in targets)
    lines = [f"target test accuracy {target_text}",
             f"{'trainer':<20} {'s/epoch':>8} {'final test acc':>15} {'to target (s)':>14} {'epochs':>7} "
             f"{'vs bp all':>9} {'vs peer':>8}"]
    for t, s in summary.items():
        acc = fmt(s["final_test_acc"], ".4f")
        if s["seeds"] > 1:
            acc += f" ±{(s['final_test_acc_max'] - s['final_test_acc_min']) / 2:.3f}"
        reach = fmt(s["time_to_target_s"], ".1f") if s["reached"] else "never"
        if 0 < s["reached"] < s["seeds"]:
            reach += f" ({s['reached']}/{s['seeds']})"
        lines.append(f"{t:<20} {fmt(s['time_per_epoch_s'], '.2f'):>8} {acc:>15} {reach:>14} "
                     f"{fmt(s['epochs_to_target'], '.2f'):>7} {fmt(s['speedup_vs_all_cores'], '.2f'):>9} "
                     f"{fmt(s['speedup_vs_best_peer'], '.2f'):>8}")
    return "\n".join(lines)


# ---- the experiment of scripts/race.py ------------------------------------------------------

def trainer_names(cfg):
    return check_trainers([t.strip() for t in str(cfg.TRAINERS).split(",") if t.strip()])


def check_race(cfg, meta):
    """The race's own rules (UsageError, one line, exit status 2)."""
    from harness.cli import unit_channels

    try:
        names = trainer_names(cfg)
        kind, _ = parse_target(cfg.TARGET)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check(names, "TRAINERS names no trainer")
    check(kind == "absolute" or any(t in names for t in BACKPROP),
          f"TARGET {cfg.TARGET} is relative to backprop: TRAINERS needs bp-all or bp-1t")
    if any(t in names for t in ("gpipe", "1f1b")):
        check(cfg.BATCH_SIZE % cfg.MICROBATCHES == 0,
              f"BATCH_SIZE {cfg.BATCH_SIZE} does not split into MICROBATCHES={cfg.MICROBATCHES} micro-batches")
        device, backend = rank_device(cfg.DEVICE, 0, cfg.PROCESSES)
        check(device.type == "cpu" or backend == "nccl",
              f"gpipe and 1f1b need a GPU per rank (NCCL) or DEVICE=cpu: with {cfg.PROCESSES} ranks sharing "
              f"{device} over gloo, torch.distributed.pipelining would send CUDA tensors, which gloo cannot; "
              "drop them from TRAINERS")
    multi = [t for t in names if t not in BACKPROP]
    check(not multi or cfg.N >= cfg.PROCESSES, f"N ({cfg.N}) layers cannot be cut into PROCESSES={cfg.PROCESSES} "
                                               f"stages or blocks ({', '.join(multi)})")
    if any(t.startswith("multilevel-") for t in names):
        units = len(unit_channels(cfg)) if cfg.CONV else 1
        check(cfg.N % 2 == 0 and cfg.N // 2 >= max(cfg.PROCESSES, units),
              f"multilevel trains a coarse network of N/2 layers: N ({cfg.N}) must be even and N/2 at least "
              f"PROCESSES ({cfg.PROCESSES}){' and the number of UNITS' if cfg.CONV else ''}")
        check(cfg.EPOCHS > cfg.COARSE_EPOCHS, f"multilevel: EPOCHS ({cfg.EPOCHS}) must exceed COARSE_EPOCHS "
                                              f"({cfg.COARSE_EPOCHS})")


def seeds_of(cfg):
    """SEEDS ("0,1,2") as a list of seeds >= 0 (UsageError otherwise)."""
    try:
        seeds = [int(s) for s in str(cfg.SEEDS).split(",") if s.strip()]
    except ValueError:
        seeds = []
    check(seeds and min(seeds) >= 0 and len(set(seeds)) == len(seeds),
          f"SEEDS must be distinct seeds >= 0 separated by commas, such as 0,1,2; got {cfg.SEEDS!r}")
    return seeds


def _subset(data, cfg):
    """The TRAIN_SAMPLES training images (``load_data``) cut to a whole number of batches."""
    n = len(data.y_train) - len(data.y_train) % cfg.BATCH_SIZE
    check(n > 0, f"BATCH_SIZE {cfg.BATCH_SIZE} is larger than the {len(data.y_train)} training samples")
    return data.head(n)


def _columns(curve):
    return {"point": list(range(len(curve))), **{k: [p[k] for p in curve] for k in ("seconds", "epoch", "loss",
                                                                                      "test_acc")}}


def race_main(cfg):
    """Run every trainer of TRAINERS for every seed of SEEDS; table, race.png, race.json,
    TensorBoard series and the RESULT line."""
    from harness import board, figures
    from harness.experiment import build, open_run
    from harness.fit_experiments import lowest
    from harness.rundir import emit_result

    seeds = seeds_of(cfg)
    o = open_run(cfg.replace(SEED=seeds[0]), device_data=False)
    cfg, run, names = o.cfg, o.run, trainer_names(o.cfg)
    data = _subset(o.data, cfg)
    print(f"race of {len(names)} trainers: {cfg.N} layers of {o.arch} ({'conv' if cfg.CONV else 'dense'}) on "
          f"{o.meta.name} ({len(data.y_train)} train / {len(data.y_test)} test), {cfg.EPOCHS} epochs, batch "
          f"{cfg.BATCH_SIZE}, seeds {seeds}; {cfg.PROCESSES} processes x "
          f"{_threads_text(cfg.THREADS or default_threads(cfg.PROCESSES))} for the multi-process trainers; results in "
          f"{run.path}", flush=True)
    runs, origin = {t: [] for t in names}, time.time()
    for seed in seeds:
        race = Race(build=lambda n, h, seed=seed: build(cfg.replace(SEED=seed), o.arch, o.meta, None, n, h),
                    n_layers=cfg.N, h=cfg.STEP, data=data, epochs=cfg.EPOCHS, batch_size=cfg.BATCH_SIZE,
                    lr=cfg.LEARN_RATE, rule_options=cfg.rule_options, seed=seed, points_per_epoch=cfg.POINTS_PER_EPOCH,
                    processes=cfg.PROCESSES, threads=cfg.THREADS, microbatches=cfg.MICROBATCHES,
                    coarse_epochs=cfg.COARSE_EPOCHS, device=o.device,
                    on_placement=run.record_placement)
        for t in names:
            curve, train_acc, _ = run_trainer(t, race)
            runs[t].append((curve, train_acc))
            last = curve[-1]
            print(f"seed {seed}  {t:<20} {last['epoch']:.0f} epochs in {last['seconds']:.1f}s of training "
                  f"({last['seconds'] / last['epoch']:.2f}s/epoch), test acc {last['test_acc']:.4f}", flush=True)
            board.write_history(run.path / (t if len(seeds) == 1 else f"{t}-seed{seed}"), _columns(curve),
                                step_key="point", cumulative=False, origin=origin)
    targets, summary = summarise(runs, cfg.TARGET)
    first = winner(summary)
    print("\n" + table(summary, targets))
    print(f"first to the target: {first or 'none of them'}")
    curves = {t: [c for c, _ in r] for t, r in runs.items()}
    run.save_json("race.json", {"target": cfg.TARGET, "targets": targets, "seeds": seeds, "winner": first,
                                "summary": summary, "curves": curves})
    figures.race_figure(run.file("race.png"), curves, targets,
                         title=f"{o.arch}, {cfg.N} layers, {o.meta.name}: test accuracy against training time")
    finals = {t: {"train_acc": s["final_train_acc"], "test_acc": s["final_test_acc"], "train_time_s": s["train_time_s"]}
              for t, s in summary.items()}
    emit_result({"dataset": o.meta.name, "architecture": o.arch, "targets": targets, "winner": first, **lowest(finals),
                 "summary": summary, "run_dir": str(run.path)})


def _threads_text(n):
    return f"{n} thread{'s' if n != 1 else ''}"
