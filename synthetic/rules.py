"""Decoupling rules: what gradient a pipeline stage (every stage but the last) applies,
and when.

Stage i computes h_i = f_i(h_{i-1}; theta_i) for batch t and sends h_i on.  The last
stage computes the loss L and backpropagates it; the true gradient at a cut,
delta_i^t = dL/dh_i^t, travels back to stage i (unless the rule is local).  A rule
decides the update of theta_i; with Adam the rule gives the gradient g_i^t and the
optimiser takes its step.  With every rule a stage drains what it is owed at the end of
an epoch, so that an epoch ends with every batch's gradient applied.

    exact      g^t = (dh_i^t/dtheta_i)^T delta^t, waiting for delta^t (backprop)
    synthetic  g^t = (dh_i^t/dtheta_i)^T S(h_i^t, y^t) at once; S regresses on delta^t later
    delayed    g^{t-k} = (dh_i^{t-k}/dtheta_i |theta^{t-k})^T beta delta^{t-k}: k batches late,
               at the weights of its forward pass (weight stashing, DDG / PipeDream)
    replay     the same at the current weights: the forward pass of t-k recomputed
               (Features Replay)
    local      g^t = d/dtheta_i CE(H_i(h_i^t), y^t) with a small classifier H_i of the
               stage's own (DGL): nothing travels back

A rule is a small class: ``forward`` (the stage's forward pass, with what the rule keeps
of it), ``after_forward`` and ``drain`` (generators: a stage waiting for a gradient
yields); ``parameters``/``state_dict``/``load_state_dict`` for what it trains itself.
"""
from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from models.training import make_optimizer


class Rule:
    """Backprop through the pipeline: the stage waits for the true gradient of its batch."""

    name = "exact"
    sends_gradients = True  # true gradients travel back to this stage

    def attach(self, stage):
        """Called once by the stage; creates what the rule trains itself."""

    def parameters(self):
        """Parameters the rule adds to the stage's optimiser (a local head)."""
        return []

    def forward(self, stage, inp, labels):
        return stage.forward(inp)

    def after_forward(self, stage, b, inp, out, labels):
        grad = yield from stage.true_gradient(b)
        stage.backward(out, grad)
        stage.send_input_grad(b, inp)
        stage.step()

    def drain(self, stage):
        return
        yield

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


Exact = Rule


class Synthetic(Rule):
    """cDNI (Jaderberg et al.): the stage steps at once on its module's prediction
    S(h_i^t, y^t); the module regresses on delta^t, min ||S - B delta^t||^2, when it
    arrives (at most ``max_in_flight`` batches later).  With ``teach`` the stage waits
    for delta^t and applies it, the module still regressing on it (the coarse level of
    the multilevel scheme: backprop that teaches the modules)."""

    name = "synthetic"

    def __init__(self, max_in_flight=1, sg_lr=1e-3, teach=False):
        self.max_in_flight, self.sg_lr, self.teach = max_in_flight, sg_lr, teach
        self.pending = deque()

    def attach(self, stage):
        self.module = stage.cnet.sg[stage.i]
        self.opt = make_optimizer("adam", self.module.parameters(), self.sg_lr)

    def after_forward(self, stage, b, inp, out, labels):
        state = tuple(t.detach() for t in out)
        with stage.prof("module"):
            pred = self.module.start(state, labels)  # one module pass: the prediction now, the regression later
        if self.teach:
            grad = yield from stage.true_gradient(b)
            stage.backward(out, grad)
            self._regress(stage, pred, labels, grad)
        else:
            stage.backward(out, self.module.synthetic(pred, labels))
        stage.send_input_grad(b, inp)
        stage.step()
        if self.teach:
            return
        self.pending.append((b, pred, labels))
        while self.pending and (len(self.pending) > self.max_in_flight or stage.has_gradient(self.pending[0][0])):
            yield from self._regress_pending(stage)

    def _regress_pending(self, stage):
        b, pred, labels = self.pending.popleft()
        grad = yield from stage.true_gradient(b)
        self._regress(stage, pred, labels, grad)

    def _regress(self, stage, pred, labels, grad):
        with stage.prof("module"):
            loss, mse, cos = self.module.loss(pred, labels, grad)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            stage.stats.add(mse=mse, cos=cos)

    def drain(self, stage):
        while self.pending:
            yield from self._regress_pending(stage)

    def state_dict(self):
        return {"sg_optimizer": self.opt.state_dict()}

    def load_state_dict(self, state):
        self.opt.load_state_dict(state["sg_optimizer"])


