"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision, with an HDF5 cache.

The first load reads torchvision's dataset classes (downloading when allowed and the
files are missing), normalises the images per channel with the training statistics
and writes x/y for train and test to ``<data_root>/<folder>/<NAME>-cache-v1.h5``
(temporary file, then an atomic rename).  Later loads read that file into memory.
A cache that is partial or unreadable is detected and rebuilt.

Offline, MNIST and Fashion-MNIST are read from the four idx files under
``<data_root>/MNIST/raw`` or ``<data_root>/FashionMNIST/raw``, gzipped or extracted;
Fashion-MNIST is also found where Debian's ``dataset-fashion-mnist`` package puts it.
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import torch

from datasets.files import atomic

CACHE_VERSION = 1
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# name -> (torchvision class name, folder under data_root, extra read-only idx folders)
SOURCES = {
    "MNIST": ("MNIST", "MNIST", ()),
    "FASHION": ("FashionMNIST", "FashionMNIST", ("/usr/share/datasets/fashion-mnist",)),
    "CIFAR10": ("CIFAR10", "cifar-10-batches-py", ()),
}


class DatasetNotFound(FileNotFoundError):
    """A dataset's files are not there and could not be downloaded."""


def cache_path(name, data_root):
    return Path(data_root) / SOURCES[name][1] / f"{name}-cache-v{CACHE_VERSION}.h5"


def load_cached(name, data_root, *, download=True, log=print):
    """x_train, y_train, x_test, y_test for MNIST, FASHION or CIFAR10 (float32 NCHW)."""
    path = cache_path(name, data_root)
    arrays = read_cache(path)
    if arrays is None:
        if path.exists():
            log(f"note: the cache {path} is incomplete or corrupt; rebuilding it")
        arrays = _normalise(*_read_raw(name, Path(data_root), download))
        write_cache(path, arrays, name)
    return tuple(torch.from_numpy(a) for a in arrays)


def read_cache(path):
    """The four arrays of a complete cache file, or None if it is missing or damaged."""
    import h5py

    if not Path(path).is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("complete") != 1 or f.attrs.get("version") != CACHE_VERSION:
                return None
            arrays = tuple(f[k][...] for k in ("x_train", "y_train", "x_test", "y_test"))
    except (OSError, KeyError, ValueError):
        return None
    if len(arrays[0]) != len(arrays[1]) or len(arrays[2]) != len(arrays[3]) or not len(arrays[0]):
        return None
    return arrays


def write_cache(path, arrays, name):
    """Write the arrays to a temporary file beside ``path`` and rename it into place."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic(path) as tmp, h5py.File(tmp, "w") as f:
        for key, arr in zip(("x_train", "y_train", "x_test", "y_test"), arrays):
            f.create_dataset(key, data=arr)
        f.attrs["dataset"] = name
        f.attrs["version"] = CACHE_VERSION
        f.attrs["complete"] = 1


def _normalise(x_train, y_train, x_test, y_test):
    """uint8 NHWC/NHW -> float32 NCHW, standardised per channel with training statistics."""
    def to_nchw(x):
        x = np.asarray(x, dtype=np.float32) / 255.0
        return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)

    x_train, x_test = to_nchw(x_train), to_nchw(x_test)
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True) + 1e-8
    return (np.ascontiguousarray((x_train - mean) / std), np.asarray(y_train, dtype=np.int64),
            np.ascontiguousarray((x_test - mean) / std), np.asarray(y_test, dtype=np.int64))


def _idx_dir(folder):
    """True if the four idx files are in ``folder``, each gzipped or extracted."""
    return all((folder / f).is_file() or (folder / f"{f}.gz").is_file() for f in IDX_FILES)


def _stage_idx(src, raw):
    """Make the extracted idx files that torchvision reads present in ``raw``."""
    raw.mkdir(parents=True, exist_ok=True)
    for f in IDX_FILES:
        if (raw / f).is_file():
            continue
        plain, packed = src / f, src / f"{f}.gz"
        with atomic(raw / f) as tmp, open(tmp, "wb") as out:
            if plain.is_file():
                with open(plain, "rb") as inp:
                    shutil.copyfileobj(inp, out)
            else:
                with gzip.open(packed, "rb") as inp:
                    shutil.copyfileobj(inp, out)


def _read_raw(name, root, download):
    import torchvision

    cls_name, folder, extra = SOURCES[name]
    cls = getattr(torchvision.datasets, cls_name)
    if name == "CIFAR10":
        where = root / folder
        try:
            train = cls(root, train=True, download=download)
            test = cls(root, train=False, download=download)
        except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError alike
            raise DatasetNotFound(
                f"CIFAR10 not found in {where} and not downloadable ({type(exc).__name__}: {exc}); "
                f"put the extracted python batches (data_batch_1..5, test_batch) in {where}") from None
        return train.data, np.asarray(train.targets), test.data, np.asarray(test.targets)

    raw = root / folder / "raw"
    sources = [raw, *map(Path, extra)]
    found = next((d for d in sources if _idx_dir(d)), None)
    try:
        if found is not None:
            _stage_idx(found, raw)
            download = False
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except Exception as exc:  # offline downloads fail with URLError, RuntimeError, OSError
        looked = ", ".join(str(d) for d in sources)
        raise DatasetNotFound(
            f"{name} not found (looked in {looked}) and not downloadable ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); put the four idx files "
            f"({', '.join(IDX_FILES)}, .gz or extracted) in {raw}") from None
    return train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy()


def write_idx(path, array):
    """Write a uint8 array as an idx file (gzipped if ``path`` ends in .gz); for tests."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
