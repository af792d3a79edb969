"""Multi-unit convolutional networks (Ruthotto & Haber 2020; Haber & Ruthotto 2017).

For an image of shape (c, H, W) and units of C_1, ..., C_U channels:

    opening    3x3 conv c -> C_1, no activation                    (B, C_1, H, W)
    unit 1     N_1 layers of the architecture at C_1 channels      (B, C_1, H, W)
    connective 3x3 conv C_1 -> C_2, sigma, 2x2 average pooling     (B, C_2, H/2, W/2)
    unit 2     N_2 layers at C_2 channels                          (B, C_2, H/2, W/2)
    ...
    unit U     N_U layers at C_U channels                          (B, C_U, H/2^(U-1), W/2^(U-1))
    head       flattened, linear -> classes                          (B, classes)

The N layers of the network are shared among the units as evenly as possible
(``split_layers``: 6 layers in 3 units are 2 + 2 + 2), each unit a ``StableNet`` built
with ``unit=True``: the architecture's own step, equation and extra state, unchanged.
The layers are numbered through the whole network, 0 ... N-1; the connective layer in
front of unit u belongs to unit u's first layer, so a cut at a unit's first layer is a
cut at the connective layer, and the state crossing it has the shape of the unit before.

The extra state of Verlet (Z) and leapfrog (Y_{j-1}) does not cross a connective layer:
each unit starts at rest from its input, Z = 0 and Y_{-1} = Y_0, as the first one does.
The connective layer is no time step: it changes the number of channels and the
resolution, so there is no velocity of the new state to carry over, and a linear image
of the old one through a nonlinear layer would be a guess.  Starting at rest keeps every
unit exactly the paper's network on its own input, so that its step map keeps
determinant 1 and each unit's stability can be measured on its own (``stage_inputs``).
"""
from __future__ import annotations

import copy

import torch.nn.functional as F
from torch import nn

from .base import ACTIVATIONS, LayeredNet, split_layers


class Connective(nn.Module):
    """Y (B, C_in, H, W) -> avg_pool_2x2(sigma(conv_3x3(Y))) of shape (B, C_out, H//2, W//2)."""

    def __init__(self, c_in, c_out, activation="tanh"):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.sigma = ACTIVATIONS[activation]

    def forward(self, Y):
        return F.avg_pool2d(self.sigma(self.conv(Y)), 2)


