"""Fixtures shared by the test modules, and the rule that keeps the quick suite quick:
a test that starts a Python process (a script, a launch of workers) must be marked slow."""
import multiprocessing.util
import os
import subprocess
import sys

import pytest
import torch


@pytest.fixture
def float64():
    """float64 as the default dtype for one test (exact comparisons with hand evaluations)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class ProcessStarted(AssertionError):
    """A test not marked slow started a process."""


@pytest.fixture(autouse=True)
def processes_only_when_slow(request, monkeypatch):
    """Outside tests marked slow, starting a Python interpreter (subprocess, multiprocessing's
    spawn, torch.distributed's launcher) or forking fails the test.  Other programs (git
    for the run directory's commit) may run."""
    if request.node.get_closest_marker("slow") is not None:
        return
    where = request.node.nodeid

    def refuse(what):
        raise ProcessStarted(f"{where} starts {what} but is not marked slow")

    execute_child = subprocess.Popen._execute_child

    def guarded(self, args, *rest, **kw):
        program = os.path.basename(str(args[0] if isinstance(args, (list, tuple)) else str(args).split()[0]))
        if program.startswith("python") or os.path.realpath(str(program)) == os.path.realpath(sys.executable) \
                or program == "torchrun":
            refuse(f"a process ({program})")
        return execute_child(self, args, *rest, **kw)

    monkeypatch.setattr(subprocess.Popen, "_execute_child", guarded)
    monkeypatch.setattr(multiprocessing.util, "spawnv_passfds", lambda *a, **k: refuse("a multiprocessing worker"))
    monkeypatch.setattr(os, "fork", lambda: refuse("a fork"))
