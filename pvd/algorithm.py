"""Parallel Variable Distribution (Ferris & Mangasarian 1994; Solodov 1997/98).

The parameters of an N-layer network are split into P blocks of consecutive layers.
Iteration k, from x^k:

1. direction  d^k = -grad L(x^k), the mean of the per-batch gradients over D batches
   (data-parallel: each processor takes every P-th batch, then an all-reduce);
2. parallel phase: processor l trains its block x_l (and the classifier) freely while
   every other block moves along its part of the direction,
   x_l' = x^k_l' + mu_l' d^k_l', with one learnable scalar mu_l' per other block (the
   forget-me-not terms): an inexact solve of a few epochs/steps of the optimiser;
3. synchronisation: each candidate is scored on the same batches; "best" keeps the best
   candidate, "affine" searches x^k + sum_l lambda_l (c_l - x^k) from the best candidate
   and never returns a point worse than it; the result is broadcast to every processor;
4. stop at the target accuracy or after the maximum number of iterations.

The code is written once for one processor holding some blocks: with a ``Comm`` over
torch.distributed each of P processes holds one block; with ``LocalComm`` one process
holds all P and runs them one after another (the serial mode, which also yields the
original's theoretical distributed time: per iteration, the slowest processor plus the
synchronisation).
"""
from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.func import functional_call

from datasets.augment import crop_flip
from datasets.batching import batch_bounds
from models.base import split_layers
from models.checkpoint import fail_once
from models.devices import sync
from models.training import OFF, evaluate, make_optimizer

SYNC_RULES = ("best", "affine")


@dataclass
class PVDConfig:
    num_proc: int = 2  # P, the number of blocks/processors
    iterations: int = 20  # maximum number of PVD iterations
    epochs: int = 1  # epochs of the parallel phase per iteration
    steps: int = 0  # if > 0, at most this many optimiser steps per parallel phase
    lr: float = 0.01
    optimizer: str = "adam"
    batch_size: int = 50
    direction_batches: int = 0  # D; 0: the whole training set
    sync_batches: int = 0  # scoring batches; 0: the whole training set
    sync: str = "best"
    affine_iters: int = 20  # L-BFGS iterations of the affine synchronisation
    target_acc: float = 1.0  # stop once the test (validation) accuracy reaches it
    train_classifier: bool = True  # every processor trains the classifier (else it gets a mu)
    augment: bool = False  # random crops and flips of the direction and parallel-phase batches
    seed: int = 0
    fail_rank: int = -1  # testing aid: this processor fails in iteration fail_iteration (-1: none)
    fail_iteration: int = 1  # ... in the first attempt only (a restarted group goes on)
    fail_mode: str = "raise"  # raise an exception, or "kill": the process sends itself SIGKILL


class LocalComm:
    """One process holds every block: collective operations are identities."""

    rank, world_size = 0, 1

    def all_reduce(self, t):
        return t

    def all_gather(self, t):
        return [t]

    def broadcast(self, t, src):
        return t

    def barrier(self):
        pass


class Comm:
    """torch.distributed collectives on tensors (gloo or NCCL).  A gather travels on
    ``wire`` (default ``device``): the CPU for GPU ranks over gloo."""

    def __init__(self, device, wire=None):
        self.rank, self.world_size, self.device = dist.get_rank(), dist.get_world_size(), device
        self.wire = device if wire is None else wire

    def all_reduce(self, t):
        dist.all_reduce(t)
        return t

    def all_gather(self, t):
        sent = t.contiguous().to(self.wire)
        out = [torch.empty_like(sent) for _ in range(self.world_size)]
        dist.all_gather(out, sent)
        return [o.to(t.device) for o in out]

    def broadcast(self, t, src):
        dist.broadcast(t, src)
        return t

    def barrier(self):
        dist.barrier()


@dataclass
class History:
    iteration: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    train_acc: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)
    wall_time_s: list = field(default_factory=list)  # since the start, accuracies and checkpoints included
    train_time_s: list = field(default_factory=list)  # the iterations alone (no accuracies, no checkpoints)
    theoretical_time_s: list = field(default_factory=list)
    proc_time_s: list = field(default_factory=list)  # per iteration, each processor's seconds
    sync_time_s: list = field(default_factory=list)
    winner: list = field(default_factory=list)
    candidate_loss: list = field(default_factory=list)


