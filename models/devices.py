"""The device of a run, and clocks that tell the time of the work queued on it without
stalling it.

``pick_device(name)``: "auto" -> cuda when present, else cpu; a device this machine
lacks raises ValueError.

On the CPU the host's clock is the work's clock.  On a GPU the host only queues work, so
reading ``time.perf_counter()`` right after a call measures its launch.  Two remedies,
neither of them a device-wide ``torch.cuda.synchronize``, which would also wait for the
communication streams (NCCL's posted receives) and so turn an asynchronous pipeline
into a lock-step one:

- ``sync(device)`` waits for the device's current (compute) stream only: the host's
  clock then reads after the compute queued so far, and a posted receive on another
  stream is left pending.
- ``clock_for(device)`` gives marks that are CUDA events recorded on the compute stream
  (``torch.cuda.Event(enable_timing=True)``); the seconds between two marks are read once
  both have completed, at the end of a batch or an epoch, and nothing waits meanwhile.
"""
from __future__ import annotations

import time

import torch


def pick_device(name="auto"):
    """The device DEVICE names (see the module doc); ValueError for one this machine lacks."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: use auto, cpu, cuda or cuda:K")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r} asked for, but this machine has {count} GPU(s): "
                             + ", ".join(f"cuda:{k}" for k in range(count)))
    return device


def sync(device):
    """Wait for the work queued on ``device``'s compute stream (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


class HostClock:
    """The CPU's clock: a mark is ``time.perf_counter()``, always complete."""

    def mark(self):
        return time.perf_counter()

    @staticmethod
    def seconds(a, b):
        return b - a

    @staticmethod
    def done(mark):
        return True

    @staticmethod
    def wait(mark):
        pass


class StreamClock:
    """A GPU's compute stream as a clock: a mark is a CUDA event recorded on it; the time
    between two marks is the stream's, read once both events have completed."""

    def __init__(self, device):
        self.device = torch.device(device)

    def mark(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    @staticmethod
    def seconds(a, b):
        return a.elapsed_time(b) / 1e3  # milliseconds

    @staticmethod
    def done(mark):
        return mark.query()

    @staticmethod
    def wait(mark):
        mark.synchronize()  # this event only: later work and other streams go on


def clock_for(device):
    """The clock of ``device``'s work: StreamClock on a GPU, HostClock elsewhere."""
    return StreamClock(device) if torch.device(device).type == "cuda" else HostClock()
