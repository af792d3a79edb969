"""One pipeline stage per process, over torch.distributed (gloo, or NCCL with a GPU each).

``stage_worker`` is what each process runs: the stage (``synthetic.stage``) with the
rule of the run, over the point-to-point transport, timed by its profile
(``synthetic.profile``), checkpointed every ``checkpoint_every`` epochs (``stage<i>.pt``:
a stage saves after its drain, with nothing in flight), resumed from the latest epoch
every stage holds, and made to fail once on request (restart tests).  Rank 0 returns
the trained network, every stage's history and profile, and the messages sent.
"""
from __future__ import annotations

import copy
import os
import time

import torch
import torch.distributed as dist

from models import checkpoint
from models.checkpoint import fail_once
from models.recording import recorder
from models.training import check_finite

from .balance import Costs, measure_costs, new_split, save_split, saved_split, split_line
from .pipeline import PipelineConfig, epoch_record, make_stage, set_rule
from .profile import StageProfile
from .stage import run_alone
from .transport import PointToPoint


def _stage_checkpoints(run_dir, rank, device):
    """{epoch: state} of the intact checkpoints of one stage (the latest and the previous)."""
    found, _ = checkpoint.intact(run_dir, f"stage{rank}", map_location=device)
    return {int(state["epoch"]): state for state, _ in found}


def _common_epoch(run_dir, rank, world, device):
    """The latest epoch every stage holds a checkpoint of (0: start afresh), and this stage's
    state at that epoch (None at 0).

    A stage saves after draining its true gradients, so no stage can save epoch e + k
    before every later stage has saved epoch e: the stages' latest checkpoints are at most
    one apart, and with the previous one kept the common epoch is always there."""
    mine = _stage_checkpoints(run_dir, rank, device)
    everyone = [None] * world
    dist.all_gather_object(everyone, sorted(mine))
    common = set(everyone[0]).intersection(*everyone[1:]) if all(everyone) else set()
    epoch = max(common, default=0)
    return epoch, mine.get(epoch)


def _agreed_cuts(ctx, cnet):
    """Under torchrun each rank chose its cuts; rank 0's count."""
    everyone = [None] * ctx.world_size
    dist.all_gather_object(everyone, cnet.bounds)
    if everyone[ctx.rank] != everyone[0]:
        print(f"stage {ctx.rank}: cuts {everyone[ctx.rank]} differ from rank 0's {everyone[0]}; using rank 0's (the "
              "modules at moved cuts start afresh)", flush=True)
        cnet = cnet.with_bounds(everyone[0]).to(ctx.device)
    return cnet


