"""Measures of forward stability (Haber & Ruthotto 2017): how the layers move, stretch and
squeeze the feature state.

For a network Y_{j+1} = Phi_j(Y_j) (the state of Verlet and leapfrog holds a second tensor)
these functions compute, for one batch of inputs x:

* ``perturbation_growth``: ||Y_j(x + delta) - Y_j(x)|| / ||delta|| for j = 0..N, per sample;
* ``top_singular_values``: the largest singular value of dY_j/dY_0 by power iteration with
  forward- and reverse-mode autograd (it bounds the growth of any small perturbation);
* ``step_jacobians`` / ``step_eigenvalues``: the Jacobian of one layer's step map on the
  whole state, (Y_j, Z_{j-1/2}) -> (Y_{j+1}, Z_{j+1/2}) for Verlet and
  (Y_j, Y_{j-1}) -> (Y_{j+1}, Y_j) for leapfrog, and its eigenvalues;
* ``constant_layer_net``, ``phase_plane`` and ``mean_pairwise_distance``: the papers'
  Figure 1, 2-D points pushed through N identical layers with a chosen K.

Every measure acts per sample (the networks have no batch coupling) and never changes the
model: the perturbation and Jacobian measures run on a float64 copy.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch.func import jvp, vjp

from . import build_model

PHASE_SCHEMES = ("resnet", "verlet", "leapfrog")  # forward Euler, Verlet, leapfrog with one K


def _float64(model):
    net = copy.deepcopy(model).double().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _rows(t):
    """Per-sample Euclidean norms of a (B, ...) tensor."""
    return t.flatten(1).norm(dim=1)


@torch.no_grad()
def perturbation_growth(model, x, eps=1e-6, generator=None):
    """||Y_j(x + delta) - Y_j(x)|| / ||delta|| for j = 0..N: a (N + 1, B) tensor.

    delta is a random direction per sample scaled to ||delta|| = eps * ||x|| (float64, so
    that eps can be small enough for the linearised growth).  The lift of a dense network
    is a zero-padding, so row 0 is 1; a conv network's opening layer counts in row 0.
    """
    net = _float64(model)
    x = x.detach().double()
    delta = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device)
    delta *= (eps * _rows(x).clamp_min(1.0) / _rows(delta)).view(-1, *([1] * (x.dim() - 1)))
    Y = net.features(net.lift_input(x))
    Yp = net.features(net.lift_input(x + delta))
    return _rows((Yp - Y).flatten(0, 1)).view(len(Y), -1) / _rows(delta)


def top_singular_values(model, x, layers=None, iterations=30, generator=None):
    """The largest singular value of dY_j/dY_0 at each sample of x, for each j in ``layers``
    (default 0..N): a (len(layers), B) tensor, by ``iterations`` steps of power iteration.

    One iteration is one forward-mode pass (J v) and one reverse-mode pass (J^T J v) of the
    whole network on len(layers) copies of the batch, one copy per target layer.
    """
    net = _float64(model)
    layers = list(range(net.n_layers + 1)) if layers is None else [int(j) for j in layers]
    Y0 = net.lift_input(x.detach().double())
    batch, copies = Y0.shape[0], len(layers)
    Y0r = Y0.repeat(copies, *([1] * (Y0.dim() - 1)))
    pick = torch.tensor(layers, device=Y0.device).repeat_interleave(batch)
    rows = torch.arange(copies * batch, device=Y0.device)

    def f(y):  # row r of the copies -> its own target layer's Y_j
        return net.features(y)[pick, rows]

    v = torch.randn(Y0r.shape, generator=generator, dtype=torch.float64).to(Y0.device)
    _, pullback = vjp(f, Y0r)
    sigma = torch.zeros(copies * batch, dtype=torch.float64, device=Y0.device)
    with warnings.catch_warnings():  # torch's forward mode loads its rules with torch.jit.script, deprecated
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        for _ in range(iterations):
            v = v / _rows(v).clamp_min(1e-300).view(-1, *([1] * (v.dim() - 1)))
            _, Jv = jvp(f, (Y0r,), (v,))
            sigma = _rows(Jv)
            (v,) = pullback(Jv)
    return sigma.view(copies, batch)


def _flat_state(state):
    return torch.cat([s.flatten(1) for s in state], dim=1)


def _unflat_state(flat, like):
    out, k = [], 0
    for s in like:
        n = s[0].numel()
        out.append(flat[:, k:k + n].view(-1, *s.shape[1:]))
        k += n
    return tuple(out)


def step_jacobians(model, x, layers=None):
    """Jacobians of the step maps of ``layers`` (default all) at the states the data x reach:
    a list of (B, S, S) float64 tensors, S the size of one sample's whole state (Y, and Z or
    Y_{j-1} where the scheme carries it)."""
    net = _float64(model)
    layers = set(range(net.n_layers)) if layers is None else set(layers)
    state = net.initial_state(x.detach().double())
    out = []
    for j in range(net.n_layers):
        if j in layers:
            flat = _flat_state(state)

            def step(s, j=j, like=state):  # one sample's flat state -> its next flat state
                return _flat_state(net.step(j, _unflat_state(s[None], like)))[0]

            out.append(torch.vmap(torch.func.jacrev(step))(flat))
        state = net.step(j, state)
    return out


def step_eigenvalues(model, x, layers=None):
    """Eigenvalues of each step map's Jacobian at the data: (layers, B, S) complex."""
    return torch.stack([torch.linalg.eigvals(J) for J in step_jacobians(model, x, layers)])


