"""Process start-up: every trainer starts from the same allocator state, so that its
time does not depend on what its process ran before (the race runs its trainers one
after another in one process)."""
import ctypes
import resource

import pytest
import torch

from harness.launch import M_MMAP_THRESHOLD, steady_allocator
from models import build_model
from models.training import fit

glibc = pytest.importorskip("ctypes.util").find_library("c")
pytestmark = pytest.mark.skipif(glibc is None or "libc.so" not in glibc, reason="glibc's allocator only")


def _faults_of_an_epoch():
    """Minor page faults of the second epoch of a conv network on batches of 3 MB
    activations (the first epoch warms the allocator)."""
    torch.manual_seed(0)
    net = build_model("verlet", (1, 28, 28), 10, 3, 0.5, conv=True, channels=16)
    x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
    fit(net, x, y, epochs=1, lr=1e-3, batch_size=64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fit(net, x, y, epochs=1, lr=1e-3, batch_size=64)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_a_steady_allocator_keeps_the_blocks_a_batch_frees():
    libc = ctypes.CDLL("libc.so.6")
    try:
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)  # glibc's default threshold, held fixed
        fresh = _faults_of_an_epoch()  # every activation mapped afresh and faulted in again
        steady_allocator()
        steady = _faults_of_an_epoch()
    finally:
        steady_allocator()
    assert fresh > 2000  # 4 batches, each 3 MB activation 750 pages (about 290,000 measured)
    assert steady < fresh / 20, (steady, fresh)  # (1 to 3,136 measured)


@pytest.mark.slow
def test_a_worker_forked_from_the_fork_server_sees_the_environment_of_its_launch(monkeypatch):
    from harness.launch import launch
    from tests.helpers import environment_worker

    names = ("STABLE_TEST_ADDED", "STABLE_TEST_REMOVED", "WORLD_SIZE")
    monkeypatch.setenv("STABLE_TEST_REMOVED", "before")
    assert launch(environment_worker, 2, (names,), threads=1, device="cpu")["STABLE_TEST_REMOVED"] == "before"
    monkeypatch.setenv("STABLE_TEST_ADDED", "after the fork server started")
    monkeypatch.delenv("STABLE_TEST_REMOVED")
    seen = launch(environment_worker, 2, (names,), threads=1, device="cpu")
    assert seen == {"STABLE_TEST_ADDED": "after the fork server started", "STABLE_TEST_REMOVED": None,
                    "WORLD_SIZE": "2"}
