"""The multi-unit conv network's head, schedule and augmentation on a small training set.

One run: ``python benchmarks/bench_conv_defaults.py ARCH HEAD SCHEDULE AUGMENT N EPOCHS SEED``
trains the scripts' conv network (units 8/16/32, 6 layers, h = 0.5, Adam at 3e-3, batch
64) on the first N Fashion-MNIST training images (0: all; seeded permutation) and tests
on 1,000 test images (all with N = 0); prints one JSON line.

    HEAD      flat (the scripts' head: the last state flattened), poolK (averaged to K x K
              first), wdA (flat, plus A ||W||^2 on the classifier: the papers' alpha_c)
    SCHEDULE  step2 (halved every 2 epochs), cosine, const
    AUGMENT   0, or P / Pf: random crops of padding P (f: and flips)
"""
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import datasets  # noqa: E402
from datasets.augment import crop_flip  # noqa: E402
from datasets.batching import batches, epoch_generator  # noqa: E402
from models import build_model  # noqa: E402
from models.training import evaluate  # noqa: E402


def main(arch, head, schedule, augment, n_train, epochs, seed):
    torch.set_num_threads(2)
    data = datasets.load("FASHION", seed=0, log=None)
    x, y = data.x_train, data.y_train
    x_test, y_test = data.x_test, data.y_test
    if n_train:
        pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n_train]
        x, y, x_test, y_test = x[pick], y[pick], x_test[:1000], y_test[:1000]
    torch.manual_seed(seed)
    model = build_model(arch, data.info.shape, 10, 6, 0.5, conv=True, units=(8, 16, 32), activation="tanh")
    if head.startswith("pool"):
        k = int(head[4:])
        model.classifier = nn.Linear(32 * k * k, 10)
        model.classify = lambda state: model.classifier(F.adaptive_avg_pool2d(state[0], k).flatten(1))
    decay = float(head[2:]) if head.startswith("wd") else 0.0
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    total = -(-len(y) // 64) * epochs

    def factor(step, epoch):
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * step / total))
        return 0.5 ** ((epoch - 1) // int(schedule[4:])) if schedule.startswith("step") else 1.0

    step, curve, t0 = 0, [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        generator = epoch_generator(seed, epoch)
        for xb, yb in batches(x, y, 64, generator=generator):
            if augment != "0":
                xb = crop_flip(xb, generator, pad=int(augment[0]), flip=augment.endswith("f"))
            for group in opt.param_groups:
                group["lr"] = 3e-3 * factor(step, epoch)
            loss = F.cross_entropy(model(xb), yb)
            if decay:
                loss = loss + decay * model.classifier.weight.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        curve.append(round(evaluate(model, x_test, y_test), 4))
    print(json.dumps({"arch": arch, "head": head, "schedule": schedule, "augment": augment, "n": n_train,
                      "seed": seed, "train_acc": round(evaluate(model, x, y), 4), "test_acc": curve[-1],
                      "curve": curve, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 8:
        sys.exit(__doc__)
    a = sys.argv[1:]
    main(a[0], a[1], a[2], a[3], int(a[4]), int(a[5]), int(a[6]))