class Delayed(Rule):
    """The true gradient applied ``max_in_flight`` = k batches late, at the weights its
    forward pass used: theta <- step(theta, (dh^{t-k}/dtheta |theta^{t-k})^T beta delta^{t-k}),
    beta = ``shrink`` (FDG's gradient shrinking; 1: none).  The forward pass runs on a
    copy of the stage's parameters (the stash), so its graph stays valid while the
    parameters take their steps; the gradient on the copy is the parameters'."""

    name = "delayed"

    def __init__(self, max_in_flight=1, shrink=1.0):
        self.max_in_flight, self.shrink = max_in_flight, shrink
        self.pending = deque()
        self.free = []  # stashes whose batch is done: reused, so that no batch allocates one

    def attach(self, stage):
        self.names = stage.named_parameters()

    def forward(self, stage, inp, labels):
        with stage.prof("forward"):
            if self.free:
                self.stash = self.free.pop()
                with torch.no_grad():
                    for n, p in self.names.items():
                        self.stash[n].copy_(p)
                        self.stash[n].grad = None
            else:
                self.stash = {n: p.detach().clone().requires_grad_() for n, p in self.names.items()}
            return functional_call(stage.piece, self.stash, (inp,))

    def after_forward(self, stage, b, inp, out, labels):
        self.pending.append((b, inp, out, self.stash))
        while len(self.pending) > self.max_in_flight:
            yield from self._apply(stage)

    def _late(self, grad):
        """The late gradient as applied: times beta."""
        return tuple(self.shrink * g for g in grad) if self.shrink != 1 else grad

    def _apply(self, stage):
        b, inp, out, stash = self.pending.popleft()
        grad = yield from stage.true_gradient(b)
        stage.backward(out, self._late(grad))
        with stage.prof("step"):
            for n, p in self.names.items():
                p.grad = stash[n].grad
        stage.send_input_grad(b, inp)
        stage.step()
        self.free.append(stash)

    def drain(self, stage):
        while self.pending:
            yield from self._apply(stage)


class Replay(Delayed):
    """Features Replay: the true gradient applied k batches late at the current weights,
    theta <- step(theta, (dh^{t-k}/dtheta |theta)^T beta delta^{t-k}): the stage keeps the
    input of batch t - k and runs its forward pass again when delta^{t-k} arrives.  No
    stash; one more forward pass per batch."""

    name = "replay"

    def forward(self, stage, inp, labels):
        with torch.no_grad():
            return stage.forward(inp)

    def after_forward(self, stage, b, inp, out, labels):
        self.pending.append((b, inp))
        while len(self.pending) > self.max_in_flight:
            yield from self._apply(stage)

    def _apply(self, stage):
        b, inp = self.pending.popleft()
        grad = yield from stage.true_gradient(b)
        out = stage.forward(inp, kind="replay")
        stage.backward(out, self._late(grad))
        stage.send_input_grad(b, inp)
        stage.step()


class LocalHead(nn.Module):
    """DGL's auxiliary classifier at a cut: Y averaged to at most 2 x 2 (conv), flattened,
    one linear layer to the classes."""

    def __init__(self, state_shape, num_classes):
        super().__init__()
        conv = len(state_shape) == 3
        self.pool = nn.AdaptiveAvgPool2d(2) if conv else nn.Identity()
        features = state_shape[0] * min(state_shape[1], 2) * min(state_shape[2], 2) if conv else state_shape[0]
        self.linear = nn.Linear(features, num_classes)

    def forward(self, y):
        return self.linear(self.pool(y).flatten(1))


class Local(Rule):
    """DGL: the stage trains on the loss of a small classifier of its own at its output,
    theta_i, H_i <- step(d/d(theta_i, H_i) CE(H_i(Y_i^t), y^t)); no gradient travels back."""

    name = "local"
    sends_gradients = False

    def attach(self, stage):
        net = stage.cnet.net
        self.head = LocalHead(stage.cnet.cut_shape(stage.i), net.num_classes).to(
            device=next(net.parameters()).device, dtype=next(net.parameters()).dtype)

    def parameters(self):
        return list(self.head.parameters())

    def after_forward(self, stage, b, inp, out, labels):
        with stage.prof("head"):
            loss = F.cross_entropy(self.head(out[0]), labels)
        with stage.prof("backward"):
            loss.backward()
        stage.stats.add(head_loss=loss.detach())
        stage.step()
        return
        yield

    def state_dict(self):
        return {"head": self.head.state_dict()}

    def load_state_dict(self, state):
        self.head.load_state_dict(state["head"])


CLASSES = {"exact": Exact, "synthetic": Synthetic, "delayed": Delayed, "replay": Replay, "local": Local}
RULES = tuple(CLASSES)


def make_rule(name, *, max_in_flight=1, sg_lr=1e-3, shrink=1.0, teach=False):
    """A rule by name (RULES) with its options."""
    if name not in CLASSES:
        raise ValueError(f"unknown RULE {name!r}; valid: {', '.join(RULES)}")
    if name == "synthetic":
        return Synthetic(max_in_flight, sg_lr, teach)
    if name in ("delayed", "replay"):
        return CLASSES[name](max_in_flight, shrink)
    return CLASSES[name]()
