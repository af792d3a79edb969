"""A complex network: M sub-networks of a stable architecture joined by M-1 modules."""
from __future__ import annotations

import copy

import torch
from torch import nn

from models.base import split_layers

from .modules import SyntheticGradient


class ComplexNet(nn.Module):
    """M consecutive layer ranges of one network, with a synthetic-gradient module at each cut.

    Sub-network i runs layers [a_i, b_i) of ``net`` (a StableNet or a MultiUnitNet, cut
    anywhere, a connective layer included); the first also lifts the input and the last
    classifies, so sub-network i maps a state tuple (Y, plus Z for Verlet or Y_{j-1} for
    leapfrog) to the next.  ``modules[i]`` predicts the gradient at the cut after
    sub-network i and is sized for the state there (``cut_shape(i)``).  The whole network
    is ``net`` itself: forward(x) = net(x).
    """

    def __init__(self, net, num_stages, *, sg_kind="linear", modules=None, bounds=None):
        super().__init__()
        if num_stages < 2:
            raise ValueError(f"a complex network needs M >= 2 sub-networks, got {num_stages}")
        self.net = net
        self.num_stages = num_stages
        self.sg_kind = sg_kind if modules is None else getattr(modules[0], "kind", sg_kind)
        self.bounds = split_layers(net.n_layers, num_stages) if bounds is None else [tuple(b) for b in bounds]
        edges = [a for a, _ in self.bounds] + [self.bounds[-1][1]]
        ok = len(self.bounds) == num_stages and edges[0] == 0 and edges[-1] == net.n_layers and all(
            a < b for a, b in zip(edges, edges[1:])) and all(p[1] == q[0] for p, q in zip(self.bounds, self.bounds[1:]))
        if not ok:
            raise ValueError(f"bounds {bounds}: not {num_stages} consecutive ranges covering {net.n_layers} layers")
        n_state = len(net.init_state(net.lift_input(_probe(net))))
        self.sg = modules if modules is not None else nn.ModuleList(
            SyntheticGradient(self.cut_shape(i), n_state, net.num_classes, conv=net.conv, kind=sg_kind)
            for i in range(num_stages - 1)).to(net.classifier.weight)  # the network's device and dtype

    def cut_shape(self, i):
        """The shape of one sample's Y at the cut after sub-network i."""
        return self.net.state_shape_at(self.bounds[i][1])

    def input_shape(self, i):
        """The shape of one sample's Y entering sub-network i >= 1."""
        return self.cut_shape(i - 1)

    def stage_forward(self, i, inp):
        """Sub-network i: input batch (i = 0) or state tuple -> state tuple, or logits (last)."""
        a, b = self.bounds[i]
        state = self.net.initial_state(inp) if i == 0 else inp
        state = self.net.integrate(state, a, b)
        return self.net.classify(state) if i == self.num_stages - 1 else state

    def stage_parameters(self, i):
        return self.net.range_parameters(*self.bounds[i])

    def forward(self, x):
        return self.net(x)

    def prolong(self, method="interpolate", h=None):
        """Prolong every sub-network (twice its layers, step h/2); the modules carry over."""
        fine = self.net.prolong(method, h=h, breaks=[b for _, b in self.bounds[:-1]])
        return ComplexNet(fine, self.num_stages, modules=copy.deepcopy(self.sg),
                          bounds=[(2 * a, 2 * b) for a, b in self.bounds])

    def with_bounds(self, bounds):
        """The same network cut at other places, with fresh modules (where a cut stays, the
        module stays)."""
        bounds = [tuple(b) for b in bounds]
        other = ComplexNet(self.net, self.num_stages, sg_kind=self.sg_kind, bounds=bounds)
        for k, (_, b) in enumerate(bounds[:-1]):
            if b == self.bounds[k][1]:
                other.sg[k] = self.sg[k]
        return other



def layers_per_stage(bounds):
    """The number of layers of each stage of a split [(a_0, b_0), (a_1, b_1), ...]."""
    return [b - a for a, b in bounds]


def input_grads(inputs):
    """The gradients at a sub-network's inputs; zeros for an input the sub-network does not
    use (the Z or Y_{j-1} of a unit that a connective layer restarts at rest)."""
    return tuple(t.grad if t.grad is not None else torch.zeros_like(t) for t in inputs)


def _probe(net):
    w = net.classifier.weight
    return torch.zeros(1, *net.in_shape, device=w.device, dtype=w.dtype)
