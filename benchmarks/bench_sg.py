"""Benchmark (issue 4): distributed synthetic gradients against standard backpropagation.

In one run, on the same network (M = 2 sub-networks, 16 layers in all; Verlet and ResNet), data and seed,
for the same number of epochs:
(a) distributed synthetic-gradient training (2 processes x 1 thread) against backprop
    of the whole network in one process with 1 thread: wall-clock speed-up (goal >= 1.7);
(b) the same with the backprop baseline given all the cores (goal >= 1.2);
(c) test accuracy of each (goal: within 1 point), on DIGITS and on Fashion-MNIST
    (the Debian package's files; a training subset keeps the run to minutes);
(d) multilevel (coarse 2 x 4 layers with true gradients, prolonged to 2 x 8, synthetic
    gradients) total time against the fine network from scratch trained until it
    reaches the multilevel's final accuracy (goal >= 1.5x).

    python benchmarks/bench_sg.py [--fashion-samples 8000]
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

from common import save  # noqa: I001

import torch

import datasets
from models import build_model
from models.training import evaluate, fit
from scripts.launch import launch
from synthetic import ComplexNet, train_serial
from synthetic.distributed import DistSGConfig, stage_worker

STEP, LR, SG_LR, BATCH = 0.5, 3e-3, 1e-3, 64


def network(meta, layers_per_stage, h=STEP, seed=0, arch="verlet"):
    torch.manual_seed(seed)
    return ComplexNet(build_model(arch, meta.shape, meta.classes, 2 * layers_per_stage, h), 2)


def compare(data, epochs, label, arch, batch=BATCH):
    meta = data.info
    cnet = network(meta, 8, arch=arch)
    out = launch(stage_worker, 2, (cnet, data, DistSGConfig(epochs=epochs, lr=LR, sg_lr=SG_LR, batch_size=batch,
                                                             verbose=False)), threads=1)
    sg_net = copy.deepcopy(cnet)
    sg_net.load_state_dict(out["state_dict"])
    t_sg, acc_sg = out["train_time_s"], evaluate(sg_net, data.x_test, data.y_test)
    row = {"samples": len(data.y_train), "epochs": epochs, "batch_size": batch, "sg_dist_s": t_sg,
           "sg_test_acc": acc_sg}
    for threads in (1, os.cpu_count()):
        torch.set_num_threads(threads)
        net = copy.deepcopy(cnet.net)
        t0 = time.perf_counter()
        fit(net, data.x_train, data.y_train, epochs=epochs, lr=LR, batch_size=batch, seed=0)
        row[f"backprop_{threads}t_s"] = time.perf_counter() - t0
        row[f"backprop_{threads}t_test_acc"] = evaluate(net, data.x_test, data.y_test)
    cores = os.cpu_count()
    row["a_speedup_same_threads"] = row["backprop_1t_s"] / t_sg
    row["b_speedup_vs_all_cores"] = row[f"backprop_{cores}t_s"] / t_sg
    row["c_accuracy_gap_points"] = 100 * (row["backprop_1t_test_acc"] - acc_sg)
    print(f"{label}, {arch}, 2 x 8 layers: {len(data.y_train)} samples x {epochs} epochs, batch {batch}\n"
          f"  distributed SG (2 x 1 thread) {t_sg:.1f}s, test acc {acc_sg:.4f}\n"
          f"  backprop 1 thread {row['backprop_1t_s']:.1f}s, test acc {row['backprop_1t_test_acc']:.4f}\n"
          f"  backprop {cores} threads {row[f'backprop_{cores}t_s']:.1f}s, test acc "
          f"{row[f'backprop_{cores}t_test_acc']:.4f}\n"
          f"  (a) speed-up {row['a_speedup_same_threads']:.2f}  (b) vs all cores "
          f"{row['b_speedup_vs_all_cores']:.2f}  (c) backprop - SG = {row['c_accuracy_gap_points']:+.2f} points")
    return row


def multilevel(data, epochs_c, epochs_f, max_scratch):
    torch.set_num_threads(1)
    meta = data.info
    kw = dict(sg_lr=SG_LR, batch_size=BATCH, seed=0)
    coarse = network(meta, 4, h=2 * STEP)
    # training seconds of the epochs (the per-epoch test evaluation is left out on both sides)
    t_ml = sum(train_serial(coarse, data, epochs=epochs_c, lr=LR, true_gradients=True, **kw)["seconds"])
    t0 = time.perf_counter()
    fine = coarse.prolong(h=STEP)
    t_ml += time.perf_counter() - t0
    t_ml += sum(train_serial(fine, data, epochs=epochs_f, lr=LR / 3, **kw)["seconds"])
    acc_ml = evaluate(fine, data.x_test, data.y_test)
    scratch = network(meta, 8)
    t_scratch, acc = float("inf"), 0.0
    hist = train_serial(scratch, data, epochs=max_scratch, lr=LR, **kw, log=None)
    # the first epoch at which the network from scratch matches the multilevel's accuracy
    elapsed = 0.0
    for sec, acc in zip(hist["seconds"], hist["test_acc"]):
        elapsed += sec
        if acc >= acc_ml:
            t_scratch = elapsed
            break
    epochs_needed = hist["test_acc"].index(acc) + 1 if t_scratch < float("inf") else None
    ratio = t_scratch / t_ml
    print(f"(d) multilevel {t_ml:.2f}s to test acc {acc_ml:.4f} ({epochs_c} coarse + {epochs_f} fine epochs); "
          f"fine from scratch {t_scratch:.2f}s ({epochs_needed} epochs, best {max(hist['test_acc']):.4f}); "
          f"ratio {ratio:.2f}")
    return {"multilevel_s": t_ml, "multilevel_test_acc": acc_ml, "scratch_s_to_match": t_scratch,
            "scratch_epochs_to_match": epochs_needed, "scratch_best_acc": max(hist["test_acc"]), "ratio": ratio}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs-digits", type=int, default=10)
    parser.add_argument("--epochs-fashion", type=int, default=3)
    parser.add_argument("--fashion-samples", type=int, default=8000)
    parser.add_argument("--archs", default="verlet,resnet")
    parser.add_argument("--fashion-batches", default="64,256")
    parser.add_argument("--data-root", default=str(Path(__file__).resolve().parents[1] / "data"))
    args = parser.parse_args()
    results = {"config": vars(args)}
    digits = datasets.load("DIGITS")
    try:
        fashion = datasets.load("FASHION", data_root=args.data_root, download=False)
        n = args.fashion_samples
        fashion = datasets.Data(fashion.x_train[:n].clone(), fashion.y_train[:n].clone(), fashion.x_test,
                                fashion.y_test, fashion.info)
    except datasets.DatasetNotFound as exc:
        fashion = None
        print(f"FASHION skipped: {exc}")
    for arch in args.archs.split(","):
        results[f"digits_{arch}"] = compare(digits, args.epochs_digits, "DIGITS", arch)
        for batch in map(int, args.fashion_batches.split(",")) if fashion is not None else ():
            results[f"fashion_{arch}_b{batch}"] = compare(fashion, args.epochs_fashion, "FASHION", arch, batch)
    results["multilevel_digits"] = multilevel(datasets.load("DIGITS"), 4, 4, 20)
    save("sg", results)


if __name__ == "__main__":
    main()
