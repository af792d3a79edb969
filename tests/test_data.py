"""Datasets: generated sets, the MNIST idx path with its HDF5 cache, batching."""
import gzip

import numpy as np
import pytest
import torch

import datasets
from datasets.vision import IDX_FILES, cache_path, write_idx


def test_info_gives_dimensions():
    assert datasets.info("mnist").shape == (1, 28, 28)
    assert datasets.info("CIFAR10").channels == 3 and datasets.info("CIFAR10").image_shape == (32, 32)
    assert datasets.info("SWISS").features == 4 and not datasets.info("SWISS").image
    with pytest.raises(ValueError, match="valid: ELLIPSE"):
        datasets.info("nope")


def test_ellipse_matches_its_definition():
    d = datasets.load("ELLIPSE", seed=3)
    assert d.x_train.shape == (1000, 2) and d.x_test.shape == (200, 2)
    assert d.y_train.bincount().tolist() == [500, 500]
    big = datasets.load("ELLIPSE", seed=3, ellipse_points=2000)
    assert big.x_train.shape == (4000, 2) and big.x_test.shape == (200, 2)
    # a point (a cos t, a/2 sin t) has a = sqrt(x^2 + (2y)^2): [0,1] for class 0, [1,2] for class 1
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        a = torch.sqrt(x[:, 0] ** 2 + (2 * x[:, 1]) ** 2)
        assert (a[y == 0] <= 1 + 1e-6).all() and (a[y == 1] >= 1 - 1e-6).all() and (a <= 2 + 1e-6).all()
    assert not torch.equal(d.x_train, datasets.load("ELLIPSE", seed=4).x_train)
    assert torch.equal(d.x_train, datasets.load("ELLIPSE", seed=3).x_train)


def test_swiss_matches_its_definition():
    d = datasets.load("SWISS")
    assert d.x_train.shape == (500, 4) and d.x_test.shape == (500, 4)
    assert (d.x_train[:, 2:] == 0).all()
    r = d.x_train[:, :2].norm(dim=1)
    r0, r1 = r[d.y_train == 0], r[d.y_train == 1]
    torch.testing.assert_close(r1 - r0, torch.full_like(r0, 0.2), rtol=0, atol=1e-5)
    assert r0.max() == pytest.approx(1.0, abs=0.01) and r0.min() == 0


def test_digits_is_a_stratified_image_split():
    d = datasets.load("DIGITS", seed=0)
    assert d.x_train.shape[1:] == (1, 8, 8) and len(d.y_train) + len(d.y_test) == 1797
    frac = d.y_test.bincount().float() / len(d.y_test)
    assert (frac - 0.1).abs().max() < 0.01


def test_batches_cover_every_sample_once():
    x, y = torch.arange(23.0)[:, None], torch.arange(23)
    seen = torch.cat([yb for _, yb in datasets.batches(x, y, 5, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(23)) and seen.tolist() != list(range(23))
    assert [len(b) for _, b in datasets.batches(x, y, 5, shuffle=False)] == [5, 5, 5, 5, 3]


def write_mnist(raw, n_train=40, n_test=10, gz=True, seed=0):
    """Four small idx files in MNIST's format; returns the arrays written."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {IDX_FILES[0]: rng.integers(0, 256, (n_train, 28, 28)), IDX_FILES[1]: rng.integers(0, 10, n_train),
              IDX_FILES[2]: rng.integers(0, 256, (n_test, 28, 28)), IDX_FILES[3]: rng.integers(0, 10, n_test)}
    for name, arr in arrays.items():
        write_idx(raw / (name + (".gz" if gz else "")), arr)
    return arrays


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "extracted"])
def test_mnist_idx_files_are_parsed_and_cached(tmp_path, gz):
    arrays = write_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    d = datasets.load("MNIST", data_root=tmp_path, download=False)
    assert d.x_train.shape == (40, 1, 28, 28) and d.x_test.shape == (10, 1, 28, 28)
    assert d.y_train.tolist() == arrays[IDX_FILES[1]].tolist()
    assert d.x_train.dtype == torch.float32
    assert abs(d.x_train.mean().item()) < 1e-4 and d.x_train.std().item() == pytest.approx(1, abs=1e-2)
    # pixel order survives: standardisation is monotone per image
    raw0 = torch.tensor(arrays[IDX_FILES[0]][0], dtype=torch.float32).flatten()
    assert torch.equal(raw0.argsort(stable=True), d.x_train[0].flatten().argsort(stable=True))
    assert cache_path("MNIST", tmp_path).is_file()
    # the second load reads the cache alone
    for f in (tmp_path / "MNIST" / "raw").iterdir():
        f.unlink()
    again = datasets.load("MNIST", data_root=tmp_path, download=False)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "incomplete"])
def test_a_damaged_cache_is_rebuilt(tmp_path, damage):
    write_mnist(tmp_path / "MNIST" / "raw")
    first = datasets.load("MNIST", data_root=tmp_path, download=False)
    path = cache_path("MNIST", tmp_path)
    if damage == "garbage":
        path.write_bytes(b"not an hdf5 file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:3000])
    else:
        import h5py
        with h5py.File(path, "a") as f:
            f.attrs["complete"] = 0
    notes = []
    again = datasets.load("MNIST", data_root=tmp_path, download=False, log=notes.append)
    assert torch.equal(again.x_train, first.x_train)
    assert notes and "rebuilding" in notes[0]
    assert datasets.vision.read_cache(path) is not None
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".tmp"] == []


def test_missing_mnist_says_where_to_put_the_files(tmp_path):
    with pytest.raises(datasets.DatasetNotFound) as err:
        datasets.load("MNIST", data_root=tmp_path, download=False)
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and "train-images-idx3-ubyte" in msg


def test_fashion_is_found_in_an_extra_folder(tmp_path, monkeypatch):
    src = tmp_path / "debian"
    write_mnist(src, n_train=12, n_test=4)
    monkeypatch.setitem(datasets.vision.SOURCES, "FASHION", ("FashionMNIST", "FashionMNIST", (str(src),)))
    d = datasets.load("FASHION", data_root=tmp_path / "root", download=False)
    assert d.x_train.shape == (12, 1, 28, 28)
    with gzip.open(src / (IDX_FILES[3] + ".gz")) as f:
        assert d.y_test.tolist() == list(f.read()[8:])
