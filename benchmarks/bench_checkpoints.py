"""What checkpoints cost and what a restart costs.

(a) One checkpoint of verletTest.py's training state on Fashion-MNIST (dense, N = 6,
    width 784, Adam's moments included): ``models.checkpoint.save``, median of 5,
    against one epoch of the same network (batch 64).
(b) distSg.py on Fashion-MNIST, 3 epochs, the delayed rule on even cuts, a checkpoint
    every epoch, stage 1 killed (SIGKILL) at the start of epoch 2 and the group restarted
    once: the seconds from the kill to the stages resuming (read off the log's
    timestamps), and the result against an unfaulted run of the same constants.

    python benchmarks/bench_checkpoints.py [--dataset FASHION]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import ROOT, save  # noqa: I001

import torch

import datasets
from models import build_model, checkpoint
from models.training import fit, make_optimizer


def checkpoint_cost(dataset):
    data = datasets.load(dataset, data_root=str(ROOT / "data"))
    torch.manual_seed(0)
    model = build_model("verlet", data.info.shape, data.info.classes, 6, 0.5, width=784)
    epoch_s = sum(fit(model, data.x_train, data.y_train, epochs=1, lr=1e-3, batch_size=64)["seconds"])
    opt = make_optimizer("adam", model.parameters(), 1e-3)
    model(data.x_train[:64]).sum().backward()
    opt.step()
    state = checkpoint.training_state(1, model, [opt], torch.Generator(), {"epoch": [1]})
    with tempfile.TemporaryDirectory() as folder:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            checkpoint.save(folder, state)
            times.append(time.perf_counter() - t0)
        size = os.path.getsize(os.path.join(folder, "checkpoint.pt"))
    return {"epoch_s": epoch_s, "checkpoint_s": statistics.median(times), "checkpoint_mb": size / 1e6}


def _distsg(dataset, results, *extra):
    """(RESULT, [(seconds since start, line)]) of one distSg.py run."""
    command = [sys.executable, str(ROOT / "scripts" / "distSg.py"), "--dataset", dataset, "--epochs", "3", "--rule",
               "delayed", "--balance", "even", "--checkpoint-every", "1", "--results-dir", results, *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines = [(time.perf_counter() - t0, line.rstrip()) for line in proc.stdout]
    if proc.wait() != 0:
        raise SystemExit("distSg.py failed:\n" + "\n".join(line for _, line in lines[-30:]))
    result = json.loads(lines[-1][1][len("RESULT "):])
    return result, lines


def restart_cost(dataset):
    with tempfile.TemporaryDirectory() as results:
        faulted, lines = _distsg(dataset, results, "--fail-stage", "1", "--fail-epoch", "2", "--fail-mode", "kill",
                                 "--max-restarts", "1")
        clean, _ = _distsg(dataset, results)
    killed = next(t for t, line in lines if "made to fail" in line)
    resumed = next(t for t, line in lines if "resume after epoch" in line)
    keys = ("test_acc", "train_acc", "train_time_s")
    return {"kill_to_resume_s": resumed - killed, "faulted": {k: faulted[k] for k in keys},
            "unfaulted": {k: clean[k] for k in keys}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="FASHION")
    args = parser.parse_args(argv)
    cost = checkpoint_cost(args.dataset)
    print(f"checkpoint {cost['checkpoint_mb']:.1f} MB in {cost['checkpoint_s']:.3f} s; one epoch "
          f"{cost['epoch_s']:.1f} s ({cost['checkpoint_s'] / cost['epoch_s']:.1%})", flush=True)
    restart = restart_cost(args.dataset)
    print(f"from the kill to the stages resuming: {restart['kill_to_resume_s']:.2f} s; faulted "
          f"{restart['faulted']}, unfaulted {restart['unfaulted']}")
    save("bench_checkpoints", {"dataset": args.dataset, "checkpoint": cost, "restart": restart})


if __name__ == "__main__":
    main()
