"""The test suite's own rules: a test that is not marked slow and starts a Python process
(any way) fails; other programs run."""
import multiprocessing
import os
import subprocess
import sys

import pytest
from conftest import ProcessStarted

ARGS = ["-c", "pass"]


def _refused(start):
    with pytest.raises(ProcessStarted, match="but is not marked slow"):
        start()


@pytest.mark.parametrize("way", [
    "list", "full path", "shell string", "sh -c", "env wrapper", "executable=", "os.system", "posix_spawn",
    "posix_spawnp", "multiprocessing", "fork"])
def test_every_way_of_starting_python_is_refused_outside_slow_tests(way):
    python = os.path.basename(sys.executable)
    starts = {
        "list": lambda: subprocess.run([python, *ARGS]),
        "full path": lambda: subprocess.run([sys.executable, *ARGS]),
        "shell string": lambda: subprocess.run(f"{python} -c pass", shell=True),
        "sh -c": lambda: subprocess.run(["sh", "-c", f"{sys.executable} -c pass"]),
        "env wrapper": lambda: subprocess.run(["env", "FOO=1", python, *ARGS]),
        "executable=": lambda: subprocess.run(["anything", *ARGS], executable=sys.executable),
        "os.system": lambda: os.system(f"{sys.executable} -c pass"),
        "posix_spawn": lambda: os.posix_spawn(sys.executable, [sys.executable, *ARGS], os.environ),
        "posix_spawnp": lambda: os.posix_spawnp(python, [python, *ARGS], os.environ),
        "multiprocessing": lambda: multiprocessing.get_context("spawn").Process(target=print).start(),
        "fork": lambda: os.fork(),
    }
    _refused(starts[way])


def test_a_link_to_the_interpreter_under_another_name_is_refused(tmp_path):
    link = tmp_path / "interp"
    link.symlink_to(sys.executable)
    _refused(lambda: subprocess.run([str(link), *ARGS]))


def test_other_programs_may_run():
    assert subprocess.run(["git", "--version"], capture_output=True).returncode == 0
    assert os.system("true") == 0
    assert subprocess.run(["echo", "a word with an unpaired quote: don't"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_slow_test_may_start_a_process():
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0
