"""A pipeline stage: its piece of the network, its optimiser, its rule, and its work for
one batch and one epoch, over a transport (``synthetic.transport``).

The stage's work is a generator: it yields when it waits for a message that has not
come.  Stages in one process take turns (``run_together``); a stage in a process of its
own never yields (its transport blocks) and is run to the end (``run_alone``).  The same
code therefore trains a pipeline serially and across processes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datasets.batching import batch_bounds, epoch_batches
from models.training import make_optimizer

from .complex import input_grads
from .rules import backprop


class StagePiece(nn.Module):
    """Sub-network i of a ComplexNet as a module (forward = ``stage_forward(i, ...)``), so
    that ``torch.func.functional_call`` can run it on other parameters."""

    def __init__(self, cnet, i):
        super().__init__()
        self.cnet, self.i = cnet, i

    def forward(self, inp):
        return self.cnet.stage_forward(self.i, inp)


class Stats:
    """Per-epoch sums of a stage's scalars (kept on the device until read)."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def add(self, **values):
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self):
        """The means since the last call (floats), then a fresh start."""
        out = {k: float(v) / self.counts[k] for k, v in self.sums.items()}
        self.sums, self.counts = {}, {}
        return out


class Stage:
    """Stage i of ``cnet``: layers ``cnet.bounds[i]`` (with the lift on the first, the
    classifier and the loss on the last), an optimiser over them and what the rule adds,
    and the rule (every stage but the last; the last backpropagates its loss)."""

    def __init__(self, cnet, i, rule, transport, *, lr, optimizer="adam", profile, seed=0):
        self.cnet, self.i, self.last = cnet, i, i == cnet.num_stages - 1
        self.seed = seed  # the run's: what a rule initialises draws from it and the stage (``generator``)
        self.piece = StagePiece(cnet, i)
        self.params = cnet.stage_parameters(i)
        self.transport, self.prof, self.stats = transport, profile, Stats()
        self.sends = rule.receives_gradients  # whether this stage sends the gradient at its input back
        self.rule = self.primary = backprop() if self.last else rule
        self.rules = {self.rule.name: self.rule}  # the rule of the run, and backprop for a hybrid finish
        self.rule.attach(self)
        self.opt = make_optimizer(optimizer, self.params + self.rule.parameters(), lr)

    def generator(self):
        """A generator of the run's seed and this stage: a rule's own initialisation is the
        same whichever process the stage runs in."""
        return torch.Generator().manual_seed(1_000_003 * self.seed + self.i)

    def named_parameters(self):
        """The stage's parameters by their names in ``piece``."""
        mine = set(map(id, self.params))
        return {n: p for n, p in self.piece.named_parameters() if id(p) in mine}

    def owned(self):
        """Ids of the parameters of ``cnet`` this stage trains (its layers, and its rule's:
        a synthetic-gradient module)."""
        return set(map(id, self.params)) | set(map(id, self.primary.net_parameters()))

    # ---- the pieces of work a rule puts together ---------------------------------------
    def forward(self, inp, kind="forward"):
        with self.prof(kind):
            return self.cnet.stage_forward(self.i, inp)

    def backward(self, out, grad):
        with self.prof("backward"):
            torch.autograd.backward(out, grad)

    def step(self):
        with self.prof("step"):
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

    def true_gradient(self, b):
        """The gradient at the stage's output for batch b (waits for it)."""
        return (yield from self.transport.recv_grad(b))

    def send_input_grad(self, b, inp):
        if self.i > 0 and self.sends:
            self.transport.send_grad(b, input_grads(inp))

    # ---- one batch, one epoch -------------------------------------------------------------
    def batch(self, b, inp, labels):
        """Batch b through this stage; returns its loss on the last stage."""
        if self.i > 0:
            inp = tuple(t.requires_grad_() for t in inp)
        if self.last:
            with self.prof("forward"):
                loss = F.cross_entropy(self.cnet.stage_forward(self.i, inp), labels)
            with self.prof("backward"):
                loss.backward()
            self.send_input_grad(b, inp)
            self.step()
            return loss.detach()
        out = self.rule.forward(self, inp, labels)
        self.transport.send_state(b, out, labels)
        if self.rule.receives_gradients:
            self.transport.expect_grad(b, len(labels))
        yield from self.rule.after_forward(self, b, inp, out, labels)

    def epoch(self, epoch, data, batch_size, seed, augment=False, before_batch=None, after_batch=None):
        """One epoch of the run's batches (``epoch_batches``: stage 0 draws them, the
        others receive them), then the rule's drain: every batch's gradient is applied
        when it ends.  ``before_batch(epoch, b)`` and ``after_batch(loss, size)`` (the
        loss on the last stage, else None) are called around each batch.  Returns the
        mean loss on the last stage (a tensor), else None."""
        n = len(data.y_train)
        source = epoch_batches(data.x_train, data.y_train, batch_size, seed, epoch, augment) if self.i == 0 else None
        loss_sum = torch.zeros((), device=data.y_train.device, dtype=torch.float64)
        for b, (lo, hi) in enumerate(batch_bounds(n, batch_size)):
            if before_batch is not None:
                before_batch(epoch, b)
            if source is not None:
                with self.prof("forward"):
                    inp, labels = next(source)
            else:
                inp, labels = yield from self.transport.recv_state(b, hi - lo)
            loss = yield from self.batch(b, inp, labels)
            if loss is not None:
                loss_sum += loss.double() * (hi - lo)
            if after_batch is not None:
                after_batch(loss, hi - lo)
            self.prof.batch += 1
        yield from self.rule.drain(self)
        self.transport.flush()
        return loss_sum / n if self.last else None

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self):
        return {"optimizer": self.opt.state_dict(), "rule": self.primary.state_dict()}

    def load_state_dict(self, state):
        self.primary.load_state_dict(state["rule"])
        self.opt.load_state_dict(state["optimizer"])


def run_alone(work):
    """Run one stage's generator to its end (its transport blocks instead of yielding)."""
    while True:
        try:
            next(work)
        except StopIteration as stop:
            return stop.value


def run_together(works, hub):
    """Run the generators of the stages of one process in turns, each until it waits for a
    message; returns their values.  ``hub`` (the Loopback) counts the messages, so that a
    round in which no stage moves is reported as a deadlock instead of spinning."""
    results, live = [None] * len(works), dict(enumerate(works))
    while live:
        moved = hub.moves
        finished = False
        for k, work in list(live.items()):
            try:
                next(work)
            except StopIteration as stop:
                results[k] = stop.value
                del live[k]
                finished = True
        if live and not finished and hub.moves == moved:
            raise RuntimeError(f"pipeline deadlock: stages {sorted(live)} all wait for a message")
    return results
