"""The experiments of the four synthetic-gradient scripts, shared by their constants."""
from __future__ import annotations

import time

import torch

from models import PROLONG_METHODS, build_model
from models.training import evaluate
from scripts import common, plotting
from scripts.launch import launch, world_size_for
from synthetic import SG_MODULES, ComplexNet, train_serial
from synthetic.distributed import DistSGConfig, stage_worker


def _setup(cfg, *, stages, layers="N", steps=("STEP",)):
    meta, arch, device = common.resolve(cfg, layers_name=layers, step_names=steps)
    common.check(stages >= 2, f"M (sub-networks) must be >= 2, got {stages}")
    common.check(cfg.SG_MODULE in SG_MODULES,
                 f"unknown SG_MODULE {cfg.SG_MODULE!r}; valid: {', '.join(SG_MODULES)}")
    common.check(cfg.SG_LEARN_RATE > 0, f"SG_LEARN_RATE must be > 0, got {cfg.SG_LEARN_RATE}")
    if hasattr(cfg, "PROLONG"):
        common.check(cfg.PROLONG in PROLONG_METHODS,
                     f"unknown PROLONG {cfg.PROLONG!r}; valid: {', '.join(PROLONG_METHODS)}")
    if hasattr(cfg, "MAX_IN_FLIGHT"):
        common.check(cfg.MAX_IN_FLIGHT >= 1, f"MAX_IN_FLIGHT must be >= 1, got {cfg.MAX_IN_FLIGHT}")
        common.check(cfg.THREADS >= 0, f"THREADS must be >= 0, got {cfg.THREADS}")
    return meta, arch, device


def complex_net(cfg, meta, arch, stages, layers_per_stage, h):
    torch.manual_seed(cfg.SEED)
    net = build_model(arch, meta.shape, meta.classes, stages * layers_per_stage, h, **common.model_kwargs(cfg, meta))
    return ComplexNet(net, stages, sg_kind=cfg.SG_MODULE)


def _serial(cnet, data, cfg, *, epochs, lr, true_gradients=False, tag=""):
    hist = train_serial(cnet, data, epochs=epochs, lr=lr, sg_lr=cfg.SG_LEARN_RATE, batch_size=cfg.BATCH_SIZE,
                        optimizer=cfg.OPTIMIZER, true_gradients=true_gradients, seed=cfg.SEED,
                        log=lambda s: print(s, flush=True), tag=tag)
    # training time: the epochs themselves, not the per-epoch test evaluation
    return hist, {"train_time_s": sum(hist["seconds"]), "theoretical_time_s": sum(hist["theoretical_s"]),
                  "train_acc": evaluate(cnet, data.x_train, data.y_train),
                  "test_acc": evaluate(cnet, data.x_test, data.y_test)}


def _distributed(cnet, data, cfg, stages, *, epochs, lr):
    dcfg = DistSGConfig(epochs=epochs, lr=lr, sg_lr=cfg.SG_LEARN_RATE, batch_size=cfg.BATCH_SIZE,
                        optimizer=cfg.OPTIMIZER, max_in_flight=cfg.MAX_IN_FLIGHT, seed=cfg.SEED,
                        fail_stage=cfg.FAIL_STAGE)
    t0 = time.perf_counter()
    out = launch(stage_worker, stages, (cnet.cpu(), data.to("cpu"), dcfg), threads=cfg.THREADS)
    wall = time.perf_counter() - t0
    if out is None:  # a non-zero rank under torchrun
        return None, None
    cnet.load_state_dict(out["state_dict"])
    hist = {"epoch": out["histories"][-1]["epoch"], "loss": out["histories"][-1]["loss"],
            "sg_mse": [list(v) for v in zip(*(h["sg_mse"] for h in out["histories"][:-1]))],
            "sg_cos": [list(v) for v in zip(*(h["sg_cos"] for h in out["histories"][:-1]))]}
    return hist, {"train_time_s": out["train_time_s"], "wall_time_s": wall,
                  "train_acc": evaluate(cnet, data.x_train, data.y_train),
                  "test_acc": evaluate(cnet, data.x_test, data.y_test)}


def _finish(run, name, series, result):
    run.save_json("metrics.json", {"history": series, **result})
    plotting.curves(run.file(f"{name}.png"),
                    {label: {"epoch": h["epoch"], "loss": h["loss"],
                             "module cosine": [sum(c) / len(c) for c in h["sg_cos"]]} for label, h in series.items()})
    common.emit_result({**result, "run_dir": str(run.path)})


def standard(script, cfg):
    """Serial synthetic-gradient training with the original's theoretical parallel time."""
    meta, arch, device = _setup(cfg, stages=cfg.M)
    data = common.load_data(cfg, device)
    cnet = complex_net(cfg, meta, arch, cfg.M, cfg.N, cfg.STEP).to(device)
    run = common.RunDir(script, cfg, extra={"device": str(device), "architecture": arch})
    print(f"synthetic gradients, serial: {cfg.M} x {cfg.N} layers of {arch} on {meta.name}; results in {run.path}")
    hist, result = _serial(cnet, data, cfg, epochs=cfg.EPOCHS, lr=cfg.LEARN_RATE)
    print(f"test acc {result['test_acc']:.4f}; time {result['train_time_s']:.1f}s, "
          f"theoretical parallel time {result['theoretical_time_s']:.1f}s")
    _finish(run, "sg", {"synthetic gradients": hist}, result)


