"""Cost-balanced pipeline stages: where to cut a network so that every stage takes as long.

A pipeline runs at the pace of its slowest stage.  Stage i's work per batch is its
layers' forward and backward passes, plus the opening layer on stage 0, the classifier
and the loss on the last stage, and, on every stage but the last, what its rule adds:
its work at the cut (``Rule.cut_work``: a synthetic-gradient module, a local
classifier), further passes of its layers (``Rule.forward_passes``,
``Rule.backward_passes``) and its own work per layer (``Rule.layer_work``: copying the
weights into a stash); each piece with its optimiser step.
``measure_costs`` times these pieces on the device, ``balanced_bounds`` places the cuts.
"""
from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from datasets import files
from models.base import split_layers
from models.devices import sync
from models.training import make_optimizer

from .complex import layers_per_stage
from .rules import make_rule

BALANCE_MODES = ("cost", "even")


@dataclass
class Costs:
    """Seconds per batch of each piece of a network (see the module doc)."""

    layers: list  # layer j's forward + backward
    first: float = 0.0  # the opening layer (lift) on stage 0
    last: float = 0.0  # classifier and loss on the last stage
    cuts: dict = field(default_factory=dict)  # cut position b -> the rule's work at a cut after layer b - 1
    layer_extra: list = field(default_factory=list)  # layer j's further work: passes (Rule.forward_passes,
    #                                                  backward_passes) and Rule.layer_work (a stash)

    def stage(self, i, a, b, parts):
        """Stage i of ``parts`` running layers [a, b)."""
        cost = sum(self.layers[a:b]) + self.extra(i, a, b, parts)
        if i == 0:
            cost += self.first
        if i == parts - 1:
            cost += self.last
        return cost

    def extra(self, i, a, b, parts):
        """What the rule adds to stage i of ``parts`` running layers [a, b): its work at the
        stage's cut and its layers' further work; nothing on the last stage (no cut, no rule)."""
        return 0.0 if i == parts - 1 else self.cuts.get(b, 0.0) + sum(self.layer_extra[a:b])

    def stages(self, bounds):
        return [self.stage(i, a, b, len(bounds)) for i, (a, b) in enumerate(bounds)]

    @staticmethod
    def slowest(measured):
        """The costs of pieces measured on several devices, each piece at its slowest
        (a pipeline runs at its slowest stage, whichever device holds it)."""
        first = measured[0]
        return Costs([max(c.layers[j] for c in measured) for j in range(len(first.layers))],
                     max(c.first for c in measured), max(c.last for c in measured),
                     {b: max(c.cuts[b] for c in measured) for b in first.cuts},
                     [max(c.layer_extra[j] for c in measured) for j in range(len(first.layer_extra))])


def balanced_bounds(costs: Costs, parts, multiple=1):
    """``parts`` consecutive layer ranges minimising the largest stage cost (dynamic
    programming over the cut positions, exact).  Every cut is a multiple of ``multiple``
    (2: the cuts of a prolonged network that fall between coarse layers).  Among equally
    good splits, the one with the most even numbers of layers is taken."""
    n = len(costs.layers)
    cuts = [b for b in range(1, n) if b % multiple == 0]
    if not 1 <= parts <= len(cuts) + 1:
        raise ValueError(f"cannot cut {n} layers into {parts} stages at multiples of {multiple}")
    ends = [*cuts, n]
    # best[(k, b)]: (largest cost, sum of squared layer counts, bounds) of k stages covering [0, b)
    best = {(1, b): (costs.stage(0, 0, b, parts), b * b, [(0, b)]) for b in ends}
    for k in range(2, parts + 1):
        for b in ends:
            options = []
            for a in cuts:
                if a < b and (k - 1, a) in best:
                    worst, squares, bounds = best[(k - 1, a)]
                    options.append((max(worst, costs.stage(k - 1, a, b, parts)), squares + (b - a) ** 2,
                                    bounds + [(a, b)]))
            if options:
                best[(k, b)] = min(options, key=lambda o: (round(o[0], 12), o[1]))
    return best[(parts, n)][2]


def _timed(pieces, repeats, device):
    """Median seconds of each piece's call over ``repeats`` rounds, after two unmeasured
    ones.  The pieces take turns within every round, so that a drift of the machine's
    speed (warm-up, clock changes, a neighbour) falls on all of them alike and does not
    make the layers timed first look dearer than the identical layers timed last.  A
    piece given as a tuple of calls (a layer's forward pass, its backward pass, its step)
    runs them in turn and gets a tuple of their medians."""
    runs = [p if isinstance(p, tuple) else (p,) for p in pieces]
    for _ in range(2):
        for calls in runs:
            for fn in calls:
                fn()
    times = [[[] for _ in calls] for calls in runs]
    for _ in range(repeats):
        for calls, own in zip(runs, times):
            for fn, t in zip(calls, own):
                t0 = time.perf_counter()
                fn()
                sync(device)
                t.append(time.perf_counter() - t0)
    medians = [tuple(statistics.median(t) for t in own) for own in times]
    return [m if isinstance(p, tuple) else m[0] for p, m in zip(pieces, medians)]


