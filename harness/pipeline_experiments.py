"""The experiments of the four synthetic-gradient scripts, shared by their constants."""
from __future__ import annotations

import time

import torch

from harness import board, figures
from harness.experiment import augmenting, describe, model_kwargs, open_run
from harness.launch import default_threads, launch, this_rank_device
from harness.resume import Checkpointer, PhaseStates, load_checkpoint
from harness.rundir import emit_result
from harness.simulate import chrome_trace
from models import build_model
from models.recording import evaluate_points
from models.training import evaluate
from synthetic import ComplexNet, PipelineConfig, train_serial
from synthetic.balance import costs_with_threads, new_split, save_split, saved_split, split_line
from synthetic.distributed import stage_worker
from synthetic.profile import profile_table
from synthetic.rules import make_rule


def complex_net(cfg, meta, arch, stages, layers, h):
    torch.manual_seed(cfg.SEED)
    net = build_model(arch, meta.shape, meta.classes, stages * layers, h, **model_kwargs(cfg, meta))
    return ComplexNet(net, stages, sg_kind=cfg.SG_MODULE)


def rank_costs(net, data, batch_size, processes, *, device, threads, rule, sg_kind="linear"):
    """The Costs of ``net``'s pieces measured as a rank of ``processes`` started from here
    would measure them: on its device (``this_rank_device`` of DEVICE), with its threads,
    on the first batch (not training time)."""
    where = this_rank_device(device, processes)
    xb, yb = data.x_train[:batch_size].to(where), data.y_train[:batch_size].to(where)
    return costs_with_threads(net, xb, yb, threads, rule=rule, sg_kind=sg_kind)


