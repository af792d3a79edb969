"""The generated two-class toy problems: ellipses and the swiss roll."""
from __future__ import annotations

import math

import torch


def ellipse(seed=0, n_train=500, n_val=100):
    """Two concentric ellipse classes, 2 features.

    Per class, semi-axis a ~ U[0, 1] (class 0) or U[1, 2] (class 1), b = a / 2, angle
    ~ U[0, 2 pi); the point is (a cos t, b sin t).  n_train + n_val points per class.
    Returns x_train, y_train, x_val, y_val.

    The classes touch at a = 1, so a validation accuracy near 1 needs the boundary placed
    to within a few thousandths in a, which the training points near it decide: the more
    of them, the closer (docs/RESULTS.md measures how many the toy scripts need).
    """
    gen = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    xs, ys = [], []
    for label in (0, 1):
        a = label + torch.rand(n, generator=gen, dtype=torch.float64)
        t = 2 * math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
        xs.append(torch.stack([a * torch.cos(t), 0.5 * a * torch.sin(t)], 1).float())
        ys.append(torch.full((n,), label, dtype=torch.long))
    x_train = torch.cat([x[:n_train] for x in xs])
    y_train = torch.cat([y[:n_train] for y in ys])
    x_val = torch.cat([x[n_train:] for x in xs])
    y_val = torch.cat([y[n_train:] for y in ys])
    return x_train, y_train, x_val, y_val


def swiss(seed=0, n=500, features=4):
    """Two interleaved swiss-roll spirals, padded with zeros to ``features`` features.

    Angle t = linspace(0, 4 pi, n); radius linspace(0, 1, n) for class 0 and the same
    plus 0.2 for class 1; points (r cos t, r sin t).  Alternate points go to training
    and validation (n / 2 each per class).  Deterministic: ``seed`` is accepted for a
    uniform interface and unused.
    """
    del seed
    t = torch.linspace(0, 4 * math.pi, n, dtype=torch.float64)
    r = torch.linspace(0, 1, n, dtype=torch.float64)
    xs, ys = [], []
    for label, radius in ((0, r), (1, r + 0.2)):
        pts = torch.zeros(n, features, dtype=torch.float64)
        pts[:, 0], pts[:, 1] = radius * torch.cos(t), radius * torch.sin(t)
        xs.append(pts.float())
        ys.append(torch.full((n,), label, dtype=torch.long))
    x_train = torch.cat([x[0::2] for x in xs])
    y_train = torch.cat([y[0::2] for y in ys])
    x_val = torch.cat([x[1::2] for x in xs])
    y_val = torch.cat([y[1::2] for y in ys])
    return x_train, y_train, x_val, y_val