@dataclass
class LayerTimes:
    """Seconds of each piece of a network at one batch size."""

    forward: list  # layer j's forward pass
    backward: list  # layer j's backward pass
    step: list  # Adam's step over layer j's parameters
    first: tuple = (0.0, 0.0, 0.0)  # the opening layer: forward, backward, step
    last: tuple = (0.0, 0.0, 0.0)  # classifier and loss

    @classmethod
    def of(cls, medians):
        """From ``_timed``'s medians of ``piece_calls``: n layers, the opening layer, the classifier."""
        n = len(medians) - 2
        return cls(*([m[k] for m in medians[:n]] for k in range(3)), medians[n], medians[n + 1])

    def whole(self, j):
        """Piece j's forward + backward + step (n: the opening layer, n + 1: the classifier)."""
        n = len(self.forward)
        return sum(self.first if j == n else self.last if j == n + 1 else
                   (self.forward[j], self.backward[j], self.step[j]))

    def scaled(self, totals):
        """Every kind (forward, backward, step) scaled so that its pieces sum to ``totals``'
        (a whole network's step, ``time_step``): each piece keeps its share."""
        n = len(self.forward)
        kinds = [[*own, self.first[k], self.last[k]] for k, own in enumerate((self.forward, self.backward, self.step))]
        kinds = [[t * total / sum(ts) if sum(ts) else t for t in ts] for ts, total in zip(kinds, totals)]
        return LayerTimes(kinds[0][:n], kinds[1][:n], kinds[2][:n], tuple(k[n] for k in kinds),
                          tuple(k[n + 1] for k in kinds))


def forward_states(net, x):
    """The states of ``net`` on batch x, without a graph: [entering layer 0, after layer 0,
    ..., after the last layer] (the state at cut b is entry b)."""
    with torch.no_grad():
        states = [net.initial_state(x)]
        for j in range(net.n_layers):
            states.append(net.step(j, states[-1]))
    return states


def lift_parameters(net):
    """The opening layer's parameters (none for a dense network's padding)."""
    return list(net.lift.parameters()) if net.lift is not None else []


def piece_calls(net, x, y, states=None):
    """Each piece of ``net`` on batch (x, y) as its (forward pass, backward pass, Adam's
    step) calls, for ``_timed``: layers 0 .. n - 1, the opening layer, the classifier with
    the loss (``states``: ``forward_states(net, x)``, when the caller has them).  ``net``
    itself runs (its parameters step at a negligible rate): give a copy."""
    n = net.n_layers
    states = forward_states(net, x) if states is None else states
    groups = [net.layer_parameters(j, j + 1) for j in range(n)] + [lift_parameters(net),
                                                                    list(net.classifier.parameters())]

    def calls(j):
        opt = make_optimizer("adam", groups[j], 1e-9) if groups[j] else None
        held = []

        def forward():
            if j == n:  # a dense lift is a padding: nothing to backpropagate
                held.append([t for t in net.initial_state(x) if t.requires_grad])
                return
            inp = tuple(t.detach().requires_grad_() for t in states[-1 if j > n else j])
            held.append([F.cross_entropy(net.classify(inp), y)] if j > n else list(net.step(j, inp)))

        def backward():
            out = held.pop()
            if out:
                torch.autograd.backward(out, [torch.ones_like(t) for t in out])

        def step():
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
        return forward, backward, step
    return [calls(j) for j in range(n + 2)]


def time_pieces(net, x, y, repeats=5):
    """LayerTimes of ``net``'s pieces (``piece_calls``) on (x, y): medians over ``repeats``
    rounds (``_timed``).  ``net`` itself runs: give a copy."""
    return LayerTimes.of(_timed(piece_calls(net, x, y), repeats, x.device))


