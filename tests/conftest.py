"""Fixtures shared by the test modules, and the rule that keeps the quick suite quick:
a test that starts a Python process (a script, a launch of workers) must be marked slow."""
import multiprocessing.util
import os
import shlex
import shutil
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


_PYTHON = os.path.realpath(sys.executable)


def _split(text):
    """The words of a shell command line (at blanks when its quotes do not pair up)."""
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def _starts_python(command):
    """Whether a command line (a list, or a string for a shell) starts a Python
    interpreter or torchrun, directly or through a wrapper (``sh -c``, ``env``, ...):
    any word of it naming one."""
    words = _split(os.fsdecode(command)) if isinstance(command, (str, bytes)) else [os.fsdecode(w) for w in command]
    for word in words:
        for part in _split(word) if " " in word else [word]:  # sh -c "python ..."
            name = os.path.basename(part)
            found = shutil.which(part) if os.sep not in part else part
            if name.startswith("python") or name == "torchrun" or \
                    (found and os.path.exists(found) and os.path.realpath(found) == _PYTHON):
                return True
    return False


@pytest.fixture(autouse=True)
def processes_only_when_slow(request, monkeypatch):
    """Outside tests marked slow, starting a Python interpreter or torchrun fails the test,
    whichever way it is started: subprocess (a list, a shell string, a wrapper such as
    ``sh -c`` or ``env``), os.system, os.posix_spawn(p), multiprocessing's spawn, or a
    fork.  Other programs (git for the run directory's commit) may run."""
    if request.node.get_closest_marker("slow") is not None:
        return
    where = request.node.nodeid

    def refuse(what):
        raise ProcessStarted(f"{where} starts {what} but is not marked slow")

    execute_child = subprocess.Popen._execute_child

    def guarded(self, args, executable, *rest, **kw):
        if _starts_python(args) or (executable is not None and _starts_python([executable])):
            refuse(f"a process ({args!r})")
        return execute_child(self, args, executable, *rest, **kw)

    def guard(original, what, command_of):
        def call(*args, **kw):
            if _starts_python(command_of(*args, **kw)):
                refuse(f"a process through {what}")
            return original(*args, **kw)
        return call

    monkeypatch.setattr(subprocess.Popen, "_execute_child", guarded)
    monkeypatch.setattr(os, "system", guard(os.system, "os.system", lambda cmd: cmd))
    for name in ("posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, guard(getattr(os, name), f"os.{name}", lambda path, argv, *a, **k:
                                                [path, *argv]))
    monkeypatch.setattr(multiprocessing.util, "spawnv_passfds", lambda *a, **k: refuse("a multiprocessing worker"))
    monkeypatch.setattr(os, "fork", lambda: refuse("a fork"))