def fine_split(cfg, cnet, data, stages, run):
    """The cuts of distMulti's fine network, chosen before its coarse phase (which trains
    in this process, on the modules at these cuts): the run's split.json when it has one,
    else as BALANCE says: ``even``, or ``cost``: the cuts that equalise the prolonged
    network's stages (twice the layers; cuts between coarse layers), timed as a rank
    would (``rank_costs``).  ``cnet``, the coarse network, is cut at their halves.
    Returns (cnet, the split's description)."""
    split = saved_split(run.path) if run is not None else None
    if split is None:
        probe = cnet.net.prolong()
        split = new_split(cfg.BALANCE, probe.n_layers, stages, lambda: rank_costs(
            probe, data, cfg.BATCH_SIZE, stages, device=cfg.DEVICE, threads=cfg.THREADS or default_threads(stages),
            rule=cfg.RULE, sg_kind=cfg.SG_MODULE), multiple=2)
        if run is not None:
            save_split(run.path, split)
    if run is not None:
        print(split_line(split), flush=True)
    return cnet.with_bounds([(a // 2, b // 2) for a, b in split["bounds"]]), split


def pipeline_config(cfg, data, *, epochs, lr, run=None, teach=False, points=0, balance=None):
    """The pipeline's configuration from the constants (``teach``: the coarse level of
    the multilevel scripts, true gradients teaching the modules; ``points``: points of
    the training curve an epoch; ``balance``: the ranks choose the cuts)."""
    rule = make_rule("synthetic", **{**cfg.rule_options, "teach": True}) if teach else \
        make_rule(cfg.RULE, **cfg.rule_options)
    return PipelineConfig(
        rule=rule, epochs=epochs, lr=lr, batch_size=cfg.BATCH_SIZE, optimizer=cfg.OPTIMIZER,
        exact_epochs=0 if teach else cfg.EXACT_EPOCHS, seed=cfg.SEED, augment=augmenting(cfg, data.info),
        fail_stage=cfg.FAIL_STAGE, fail_epoch=cfg.FAIL_EPOCH, fail_mode=cfg.FAIL_MODE,
        run_dir=str(run.path) if run is not None else None,
        checkpoint_every=cfg.CHECKPOINT_EVERY, points_per_epoch=points, balance=balance)


def _accuracy(cnet, data):
    return {"train_acc": evaluate(cnet, data.x_train, data.y_train),
            "test_acc": evaluate(cnet, data.x_test, data.y_test)}


def _serial(cnet, data, cfg, *, epochs, lr, teach=False, tag="", resume=None, on_epoch_end=None):
    hist = train_serial(cnet, data, pipeline_config(cfg, data, epochs=epochs, lr=lr, teach=teach),
                        log=lambda s: print(s, flush=True), tag=tag, resume=resume, on_epoch_end=on_epoch_end)
    # training time: the epochs themselves, not the per-epoch test evaluation
    return hist, {"rule": "synthetic (true gradients)" if teach else cfg.RULE, "train_time_s": sum(hist["seconds"]),
                  "theoretical_time_s": sum(hist["theoretical_s"]), **_accuracy(cnet, data),
                  "messages": hist.pop("messages"), "profile": hist.pop("profile")}


def _per_cut(histories, key):
    """Per epoch, the value of ``key`` at each cut (the stages before a cut, in order)."""
    return [[v for h in histories for v in h[key][e]] for e in range(len(histories[0][key]))] if histories else []


def _test_accuracies(cnet, points, data, epochs):
    """The test accuracy after each of ``epochs`` (None where this launch has no point:
    the epochs before a resume), from the points the stages took at their epochs' ends."""
    curve = evaluate_points(cnet, points, data.x_test, data.y_test)
    at = {round(p["epoch"]): p["test_acc"] for p in curve}
    return [at.get(e) for e in epochs]


def _distributed(cnet, data, cfg, stages, *, epochs, lr, run, balance=None):
    t0 = time.perf_counter()
    pcfg = pipeline_config(cfg, data, epochs=epochs, lr=lr, run=run, points=1, balance=balance)
    out = launch(stage_worker, stages, (cnet.cpu(), data.to("cpu"), pcfg), threads=cfg.THREADS, device=cfg.DEVICE,
                 max_restarts=cfg.MAX_RESTARTS, on_placement=run.record_placement if run is not None else None)
    wall = time.perf_counter() - t0
    if out is None:  # a non-zero rank under torchrun
        return None, None
    if [tuple(b) for b in out["bounds"]] != cnet.bounds:
        cnet = cnet.with_bounds(out["bounds"])
    cnet.load_state_dict(out["state_dict"])
    last = out["histories"][-1]
    hist = {"epoch": last["epoch"], "loss": last["loss"], "seconds": last["seconds"],
            "test_acc": _test_accuracies(cnet, out["points"], data, last["epoch"]),
            **{k: _per_cut(out["histories"][:-1], k) for k in pcfg.rule.stats}}
    messages = {k: sum(m[k] for m in out["messages"]) for k in out["messages"][0]}
    return hist, {"rule": cfg.RULE, "train_time_s": out["train_time_s"], "wall_time_s": wall, **_accuracy(cnet, data),
                  "messages": messages, "profile": out["profiles"], "split": out["split"]}


def _report_profile(run, result, label):
    """The per-stage table on the terminal, the timeline in the run directory; the
    RESULT line keeps the busy fractions (metrics.json keeps everything)."""
    print(f"\nper-stage profile ({label}; busy: forward, backward, module or head, optimiser step)\n"
          + profile_table(result["profile"]), flush=True)
    figures.timeline_figure(run.path / "timeline.png", result["profile"],
                             title=f"{label}: the first batches of each stage")
    chrome_trace([(f"device {i}", kind, t0, t1 - t0, {"batch": b}) for i, p in enumerate(result["profile"])
                  for kind, b, t0, t1 in p["timeline"]], run.path / "timeline.json", f"{label} (measured)")


def _finish(run, name, series, result):
    """TensorBoard, the curves' figure, metrics.json and the RESULT line."""
    for label, h in series.items():
        board.write_history(run.path / label.replace(" ", "_"), h)
    profile = result.get("profile") or (result.get("fine") or {}).get("profile")
    if profile:  # each stage's share of its wall time spent computing
        board.write_scalars(run.path, {"busy_fraction": [p["busy_fraction"] for p in profile]})
    curves = {}
    for label, h in series.items():
        curves[label] = {"epoch": h["epoch"], "loss": h["loss"]}
        if any(h.get("sg_cos", [])):
            curves[label]["module cosine"] = [sum(c) / len(c) if c else float("nan") for c in h["sg_cos"]]
    figures.curves(run.path / f"{name}.png", curves)
    run.save_json("metrics.json", {"history": series, **result})
    result = {k: v for k, v in result.items() if k != "profile"}  # the RESULT line: no timelines
    for level in ("coarse", "fine", "scratch"):
        if isinstance(result.get(level), dict):
            result[level] = {k: v for k, v in result[level].items() if k != "profile"}
    emit_result({**result, "run_dir": str(run.path)})


def _open(cfg, serial=True):
    """``open_run`` for the four scripts; the distributed ones check every stage's
    checkpoint of a resumed run before launching (one line for a damaged one)."""
    o = open_run(cfg, world_size_of=None if serial else "M", device_data=serial)  # one rank a sub-network
    for stage in range(o.cfg.M if o.run is not None and o.cfg.RESUME and not serial else 0):
        load_checkpoint(o.run.path, f"stage{stage}", quiet=True)
    return o


def _coarse(cfg, meta, arch, data, stages, run, phases, split=None):
    """The coarse phase of the multilevel scripts; ``split(cnet)`` places its cuts."""
    cnet = complex_net(cfg, meta, arch, stages, cfg.N, cfg.STEP_C).to(data.x_train.device)
    if split is not None:
        cnet = split(cnet)
    saver = Checkpointer(run and run.path, cfg, cfg.EPOCHS_C, wrap=phases.wrap("coarse"))
    hist, res = _serial(cnet, data, cfg, epochs=cfg.EPOCHS_C, lr=cfg.LEARN_RATE_C, teach=True,
                        tag="coarse ", resume=phases.get("coarse"), on_epoch_end=saver)
    return cnet, hist, res


def standard(cfg):
    """The pipeline's stages taking turns in this process, with the theoretical parallel time
    (the busiest stage's compute)."""
    o = _open(cfg)
    cfg, run = o.cfg, o.run
    cnet = complex_net(cfg, o.meta, o.arch, cfg.M, cfg.N, cfg.STEP).to(o.device)
    print(f"pipeline in one process, rule {cfg.RULE}: {cfg.M} x {cfg.N} layers of {o.arch} on {o.meta.name}; "
          f"results in {run.path}")
    describe(cnet.net)
    hist, result = _serial(cnet, o.data, cfg, epochs=cfg.EPOCHS, lr=cfg.LEARN_RATE, resume=o.state,
                           on_epoch_end=Checkpointer(run.path, cfg, cfg.EPOCHS))
    print(f"test acc {result['test_acc']:.4f}; time {result['train_time_s']:.1f}s, "
          f"theoretical parallel time {result['theoretical_time_s']:.1f}s")
    _finish(run, "sg", {"synthetic gradients": hist}, result)


def multilevel(cfg):
    """Coarse with true gradients (modules learning), prolong, fine with synthetic gradients."""
    o = _open(cfg)
    cfg, run, data = o.cfg, o.run, o.data
    print(f"multilevel: {cfg.M} x {cfg.N} -> {cfg.M} x {2 * cfg.N} layers of {o.arch} on {o.meta.name}; "
          f"results in {run.path}")
    phases = PhaseStates(o.state)
    cnet, coarse_hist, coarse = _coarse(cfg, o.meta, o.arch, data, cfg.M, run, phases)
    fine_net = cnet.prolong(cfg.PROLONG, h=cfg.STEP_F)
    describe(fine_net.net)
    fine_hist, fine = _serial(fine_net, data, cfg, epochs=cfg.EPOCHS_F, lr=cfg.LEARN_RATE_F, tag="fine ",
                              resume=phases.get("fine"),
                              on_epoch_end=Checkpointer(run.path, cfg, cfg.EPOCHS_F, wrap=phases.wrap("fine")))
    scratch_net = complex_net(cfg, o.meta, o.arch, cfg.M, 2 * cfg.N, cfg.STEP_F).to(o.device)
    scratch_hist, scratch = _serial(
        scratch_net, data, cfg, epochs=cfg.EPOCHS_F, lr=cfg.LEARN_RATE_F, tag="scratch ", resume=phases.get("scratch"),
        on_epoch_end=Checkpointer(run.path, cfg, cfg.EPOCHS_F, wrap=phases.wrap("scratch")))
    total = coarse["train_time_s"] + fine["train_time_s"]
    print(f"\n{'':<22} {'test acc':>8} {'time (s)':>9}\n{'coarse':<22} {coarse['test_acc']:>8.4f} "
          f"{coarse['train_time_s']:>9.1f}\n{'fine (prolonged)':<22} {fine['test_acc']:>8.4f} "
          f"{fine['train_time_s']:>9.1f}\n{'multilevel total':<22} {fine['test_acc']:>8.4f} {total:>9.1f}\n"
          f"{'fine from scratch':<22} {scratch['test_acc']:>8.4f} {scratch['train_time_s']:>9.1f}")
    result = {"rule": cfg.RULE, "messages": fine["messages"], "train_acc": fine["train_acc"],
              "test_acc": fine["test_acc"], "train_time_s": total,
              "theoretical_time_s": coarse["theoretical_time_s"] + fine["theoretical_time_s"],
              "coarse": coarse, "fine": fine, "scratch": scratch}
    _finish(run, "multilevel", {"coarse": coarse_hist, "fine": fine_hist, "scratch": scratch_hist}, result)


def distributed(cfg):
    """Each sub-network in its own process; one RESULT from rank 0."""
    o = _open(cfg, serial=False)
    cfg, run, data, stages = o.cfg, o.run, o.data, o.cfg.M
    cnet = complex_net(cfg, o.meta, o.arch, stages, cfg.N, cfg.STEP)
    if run is not None:
        print(f"pipeline, rule {cfg.RULE}, {stages} processes: {stages} x {cfg.N} layers of {o.arch} on {o.meta.name}; "
              f"results in {run.path}", flush=True)
        describe(cnet.net)
    hist, result = _distributed(cnet, data, cfg, stages, epochs=cfg.EPOCHS, lr=cfg.LEARN_RATE, run=run,
                                balance=cfg.BALANCE)
    if run is None:
        return
    split = result.pop("split")
    print(f"test acc {result['test_acc']:.4f}; training {result['train_time_s']:.1f}s "
          f"(this launch {result['wall_time_s']:.1f}s, process start-up included)")
    _report_profile(run, result, f"pipeline, rule {cfg.RULE}")
    result.update(layers_per_stage=split["layers_per_stage"], split=split,
                  busy_fraction=[p["busy_fraction"] for p in result["profile"]])
    _finish(run, "dist_sg", {"distributed": hist}, result)


def distributed_multilevel(cfg):
    """Coarse stage as in the multilevel script, then distributed fine training."""
    o = _open(cfg, serial=False)
    cfg, run, data, stages = o.cfg, o.run, o.data, o.cfg.M
    if run is not None:
        print(f"multilevel, fine stage on {stages} processes: {stages} x {cfg.N} -> {stages} x {2 * cfg.N} "
              f"layers of {o.arch} on {o.meta.name}; results in {run.path}", flush=True)
    chosen = {}

    def split(cnet):
        cnet, chosen["split"] = fine_split(cfg, cnet, data, stages, run)
        return cnet

    cnet, coarse_hist, coarse = _coarse(cfg, o.meta, o.arch, data, stages, run, PhaseStates(o.state), split)
    fine_net = cnet.prolong(cfg.PROLONG, h=cfg.STEP_F)
    if run is not None:
        describe(fine_net.net)
    fine_hist, fine = _distributed(fine_net, data, cfg, stages, epochs=cfg.EPOCHS_F, lr=cfg.LEARN_RATE_F, run=run)
    if run is None:
        return
    fine.pop("split")
    _report_profile(run, fine, f"fine network as a pipeline, rule {cfg.RULE}")
    total = coarse["train_time_s"] + fine["train_time_s"]
    print(f"coarse test acc {coarse['test_acc']:.4f} in {coarse['train_time_s']:.1f}s; fine test acc "
          f"{fine['test_acc']:.4f} in {fine['train_time_s']:.1f}s; total {total:.1f}s")
    result = {"rule": cfg.RULE, "messages": fine["messages"], "train_acc": fine["train_acc"],
              "test_acc": fine["test_acc"], "train_time_s": total, "coarse": coarse, "fine": fine,
              "layers_per_stage": chosen["split"]["layers_per_stage"], "split": chosen["split"],
              "busy_fraction": [p["busy_fraction"] for p in fine["profile"]]}
    _finish(run, "dist_multilevel", {"coarse": coarse_hist, "fine": fine_hist}, result)
