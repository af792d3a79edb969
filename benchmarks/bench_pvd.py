"""PVD on real processes against the same PVD run serially.

In one run, on the same network, data and seed:
(a)  PVD with P=2 processes (1 intra-op thread each) against the serial mode with 1
     thread, same number of iterations: wall-clock speed-up (goal >= 1.7; limit 2.0);
(a') the same with the serial run given all the cores;
(b)  time to reach the target test accuracy: PVD with 2 processes against plain Adam on
     the whole network in one process with all the cores.

    python benchmarks/bench_pvd.py [--dataset DIGITS] [--iterations 8]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

from common import save  # noqa: I001

import torch

import datasets
from models import build_model
from models.training import evaluate, fit
from pvd import PVDConfig, parallel_worker, run_serial
from harness.launch import launch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="DIGITS")
    parser.add_argument("--arch", default="verlet")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--step", type=float, default=0.5)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each parallel phase")
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count()
    data = datasets.load(args.dataset)
    meta = data.info
    torch.manual_seed(0)
    model = build_model(args.arch, meta.shape, meta.classes, args.layers, args.step)
    base = dict(num_proc=2, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=0)
    fixed = PVDConfig(iterations=args.iterations, target_acc=2.0, **base)  # never stops early
    print(f"PVD of {args.arch}, N={args.layers}, on {meta.name} ({len(data.y_train)} samples), "
          f"{args.iterations} iterations of {args.epochs} epochs, {cores} cores")

    def serial(threads, cfg):
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        out = run_serial(copy.deepcopy(model), data, cfg)
        return time.perf_counter() - t0, out

    def parallel(cfg):
        t0 = time.perf_counter()
        out = launch(parallel_worker, 2, (model, data, cfg, False), threads=1)
        return time.perf_counter() - t0, out

    rounds = []
    for r in range(args.rounds):  # the machine's speed drifts: compare within each round
        t_par_total, par = parallel(fixed)
        t_par = par["history"]["wall_time_s"][-1]  # inside the workers, process start-up excluded
        t_ser1, ser1 = serial(1, fixed)
        t_ser_all, _ = serial(cores, fixed)
        rounds.append({"parallel_s": t_par, "parallel_with_startup_s": t_par_total, "serial_1_thread_s": t_ser1,
                       "serial_all_cores_s": t_ser_all,
                       "serial_theoretical_s": ser1["history"]["theoretical_time_s"][-1],
                       "a": t_ser1 / t_par, "a_prime": t_ser_all / t_par, "a_with_startup": t_ser1 / t_par_total})
        print(f"round {r + 1}: 2 processes x 1 thread {t_par:.2f}s ({t_par_total:.2f}s with start-up), serial "
              f"1 thread {t_ser1:.2f}s (theoretical {rounds[-1]['serial_theoretical_s']:.2f}s), serial {cores} "
              f"threads {t_ser_all:.2f}s")
    a = statistics.median(x["a"] for x in rounds)
    a_all = statistics.median(x["a_prime"] for x in rounds)
    a_start = statistics.median(x["a_with_startup"] for x in rounds)
    print(f"(a)  speed-up of 2 processes over the serial mode, 1 thread each: {a:.2f} (median of {len(rounds)}; "
          f"{a_start:.2f} counting process start-up)")
    print(f"(a') speed-up over the serial mode with {cores} threads: {a_all:.2f}")
    same = all(torch.allclose(par["state_dict"][k], v, rtol=1e-4, atol=1e-5)
               for k, v in ser1["state_dict"].items())

    target_cfg = PVDConfig(iterations=50, target_acc=args.target, **base)
    _, par_t = parallel(target_cfg)
    h = par_t["history"]
    t_pvd_target = h["wall_time_s"][-1] if h["test_acc"][-1] >= args.target else float("inf")
    torch.set_num_threads(cores)
    plain = copy.deepcopy(model)
    t_adam, epochs_adam, t0 = float("inf"), 0, time.perf_counter()
    for epochs_adam in range(1, 101):
        fit(plain, data.x_train, data.y_train, epochs=1, lr=args.lr, batch_size=args.batch_size, seed=epochs_adam)
        if evaluate(plain, data.x_test, data.y_test) >= args.target:
            t_adam = time.perf_counter() - t0
            break
    b = t_adam / t_pvd_target
    print(f"(b)  time to {args.target} test accuracy: PVD 2 processes {t_pvd_target:.2f}s "
          f"({h['iteration'][-1]} iterations), Adam {cores} threads {t_adam:.2f}s ({epochs_adam} epochs): "
          f"ratio Adam/PVD {b:.2f}")
    save("pvd", {"config": vars(args), "a_speedup_same_threads": a, "a_speedup_with_startup": a_start,
                 "a_prime_speedup_serial_all_cores": a_all, "rounds": rounds, "parallel_equals_serial": same,
                 "b_pvd_to_target_s": t_pvd_target, "b_pvd_iterations": h["iteration"][-1],
                 "b_adam_to_target_s": t_adam, "b_adam_epochs": epochs_adam, "b_ratio_adam_over_pvd": b})


if __name__ == "__main__":
    main()
