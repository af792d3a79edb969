"""Our training loop and data feeding against minimal baselines.

(a) Training throughput of each dense model through models.training.fit against a
    minimal hand-written PyTorch loop of the same equations and sizes (goal >= 0.95).
(b) One epoch of batches from in-memory tensors against torchvision's Dataset +
    DataLoader on the same data (goal >= 10x).

Each of ``--repeats`` rounds times both loops on the same work (same start, same
batches), alternating which goes first; the ratio is the median over the rounds.

    python benchmarks/bench_models.py [--repeats 20]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

from common import save, timed  # noqa: I001  (benchmarks/ is on sys.path when run as a script)

import torch
import torch.nn.functional as F

import datasets
from datasets.vision import IDX_FILES, write_idx
from models import MODELS, build_model
from models.training import fit

WIDTH, LAYERS, STEP, BATCH, SAMPLES = 784, 6, 0.5, 64, 64 * 20  # the default verletTest on MNIST sizes


def minimal_forward(arch, Ks, bs, W, c, x, h=STEP, gamma=0.01):
    """The four equations written out with plain tensors."""
    Y = x
    if arch == "verlet":
        Z = torch.zeros_like(Y)
        for K, b in zip(Ks, bs):
            Z = Z - h * torch.tanh(Y @ K + b)
            Y = Y + h * torch.tanh(Z @ K.t() + b)
    elif arch == "leapfrog":
        Yp = Y
        for K, b in zip(Ks, bs):
            Y, Yp = 2 * Y - Yp + h * h * torch.tanh(-(Y @ K.t()) @ K + b), Y
    elif arch == "antisymmetric":
        eye = torch.eye(Y.shape[1])
        for K, b in zip(Ks, bs):
            Y = Y + h * torch.tanh(Y @ (0.5 * (K - K.t() - gamma * eye)).t() + b)
    else:
        for K, b in zip(Ks, bs):
            Y = Y + h * torch.tanh(Y @ K.t() + b)
    return Y @ W.t() + c


def minimal_epoch(arch, params, opt, x, y, gen):
    Ks, bs, W, c = params
    perm = torch.randperm(len(y), generator=gen)
    for i in range(0, len(y), BATCH):
        idx = perm[i:i + BATCH]
        loss = F.cross_entropy(minimal_forward(arch, Ks, bs, W, c, x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def throughput(repeats):
    x, y = torch.randn(SAMPLES, WIDTH), torch.randint(0, 10, (SAMPLES,))
    out = {}
    for arch in MODELS:
        torch.manual_seed(0)
        start = build_model(arch, (WIDTH,), 10, LAYERS, STEP)
        ours, mine = [], []
        for r in range(repeats + 1):  # the first round warms up and is dropped
            # both loops start from the same weights and see the same batches: the same arithmetic
            model = copy.deepcopy(start)
            Ks = [k.detach().clone().requires_grad_() for k in start.K]
            bs = [b.detach().clone().requires_grad_() for b in start.b]
            W = start.classifier.weight.detach().clone().requires_grad_()
            c = start.classifier.bias.detach().clone().requires_grad_()
            opt = torch.optim.Adam([*Ks, *bs, W, c], lr=1e-4, fused=True)  # the optimiser fit uses
            run_ours = lambda: timed(lambda: fit(model, x, y, epochs=1, lr=1e-4, batch_size=BATCH, seed=r))[0]  # noqa: E731
            run_min = lambda: timed(lambda: minimal_epoch(  # noqa: E731
                arch, (Ks, bs, W, c), opt, x, y, torch.Generator().manual_seed(r)))[0]
            if r % 2:  # alternate which loop goes first
                t_ours, t_min = run_ours(), run_min()
            else:
                t_min, t_ours = run_min(), run_ours()
            if r:
                ours.append(t_ours)
                mine.append(t_min)
        ratios = sorted(m / o for m, o in zip(mine, ours))  # per round: both loops on the same work
        ratio = statistics.median(ratios)
        out[arch] = {"ours_samples_per_s": SAMPLES / statistics.median(ours),
                     "minimal_samples_per_s": SAMPLES / statistics.median(mine), "ratio": ratio,
                     "ratio_quartiles": [ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]]}
        print(f"(a) {arch:<14} ours {out[arch]['ours_samples_per_s']:8.0f}/s  minimal "
              f"{out[arch]['minimal_samples_per_s']:8.0f}/s  ratio {ratio:.3f} (quartiles "
              f"{out[arch]['ratio_quartiles'][0]:.3f}-{out[arch]['ratio_quartiles'][1]:.3f})")
    return out


def feeding(repeats):
    import torchvision
    from torchvision import transforms

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        debian = Path("/usr/share/datasets/fashion-mnist")
        if all((debian / f"{f}.gz").is_file() for f in IDX_FILES):
            source = "Fashion-MNIST (Debian dataset-fashion-mnist)"
            datasets.vision._stage_idx(debian, raw)
        else:
            source = "random images in Fashion-MNIST's format"
            g = torch.Generator().manual_seed(0)
            for f, shape in zip(IDX_FILES, [(60000, 28, 28), (60000,), (10000, 28, 28), (10000,)]):
                hi = 256 if len(shape) == 3 else 10
                write_idx(raw / f, torch.randint(0, hi, shape, generator=g).numpy())
        mean, std = 0.2860, 0.3530
        tv = torchvision.datasets.FashionMNIST(tmp, train=True, transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((mean,), (std,))]))
        loader = torch.utils.data.DataLoader(tv, batch_size=BATCH, shuffle=True)
        x = (tv.data.float().div(255).sub(mean).div(std)).unsqueeze(1)
        y = tv.targets.clone()

        def ours():
            n = 0
            for xb, _ in datasets.batches(x, y, BATCH, generator=torch.Generator().manual_seed(0)):
                n += xb.shape[0]
            return n

        def theirs():
            n = 0
            for xb, _ in loader:
                n += xb.shape[0]
            return n

        t_ours = min(timed(ours)[0] for _ in range(5))
        t_theirs = min(timed(theirs)[0] for _ in range(2))
    ratio = t_theirs / t_ours
    print(f"(b) one epoch of {len(y)} samples ({source}): in-memory batches {t_ours:.3f}s, "
          f"torchvision Dataset+DataLoader {t_theirs:.2f}s: {ratio:.0f}x")
    return {"source": source, "samples": len(y), "ours_s": t_ours, "dataloader_s": t_theirs, "ratio": ratio}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"dense, width {WIDTH}, {LAYERS} layers, batch {BATCH}, {SAMPLES} samples an epoch, "
          f"{torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    a = throughput(args.repeats)
    b = feeding(args.repeats)
    save("models", {"throughput": a, "feeding": b, "seconds": time.perf_counter() - t0,
                    "sizes": {"width": WIDTH, "layers": LAYERS, "batch": BATCH, "samples": SAMPLES}})


if __name__ == "__main__":
    main()
