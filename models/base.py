"""Shared machinery of the stable architectures of Haber & Ruthotto (2017).

Every network is: lift the input to the feature state Y_0, integrate N layers of a
time-stepping scheme with step h, classify the flattened final state with a linear
layer (logits).  The integrator owns h; a subclass states one update step.
"""
from __future__ import annotations

import copy
import math
import re

import torch
import torch.nn.functional as F
from torch import nn


def identity(x):
    """The linear activation sigma(x) = x: the networks become linear (for analysis)."""
    return x


ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "identity": identity}
PROLONG_METHODS = ("interpolate", "copy")
_LAYER_PARAM = re.compile(r"^(K|b)\.(\d+)$")


def split_layers(n_layers, parts):
    """``parts`` consecutive layer ranges [(ini, end), ...] of N layers, as equal as possible."""
    if not 1 <= parts <= n_layers:
        raise ValueError(f"cannot split {n_layers} layers into {parts} parts (need 1 <= parts <= layers)")
    q, r = divmod(n_layers, parts)
    bounds, ini = [], 0
    for p in range(parts):
        end = ini + q + (p < r)
        bounds.append((ini, end))
        ini = end
    return bounds


class LayerOps:
    """The linear operators K_j Y and K_j^T Y, dense or 3x3 convolutional.

    Dense: Y has shape (B, W), K_j has shape (W, W); K Y is computed row-wise as Y K^T.
    Conv:  Y has shape (B, C, H, W), K_j has shape (C, C, 3, 3); K Y is the convolution
    with zero padding 1, K^T Y the transposed convolution with the same weights (its
    adjoint), so K - K^T and -K^T K are built from the two operators.
    """

    def __init__(self, conv: bool):
        self.conv = conv

    def apply(self, K, Y):
        return F.conv2d(Y, K, padding=1) if self.conv else F.linear(Y, K)

    def apply_t(self, K, Y):
        return F.conv_transpose2d(Y, K, padding=1) if self.conv else F.linear(Y, K.t())

    def bias(self, b):
        """Reshape a bias so that it broadcasts against the state."""
        return b.view(1, -1, 1, 1) if self.conv else b

    def skew(self, K):
        """1/2 (K - K^T) as one dense matrix or one 3x3 kernel (conv: K^T is flip(K^T))."""
        if self.conv:
            return 0.5 * (K - K.transpose(0, 1).flip(2, 3))
        return 0.5 * (K - K.t())

    def antisymmetric(self, K, gamma):
        """The operator 1/2 (K - K^T - gamma I) as one dense matrix or one 3x3 kernel."""
        A = self.skew(K)
        eye = torch.zeros_like(A)
        idx = torch.arange(K.shape[0], device=K.device)
        if self.conv:
            eye[idx, idx, 1, 1] = 1.0
        else:
            eye[idx, idx] = 1.0
        return A - 0.5 * gamma * eye


class LayeredNet(nn.Module):
    """The loop every network shares: a state tuple passed through layers 0, ..., N-1.

    A subclass sets ``n_layers`` and states ``lift_input``, ``init_state``, ``step`` and
    ``classify``; ``integrate`` runs any sub-range [ini, end) of the layers, so that the
    trainers can cut the network anywhere and carry the state tuple across the cut.
    """

    n_layers: int

    def lift_input(self, x):
        raise NotImplementedError

    def init_state(self, Y0):
        """The integrator state at layer 0; first-order schemes carry Y alone."""
        return (Y0,)

    def initial_state(self, x):
        return self.init_state(self.lift_input(x))

    def step(self, j, state):
        """One layer: the state at layer j -> the state at layer j + 1."""
        raise NotImplementedError

    def integrate(self, state, ini=0, end=None):
        """Run layers ini, ..., end - 1 on a state tuple and return the new state."""
        end = self.n_layers if end is None else end
        if not 0 <= ini <= end <= self.n_layers:
            raise ValueError(f"layer range [{ini}, {end}) outside [0, {self.n_layers}]")
        for j in range(ini, end):
            state = self.step(j, state)
        return state

    def classify(self, state):
        raise NotImplementedError

    def range_parameters(self, ini, end):
        """The parameters of layers [ini, end) as a piece of a cut network: with the opening
        layer (lift) when the piece starts the network, with the classifier when it ends it."""
        params = self.layer_parameters(ini, end)
        if ini == 0 and self.lift is not None:
            params = list(self.lift.parameters()) + params
        if end == self.n_layers:
            params = params + list(self.classifier.parameters())
        return params

    def forward(self, x):
        return self.classify(self.integrate(self.initial_state(x)))


