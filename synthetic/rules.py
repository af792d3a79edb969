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
    predicted  the same, the forward pass at theta^t - k lr u^t: the weights predicted k
               steps ahead along the optimiser's step (SpecTrain, PipeOptim)
    replay     the same at the current weights: the forward pass of t-k recomputed
               (Features Replay)
    pipemare   replay's, recomputed at theta - k d (d: the weights' mean step), the learning
               rate scaled by k^{-p}, p falling from 1 to 0 (PipeMare)
    accumulated  delayed's, summed over A batches before a step (PACI-style)
    local      g^t = d/dtheta_i CE(H_i(h_i^t), y^t) with a small classifier H_i of the
               stage's own (DGL): nothing travels back
    local-delayed  delayed's g^{t-k} + lambda local's g^t

A rule is one class, registered by name (``register``): a dataclass whose fields are its
options (``option``: a default, a one-line help and a check; the scripts' command line,
their checks and the race take them from here), ``receives_gradients`` (whether true
gradients travel back to it: every rule says so itself), ``after_forward`` (a generator:
a stage waiting for a gradient yields) and, as it needs them, ``forward`` (the stage's
forward pass, with what the rule keeps of it), ``drain``, ``parameters`` and
``net_parameters`` (what it trains itself), ``state_dict``/``load_state_dict``,
``kinds`` and ``stats`` (its names in the stage's profile and history) and its costs for
the balancer (``cut_work``, ``forward_passes``, ``backward_passes``, ``layer_work``).  docs/DESIGN.md shows
how to add one.
"""
from __future__ import annotations

import abc
import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from models.training import make_optimizer

from .modules import SyntheticGradient

REGISTRY = {}  # name -> rule class


def option(default, help, check=None):
    """A rule's option: a dataclass field with its default, a one-line help and a check
    (``check(value)`` returns what is wrong, or None)."""
    return field(default=default, metadata={"help": help, "check": check})


def at_least(low):
    return lambda v: None if v >= low else f"must be >= {low}, got {v}"


def positive(v):
    return None if v > 0 else f"must be > 0, got {v}"


def register(cls):
    """Make ``cls`` a rule the scripts know by its ``name``.  A rule says itself whether
    true gradients travel back to it (``receives_gradients`` in its own class body)."""
    if "receives_gradients" not in cls.__dict__:
        raise TypeError(f"rule {cls.__name__} must say whether it receives true gradients (receives_gradients)")
    if not isinstance(cls.__dict__.get("name"), str):
        raise TypeError(f"rule {cls.__name__} needs a name")
    REGISTRY[cls.name] = cls
    RULES[:] = list(REGISTRY)
    return cls


def unregister(name):
    """Forget the rule ``name`` (a test's toy rule)."""
    REGISTRY.pop(name, None)
    RULES[:] = list(REGISTRY)


@dataclass
class Rule(abc.ABC):
    """What a pipeline stage (every stage but the last) does with a batch after its
    forward pass.  Subclasses declare ``name`` and ``receives_gradients`` and implement
    ``after_forward``; their dataclass fields are their options (``option``)."""

    name: ClassVar[str]
    receives_gradients: ClassVar[bool]  # true gradients travel back to this stage
    kinds: ClassVar[tuple] = ()  # the kinds of work it adds to the stage's profile (``stage.prof(kind)``)
    stats: ClassVar[tuple] = ()  # the per-cut statistics it adds (``stage.stats.add``), history keys
    forward_passes: ClassVar[int] = 1  # forward passes of the stage's layers per batch (the balancer's cost)
    backward_passes: ClassVar[int] = 1  # backward passes of the stage's layers per batch (the balancer's cost)
    stashes: ClassVar[bool] = False  # its forward pass runs on a copy of the stage's weights, one per batch in flight

    def __init_subclass__(cls, **kwargs):
        """Every rule is a dataclass of its options, wherever its module is imported."""
        super().__init_subclass__(**kwargs)
        dataclass(cls)

    def attach(self, stage):
        """Called once by the stage; creates what the rule trains itself."""

    def parameters(self):
        """Parameters the rule adds to the stage's optimiser (a local head)."""
        return []

    def net_parameters(self):
        """Parameters of the network (ComplexNet) that this rule trains with its own
        optimiser (a synthetic-gradient module)."""
        return []

    def forward(self, stage, inp, labels):
        return stage.forward(inp)

    @abc.abstractmethod
    def after_forward(self, stage, b, inp, out, labels):
        """A generator: the rest of batch b's work on this stage after ``forward``."""

    def drain(self, stage):
        """A generator: what the stage still owes at the end of an epoch."""
        return
        yield

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def cut_work(self, net, state, y, sg_kind):
        """The balancer's cost of what the rule adds at a cut whose state is ``state``:
        (work, the parameters it steps), or None for nothing."""
        return None

    def layer_work(self, params):
        """The balancer's cost of what the rule adds per batch for a layer's parameters
        ``params`` besides its passes: a callable, or None for nothing.  A rule that
        ``stashes`` copies them into its stash once a batch."""
        if not self.stashes:
            return None
        stash = [p.detach().clone() for p in params]

        def copy():
            with torch.no_grad():
                for kept, p in zip(stash, params):
                    kept.copy_(p)
        return copy

    def options(self):
        """{option name: value}."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


RULES = []  # the registered rules' names, in registration order


@register
class Exact(Rule):
    """Backprop through the pipeline: the stage waits for the true gradient of its batch."""

    name = "exact"
    receives_gradients = True

    def after_forward(self, stage, b, inp, out, labels):
        grad = yield from stage.true_gradient(b)
        stage.backward(out, grad)
        stage.send_input_grad(b, inp)
        stage.step()


def backprop():
    """The rule of the last stage and of a hybrid finish's exact epochs."""
    return Exact()


IN_FLIGHT_HELP = ("batches a stage runs ahead of its true gradients (delayed and replay: the delay k); 0: the "
                  "delay of a busy pipeline of M devices, M - 1 - i at stage i")


def in_flight(max_in_flight, stage):
    """A stage's delay k: ``max_in_flight``, or with 0 the delay that keeps every device of
    a pipeline of M stages busy: the true gradient of stage i's batch returns after the
    forward passes of stages i+1 ... M-1 and the backward passes back, about M - 1 - i
    batches later (PipeDream's 1F1B), so that a run in one process (loopback) has the
    staleness of the pipeline on M devices."""
    return delay(max_in_flight, stage.i, stage.cnet.num_stages)


def delay(max_in_flight, i, m):
    """``in_flight`` of stage i of m."""
    return max_in_flight or max(m - 1 - i, 1)


@register
class Synthetic(Rule):
    """cDNI (Jaderberg et al. 2016): the stage steps at once on its module's prediction
    S(h_i^t, y^t); the module regresses on delta^t, min ||S - B delta^t||^2,
    ``max_in_flight`` = k batches later (or at the epoch's end), whenever delta^t arrived,
    so that a run's arithmetic does not depend on the messages' timing.  With ``teach`` the stage waits
    for delta^t and applies it, the module still regressing on it (the coarse level of
    the multilevel scheme: backprop that teaches the modules)."""

    name = "synthetic"
    receives_gradients = True
    kinds = ("module",)
    stats = ("sg_mse", "sg_cos")

    max_in_flight: int = option(0, IN_FLIGHT_HELP, at_least(0))
    sg_learn_rate: float = option(1e-3, "learning rate of the synthetic-gradient modules (Adam)", positive)
    teach: bool = field(default=False, metadata={"help": "apply the true gradients, the modules learning them",
                                                 "cli": False})

    def __post_init__(self):
        self.pending = deque()

    def attach(self, stage):
        self.k = in_flight(self.max_in_flight, stage)
        self.module = stage.cnet.sg[stage.i]
        self.opt = make_optimizer("adam", self.module.parameters(), self.sg_learn_rate)

    def net_parameters(self):
        return list(self.module.parameters())

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
        while len(self.pending) > self.k:  # exactly k batches late: serial = distributed
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
            stage.stats.add(sg_mse=mse, sg_cos=cos)

    def drain(self, stage):
        while self.pending:
            yield from self._regress_pending(stage)

    def state_dict(self):
        return {"sg_optimizer": self.opt.state_dict()}

    def load_state_dict(self, state):
        self.opt.load_state_dict(state["sg_optimizer"])

    def cut_work(self, net, state, y, sg_kind):
        module = SyntheticGradient(state[0].shape[1:], len(state), net.num_classes, conv=net.conv,
                                   kind=sg_kind).to(state[0].device)

        def work():
            pred = module.start(state, y)
            module.synthetic(pred, y)
            module.loss(pred, y, state)[0].backward()
        return work, list(module.parameters())


@register
class Delayed(Rule):
    """The true gradient applied k batches late (``max_in_flight``; ``in_flight``), at the weights its
    forward pass used: theta <- step(theta, (dh^{t-k}/dtheta |theta^{t-k})^T beta delta^{t-k}),
    beta = ``shrink`` (FDG's gradient shrinking; 1: none).  The forward pass runs on a
    copy of the stage's parameters (the stash), so its graph stays valid while the
    parameters take their steps; the gradient on the copy is the parameters'."""

    name = "delayed"
    receives_gradients = True
    stashes = True

    max_in_flight: int = option(0, IN_FLIGHT_HELP, at_least(0))
    shrink: float = option(1.0, "factor of the late gradient (FDG's shrinking; 1: none)", positive)

    def __post_init__(self):
        self.pending = deque()
        self.free = []  # stashes whose batch is done: reused, so that no batch allocates one

    def attach(self, stage):
        self.k = in_flight(self.max_in_flight, stage)
        self.names = stage.named_parameters()

    def forward_weights(self, stage):
        """The weights of the forward pass: the stage's own."""
        return self.names

    def forward(self, stage, inp, labels):
        with stage.prof("forward"):
            with torch.no_grad():
                weights = self.forward_weights(stage)
            if self.free:
                self.stash = self.free.pop()
                with torch.no_grad():
                    for n, w in weights.items():
                        self.stash[n].copy_(w)
                        self.stash[n].grad = None
            else:
                self.stash = {n: w.detach().clone().requires_grad_() for n, w in weights.items()}
            return functional_call(stage.piece, self.stash, (inp,))

    def after_forward(self, stage, b, inp, out, labels):
        self.pending.append((b, inp, out, self.stash))
        while len(self.pending) > self.k:
            yield from self._apply(stage)

    def _late(self, grad):
        """The late gradient as applied: times beta."""
        return tuple(self.shrink * g for g in grad) if self.shrink != 1 else grad

    def _apply(self, stage):
        b, inp, out, stash = self.pending.popleft()
        grad = yield from stage.true_gradient(b)
        stage.backward(out, self._late(grad))
        with stage.prof("step"):
            self.collect(stash)
            self.applying(stage)
        stage.send_input_grad(b, inp)
        self.take_step(stage)
        self.free.append(stash)

    def collect(self, stash):
        """Put the late gradient, on the stash, into the parameters' ``.grad``."""
        for n, p in self.names.items():
            p.grad = stash[n].grad

    def applying(self, stage):
        """Called with the late gradient in the parameters' ``.grad``, before the step."""

    def take_step(self, stage):
        """The optimiser's step on the gradient collected."""
        stage.step()

    def drain(self, stage):
        while self.pending:
            yield from self._apply(stage)


@register
class Predicted(Delayed):
    """Weight prediction (SpecTrain, Chen et al. 2018; PipeOptim, 2023): the forward pass of
    batch t runs at the weights the stage will have when batch t's late gradient is
    applied, k steps ahead along the optimiser's current step,

        theta_hat^t = theta^t - k lr u^t,
        theta <- step(theta, (dh^t/dtheta |theta_hat^t)^T beta delta^t),   k batches later,

    with u Adam's step direction m_hat / (sqrt(v_hat) + eps), SGD's momentum buffer, or,
    for SGD without momentum, the last gradient the stage applied (zero before the first
    step).  Delayed takes the gradient at theta^t, k steps behind the weights it updates;
    the prediction moves it towards them at the cost of one axpy per parameter."""

    name = "predicted"
    receives_gradients = True

    def __post_init__(self):
        super().__post_init__()
        self.last = {}  # SGD without momentum: the last gradient applied

    def forward_weights(self, stage):
        group = stage.opt.param_groups[0]
        lr = group["lr"]
        return {n: p - self.k * lr * u if (u := self._direction(stage.opt, group, p, n)) is not None else p
                for n, p in self.names.items()}

    def _direction(self, opt, group, p, n):
        state = opt.state.get(p, {})
        if "exp_avg" in state:  # Adam
            step = float(state["step"])
            beta1, beta2 = group["betas"]
            v_hat = state["exp_avg_sq"] / (1 - beta2 ** step)
            return state["exp_avg"] / (1 - beta1 ** step) / (v_hat.sqrt() + group["eps"])
        if state.get("momentum_buffer") is not None:  # SGD with momentum
            return state["momentum_buffer"]
        return self.last.get(n)

    def layer_work(self, params):
        """The prediction (Adam's direction and one axpy) and the stash's copy, once a batch."""
        copy = super().layer_work(params)
        moments = [(torch.zeros_like(p), torch.ones_like(p)) for p in params]

        def predict():
            with torch.no_grad():
                for p, (m, v) in zip(params, moments):
                    p - 1e-3 * (m / 0.1 / ((v / 1e-3).sqrt() + 1e-8))  # forward_weights' arithmetic, timed
            copy()
        return predict

    def applying(self, stage):
        if not isinstance(stage.opt, torch.optim.Adam) and not stage.opt.param_groups[0].get("momentum"):
            self.last = {n: p.grad.detach().clone() for n, p in self.names.items() if p.grad is not None}


@register
class Replay(Delayed):
    """Features Replay (Huo et al. 2018): the true gradient applied k batches late at the
    current weights, theta <- step(theta, (dh^{t-k}/dtheta |theta)^T beta delta^{t-k}): the
    stage keeps the input of batch t - k and runs its forward pass again when
    delta^{t-k} arrives.  No stash; one more forward pass per batch."""

    name = "replay"
    receives_gradients = True
    stashes = False  # it keeps inputs; its second forward pass is forward_passes
    kinds = ("replay",)
    forward_passes = 2

    def forward(self, stage, inp, labels):
        with torch.no_grad():
            return stage.forward(inp)

    def after_forward(self, stage, b, inp, out, labels):
        self.pending.append((b, inp))
        while len(self.pending) > self.k:
            yield from self._apply(stage)

    def _apply(self, stage):
        b, inp = self.pending.popleft()
        grad = yield from stage.true_gradient(b)
        out = stage.forward(inp, kind="replay")
        stage.backward(out, self._late(grad))
        stage.send_input_grad(b, inp)
        stage.step()


@register
class PipeMare(Replay):
    """PipeMare (Yang et al. 2021): replay's late gradient, with its two corrections.

    T1, the learning rate by delay: stage i, k batches late, steps at

        lr_s = lr k^{-p_s},   p_s = max(1 - s / K, 0)          (s: the stage's steps, K: ``warmup``)

    so that a deep stage starts slow and reaches lr after K steps.
    T2, discrepancy correction: the forward pass of batch t - k is recomputed, when
    delta^{t-k} arrives, at the weights extrapolated back to those of its first pass,

        u = theta - k d,   d <- gamma d + (1 - gamma)(theta_{s+1} - theta_s)   (gamma: ``decay``),
        theta <- step(theta, (dh^{t-k}/dtheta |u)^T beta delta^{t-k}),

    d being a moving average of the stage's weight steps.  Like replay it keeps only the
    inputs of the batches in flight (and d) instead of a stash of weights per batch, at
    the cost of a second forward pass."""

    name = "pipemare"
    receives_gradients = True

    warmup: int = option(500, "steps K over which PipeMare's learning rate rises from lr/k to lr (0: lr at once)",
                         at_least(0))
    decay: float = option(0.9, "gamma of the moving average of weight steps (PipeMare's discrepancy correction)",
                          lambda v: None if 0 <= v < 1 else f"must be in [0, 1), got {v}")

    def attach(self, stage):
        super().attach(stage)
        self.steps, self.base_lr = 0, None
        self.drift = {n: torch.zeros_like(p) for n, p in self.names.items()}

    def _apply(self, stage):
        b, inp = self.pending.popleft()
        grad = yield from stage.true_gradient(b)
        with stage.prof("replay"):
            with torch.no_grad():
                back = {n: (p - self.k * self.drift[n]).requires_grad_() for n, p in self.names.items()}
            out = functional_call(stage.piece, back, (inp,))
        stage.backward(out, self._late(grad))
        with stage.prof("step"):
            self.collect(back)
            before = {n: p.detach().clone() for n, p in self.names.items()}
            self._set_lr(stage.opt)
        stage.send_input_grad(b, inp)
        stage.step()
        with stage.prof("step"), torch.no_grad():
            for n, p in self.names.items():
                self.drift[n].mul_(self.decay).add_(p - before[n], alpha=1 - self.decay)
        self.steps += 1

    def _set_lr(self, opt):
        if self.base_lr is None:
            self.base_lr = [g["lr"] for g in opt.param_groups]
        power = max(1 - self.steps / self.warmup, 0.0) if self.warmup else 0.0
        for g, lr in zip(opt.param_groups, self.base_lr):
            g["lr"] = lr * self.k ** -power

    def state_dict(self):
        return {"steps": self.steps, "base_lr": self.base_lr, "drift": self.drift}

    def load_state_dict(self, state):
        self.steps, self.base_lr = state["steps"], state["base_lr"]
        for n, d in state["drift"].items():
            self.drift[n].copy_(d)


@register
class Accumulated(Delayed):
    """Version drift bounded by accumulation (PACI-style, 2026): delayed's late
    gradients, at the weights of their forward passes, summed over A = ``accumulate``
    batches before one step on their mean,

        theta <- step(theta, (1/A) sum_{j<A} (dh^{t-k-j}/dtheta |theta^{t-k-j})^T beta delta^{t-k-j}),

    every A batches (and at the end of an epoch), so that the weights of a forward pass
    are at most ceil(k / A) versions behind those its gradient updates, instead of k."""

    name = "accumulated"
    receives_gradients = True

    accumulate: int = option(2, "batches whose late gradients are summed before one step (A)", at_least(1))

    def attach(self, stage):
        super().attach(stage)
        self.held = 0  # late gradients collected since the last step

    def collect(self, stash):
        for n, p in self.names.items():
            g = stash[n].grad
            p.grad = g if p.grad is None or g is None else p.grad + g

    def take_step(self, stage):
        self.held += 1
        if self.held == self.accumulate:
            self._step_mean(stage)

    def _step_mean(self, stage):
        with torch.no_grad():
            for p in stage.opt.param_groups[0]["params"]:
                if p.grad is not None:
                    p.grad.div_(self.held)
        stage.step()
        self.held = 0

    def drain(self, stage):
        yield from super().drain(stage)
        if self.held:
            self._step_mean(stage)


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

    @classmethod
    def of(cls, stage):
        """The head at stage's cut, drawn from the stage's generator (the same in every
        process), on the network's device."""
        net = stage.cnet.net
        head = cls(stage.cnet.cut_shape(stage.i), net.num_classes)
        generator, bound = stage.generator(), head.linear.in_features ** -0.5  # torch's Linear default
        with torch.no_grad():
            for p in head.parameters():
                p.uniform_(-bound, bound, generator=generator)
        return head.to(device=next(net.parameters()).device, dtype=next(net.parameters()).dtype)

    @staticmethod
    def cut_work(net, state, y):
        """The balancer's cost of a head at a cut of state ``state`` (``Rule.cut_work``)."""
        head = LocalHead(state[0].shape[1:], net.num_classes).to(state[0].device)
        inp = state[0].requires_grad_()

        def work():
            F.cross_entropy(head(inp), y).backward()
        return work, list(head.parameters())



class WithHead:
    """A rule with a local classifier at its stage's cut (``LocalHead``), trained by the
    stage's optimiser and checkpointed with the stage."""

    def attach(self, stage):
        super().attach(stage)
        self.head = LocalHead.of(stage)

    def parameters(self):
        return list(self.head.parameters())

    def state_dict(self):
        return {"head": self.head.state_dict()}

    def load_state_dict(self, state):
        self.head.load_state_dict(state["head"])

    def cut_work(self, net, state, y, sg_kind):
        return LocalHead.cut_work(net, state, y)


@register
class Local(WithHead, Rule):
    """DGL (Belilovsky et al. 2020): the stage trains on the loss of a small classifier of
    its own at its output, theta_i, H_i <- step(d/d(theta_i, H_i) CE(H_i(Y_i^t), y^t)); no
    gradient travels back."""

    name = "local"
    receives_gradients = False
    kinds = ("head",)
    stats = ("head_loss",)

    def after_forward(self, stage, b, inp, out, labels):
        with stage.prof("head"):
            loss = F.cross_entropy(self.head(out[0]), labels)
        with stage.prof("backward"):
            loss.backward()
        stage.stats.add(head_loss=loss.detach())
        stage.step()
        return
        yield


@register
class LocalDelayed(WithHead, Delayed):
    """A local signal now, the true gradient late (DGL's head with delayed's stash): each
    step applies the late true gradient of batch t - k plus lambda times the gradient of
    the stage's own classifier's loss on batch t,

        theta <- step(theta, (dh^{t-k}/dtheta |theta^{t-k})^T beta delta^{t-k}
                             + lambda d/dtheta CE(H(h^t), y^t) |theta^t),
        H <- step(H, lambda d/dH CE(H(h^t), y^t)),

    lambda = ``mix``.  The fresh local term steers the stage while its true gradient is
    on its way; the true term keeps it trained for the network's loss.  One more backward
    pass through the stage per batch (the local loss's)."""

    name = "local-delayed"
    receives_gradients = True
    kinds = ("head",)
    stats = ("head_loss",)
    backward_passes = 2

    mix: float = option(1.0, "weight lambda of the local classifier's gradient beside the late true one",
                        at_least(0.0))

    def attach(self, stage):
        super().attach(stage)
        self.local = {}  # the stash's local gradients since the last step, by parameter name

    def after_forward(self, stage, b, inp, out, labels):
        with stage.prof("head"):
            loss = F.cross_entropy(self.head(out[0]), labels)
            # the stage's weights and the head only (not the input: what goes upstream is the
            # true gradient); the graph stays for the late one
            torch.autograd.backward(self.mix * loss, inputs=[*self.stash.values(), *self.head.parameters()],
                                    retain_graph=True)
            for n, w in self.stash.items():
                if w.grad is not None:
                    self.local[n] = w.grad if n not in self.local else self.local[n] + w.grad
                    w.grad = None
        stage.stats.add(head_loss=loss.detach())
        yield from super().after_forward(stage, b, inp, out, labels)

    def collect(self, stash):
        super().collect(stash)
        for n, g in self.local.items():
            p = self.names[n]
            p.grad = g if p.grad is None else p.grad + g
        self.local = {}


def rule_class(name):
    """The registered rule called ``name`` (ValueError naming the valid ones)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown RULE {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def cli_options():
    """{option name: (its dataclass field, the names of the rules that have it)} over every
    registered rule: the options the scripts take on their command line."""
    found = {}
    for name, cls in REGISTRY.items():
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli", True):
                found.setdefault(f.name, (f, []))[1].append(name)
    return found


def make_rule(name, **options):
    """The rule ``name`` with those of ``options`` that it declares (the others belong to
    other rules and are ignored)."""
    cls = rule_class(name)
    own = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in own})