def _chosen_cuts(ctx, cnet, data, cfg, run_dir):
    """(the network cut where this run cuts it, the split's description or None).

    With ``cfg.balance`` the ranks choose: the run's split.json when it has one (a resumed
    or restarted run keeps its cuts), else ``even``, or ``cost``: every rank times the
    pieces on its own device with its own threads (``measure_costs``), the ranks share
    their times, and each piece counts at its slowest.  Rank 0 saves the split at once.
    Without it the cuts are ``cnet``'s (rank 0's)."""
    if cfg.balance is None:
        return _agreed_cuts(ctx, cnet), None
    def measure():  # every rank on its device, each piece at its slowest
        xb, yb = data.x_train[:cfg.batch_size], data.y_train[:cfg.batch_size]
        everyone = [None] * ctx.world_size
        dist.all_gather_object(everyone, measure_costs(cnet.net, xb, yb, rule=cfg.rule, sg_kind=cnet.sg_kind))
        return Costs.slowest(everyone)

    holder = [saved_split(run_dir) if ctx.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    split = holder[0]
    if split is None:
        split = new_split(cfg.balance, cnet.net.n_layers, ctx.world_size, measure)
        if ctx.is_main and run_dir is not None:
            save_split(run_dir, split)
    if ctx.is_main and cfg.verbose:
        print(split_line(split), flush=True)
    bounds = [tuple(b) for b in split["bounds"]]
    return (cnet if bounds == cnet.bounds else cnet.with_bounds(bounds).to(ctx.device)), split


def _stage_of(ctx, cnet, cfg, prof):
    """This rank's stage, over the point-to-point transport."""
    i, dtype = ctx.rank, next(cnet.parameters()).dtype
    in_shape = cnet.input_shape(i) if i > 0 else None  # messages carry the shape of their cut
    out_shape = cnet.cut_shape(i) if i < ctx.world_size - 1 else None
    transport = PointToPoint(i, ctx.world_size, cnet.sg[0].n_state, in_shape, out_shape, ctx.device, dtype, prof,
                             wire=ctx.wire)
    return make_stage(cnet, i, cfg, transport, prof)


def _run_dir(cfg):
    """The run directory (under torchrun only rank 0 knows it)."""
    holder = [cfg.run_dir]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _resume(stage, run_dir, ctx, verbose):
    """(the epoch to continue after, the history so far) from the stages' checkpoints."""
    start, saved = _common_epoch(run_dir, ctx.rank, ctx.world_size, ctx.device) if run_dir else (0, None)
    if saved is None:
        return 0, {"epoch": [], "loss": [], "seconds": []}
    owned = _owned(stage)
    for n, p in owned.items():
        p.detach().copy_(saved["params"][n])
    stage.load_state_dict(saved["stage"])
    if verbose and ctx.is_main:
        print(f"stages resume after epoch {start} from their checkpoints in {run_dir}", flush=True)
    return start, {k: list(v) for k, v in saved["history"].items()}


def _owned(stage):
    mine = stage.owned()
    return {n: p for n, p in stage.cnet.named_parameters() if id(p) in mine}


def _save(stage, run_dir, epoch, hist):
    os.makedirs(run_dir, exist_ok=True)  # a rank on another machine may not have it yet
    params = {n: p.detach() for n, p in _owned(stage).items()}
    checkpoint.save(run_dir, {"epoch": epoch, "rank": stage.i, "params": params, "stage": stage.state_dict(),
                              "history": hist}, f"stage{stage.i}")


def _fault(cfg, rank):
    """The testing aid: fail at the first batch of ``fail_epoch`` on ``fail_stage``."""
    def before_batch(epoch, b):
        if b == 0 and epoch == cfg.fail_epoch and rank == cfg.fail_stage:
            fail_once(f"stage {rank} made to fail in epoch {epoch} (FAIL_STAGE={cfg.fail_stage})", cfg.fail_mode)
    return before_batch


def _epoch(stage, data, cfg, epoch, hist, rec):
    """One epoch of this stage, recorded in ``hist`` (the loss on the last stage) and by
    ``rec`` (models.recording)."""
    set_rule(stage, cfg, epoch)
    t0 = time.perf_counter()
    loss = run_alone(stage.epoch(epoch, data, cfg.batch_size, cfg.seed, cfg.augment, _fault(cfg, stage.i),
                                 rec.batch_end))
    rec.epoch_end()
    loss = loss.item() if loss is not None else None
    if loss is not None:
        check_finite(loss, stage.cnet.net, cfg.lr, epoch)
    epoch_record([] if stage.last else [stage], hist, epoch, loss, time.perf_counter() - t0)
    if loss is not None and cfg.verbose:
        print(f"stage {stage.i}: epoch {epoch:3d}  {cfg.rule_in(epoch).name}  loss {loss:.4f}  "
              f"{hist['seconds'][-1]:.2f}s", flush=True)


def stage_worker(ctx, cnet, data, cfg: PipelineConfig):
    """Rank i trains sub-network i (and what its rule adds).  Rank 0 returns the result."""
    if ctx.world_size != cnet.num_stages:
        raise ValueError(f"one process per sub-network: world size {ctx.world_size}, M {cnet.num_stages}")
    data = data.to(ctx.device)
    run_dir = _run_dir(cfg)
    # a private copy: spawn shares the parent's tensors
    cnet, split = _chosen_cuts(ctx, copy.deepcopy(cnet).to(ctx.device), data, cfg, run_dir)
    prof = StageProfile(ctx.device, cfg.timeline_batches)
    stage = _stage_of(ctx, cnet, cfg, prof)
    checkpoints = run_dir if cfg.checkpoint_every > 0 else None
    start, hist = _resume(stage, checkpoints, ctx, cfg.verbose)
    prior_seconds = sum(hist["seconds"])
    rec = recorder(_owned(stage), len(data.y_train), cfg.batch_size, cfg.points_per_epoch, ctx.device, start,
                   states=cfg.point_states)
    dist.barrier()
    prof.start()
    t_start = time.perf_counter()
    rec.start()
    saving = 0.0  # seconds of this stage's checkpoint writes: not training
    for epoch in range(start + 1, cfg.epochs + 1):
        _epoch(stage, data, cfg, epoch, hist, rec)
        if checkpoints is not None and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs):
            t0 = time.perf_counter()
            _save(stage, checkpoints, epoch, hist)
            saving += time.perf_counter() - t0
    prof.stop()  # before the barrier: a stage's wall time ends with its own last piece of work
    train_time = prior_seconds + time.perf_counter() - t_start - saving
    dist.barrier()
    return _gathered(ctx, stage, hist, prof, train_time, rec, split)


def _gathered(ctx, stage, hist, prof, train_time, rec, split):
    """Rank 0's result; the training time is the latest of the stages' clocks."""
    points = rec.gather()
    state_dict = gather_owned(stage.cnet, stage.owned())
    everything = [None] * ctx.world_size
    dist.all_gather_object(everything, {"history": hist, "profile": prof.summary(),
                                        "messages": dict(stage.transport.sent), "train_time_s": train_time})
    if not ctx.is_main:
        return None
    return {"state_dict": state_dict, "histories": [e["history"] for e in everything],
            "profiles": [e["profile"] for e in everything], "messages": [e["messages"] for e in everything],
            "bounds": stage.cnet.bounds, "split": split, "train_time_s": max(e["train_time_s"] for e in everything),
            "points": points}


def gather_owned(net, owned):
    """Every rank contributes the parameters it owns (``owned``: their ids), zeros for the
    rest; the sum, loaded into ``net``, is the trained network.  Returns its state dict on
    the CPU."""
    params = list(net.parameters())
    flat = torch.cat([(p.detach() if id(p) in owned else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    torch.nn.utils.vector_to_parameters(flat, params)
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}
