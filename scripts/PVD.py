"""Parallel Variable Distribution: train a stable network with P processors.

Each processor owns a block of consecutive layers; per iteration every one trains its
block while the others move along the shared gradient direction (forget-me-not
scalars), then the candidates are synchronised.  PARALLEL=1 runs P real processes
(torch.distributed, gloo on CPU / NCCL on GPUs, or under torchrun); PARALLEL=0 runs
the same algorithm in one process and reports its theoretical parallel time (per iteration
the slowest processor plus the synchronisation).
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harness import board, figures  # noqa: E402
from harness.cli import configure  # noqa: E402
from harness.entry import run  # noqa: E402
from harness.experiment import augmenting, build, describe, open_run  # noqa: E402
from harness.launch import launch  # noqa: E402
from harness.resume import Checkpointer  # noqa: E402
from harness.rundir import emit_result  # noqa: E402
from pvd import PVDConfig, parallel_worker, run_serial  # noqa: E402

DATASET = "ELLIPSE"  # ELLIPSE, SWISS, DIGITS, MNIST, FASHION (or CIFAR10)
CHOICE = "verlet"  # architecture: r/resnet, a/antisymmetric, v/verlet, l/leapfrog
CONV = False  # 3x3 convolutional layers (image sets only)
N = 8  # number of layers (split into NUM_PROC blocks)
STEP = 0.5  # step size h
GAMMA = 0.01  # diffusion gamma of the antisymmetric network
ACTIVATION = "tanh"  # tanh, relu or identity (a linear network)
WIDTH = 4  # dense state width, at least the input's features: smaller inputs are zero-padded to it
UNITS = "8,16,32"  # conv: channels of each unit, joined by 3x3 conv + 2x2 pooling (one value: a single block)
NUM_PROC = 2  # P: processors, one block of layers each
PARALLEL = True  # 1: P real processes; 0: the serial mode (theoretical parallel time)
ITERATIONS = 30  # maximum number of PVD iterations
EPOCHS = 1  # epochs of each processor's parallel phase per iteration
STEPS = 0  # if > 0, at most this many optimiser steps per parallel phase
TARGET_ACC = 0.99  # stop once the validation (test) accuracy reaches it
SYNC = "best"  # synchronisation: best (the best block's candidate) or affine (Ferris-Mangasarian)
DIRECTION_BATCHES = 0  # batches for the direction d = -grad (0: the whole training set)
SYNC_BATCHES = 0  # batches that score the candidates (0: the whole training set)
TRAIN_CLASSIFIER = True  # every processor trains the classifier (0: it moves along d)
LEARN_RATE = 0.01  # learning rate of the parallel phase
OPTIMIZER = "adam"  # adam or sgd
BATCH_SIZE = 50  # mini-batch size
AUGMENT = "auto"  # random crops (padding 4) and flips of the training batches: auto (CIFAR10 only), 1 or 0
THREADS = 0  # intra-op threads per process (0: the cores shared out; serial: all)
SEED = 0  # random seed
DEVICE = "auto"  # auto (cuda if present), cpu, cuda, cuda:1; ranks: gloo on CPU, NCCL with a GPU each
DATA_ROOT = "data"  # where datasets are read, downloaded and cached
RESULTS_DIR = "results"  # run directories go under RESULTS_DIR/<script>/
CHECKPOINT_EVERY = 1  # save a checkpoint in the run directory every this many iterations (0: never)
RESUME = ""  # a run directory to continue, with its own constants (ITERATIONS may grow)
MAX_RESTARTS = 0  # restarts of the whole group after a failure, from the latest checkpoint (0: fail fast)
FAIL_RANK = -1  # testing aid: this processor fails in iteration FAIL_ITERATION (-1: none)
FAIL_ITERATION = 1  # testing aid: ... in this iteration, in the first attempt only (a restart goes on)
FAIL_MODE = "raise"  # testing aid: raise an exception, or kill: the processor sends itself SIGKILL


def pvd_config(cfg, meta):
    return PVDConfig(num_proc=cfg.NUM_PROC, iterations=cfg.ITERATIONS, epochs=cfg.EPOCHS, steps=cfg.STEPS,
                     lr=cfg.LEARN_RATE, optimizer=cfg.OPTIMIZER, batch_size=cfg.BATCH_SIZE,
                     direction_batches=cfg.DIRECTION_BATCHES, sync_batches=cfg.SYNC_BATCHES, sync=cfg.SYNC,
                     target_acc=cfg.TARGET_ACC, train_classifier=cfg.TRAIN_CLASSIFIER, seed=cfg.SEED,
                     fail_rank=cfg.FAIL_RANK, fail_iteration=cfg.FAIL_ITERATION, fail_mode=cfg.FAIL_MODE,
                     augment=augmenting(cfg, meta))


def main(argv=None):
    cfg = configure(__file__, globals(), argv, __doc__)
    o = open_run(__file__, cfg, world_size_of="NUM_PROC" if cfg.PARALLEL else None,  # one rank a block
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


if __name__ == "__main__":
    run(main)
