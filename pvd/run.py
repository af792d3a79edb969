"""Entry points of a PVD run: serial in this process, or one block per distributed rank."""
from __future__ import annotations

import copy
from dataclasses import asdict

import torch.distributed as dist

from models import checkpoint
from models.recording import recorder

from .algorithm import PVD, Comm


def _outcome(pvd, hist):
    return {"history": asdict(hist), "state_dict": {k: v.detach().cpu() for k, v in pvd.model.state_dict().items()}}


def _latest(saver):
    """The run's latest checkpoint (None: none yet) from the directory ``saver`` writes to."""
    if saver is None or saver.path is None or saver.every <= 0:
        return None
    state, path = checkpoint.load(saver.path)
    if state is not None:
        print(f"resuming after iteration {state['iteration']} from {path}", flush=True)
    return state


def run_serial(model, data, cfg, log=None, saver=None):
    """All P processors one after another in this process (the serial mode).
    ``saver(k, state)`` (a harness.resume.Checkpointer) saves the run after iteration k;
    the run continues from its latest checkpoint when there is one."""
    pvd = PVD(model, data, cfg)
    return _outcome(pvd, pvd.run(log, resume=_latest(saver), on_iteration_end=saver))


def parallel_worker(ctx, model, data, cfg, verbose=True, saver=None, points=False):
    """One rank of a distributed PVD run: it holds block ``ctx.rank``.  Module level, so
    that spawned processes can import it; rank 0 logs, saves and its return value is kept.
    Every rank holds the same synchronised parameters, so rank 0's checkpoint (broadcast
    to the others) continues the run, restarted groups included.  ``points``: the
    result's "points" are the training curve (models.recording), one point an iteration."""
    if ctx.world_size != cfg.num_proc:
        raise ValueError(f"PVD needs one process per block: world size {ctx.world_size}, NUM_PROC {cfg.num_proc}")
    # a private copy: spawn hands the parent's tensors over in shared memory
    model, data = copy.deepcopy(model).to(ctx.device), data.to(ctx.device)
    pvd = PVD(model, data, cfg, Comm(ctx.device, ctx.wire), my_blocks=[ctx.rank])
    holder = [_latest(saver) if ctx.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    rec = recorder(dict(model.named_parameters()), 1, 1, 1 if points else 0, ctx.device)
    hist = pvd.run(lambda line: print(line, flush=True) if verbose and ctx.is_main else None, resume=holder[0],
                   on_iteration_end=saver if ctx.is_main else None, recorder=rec)
    return {**_outcome(pvd, hist), "points": rec.gather(replicated=True)}
