"""Datasets as functions returning in-memory tensors; ``info`` gives their dimensions.

Not installed into site-packages (the name belongs to a PyPI package): scripts put the
repository root on sys.path, tests use pytest's ``pythonpath``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .batching import batch_bounds, batches
from .vision import DatasetNotFound


@dataclass(frozen=True)
class DataInfo:
    """Dimensions of a dataset: sample shape, classes, and whether it is an image set."""

    name: str
    shape: tuple  # one sample: (features,) or (channels, height, width)
    classes: int
    needs_files: bool  # read from data_root (downloaded or provided), not generated

    @property
    def image(self):
        return len(self.shape) == 3

    @property
    def features(self):
        return math.prod(self.shape)

    @property
    def channels(self):
        return self.shape[0] if self.image else None

    @property
    def image_shape(self):
        return self.shape[1:] if self.image else None


INFO = {
    "ELLIPSE": DataInfo("ELLIPSE", (2,), 2, False),
    "SWISS": DataInfo("SWISS", (4,), 2, False),
    "DIGITS": DataInfo("DIGITS", (1, 8, 8), 10, False),
    "MNIST": DataInfo("MNIST", (1, 28, 28), 10, True),
    "FASHION": DataInfo("FASHION", (1, 28, 28), 10, True),
    "CIFAR10": DataInfo("CIFAR10", (3, 32, 32), 10, True),
}


@dataclass
class Data:
    """Training and test (validation, for the toy sets) tensors of one dataset."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    info: DataInfo

    def head(self, n):
        """The first ``n`` training samples (all with 0 or more than there are: this Data
        itself, nothing copied), the test set whole."""
        if not n or n >= len(self.y_train):
            return self
        return Data(self.x_train[:n].clone(), self.y_train[:n].clone(), self.x_test, self.y_test, self.info)

    def to(self, device):
        return Data(self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
                    self.y_test.to(device), self.info)


def info(name):
    """The DataInfo of a dataset name (case-insensitive); ValueError if unknown."""
    key = str(name).upper()
    if key not in INFO:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(INFO)}")
    return INFO[key]


def load(name, *, data_root="data", seed=0, download=True, log=print, ellipse_points=500, ellipse_validation=100,
         swiss_points=500):
    """Load a dataset by name as CPU tensors.

    ELLIPSE and SWISS are generated (``seed``; ELLIPSE with ``ellipse_points`` training
    and ``ellipse_validation`` validation points per class, SWISS with ``swiss_points``
    points per class, every other one for validation; the defaults: 500, 100 and 500),
    DIGITS comes with scikit-learn, the image sets are read through
    torchvision into an HDF5 cache under ``data_root``.
    Raises ValueError for an unknown name and DatasetNotFound for missing files.
    """
    meta = info(name)
    if meta.name == "ELLIPSE":
        from .toy import ellipse
        arrays = ellipse(seed, n_train=ellipse_points, n_val=ellipse_validation)
    elif meta.name == "SWISS":
        from .toy import swiss
        arrays = swiss(seed, n=swiss_points)
    elif meta.name == "DIGITS":
        from .digits import digits
        arrays = digits(seed)
    else:
        from .vision import load_cached
        arrays = load_cached(meta.name, data_root, download=download, log=log)
    return Data(*arrays, meta)


__all__ = ["INFO", "Data", "DataInfo", "DatasetNotFound", "batch_bounds", "batches", "info", "load"]
