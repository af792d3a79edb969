"""A complex network: M sub-networks of a stable architecture joined by M-1 modules."""
from __future__ import annotations

import copy

from torch import nn

from models.base import split_layers

from .modules import SyntheticGradient


class ComplexNet(nn.Module):
    """M consecutive layer ranges of one StableNet, with a synthetic-gradient module at each cut.

    Sub-network i runs layers [a_i, b_i) of ``net``; the first also lifts the input and
    the last classifies, so sub-network i maps a state tuple (Y, plus Z for Verlet or
    Y_{j-1} for leapfrog) to the next.  ``modules[i]`` predicts the gradient at the cut
    after sub-network i.  The whole network is ``net`` itself: forward(x) = net(x).
    """

    def __init__(self, net, num_stages, *, sg_kind="linear", modules=None):
        super().__init__()
        if num_stages < 2:
            raise ValueError(f"a complex network needs M >= 2 sub-networks, got {num_stages}")
        self.net = net
        self.num_stages = num_stages
        self.bounds = split_layers(net.n_layers, num_stages)
        n_state = len(net.init_state(net.lift_input(_probe(net))))
        self.sg = modules if modules is not None else nn.ModuleList(
            SyntheticGradient(net.state_shape, n_state, net.num_classes, conv=net.conv, kind=sg_kind)
            for _ in range(num_stages - 1))

    def stage_forward(self, i, inp):
        """Sub-network i: input batch (i = 0) or state tuple -> state tuple, or logits (last)."""
        a, b = self.bounds[i]
        state = self.net.initial_state(inp) if i == 0 else inp
        state = self.net.integrate(state, a, b)
        return self.net.classify(state) if i == self.num_stages - 1 else state

    def stage_parameters(self, i):
        a, b = self.bounds[i]
        params = self.net.layer_parameters(a, b)
        if i == 0 and self.net.lift is not None:
            params = list(self.net.lift.parameters()) + params
        if i == self.num_stages - 1:
            params = params + list(self.net.classifier.parameters())
        return params

    def forward(self, x):
        return self.net(x)

    def prolong(self, method="interpolate", h=None):
        """Prolong every sub-network (2N layers each, step h/2); the modules carry over."""
        fine = self.net.prolong(method, h=h, breaks=[b for _, b in self.bounds[:-1]])
        return ComplexNet(fine, self.num_stages, modules=copy.deepcopy(self.sg))


def _probe(net):
    import torch

    return torch.zeros(1, *net.in_shape, device=net.classifier.weight.device)
