"""Distributed synthetic-gradient training: one sub-network per process.

Stage i receives the state and labels of batch b from stage i-1 (stage 0 reads the
data), sends its output on at once, steps on its module's synthetic gradient without
waiting, and posts a receive for the true gradient of batch b.  When that gradient
comes back from stage i+1 (at most ``max_in_flight`` batches later) the module
regresses on it.  The last stage computes the loss and sends the gradient at its input
back.  Point-to-point messages (isend/irecv) of torch.distributed; gloo or NCCL.

The module runs once per batch: its prediction gives the synthetic gradient at once and
is kept, with its graph, for the regression (``SyntheticGradient.start``).  Every piece
of a stage's work is timed (``StageProfile``): compute, waiting for the input, waiting
for a true gradient, communication, and a timeline of the first batches.
"""
from __future__ import annotations

import copy
import math
import os
import time
from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from datasets.augment import crop_flip
from datasets.batching import batch_bounds
from models import checkpoint
from models.checkpoint import fail_once
from models.training import check_finite, make_optimizer

from .complex import input_grads
from .profile import StageProfile

TAG_STATE, TAG_GRAD = 0, 1


@dataclass
class DistSGConfig:
    epochs: int = 10
    lr: float = 3e-3
    sg_lr: float = 1e-3
    batch_size: int = 64
    optimizer: str = "adam"
    max_in_flight: int = 1  # batches whose true gradient may still be outstanding
    seed: int = 0
    fail_stage: int = -1  # testing aid: this stage fails at the first batch of fail_epoch (-1: none)
    fail_epoch: int = 1  # ... in the first attempt only (a restarted group trains on)
    fail_mode: str = "raise"  # raise an exception, or "kill": the process sends itself SIGKILL
    verbose: bool = True
    run_dir: str | None = None  # checkpoints go here (rank 0's value counts); None: none
    checkpoint_every: int = 0  # epochs between checkpoints (0: none); the last epoch always
    timeline_batches: int = 8  # batches of the profile's timeline (the first ones)
    augment: bool = False  # stage 0 crops and flips its batches at random (datasets.augment)


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


def pack(tensors, labels=None):
    """One message per batch: the state tensors flattened side by side (and the labels)."""
    parts = [t.detach().reshape(len(t), -1) for t in tensors]
    if labels is not None:
        parts.append(labels[:, None].to(parts[0].dtype))  # exact for class indices < 2^24
    return torch.cat(parts, 1)


def unpack(msg, n_state, state_shape, with_labels=False):
    """Inverse of ``pack``: a tuple of state-shaped tensors (and the labels)."""
    width = (msg.shape[1] - with_labels) // n_state
    tensors = tuple(msg[:, k * width:(k + 1) * width].reshape(len(msg), *state_shape).contiguous()
                    for k in range(n_state))
    return (tensors, msg[:, -1].long()) if with_labels else tensors


class _Pending:
    """A batch whose true gradient is on its way back: the receive, and the module's
    prediction (with its graph) that the true gradient will correct."""

    def __init__(self, pred, labels, buf, work):
        self.pred, self.labels, self.buf, self.work = pred, labels, buf, work

    def grads(self):
        """The true gradient, once ``work`` is complete."""
        return unpack(self.buf, len(self.pred), self.pred[0].shape[1:])

    def done(self):
        return self.work.is_completed()


