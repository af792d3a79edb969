"""Parallel Variable Distribution training, serial or across real processes."""
from .algorithm import PVD, SYNC_RULES, Comm, History, LocalComm, PVDConfig, layer_blocks
from .run import parallel_worker, run_serial

__all__ = ["PVD", "SYNC_RULES", "Comm", "History", "LocalComm", "PVDConfig", "layer_blocks",
           "parallel_worker", "run_serial"]