# ---- the papers' Figure 1: identical layers on 2-D points ---------------------------------

def constant_layer_net(scheme, K, h, n_layers, activation="tanh"):
    """A dense network of ``n_layers`` identical layers K_j = K, b_j = 0 on 2-D (or d-D) points,
    with the scheme's own step (``resnet``: forward Euler, ``verlet``, ``leapfrog``)."""
    K = torch.as_tensor(K, dtype=torch.float64)
    d = K.shape[0]
    net = build_model(scheme, (d,), 2, n_layers, h, activation=activation).double()
    with torch.no_grad():
        for Kj, bj in zip(net.K, net.b):
            Kj.copy_(K)
            bj.zero_()
    return net


def mean_pairwise_distance(Y):
    """Mean Euclidean distance over all pairs of the rows of Y (B, d)."""
    return torch.pdist(Y.flatten(1)).mean()


@torch.no_grad()
def phase_plane(K, points, h=0.1, n_layers=10, schemes=PHASE_SCHEMES, activation="tanh"):
    """Push ``points`` (B, d) through n_layers identical layers of each scheme.

    Returns {scheme: {"trajectory": (N + 1, B, d), "growth": mean pairwise distance of Y_N
    over that of Y_0}}."""
    points = torch.as_tensor(points, dtype=torch.float64)
    out = {}
    for scheme in schemes:
        net = constant_layer_net(scheme, K, h, n_layers, activation)
        traj = net.features(points)
        out[scheme] = {"trajectory": traj,
                       "growth": (mean_pairwise_distance(traj[-1]) / mean_pairwise_distance(traj[0])).item()}
    return out


def grid_points(k=7, extent=1.0):
    """A k x k grid of 2-D points in [-extent, extent]^2, as (k * k, 2) float64."""
    g = torch.linspace(-extent, extent, k, dtype=torch.float64)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


# K of the papers' Figure 1: eigenvalues (2, 2), (-2, -2) and +-i.
PHASE_KS = {
    "eig (2, 2)": [[2.0, 0.0], [0.0, 2.0]],
    "eig (-2, -2)": [[-2.0, 0.0], [0.0, -2.0]],
    "antisymmetric, eig +-i": [[0.0, 1.0], [-1.0, 0.0]],
}