def stage_worker(ctx, cnet, data, cfg: DistSGConfig):
    """Rank i trains sub-network i (and module i).  Rank 0 returns the gathered result."""
    M, i = ctx.world_size, ctx.rank
    last = i == M - 1
    if M != cnet.num_stages:
        raise ValueError(f"one process per sub-network: world size {M}, M {cnet.num_stages}")
    dev = ctx.device
    cnet = copy.deepcopy(cnet).to(dev)  # private copy: spawn shares the parent's tensors
    everyone = [None] * M
    dist.all_gather_object(everyone, cnet.bounds)
    if everyone[i] != everyone[0]:  # torchrun: each rank chose its cuts; rank 0's count
        print(f"stage {i}: cuts {everyone[i]} differ from rank 0's {everyone[0]}; using rank 0's (the modules at "
              "moved cuts start afresh)", flush=True)
        cnet = cnet.with_bounds(everyone[0]).to(dev)
    x, y = data.x_train.to(dev), data.y_train.to(dev)
    opt = make_optimizer(cfg.optimizer, cnet.stage_parameters(i), cfg.lr)
    module = cnet.sg[i] if i < M - 1 else None
    sg_opt = make_optimizer("adam", module.parameters(), cfg.sg_lr) if module is not None else None
    n_state = cnet.sg[0].n_state
    in_shape = cnet.input_shape(i) if i > 0 else None  # messages carry the shape of their cut
    in_width = math.prod(in_shape) if i > 0 else 0
    out_width = math.prod(cnet.cut_shape(i)) if not last else 0

    pending, sends = deque(), []
    hist = {"epoch": [], "loss": [], "sg_mse": [], "sg_cos": [], "seconds": []}
    stat = {"mse": torch.zeros((), device=dev), "cos": torch.zeros((), device=dev), "n": 0}
    mine = set(map(id, cnet.stage_parameters(i))) | set(map(id, module.parameters() if module else ()))
    owned_params = {n: p for n, p in cnet.named_parameters() if id(p) in mine}

    holder = [cfg.run_dir]
    dist.broadcast_object_list(holder, src=0)  # under torchrun only rank 0 knows the run directory
    run_dir = holder[0] if cfg.checkpoint_every > 0 else None
    start, saved = _common_epoch(run_dir, i, M, dev) if run_dir else (0, None)
    if saved is not None:
        with torch.no_grad():
            for n, p in owned_params.items():
                p.copy_(saved["params"][n])
        opt.load_state_dict(saved["optimizer"])
        if sg_opt is not None:
            sg_opt.load_state_dict(saved["sg_optimizer"])
        hist = {k: list(v) for k, v in saved["history"].items()}
        if cfg.verbose and ctx.is_main:
            print(f"stages resume after epoch {start} from their checkpoints in {run_dir}", flush=True)
    prior_seconds = sum(hist["seconds"])

    def save(epoch):
        os.makedirs(run_dir, exist_ok=True)  # a rank on another machine may not have it yet
        params = {n: p.detach() for n, p in owned_params.items()}
        checkpoint.save(run_dir, {"epoch": epoch, "stage": i, "params": params, "optimizer": opt.state_dict(),
                                  "sg_optimizer": sg_opt.state_dict() if sg_opt is not None else None,
                                  "history": hist}, f"stage{i}")

    def train_module(p):
        with prof("wait gradient"):
            p.work.wait()
        with prof("module"):
            sg_loss, mse, cos = module.loss(p.pred, p.labels, p.grads())
            sg_opt.zero_grad(set_to_none=True)
            sg_loss.backward()
            sg_opt.step()
            stat["mse"] += mse
            stat["cos"] += cos
            stat["n"] += 1

    def isend(t, dst, tag):
        sends.append((t, dist.isend(t, dst, tag=tag)))

    prof = StageProfile(dev, cfg.timeline_batches)
    dist.barrier()
    prof.start()
    t_start = time.perf_counter()
    for epoch in range(start + 1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        perm = torch.randperm(len(y), generator=gen).to(dev) if i == 0 else None
        loss_sum = torch.zeros((), device=dev)
        for b, (lo, hi) in enumerate(batch_bounds(len(y), cfg.batch_size)):
            if b == 0 and epoch == cfg.fail_epoch and i == cfg.fail_stage:
                fail_once(f"stage {i} made to fail in epoch {epoch} (FAIL_STAGE={cfg.fail_stage})", cfg.fail_mode)
            nb = hi - lo
            if i == 0:
                with prof("forward"):
                    idx = perm[lo:hi]
                    inp, labels = (crop_flip(x[idx], gen) if cfg.augment else x[idx]), y[idx]
            else:
                msg = torch.empty(nb, n_state * in_width + 1, device=dev)
                with prof("wait input"):
                    dist.irecv(msg, i - 1, tag=TAG_STATE).wait()
                with prof("send"):
                    inp, labels = unpack(msg, n_state, in_shape, with_labels=True)
                    inp = tuple(t.requires_grad_() for t in inp)
            with prof("forward"):
                out = cnet.stage_forward(i, inp)
            if last:
                with prof("forward"):
                    loss = F.cross_entropy(out, labels)
                with prof("backward"):
                    loss.backward()
                loss_sum += loss.detach() * nb
            else:
                state = tuple(t.detach() for t in out)
                with prof("send"):
                    isend(pack(state, labels), i + 1, TAG_STATE)
                with prof("module"):
                    pred = module.start(state, labels)  # one module pass: synthetic gradient now, regression later
                with prof("backward"):
                    torch.autograd.backward(out, module.synthetic(pred, labels))
                with prof("send"):
                    buf = torch.empty(nb, n_state * out_width, device=dev)
                    pending.append(_Pending(pred, labels, buf, dist.irecv(buf, i + 1, tag=TAG_GRAD)))
            if i > 0:
                with prof("send"):
                    isend(pack(input_grads(inp)), i - 1, TAG_GRAD)
            with prof("step"):
                opt.step()
                opt.zero_grad(set_to_none=True)
            while pending and (len(pending) > cfg.max_in_flight or pending[0].done()):
                train_module(pending.popleft())
            with prof("send"):
                sends = [(t, w) for t, w in sends if not w.is_completed()]
            prof.batch += 1
        checkpointing = run_dir is not None and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs)
        if checkpointing:  # a checkpoint holds no batch in flight: take the true gradients owed
            while pending:
                train_module(pending.popleft())
            for _, w in sends:
                w.wait()
            sends = []
        if last:
            mean = loss_sum.item() / len(y)
            check_finite(mean, cnet.net, cfg.lr, epoch)
            hist["loss"].append(mean)
            if cfg.verbose:
                print(f"stage {i}: epoch {epoch:3d}  loss {mean:.4f}  {time.perf_counter() - t_epoch:.2f}s", flush=True)
        if module is not None:
            n = max(stat["n"], 1)
            hist["sg_mse"].append(stat["mse"].item() / n)
            hist["sg_cos"].append(stat["cos"].item() / n)
            stat.update(mse=torch.zeros((), device=dev), cos=torch.zeros((), device=dev), n=0)
        hist["epoch"].append(epoch)
        hist["seconds"].append(time.perf_counter() - t_epoch)
        if checkpointing:
            save(epoch)
    while pending:
        train_module(pending.popleft())
    with prof("send"):
        for _, w in sends:
            w.wait()
    prof.stop()  # before the barrier: a stage's wall time ends with its own last piece of work
    dist.barrier()
    train_time = prior_seconds + time.perf_counter() - t_start

    state_dict = gather_owned(cnet, mine)
    histories, profiles = [None] * M, [None] * M
    dist.all_gather_object(histories, hist)
    dist.all_gather_object(profiles, prof.summary())
    if not ctx.is_main:
        return None
    return {"state_dict": state_dict, "histories": histories, "profiles": profiles, "bounds": cnet.bounds,
            "train_time_s": train_time}


def gather_owned(net, owned):
    """Every rank contributes the parameters it owns (``owned``: their ids), zeros for the
    rest; the sum, loaded into ``net``, is the trained network.  Returns its state dict on
    the CPU."""
    params = list(net.parameters())
    flat = torch.cat([(p.detach() if id(p) in owned else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    torch.nn.utils.vector_to_parameters(flat, params)
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}
