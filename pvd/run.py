"""Entry points of a PVD run: serial in this process, or one block per distributed rank."""
from __future__ import annotations

import copy
from dataclasses import asdict

from .algorithm import PVD, Comm


def _outcome(pvd, hist):
    return {"history": asdict(hist), "state_dict": {k: v.detach().cpu() for k, v in pvd.model.state_dict().items()}}


def run_serial(model, data, cfg, log=None):
    """All P processors one after another in this process (the original's mode)."""
    pvd = PVD(model, data, cfg)
    return _outcome(pvd, pvd.run(log))


def parallel_worker(ctx, model, data, cfg, verbose=True):
    """One rank of a distributed PVD run: it holds block ``ctx.rank``.  Module level, so
    that spawned processes can import it; rank 0 logs and its return value is kept."""
    if ctx.world_size != cfg.num_proc:
        raise ValueError(f"PVD needs one process per block: world size {ctx.world_size}, NUM_PROC {cfg.num_proc}")
    # a private copy: spawn hands the parent's tensors over in shared memory
    model, data = copy.deepcopy(model).to(ctx.device), data.to(ctx.device)
    pvd = PVD(model, data, cfg, Comm(ctx.device), my_blocks=[ctx.rank])
    hist = pvd.run(lambda line: print(line, flush=True) if verbose and ctx.is_main else None)
    return _outcome(pvd, hist)
