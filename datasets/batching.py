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


def epoch_generator(seed, epoch):
    """The random generator of one epoch's batches (their order and augmentation), seeded
    by the run's seed and the epoch alone, so that every trainer, resumed or not, in one
    process or several, draws the same batches."""
    return torch.Generator().manual_seed(seed * 1000 + epoch)


def epoch_batches(x, y, batch_size, seed, epoch, augment=False):
    """The batches of epoch ``epoch`` (1, 2, ...) of a run seeded by ``seed``: the one
    batch order of every trainer (fit, the serial and distributed pipelines, the torch
    peers)."""
    return batches(x, y, batch_size, generator=epoch_generator(seed, epoch), augment=augment)
