"""Data augmentation of the papers' CIFAR experiments, on in-memory image batches."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip(x, generator=None, pad=4, flip=True):
    """Random crops and horizontal flips of a batch x (B, C, H, W), one draw per image.

    Each image is zero-padded by ``pad`` pixels on every side and an H x W window is cut
    at a random offset (0 ... 2 pad in each direction, uniform); with ``flip`` it is then
    mirrored left-right with probability 1/2.  The draws come from ``generator`` (a CPU
    generator, so that a run is reproducible on any device); one gather does the batch.
    """
    B, C, H, W = x.shape
    shifts = torch.randint(0, 2 * pad + 1, (2, B), generator=generator)
    rows = shifts[0, :, None] + torch.arange(H)  # (B, H) rows of the padded image
    cols = shifts[1, :, None] + torch.arange(W)  # (B, W)
    if flip:
        mirrored = torch.rand(B, generator=generator) < 0.5
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    dev = x.device
    b = torch.arange(B, device=dev)[:, None, None, None]
    c = torch.arange(C, device=dev)[None, :, None, None]
    return padded[b, c, rows.to(dev)[:, None, :, None], cols.to(dev)[:, None, None, :]]