class MultiUnitNet(LayeredNet):
    """U units of one stable architecture joined by connective layers (see the module doc).

    Args:
        arch: the unit class (ResNet, AntisymmetricResNet, HamiltonianNet, LeapfrogNet).
        in_shape: one image, (c, H, W).
        num_classes: number of classes.
        n_layers: N, the layers of all the units together (at least one per unit).
        h: the step size of every unit.
        units: the channels C_1, ..., C_U of the units (U >= 1).
        activation: sigma of the units and the connective layers.
        **kwargs: passed to each unit (gamma of the antisymmetric network).
    """

    conv = True

    def __init__(self, arch, in_shape, num_classes, n_layers, h, *, units=(16, 32, 64), activation="tanh",
                 **kwargs):
        super().__init__()
        units = tuple(int(c) for c in units)
        if not units or min(units) < 1:
            raise ValueError(f"units must be one or more positive channel counts, got {units}")
        if len(in_shape) != 3:
            raise ValueError(f"a multi-unit network needs image input (C, H, W), got {tuple(in_shape)}")
        if n_layers < len(units):
            raise ValueError(f"{n_layers} layers cannot fill {len(units)} units (at least one layer each)")
        c_in, height, width = in_shape
        if min(height, width) >> (len(units) - 1) < 1:
            raise ValueError(f"{len(units)} units pool a {height}x{width} image {len(units) - 1} times: too many")
        self.in_shape, self.num_classes, self.n_layers = tuple(in_shape), num_classes, n_layers
        self.activation, self.channels = activation, units
        self.lift = nn.Conv2d(c_in, units[0], 3, padding=1)
        blocks = []
        for u, (ini, end) in enumerate(split_layers(n_layers, len(units))):
            shape = (units[u], height >> u, width >> u)
            blocks.append(arch(shape, num_classes, end - ini, h, conv=True, channels=units[u],
                               activation=activation, unit=True, **kwargs))
        self.units = nn.ModuleList(blocks)
        self.connectives = nn.ModuleList(Connective(a, b, activation) for a, b in zip(units, units[1:]))
        last = (units[-1], height >> (len(units) - 1), width >> (len(units) - 1))
        self.classifier = nn.Linear(last[0] * last[1] * last[2], num_classes)
        self._index()

    def _index(self):
        """unit and local layer of every global layer index."""
        self.where = [(u, j) for u, unit in enumerate(self.units) for j in range(unit.n_layers)]
        self.offsets = [0]
        for unit in self.units:
            self.offsets.append(self.offsets[-1] + unit.n_layers)

    @property
    def name(self):
        return self.units[0].name

    @property
    def h(self):
        return self.units[0].h

    # ---- the pieces of a forward pass -------------------------------------------------
    def lift_input(self, x):
        return self.lift(x)

    def init_state(self, Y0):
        return self.units[0].init_state(Y0)

    def step(self, j, state):
        u, k = self.where[j]
        unit = self.units[u]
        if k == 0 and u > 0:  # the connective layer in front of unit u; the unit starts at rest
            state = unit.init_state(self.connectives[u - 1](state[0]))
        return unit.step(k, state)

    def classify(self, state):
        """The last unit's Y, flattened, through the linear classifier."""
        return self.classifier(state[0].flatten(1))

    def state_shape_at(self, j):
        """The shape of one sample's Y entering layer j (j = N: leaving the last layer);
        at a unit's first layer, that of the unit before (the connective is inside the cut)."""
        if not 0 <= j <= self.n_layers:
            raise ValueError(f"layer {j} outside [0, {self.n_layers}]")
        return self.units[self.where[max(j - 1, 0)][0]].state_shape

    def stage_inputs(self, x):
        """[(unit, its input Y)] for a batch x: each unit is a StableNet whose ``lift_input``
        is the identity, so the stability measures of models.stability apply to each."""
        Y = self.lift_input(x)
        out = []
        for u, unit in enumerate(self.units):
            if u > 0:
                Y = self.connectives[u - 1](Y)
            out.append((unit, Y))
            Y = unit.integrate(unit.init_state(Y))[0]
        return out

    # ---- parameters by layer ----------------------------------------------------------
    def layer_of(self, name):
        """The global layer of a parameter name ("units.1.K.0" -> offset of unit 1;
        "connectives.0.conv.weight" -> the first layer of unit 1); None for lift/classifier."""
        parts = name.split(".")
        if parts[0] == "units":
            u, local = int(parts[1]), self.units[int(parts[1])].layer_of(".".join(parts[2:]))
            return None if local is None else self.offsets[u] + local
        if parts[0] == "connectives":
            return self.offsets[int(parts[1]) + 1]
        return None

    def layer_parameters(self, ini=0, end=None):
        end = self.n_layers if end is None else end
        params = []
        for j in range(ini, end):
            u, k = self.where[j]
            if k == 0 and u > 0:
                params += list(self.connectives[u - 1].parameters())
            params += [self.units[u].K[k], self.units[u].b[k]]
        return params

    def regularization(self, alpha_f=0.0, alpha_c=0.0):
        """The units' smoothness regularisers (within each unit) plus alpha_c |W|^2."""
        reg = sum(unit.regularization(alpha_f) for unit in self.units)
        return reg + alpha_c * (self.classifier.weight ** 2).sum() if alpha_c else reg

    # ---- multilevel -------------------------------------------------------------------
    def prolong(self, method="interpolate", h=None, breaks=()):
        """Every unit prolonged (twice its layers, step h/2): global layer j becomes 2j, so
        the cuts in ``breaks`` (global indices) stay cuts; the connective layers carry over."""
        fine = copy.deepcopy(self)
        fine.units = nn.ModuleList(
            unit.prolong(method, h=h, breaks=[b - a for b in breaks if a < b < a + unit.n_layers])
            for unit, a in zip(self.units, self.offsets))
        fine.n_layers = 2 * self.n_layers
        fine._index()
        return fine

    def table(self):
        """The network, one line per piece: what it is, its output shape, its layers."""
        c_in, height, width = self.in_shape
        rows = [("input", (c_in, height, width), "")]
        rows.append(("opening 3x3 conv", self.units[0].state_shape, ""))
        for u, unit in enumerate(self.units):
            if u > 0:
                rows.append(("connective conv + pool", unit.state_shape, ""))
            a = self.offsets[u]
            rows.append((f"unit {u + 1}: {unit.name}", unit.state_shape, f"{a}-{a + unit.n_layers - 1}"))
        rows.append(("flattened, linear", (self.num_classes,), ""))
        return "\n".join(f"  {what:<24} {'x'.join(map(str, shape)):>10}  {layers}" for what, shape, layers in rows)

    def extra_repr(self):
        sizes = ", ".join(f"{c}x{'x'.join(map(str, u.state_shape[1:]))}:{u.n_layers}"
                          for c, u in zip(self.channels, self.units))
        return f"{self.name}, units (channels x pixels : layers) {sizes}, h={self.h}, sigma={self.activation}"
