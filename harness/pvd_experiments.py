"""PVD.py's experiment: PVD in NUM_PROC processes (or its serial mode), then the report."""
from __future__ import annotations

import torch

from harness import board, figures
from harness.experiment import augmenting, build, describe, open_run
from harness.launch import launch
from harness.resume import Checkpointer
from harness.rundir import emit_result
from pvd import PVDConfig, parallel_worker, run_serial


def pvd_config(cfg, meta):
    return PVDConfig(num_proc=cfg.NUM_PROC, iterations=cfg.ITERATIONS, epochs=cfg.EPOCHS, steps=cfg.STEPS,
                     lr=cfg.LEARN_RATE, optimizer=cfg.OPTIMIZER, batch_size=cfg.BATCH_SIZE,
                     direction_batches=cfg.DIRECTION_BATCHES, sync_batches=cfg.SYNC_BATCHES, sync=cfg.SYNC,
                     target_acc=cfg.TARGET_ACC, train_classifier=cfg.TRAIN_CLASSIFIER, seed=cfg.SEED,
                     fail_rank=cfg.FAIL_RANK, fail_iteration=cfg.FAIL_ITERATION, fail_mode=cfg.FAIL_MODE,
                     augment=augmenting(cfg, meta))


def train_pvd(cfg):
    """PVD of the network of the constants; metrics, weights, curves and RESULT."""
    o = open_run(cfg, world_size_of="NUM_PROC" if cfg.PARALLEL else None,  # one rank a block
                 device_data=False, announce=False)  # pvd.run says where it resumes
    cfg, run_dir, data = o.cfg, o.run, o.data
    model = build(cfg, o.arch, o.meta)
    pcfg = pvd_config(cfg, o.meta)
    saver = Checkpointer(run_dir.path, cfg, cfg.ITERATIONS) if run_dir is not None else None
    if run_dir is not None:
        mode = f"{cfg.NUM_PROC} processes" if cfg.PARALLEL else "serial mode"
        print(f"PVD ({mode}, sync={cfg.SYNC}) of {o.arch}, N={cfg.N}, h={cfg.STEP} on {o.meta.name}; "
              f"results in {run_dir.path}", flush=True)
        describe(model)
    if cfg.PARALLEL:
        out = launch(parallel_worker, cfg.NUM_PROC, (model, data, pcfg, True, saver), threads=cfg.THREADS,
                     device=cfg.DEVICE, max_restarts=cfg.MAX_RESTARTS,
                     on_placement=run_dir.record_placement if run_dir is not None else None)
    else:
        torch.set_num_threads(cfg.THREADS or torch.get_num_threads())
        out = run_serial(model.to(o.device), data.to(o.device), pcfg, log=lambda s: print(s, flush=True),
                         saver=saver)
    if run_dir is not None:
        report(cfg, run_dir, out)


def report(cfg, run_dir, out):
    hist = out["history"]
    result = {"test_acc": hist["test_acc"][-1], "train_acc": hist["train_acc"][-1],
              "iterations": hist["iteration"][-1], "reached_target": hist["test_acc"][-1] >= cfg.TARGET_ACC,
              "train_time_s": hist["train_time_s"][-1], "wall_time_s": hist["wall_time_s"][-1],
              "theoretical_time_s": hist["theoretical_time_s"][-1], "num_proc": cfg.NUM_PROC,
              "parallel": bool(cfg.PARALLEL), "sync": cfg.SYNC}
    run_dir.save_json("metrics.json", {"history": hist, **result})
    run_dir.save_weights("model.pt", out["state_dict"])
    board.write_history(run_dir.path, hist, step_key="iteration", seconds_key="wall_time_s", cumulative=False)
    series = {k: hist[k] for k in ("loss", "train_acc", "test_acc")}
    title = f"PVD, {cfg.NUM_PROC} processors"
    figures.curves(run_dir.file("pvd_iterations.png"), {"PVD": {"iteration": hist["iteration"], **series}},
                    x_key="iteration", title=title)
    figures.curves(run_dir.file("pvd_time.png"), {"PVD": {"wall time (s)": hist["wall_time_s"], **series}},
                    x_key="wall time (s)", title=title)
    print(f"test acc {result['test_acc']:.4f} after {result['iterations']} iterations; "
          f"training {result['train_time_s']:.1f}s (wall time {result['wall_time_s']:.1f}s, accuracies and checkpoints "
          f"included), theoretical parallel time {result['theoretical_time_s']:.1f}s")
    emit_result({**result, "run_dir": str(run_dir.path)})