class StableNet(LayeredNet):
    """Base class: lift, N layers of ``step``, linear classifier.

    Args:
        in_shape: shape of one input sample, (features,) or (channels, height, width).
        num_classes: number of classes (logits produced).
        n_layers: N, the number of layers (time steps).
        h: the step size.
        conv: 3x3 convolutional layers instead of dense ones (needs an image input).
        width: dense only. The state width W; the input is flattened and zero-padded
            from its d features to W (an augmented state, d <= W). Default d.
        channels: conv only. The number C of channels of the state; the image is lifted
            to C channels by a learned 3x3 convolution (the opening layer, no activation).
        activation: "tanh" (default), "relu" or "identity" (a linear network, for analysis).
        unit: a unit of a multi-unit network (models.units): no opening layer and no
            classifier; the input is already the state, of shape ``in_shape``.

    The state passed between layers is a tuple of tensors whose first entry is Y;
    Verlet and leapfrog carry a second one (Z, or Y_{j-1}), so that ``integrate`` can
    run any sub-range [ini, end) of the layers and carry everything across the cut.
    """

    name = "base"

    def __init__(self, in_shape, num_classes, n_layers, h, *, conv=False, width=None,
                 channels=8, activation="tanh", unit=False):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if not h > 0:
            raise ValueError(f"the step size h must be > 0, got {h}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        self.in_shape = tuple(in_shape)
        self.num_classes = num_classes
        self.n_layers = n_layers
        self.h = float(h)
        self.conv = conv
        self.activation = activation
        self.sigma = ACTIVATIONS[activation]
        self.ops = LayerOps(conv)
        if conv:
            if len(self.in_shape) != 3:
                raise ValueError(f"a convolutional network needs image input (C, H, W), got {self.in_shape}")
            c_in, height, wid = self.in_shape
            self.channels = channels
            self.lift = None if unit else nn.Conv2d(c_in, channels, 3, padding=1)
            self.state_shape = (channels, height, wid)
            k_shape, b_shape, fan_in = (channels, channels, 3, 3), (channels,), 9 * channels
        else:
            features = math.prod(self.in_shape)
            self.width = features if width is None else int(width)
            if self.width < features:
                raise ValueError(f"width {self.width} is smaller than the {features} input features")
            self.lift = None
            self.state_shape = (self.width,)
            k_shape, b_shape, fan_in = (self.width, self.width), (self.width,), self.width
        self.K = nn.ParameterList(
            [nn.Parameter(torch.randn(k_shape) / math.sqrt(fan_in)) for _ in range(n_layers)])
        self.b = nn.ParameterList([nn.Parameter(torch.zeros(b_shape)) for _ in range(n_layers)])
        self.classifier = None if unit else nn.Linear(math.prod(self.state_shape), num_classes)

    # ---- the pieces of a forward pass -------------------------------------------------
    def lift_input(self, x):
        """Input batch -> Y_0 (dense: flattened and zero-padded; conv: opening layer,
        none in a unit of a multi-unit network)."""
        if self.conv:
            return x if self.lift is None else self.lift(x)
        Y = x.flatten(1)
        pad = self.width - Y.shape[1]
        return F.pad(Y, (0, pad)) if pad else Y

    def state_shape_at(self, j):
        """The shape of one sample's Y entering layer j (j = N: leaving the last layer)."""
        return self.state_shape

    def classify(self, state):
        return self.classifier(state[0].flatten(1))

    def features(self, Y0):
        """Y_0, ..., Y_N reached from the lifted state Y0, stacked as (N + 1, B, *state_shape)."""
        state = self.init_state(Y0)
        out = [state[0]]
        for j in range(self.n_layers):
            state = self.step(j, state)
            out.append(state[0])
        return torch.stack(out)

    def trajectory(self, x):
        """Y_0, ..., Y_N for a (small) batch of inputs, stacked as (N + 1, B, *state_shape)."""
        return self.features(self.lift_input(x))

    # ---- parameters by layer ----------------------------------------------------------
    @staticmethod
    def layer_of(name):
        """The layer index of a parameter name ("K.3" -> 3), None for lift/classifier."""
        m = _LAYER_PARAM.match(name)
        return int(m.group(2)) if m else None

    def layer_parameters(self, ini=0, end=None):
        end = self.n_layers if end is None else end
        return [p for j in range(ini, end) for p in (self.K[j], self.b[j])]

    # ---- regularisers of the paper ----------------------------------------------------
    def regularization(self, alpha_f=0.0, alpha_c=0.0):
        """alpha_f/(2h) sum_j (|K_{j+1}-K_j|^2 + |b_{j+1}-b_j|^2) + alpha_c |W|^2."""
        reg = self.K[0].new_zeros(())
        if alpha_f:
            smooth = sum(((self.K[j + 1] - self.K[j]) ** 2).sum() + ((self.b[j + 1] - self.b[j]) ** 2).sum()
                         for j in range(self.n_layers - 1))
            reg = reg + alpha_f / (2 * self.h) * smooth
        if alpha_c and self.classifier is not None:
            reg = reg + alpha_c * (self.classifier.weight ** 2).sum()
        return reg

    # ---- multilevel -------------------------------------------------------------------
    def prolong(self, method="interpolate", h=None, breaks=()):
        """A 2N-layer network with step h/2 computing nearly the same function.

        Fine layer 2j takes coarse layer j's weights; fine layer 2j+1 takes the mean of
        coarse layers j and j+1 ("interpolate", linear in the layer index as in Meganet;
        the last layer and any layer just before an index in ``breaks`` is copied) or a
        copy of coarse layer j ("copy", Chang et al. 2018). ``h`` overrides the new step.
        """
        if method not in PROLONG_METHODS:
            raise ValueError(f"unknown prolongation {method!r}; valid: {', '.join(PROLONG_METHODS)}")
        fine = copy.deepcopy(self)
        fine.n_layers = 2 * self.n_layers
        fine.h = self.h / 2 if h is None else float(h)
        stops = {self.n_layers} | set(breaks)
        newK, newb = [], []
        for j in range(self.n_layers):
            nxt = j + 1
            mid = method == "interpolate" and nxt not in stops
            for coarse, dest in ((self.K, newK), (self.b, newb)):
                w = coarse[j].detach()
                dest.append(nn.Parameter(w.clone()))
                dest.append(nn.Parameter(0.5 * (w + coarse[nxt].detach()) if mid else w.clone()))
        fine.K = nn.ParameterList(newK)
        fine.b = nn.ParameterList(newb)
        return fine

    def extra_repr(self):
        kind = "conv" if self.conv else "dense"
        return f"{kind}, N={self.n_layers}, h={self.h}, state={self.state_shape}, sigma={self.activation}"
