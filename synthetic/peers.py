"""What a user would pick instead of our pipeline to spread one network over processes:
torch's DistributedDataParallel, and torch.distributed.pipelining with the GPipe and 1F1B
schedules, on the same StableNet cut at the same places.  Workers for ``harness.launch``;
both train with true gradients (the result is backprop's, up to rounding) and return
rank 0's trained parameters, the training time and, with ``points_per_epoch``, the
points of the training curve (models.recording).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from datasets.batching import epoch_batches
from models.base import split_layers
from models.devices import sync
from models.recording import recorder
from models.training import make_optimizer

from .distributed import gather_owned

SCHEDULES = ("gpipe", "1f1b")


@dataclass
class PeerConfig:
    epochs: int = 1
    lr: float = 3e-3
    batch_size: int = 64
    optimizer: str = "adam"
    seed: int = 0
    schedule: str = "gpipe"  # pipelining: gpipe or 1f1b
    microbatches: int = 4  # pipelining: micro-batches per batch
    bounds: tuple = ()  # pipelining: the layer range of each stage (default: even)
    points_per_epoch: int = 0  # points of a training curve an epoch (0: none)
    point_states: bool = True  # the points hold the parameters (False: their times and losses alone)


class Piece(nn.Module):
    """Layers [a, b) of a network as one module with one tensor in and one out, as the
    pipelining engine wants them: the first piece lifts the input, the last classifies,
    and the state tuple (Y, and Z or Y_{j-1}) travels flattened side by side."""

    def __init__(self, net, a, b):
        super().__init__()
        self.net, self.a, self.b = net, a, b
        probe = torch.zeros(1, *net.in_shape, device=next(net.parameters()).device)
        self.n_state = len(net.init_state(net.lift_input(probe)))

    def forward(self, inp):
        if self.a == 0:
            state = self.net.initial_state(inp)
        else:
            shape = self.net.state_shape_at(self.a)
            state = tuple(c.reshape(len(inp), *shape) for c in inp.chunk(self.n_state, 1))
        state = self.net.integrate(state, self.a, self.b)
        if self.b == self.net.n_layers:
            return self.net.classify(state)
        return torch.cat([t.flatten(1) for t in state], 1)

    def own_parameters(self):
        return self.net.range_parameters(self.a, self.b)


def ddp_worker(ctx, net, data, cfg: PeerConfig):
    """Data parallel: each rank runs the whole network on its share of every batch."""
    from torch.nn.parallel import DistributedDataParallel

    dev = ctx.device
    net = copy.deepcopy(net).to(dev)
    model = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    data = data.to(dev)
    # every rank copies its parameters at a point: the same pauses everywhere
    rec = recorder(dict(net.named_parameters()), len(data.y_train), cfg.batch_size, cfg.points_per_epoch, dev,
                   states=cfg.point_states)
    dist.barrier()
    t0 = time.perf_counter()
    rec.start()
    for epoch in range(1, cfg.epochs + 1):
        for xb, yb in epoch_batches(data.x_train, data.y_train, cfg.batch_size, cfg.seed, epoch):
            share = slice(ctx.rank, None, ctx.world_size)  # equal shares: the mean of means is the batch mean
            loss = F.cross_entropy(model(xb[share]), yb[share])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec.batch_end(loss, len(yb))
        rec.epoch_end()
    sync(dev)
    dist.barrier()
    seconds = time.perf_counter() - t0
    points = rec.gather(replicated=True)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return {"state_dict": state, "train_time_s": seconds, "points": points} if ctx.is_main else None


def pipeline_worker(ctx, net, data, cfg: PeerConfig):
    """torch.distributed.pipelining: one Piece per rank, the batch cut into micro-batches,
    GPipe (all forwards, then all backwards) or 1F1B (one forward, one backward)."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; valid: {', '.join(SCHEDULES)}")
    dev, i, M = ctx.device, ctx.rank, ctx.world_size
    if ctx.wire != dev:
        raise ValueError(f"{cfg.schedule} needs a GPU per rank (NCCL) or the CPU: ranks sharing {dev} over "
                         f"{ctx.backend} would send CUDA tensors through torch.distributed.pipelining")
    net = copy.deepcopy(net).to(dev)
    bounds = [tuple(b) for b in cfg.bounds] if cfg.bounds else split_layers(net.n_layers, M)
    piece = Piece(net, *bounds[i])
    stage = PipelineStage(piece, i, M, dev)
    kind = ScheduleGPipe if cfg.schedule == "gpipe" else Schedule1F1B
    schedule = kind(stage, cfg.microbatches, loss_fn=F.cross_entropy)
    own = piece.own_parameters()
    opt = make_optimizer(cfg.optimizer, own, cfg.lr)
    data = data.to(dev)
    mine = set(map(id, own))
    rec = recorder({n: p for n, p in net.named_parameters() if id(p) in mine}, len(data.y_train), cfg.batch_size,
                   cfg.points_per_epoch, dev, states=cfg.point_states)
    dist.barrier()
    t0 = time.perf_counter()
    rec.start()
    for epoch in range(1, cfg.epochs + 1):
        for xb, yb in epoch_batches(data.x_train, data.y_train, cfg.batch_size, cfg.seed, epoch):
            if len(yb) % cfg.microbatches:
                raise ValueError(f"a batch of {len(yb)} does not split into {cfg.microbatches} micro-batches")
            losses = []
            if i == 0:
                schedule.step(xb)
            elif i == M - 1:
                schedule.step(target=yb, losses=losses)
            else:
                schedule.step()
            opt.step()
            opt.zero_grad(set_to_none=True)
            rec.batch_end(sum(losses) / len(losses) if losses else None, len(yb))
        rec.epoch_end()
    sync(dev)
    dist.barrier()
    seconds = time.perf_counter() - t0
    points = rec.gather()
    state = gather_owned(net, mine)
    return {"state_dict": state, "train_time_s": seconds, "points": points} if ctx.is_main else None


def samples_for(batch_sizes, microbatches, at_least):
    """The smallest sample count >= ``at_least`` that every batch size divides, each batch
    splitting into every micro-batch count (so that no run meets a short last batch)."""
    unit = math.lcm(*batch_sizes, *microbatches)
    return unit * -(-at_least // unit)