def layer_blocks(n_layers, num_proc):
    """P consecutive layer ranges [(ini, end), ...], one per processor."""
    if not 1 <= num_proc <= n_layers:
        raise ValueError(f"NUM_PROC must be between 1 and the number of layers {n_layers}, got {num_proc}")
    return split_layers(n_layers, num_proc)


class PVD:
    """PVD on one processor holding ``my_blocks`` (all of them in the serial mode)."""

    def __init__(self, model, data, cfg: PVDConfig, comm=None, my_blocks=None):
        if cfg.sync not in SYNC_RULES:
            raise ValueError(f"unknown SYNC {cfg.sync!r}; valid: {', '.join(SYNC_RULES)}")
        self.model, self.data, self.cfg = model, data, cfg
        self.comm = comm or LocalComm()
        self.my_blocks = list(range(cfg.num_proc)) if my_blocks is None else list(my_blocks)
        self.bounds = layer_blocks(model.n_layers, cfg.num_proc)
        self.names = [n for n, _ in model.named_parameters()]
        self.shapes = [p.shape for _, p in model.named_parameters()]
        P = cfg.num_proc
        # group of each parameter: a block index, or P for the classifier
        self.group = {}
        for name in self.names:
            j = model.layer_of(name)
            if j is not None:
                self.group[name] = next(l for l, (a, b) in enumerate(self.bounds) if a <= j < b)
            else:
                self.group[name] = P if name.startswith("classifier") else 0  # the lift joins block 0
        self.x = {n: p.detach().clone() for n, p in model.named_parameters()}

    # ---- flat vectors, for the collectives ----------------------------------------------
    def flatten(self, params):
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, vec):
        out, i = {}, 0
        for n, s in zip(self.names, self.shapes):
            k = s.numel()
            out[n] = vec[i:i + k].view(s)
            i += k
        return out

    # ---- pieces of an iteration ------------------------------------------------------------
    def _generator(self, *key):
        """A generator seeded by (seed, *key), the same in every process (no str hash)."""
        return torch.Generator().manual_seed(zlib.crc32(repr((self.cfg.seed,) + key).encode()))

    def _batches(self, count, gen, augment=False):
        """``count`` batches (0: all) of a shuffled epoch of the training set, with
        ``augment`` randomly cropped and flipped (datasets.augment)."""
        x, y = self.data.x_train, self.data.y_train
        perm = torch.randperm(len(y), generator=gen).to(x.device)
        bounds = batch_bounds(len(y), self.cfg.batch_size)
        bounds = bounds[:count] if count else bounds
        return [(crop_flip(x[perm[i:j]], gen) if augment else x[perm[i:j]], y[perm[i:j]]) for i, j in bounds]

    def _loss(self, params, xb, yb):
        return F.cross_entropy(functional_call(self.model, params, (xb,)), yb)

    def direction_share(self, k, l):
        """Sum of the per-batch gradients over processor l's share of the direction batches."""
        batches = self._batches(self.cfg.direction_batches, self._generator("direction", k), self.cfg.augment)
        params = {n: t.clone().requires_grad_() for n, t in self.x.items()}
        for xb, yb in batches[l::self.cfg.num_proc]:
            self._loss(params, xb, yb).backward()
        grads = [params[n].grad if params[n].grad is not None else torch.zeros_like(params[n]) for n in self.names]
        return torch.cat([g.reshape(-1) for g in grads]), len(batches)

    def mixed(self, free, mu, d, l):
        """Processor l's parameters: its own free ones, the others along the direction."""
        return {n: free[n] if n in free else self.x[n] + mu[self.group[n]] * d[n] for n in self.names}

    def solve(self, k, l, d):
        """The parallel phase of processor l: returns its candidate parameters."""
        cfg, P = self.cfg, self.cfg.num_proc
        if k == cfg.fail_iteration and l == cfg.fail_rank:
            fail_once(f"processor {l} made to fail in iteration {k} (FAIL_RANK={cfg.fail_rank})", cfg.fail_mode)
        own = {l, P} if cfg.train_classifier else {l}
        free = {n: self.x[n].clone().requires_grad_() for n in self.names if self.group[n] in own}
        mu = torch.zeros(P + 1, device=d[self.names[0]].device, requires_grad=True)
        opt = make_optimizer(cfg.optimizer, [*free.values(), mu], cfg.lr)
        gen = self._generator("solve", k, l)
        steps = 0
        for _ in range(cfg.epochs):
            for xb, yb in self._batches(0, gen, cfg.augment):
                loss = self._loss(self.mixed(free, mu, d, l), xb, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                if cfg.steps and steps >= cfg.steps:
                    break
            if cfg.steps and steps >= cfg.steps:
                break
        with torch.no_grad():
            return {n: t.detach() for n, t in self.mixed(free, mu, d, l).items()}

    @torch.no_grad()
    def score(self, params, batches):
        total = sum(self._loss(params, xb, yb).double() * len(yb) for xb, yb in batches)
        return total / sum(len(yb) for _, yb in batches)

    def affine(self, candidates, best, batches):
        """argmin over lambda of the loss at x^k + sum_l lambda_l (c_l - x^k), from the best."""
        deltas = [{n: c[n] - self.x[n] for n in self.names} for c in candidates]
        lam = torch.zeros(len(candidates), dtype=torch.float64)
        lam[best] = 1.0
        lam.requires_grad_()

        def point(lm):
            return {n: self.x[n] + sum(lm[i].to(self.x[n].dtype) * dl[n] for i, dl in enumerate(deltas))
                    for n in self.names}

        def closure():
            opt.zero_grad()
            loss = sum(self._loss(point(lam), xb, yb).double() * len(yb) for xb, yb in batches)
            loss = loss / sum(len(yb) for _, yb in batches)
            loss.backward()
            return loss

        opt = torch.optim.LBFGS([lam], lr=1, max_iter=self.cfg.affine_iters, line_search_fn="strong_wolfe")
        opt.step(closure)
        with torch.no_grad():
            return {n: t.detach() for n, t in point(lam.detach()).items()}, lam.detach()

    # ---- the loop -----------------------------------------------------------------------------
    def iteration(self, k):
        """One PVD iteration; returns (synchronised loss, winner, per-processor times, sync time)."""
        cfg, P = self.cfg, self.cfg.num_proc
        times = {}
        partial = None
        for l in self.my_blocks:
            t0 = time.perf_counter()
            g, n_batches = self.direction_share(k, l)
            partial = g if partial is None else partial + g
            sync(self._dev())  # the block's queued GPU work done before its clock is read
            times[l] = time.perf_counter() - t0
        d = self.unflatten(-self.comm.all_reduce(partial) / n_batches)
        candidates, losses = {}, {}
        score_batches = self._batches(cfg.sync_batches, self._generator("score", k))
        for l in self.my_blocks:
            t0 = time.perf_counter()
            candidates[l] = self.solve(k, l, d)
            losses[l] = self.score(candidates[l], score_batches)
            sync(self._dev())
            times[l] += time.perf_counter() - t0
        mine = torch.tensor([losses.get(l, float("inf")) for l in range(P)], dtype=torch.float64)
        all_losses = torch.stack([t.cpu() for t in self.comm.all_gather(mine.to(self._dev()))]).min(0).values
        all_losses = torch.nan_to_num(all_losses, nan=float("inf"))
        t_sync = time.perf_counter()  # the gather above absorbs the wait for the slowest processor
        best = int(all_losses.argmin())
        if cfg.sync == "best":
            new = candidates[best] if best in candidates else None
            vec = self.flatten(new) if new is not None else torch.empty(sum(s.numel() for s in self.shapes),
                                                                        device=self._dev())
            new = self.unflatten(self.comm.broadcast(vec, self._owner(best)))
            loss = float(all_losses[best])
        else:
            if isinstance(self.comm, LocalComm):
                cands = [candidates[l] for l in range(P)]
            else:
                cands = [self.unflatten(v) for v in self.comm.all_gather(self.flatten(candidates[self.my_blocks[0]]))]
            new, loss = cands[best], float(all_losses[best])
            if self.comm.rank == 0:
                point, _ = self.affine(cands, best, score_batches)
                point_loss = float(self.score(point, score_batches))
                if point_loss < loss:  # never worse than the best candidate
                    new, loss = point, point_loss
            new = self.unflatten(self.comm.broadcast(self.flatten(new), 0))
            loss = float(self.comm.broadcast(torch.tensor([loss], dtype=torch.float64, device=self._dev()), 0))
        self.x = {n: t.clone() for n, t in new.items()}
        proc_times = torch.zeros(P, dtype=torch.float64)
        for l, t in times.items():
            proc_times[l] = t
        proc_times = self.comm.all_reduce(proc_times.to(self._dev())).cpu()
        return loss, best, proc_times.tolist(), all_losses.tolist(), time.perf_counter() - t_sync

    def _dev(self):
        return self.data.x_train.device

    def _owner(self, block):
        return block if not isinstance(self.comm, LocalComm) else 0

    def correct(self, x, y):
        """Correct predictions of the current model on this process's share of x, y."""
        r, w = self.comm.rank, self.comm.world_size
        share = slice(r * len(y) // w, (r + 1) * len(y) // w)
        return evaluate(self.model, x[share], y[share]) * len(y[share])

    def load_into_model(self):
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(self.x[n])
        return self.model

    def state(self, hist):
        """What continues the run after its last iteration: the synchronised parameters and
        the history (each iteration's randomness is keyed by the seed and its index)."""
        return {"epoch": hist.iteration[-1], "iteration": hist.iteration[-1],
                "x": {n: t.detach().cpu() for n, t in self.x.items()}, "history": asdict(hist)}

    def epochs_per_iteration(self):
        """Passes over the training set of a parallel phase (the direction and the
        scoring passes not counted)."""
        n_batches = len(batch_bounds(len(self.data.y_train), self.cfg.batch_size))
        return min(self.cfg.steps, self.cfg.epochs * n_batches) / n_batches if self.cfg.steps else self.cfg.epochs

    def run(self, log=None, resume=None, on_iteration_end=None, recorder=OFF):
        """Iterate to the target accuracy or the iteration limit; returns the History.

        ``resume``, a ``state``, continues after its iteration as if the run had never
        stopped; ``on_iteration_end(k, state, final)`` gets a function building that state,
        and ``final`` True at the iteration the run stops at.  ``recorder``
        (models.recording) takes a point after every iteration, its clock paused for the
        accuracies the loop computes."""
        cfg = self.cfg
        hist, start, t_offset, theoretical, trained = History(), 1, 0.0, 0.0, 0.0
        if resume is not None:
            self.x = {n: resume["x"][n].to(self._dev()).clone() for n in self.names}
            self.load_into_model()
            hist = History(**{k: list(v) for k, v in resume["history"].items()})
            start = resume["iteration"] + 1
            t_offset, theoretical = hist.wall_time_s[-1], hist.theoretical_time_s[-1]
            trained = hist.train_time_s[-1] if hist.train_time_s else t_offset
            if hist.test_acc[-1] >= cfg.target_acc:
                return hist
        self.comm.barrier()  # the clock starts when every processor is ready
        t_start = time.perf_counter() - t_offset
        recorder.start()
        for k in range(start, cfg.iterations + 1):
            t0 = time.perf_counter()
            loss, best, proc_times, cand_losses, t_sync = self.iteration(k)
            theoretical += max(proc_times) + t_sync
            self.load_into_model()
            trained += time.perf_counter() - t0
            recorder.epoch_end(loss, self.epochs_per_iteration())
            with recorder.paused():
                flag = torch.tensor([self.correct(self.data.x_train, self.data.y_train),
                                     self.correct(self.data.x_test, self.data.y_test)], dtype=torch.float64,
                                    device=self._dev())
                flag = self.comm.all_reduce(flag).cpu()
            flag[0] /= len(self.data.y_train)
            flag[1] /= len(self.data.y_test)
            wall = time.perf_counter() - t_start
            for key, val in (("iteration", k), ("loss", loss), ("train_acc", float(flag[0])),
                             ("test_acc", float(flag[1])), ("wall_time_s", wall), ("train_time_s", trained),
                             ("theoretical_time_s", theoretical),
                             ("proc_time_s", proc_times), ("sync_time_s", t_sync), ("winner", best),
                             ("candidate_loss", cand_losses)):
                getattr(hist, key).append(val)
            if log is not None:
                log(f"iter {k:3d}  loss {loss:.4f}  train acc {flag[0]:.4f}  test acc {flag[1]:.4f}  "
                    f"best block {best}  wall {wall:.1f}s  theoretical {theoretical:.1f}s")
            reached = bool(flag[1] >= cfg.target_acc)
            if on_iteration_end is not None:  # the iteration a run stops at is always saved
                on_iteration_end(k, lambda: self.state(hist), final=reached or k == cfg.iterations)
            if reached:
                break
        return hist