def measure_costs(net, x, y, *, rule, sg_kind="linear", cuts=None, repeats=5):
    """Time every piece of ``net`` on one batch (x, y) where it lies (its device, this
    process's threads), each with its optimiser step (Adam): each layer's forward and
    backward pass, the opening layer, the classifier and loss (``piece_calls``), and what
    ``rule`` (a Rule or a registered name) adds: its work at each cut position in ``cuts``
    (default all; ``Rule.cut_work``, with a module of ``sg_kind``; pieces of one state
    shape are timed once), and each layer's further work (``Costs.layer_extra``): its
    further passes (``Rule.forward_passes``; a further backward pass,
    ``Rule.backward_passes``, is timed as the layer's forward and backward pass) and
    ``Rule.layer_work`` (a stash).  All in the same rounds (``_timed``).  A copy of
    ``net``, on the batch's device, is timed; ``net`` is left as it was."""
    rule = make_rule(rule) if isinstance(rule, str) else rule
    net = copy.deepcopy(net).to(x.device).train()
    cuts = list(range(1, net.n_layers) if cuts is None else cuts)
    states = forward_states(net, x)
    n = net.n_layers
    pieces = piece_calls(net, x, y, states)

    def stepped(work, params):
        opt = make_optimizer("adam", params, 1e-6) if params else None

        def run():
            work()
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
        return run

    def passes(j):
        forward, backward, _ = pieces[j]
        forward()
        backward()

    def forward_again(j):
        net.step(j, tuple(t.detach() for t in states[j]))

    forwards, backwards = rule.forward_passes - 1, rule.backward_passes - 1
    own = [rule.layer_work(net.layer_parameters(j, j + 1)) for j in range(n)]
    extra = forwards or backwards or any(w is not None for w in own)
    if extra:
        pieces += [stepped(lambda j=j: ([forward_again(j) for _ in range(forwards)],
                                        [passes(j) for _ in range(backwards)],
                                        own[j] is not None and own[j]()), []) for j in range(n)]
    shapes = {}  # state shape at a cut -> its piece's index (pieces of one shape are timed once)
    for b in cuts:
        shape = net.state_shape_at(b)
        if shape not in shapes:
            work = rule.cut_work(net, tuple(t.detach() for t in states[b]), y, sg_kind)
            shapes[shape] = len(pieces) if work is not None else None
            if work is not None:
                pieces.append(stepped(*work))
    t = _timed(pieces, repeats, x.device)
    layers = LayerTimes.of(t[:n + 2])
    at_cut = {b: shapes[net.state_shape_at(b)] for b in cuts}
    return Costs([layers.whole(j) for j in range(n)], layers.whole(n), layers.whole(n + 1),
                 {b: t[k] for b, k in at_cut.items() if k is not None}, t[n + 2:2 * n + 2] if extra else [])


def choose_bounds(net, x, y, parts, *, rule, mode="cost", sg_kind="linear", threads=1, multiple=1,
                  repeats=5):
    """The stages' layer ranges: ``even`` (N / parts layers each) or
    ``cost`` (balanced on the pieces' times under ``rule``, measured on one batch (x, y)
    with ``threads`` intra-op threads, as each stage process will run).  Returns (bounds,
    Costs or None)."""
    if mode not in BALANCE_MODES:
        raise ValueError(f"unknown BALANCE {mode!r}; valid: {', '.join(BALANCE_MODES)}")
    if mode == "even":
        return split_layers(net.n_layers, parts), None
    costs = costs_with_threads(net, x, y, threads, rule=rule, sg_kind=sg_kind, repeats=repeats)
    return balanced_bounds(costs, parts, multiple), costs


def costs_with_threads(net, x, y, threads, **kw):
    """``measure_costs`` with ``threads`` intra-op threads (as a stage process will run),
    this process's own restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return measure_costs(net, x, y, **kw)
    finally:
        torch.set_num_threads(before)


def new_split(mode, n_layers, parts, measure=None, multiple=1):
    """A fresh run's split, as ``describe_split`` tells it: ``even``, or ``cost``: balanced
    on ``measure()``, the Costs of the network's pieces measured where the ranks run
    (every cut a multiple of ``multiple``)."""
    costs = measure() if mode == "cost" else None
    bounds = balanced_bounds(costs, parts, multiple) if costs is not None else split_layers(n_layers, parts)
    return describe_split(mode, bounds, costs, n_layers)


def describe_split(mode, bounds, costs=None, n_layers=None):
    """What split.json and the log say of a split: its mode, cuts, layers per stage and,
    for cost balancing, the measured milliseconds of each stage against the even split's."""
    split = {"balance": mode, "bounds": [list(b) for b in bounds], "layers_per_stage": layers_per_stage(bounds)}
    if costs is not None:
        split["stage_ms"] = [1e3 * c for c in costs.stages(bounds)]
        split["even_stage_ms"] = [1e3 * c for c in costs.stages(split_layers(n_layers, len(bounds)))]
    return split


def split_line(split):
    """The split in one line of the log."""
    line = f"split ({split['balance']}): layers per stage {split['layers_per_stage']}"
    if "stage_ms" in split:
        line += (" ; measured ms per batch " + ", ".join(f"{c:.1f}" for c in split["stage_ms"])
                 + " (even split: " + ", ".join(f"{c:.1f}" for c in split["even_stage_ms"]) + ")")
    return line


SPLIT_FILE = "split.json"


def saved_split(run_dir):
    """The split a run chose (its split.json), None when it has none yet."""
    path = Path(run_dir) / SPLIT_FILE if run_dir is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def save_split(run_dir, split):
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    files.write_json(Path(run_dir) / SPLIT_FILE, split)
