"""The test suite's own rules."""
import multiprocessing
import subprocess
import sys

import pytest
from conftest import ProcessStarted


def test_a_quick_test_that_starts_a_process_fails():
    with pytest.raises(ProcessStarted, match="not marked slow"):
        subprocess.run([sys.executable, "-c", "pass"])
    with pytest.raises(ProcessStarted, match="not marked slow"):
        multiprocessing.get_context("spawn").Process(target=print).start()


def test_other_programs_may_run():
    assert subprocess.run(["git", "--version"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_slow_test_may_start_a_process():
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0
