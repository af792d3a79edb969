"""The four stable architectures; each states its update step and nothing else.

Shapes: Y and Z are (B, W) dense or (B, C, H, W) conv; K_j is (W, W) or (C, C, 3, 3);
b_j is (W,) or (C,) (one bias per channel).  sigma is tanh unless chosen otherwise.
"""
from __future__ import annotations

import torch

from .base import StableNet


class ResNet(StableNet):
    """Residual network, the forward Euler discretisation of Y' = sigma(K(t) Y + b(t)).

        Y_{j+1} = Y_j + h sigma(K_j Y_j + b_j)

    Stable when the eigenvalues of the Jacobian lie in the left half plane and
    |1 + h lambda| <= 1: nothing in the parameterisation enforces it.
    """

    name = "resnet"

    def step(self, j, state):
        (Y,) = state
        ops = self.ops
        return (Y + self.h * self.sigma(ops.apply(self.K[j], Y) + ops.bias(self.b[j])),)


class AntisymmetricResNet(StableNet):
    """Antisymmetric ResNet: forward Euler with an antisymmetric operator.

        Y_{j+1} = Y_j + h sigma( 1/2 (K_j - K_j^T - gamma I) Y_j + b_j )

    The eigenvalues of 1/2 (K - K^T - gamma I) have real part -gamma/2 <= 0: the
    continuous dynamics neither explode nor vanish (gamma >= 0 adds a little diffusion
    so that forward Euler stays stable for small h).  Conv: K^T is the transposed
    convolution, so the operator is the single 3x3 kernel 1/2 (K - flip(K^T)) - gamma/2 I.
    """

    name = "antisymmetric"

    def __init__(self, *args, gamma=0.01, **kwargs):
        super().__init__(*args, **kwargs)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def operator(self, j):
        """The matrix (dense) or kernel (conv) of 1/2 (K_j - K_j^T - gamma I)."""
        return self.ops.antisymmetric(self.K[j], self.gamma)

    def step(self, j, state):
        (Y,) = state
        ops = self.ops
        AY = ops.apply(ops.skew(self.K[j]), Y) - 0.5 * self.gamma * Y
        return (Y + self.h * self.sigma(AY + ops.bias(self.b[j])),)

    def extra_repr(self):
        return super().extra_repr() + f", gamma={self.gamma}"


class HamiltonianNet(StableNet):
    """Hamiltonian network, Verlet discretisation of Y' = sigma(K Z + b), Z' = -sigma(K^T Y + b).

        Z_{j+1/2} = Z_{j-1/2} - h sigma(K_j^T Y_j + b_j)
        Y_{j+1}   = Y_j       + h sigma(K_j Z_{j+1/2} + b_j),      Z_{-1/2} = 0

    The state is (Y, Z), both shaped like Y.  The scheme is symplectic and exactly
    reversible (see ``reverse``): the forward propagation is stable for any K.
    """

    name = "verlet"

    def init_state(self, Y0):
        return (Y0, torch.zeros_like(Y0))

    def step(self, j, state):
        Y, Z = state
        ops, K, b = self.ops, self.K[j], self.ops.bias(self.b[j])
        Z = Z - self.h * self.sigma(ops.apply_t(K, Y) + b)
        Y = Y + self.h * self.sigma(ops.apply(K, Z) + b)
        return (Y, Z)

    def reverse(self, state, ini=0, end=None):
        """Undo layers end-1, ..., ini: (Y_end, Z_{end-1/2}) -> (Y_ini, Z_{ini-1/2})."""
        end = self.n_layers if end is None else end
        Y, Z = state
        ops = self.ops
        for j in reversed(range(ini, end)):
            K, b = self.K[j], ops.bias(self.b[j])
            Y = Y - self.h * self.sigma(ops.apply(K, Z) + b)
            Z = Z + self.h * self.sigma(ops.apply_t(K, Y) + b)
        return (Y, Z)


class LeapfrogNet(StableNet):
    """Second-order network, leapfrog discretisation of Y'' = sigma(-K^T K Y + b).

        Y_{j+1} = 2 Y_j - Y_{j-1} + h^2 sigma(-K_j^T K_j Y_j + b_j),      Y_{-1} = Y_0

    The state is (Y_j, Y_{j-1}); Y_{-1} = Y_0 starts at zero velocity.  -K^T K is
    negative semi-definite by construction, and the scheme is reversible (``reverse``).
    """

    name = "leapfrog"

    def init_state(self, Y0):
        return (Y0, Y0)

    def _force(self, j, Y):
        ops = self.ops
        K = self.K[j]
        return self.h ** 2 * self.sigma(-ops.apply_t(K, ops.apply(K, Y)) + ops.bias(self.b[j]))

    def step(self, j, state):
        Y, Y_prev = state
        return (2 * Y - Y_prev + self._force(j, Y), Y)

    def reverse(self, state, ini=0, end=None):
        """Undo layers end-1, ..., ini: (Y_end, Y_{end-1}) -> (Y_ini, Y_{ini-1})."""
        end = self.n_layers if end is None else end
        Y_next, Y = state
        for j in reversed(range(ini, end)):
            Y_next, Y = Y, 2 * Y - Y_next + self._force(j, Y)
        return (Y_next, Y)