def _coarse(cfg, meta, arch, data, stages):
    cnet = complex_net(cfg, meta, arch, stages, cfg.N, cfg.STEP_C).to(data.x_train.device)
    hist, res = _serial(cnet, data, cfg, epochs=cfg.EPOCHS_C, lr=cfg.LEARN_RATE_C, true_gradients=True,
                        tag="coarse ")
    return cnet, hist, res


def multilevel(script, cfg):
    """Coarse with true gradients (modules learning), prolong, fine with synthetic gradients."""
    meta, arch, device = _setup(cfg, stages=cfg.M, steps=("STEP_C", "STEP_F"))
    data = common.load_data(cfg, device)
    run = common.RunDir(script, cfg, extra={"device": str(device), "architecture": arch})
    print(f"multilevel: {cfg.M} x {cfg.N} -> {cfg.M} x {2 * cfg.N} layers of {arch} on {meta.name}; "
          f"results in {run.path}")
    cnet, coarse_hist, coarse = _coarse(cfg, meta, arch, data, cfg.M)
    fine_net = cnet.prolong(cfg.PROLONG, h=cfg.STEP_F)
    fine_hist, fine = _serial(fine_net, data, cfg, epochs=cfg.EPOCHS_F, lr=cfg.LEARN_RATE_F, tag="fine ")
    scratch_net = complex_net(cfg, meta, arch, cfg.M, 2 * cfg.N, cfg.STEP_F).to(device)
    scratch_hist, scratch = _serial(scratch_net, data, cfg, epochs=cfg.EPOCHS_F, lr=cfg.LEARN_RATE_F,
                                    tag="scratch ")
    total = coarse["train_time_s"] + fine["train_time_s"]
    print(f"\n{'':<22} {'test acc':>8} {'time (s)':>9}\n{'coarse':<22} {coarse['test_acc']:>8.4f} "
          f"{coarse['train_time_s']:>9.1f}\n{'fine (prolonged)':<22} {fine['test_acc']:>8.4f} "
          f"{fine['train_time_s']:>9.1f}\n{'multilevel total':<22} {fine['test_acc']:>8.4f} {total:>9.1f}\n"
          f"{'fine from scratch':<22} {scratch['test_acc']:>8.4f} {scratch['train_time_s']:>9.1f}")
    result = {"train_acc": fine["train_acc"], "test_acc": fine["test_acc"], "train_time_s": total,
              "theoretical_time_s": coarse["theoretical_time_s"] + fine["theoretical_time_s"],
              "coarse": coarse, "fine": fine, "scratch": scratch}
    _finish(run, "multilevel", {"coarse": coarse_hist, "fine": fine_hist, "scratch": scratch_hist}, result)


def distributed(script, cfg):
    """Each sub-network in its own process; one RESULT from rank 0."""
    stages = world_size_for(cfg.M)
    meta, arch, _ = _setup(cfg, stages=stages)
    data = common.load_data(cfg)
    cnet = complex_net(cfg, meta, arch, stages, cfg.N, cfg.STEP)
    main_rank = common.is_main_process()
    run = common.RunDir(script, cfg, extra={"architecture": arch, "stages": stages}) if main_rank else None
    if main_rank:
        print(f"synthetic gradients, {stages} processes: {stages} x {cfg.N} layers of {arch} on {meta.name}; "
              f"results in {run.path}", flush=True)
    hist, result = _distributed(cnet, data, cfg, stages, epochs=cfg.EPOCHS, lr=cfg.LEARN_RATE)
    if main_rank:
        print(f"test acc {result['test_acc']:.4f}; training {result['train_time_s']:.1f}s "
              f"({result['wall_time_s']:.1f}s with process start-up)")
        _finish(run, "dist_sg", {"distributed": hist}, result)


def distributed_multilevel(script, cfg):
    """Coarse stage as in the multilevel script, then distributed fine training."""
    stages = world_size_for(cfg.M)
    meta, arch, _ = _setup(cfg, stages=stages, steps=("STEP_C", "STEP_F"))
    data = common.load_data(cfg)
    main_rank = common.is_main_process()
    run = common.RunDir(script, cfg, extra={"architecture": arch, "stages": stages}) if main_rank else None
    if main_rank:
        print(f"multilevel, fine stage on {stages} processes: {stages} x {cfg.N} -> {stages} x {2 * cfg.N} "
              f"layers of {arch} on {meta.name}; results in {run.path}", flush=True)
    cnet, coarse_hist, coarse = _coarse(cfg, meta, arch, data, stages)
    fine_net = cnet.prolong(cfg.PROLONG, h=cfg.STEP_F)
    fine_hist, fine = _distributed(fine_net, data, cfg, stages, epochs=cfg.EPOCHS_F, lr=cfg.LEARN_RATE_F)
    if not main_rank:
        return
    total = coarse["train_time_s"] + fine["train_time_s"]
    print(f"coarse test acc {coarse['test_acc']:.4f} in {coarse['train_time_s']:.1f}s; fine test acc "
          f"{fine['test_acc']:.4f} in {fine['train_time_s']:.1f}s; total {total:.1f}s")
    result = {"train_acc": fine["train_acc"], "test_acc": fine["test_acc"], "train_time_s": total,
              "coarse": coarse, "fine": fine}
    _finish(run, "dist_multilevel", {"coarse": coarse_hist, "fine": fine_hist}, result)
