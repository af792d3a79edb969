"""Mini-batches as shuffled index slices of in-memory tensors (no per-sample DataLoader)."""
from __future__ import annotations

import torch

from .augment import crop_flip


def batch_bounds(n, batch_size):
    """The (start, stop) of each batch of an epoch over n samples; the last may be short."""
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def batches(x, y, batch_size, *, shuffle=True, generator=None, augment=False):
    """Yield (x[idx], y[idx]) for consecutive slices idx of a (shuffled) permutation;
    with ``augment``, random crops and flips of x[idx] (``crop_flip``, same generator)."""
    n = len(y)
    if not shuffle:
        for i, j in batch_bounds(n, batch_size):
            yield x[i:j], y[i:j]
        return
    perm = torch.randperm(n, generator=generator).to(x.device)
    for i, j in batch_bounds(n, batch_size):
        idx = perm[i:j]
        yield (crop_flip(x[idx], generator) if augment else x[idx]), y[idx]
