"""Synthetic-gradient modules (Jaderberg et al. 2016), the label-conditioned cDNI variant."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

# module type -> number of hidden layers
SG_MODULES = {"linear": 0, "mlp1": 1, "mlp2": 2}


class SyntheticGradient(nn.Module):
    """Predicts dL/dh at a cut from the state h = (h_1, ..., h_S) and the one-hot label.

    Dense: h_s of shape (B, W) are concatenated with the one-hot label (B, classes);
    a linear map or an MLP (ReLU, 1-2 hidden layers of width S W) outputs S W numbers.
    Conv: h_s of shape (B, C, H, W) are concatenated along channels with the label as
    ``classes`` constant channels; 3x3 convolutions (ReLU between) output S C channels.
    The last layer starts at zero (the paper), so training starts from a zero gradient.

    Scale: the module predicts B times the gradient of the batch-mean loss (a per-sample
    gradient, independent of the batch size); ``synthetic`` divides by B again.
    """

    def __init__(self, state_shape, n_state, num_classes, *, conv=False, kind="linear"):
        super().__init__()
        if kind not in SG_MODULES:
            raise ValueError(f"unknown synthetic-gradient module {kind!r}; valid: {', '.join(SG_MODULES)}")
        self.state_shape, self.n_state, self.num_classes, self.conv = tuple(state_shape), n_state, num_classes, conv
        self.kind = kind
        hidden = SG_MODULES[kind]
        width = n_state * state_shape[0]
        c_in = width + num_classes
        layers = []
        for _ in range(hidden):
            layers += [nn.Conv2d(c_in, width, 3, padding=1) if conv else nn.Linear(c_in, width), nn.ReLU()]
            c_in = width
        last = nn.Conv2d(c_in, width, 3, padding=1) if conv else nn.Linear(c_in, width)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, state, y):
        """The predicted per-sample gradients, a tuple shaped like ``state``."""
        onehot = F.one_hot(y, self.num_classes).to(state[0].dtype)
        if self.conv:
            onehot = onehot[:, :, None, None].expand(-1, -1, *state[0].shape[2:])
        out = self.net(torch.cat([*state, onehot], 1))
        return tuple(out.chunk(self.n_state, 1))

    @staticmethod
    def synthetic(pred, y):
        """The synthetic dL/dh for the batch-mean loss, read off a kept prediction."""
        return tuple(g.detach() / len(y) for g in pred)

    def start(self, state, y):
        """The module's one forward pass for a batch whose true gradient comes later:
        returns the prediction with its graph, for ``synthetic`` now and ``loss`` when
        the true gradient arrives.  The graph is built on copies of the parameters, so
        that the optimiser's steps in between leave it valid; the regression's gradient
        is then the one at the parameters of this forward pass (a delay of at most the
        batches in flight)."""
        return functional_call(self, {n: p.clone() for n, p in self.named_parameters()}, (state, y))

    @staticmethod
    def loss(pred, y, true_grads):
        """MSE between a prediction (a tuple shaped like the state, with its graph) and
        B * the true gradient; returns (loss, mse, cos)."""
        pred = torch.cat([p.flatten(1) for p in pred], 1)
        target = torch.cat([g.flatten(1) for g in true_grads], 1) * len(y)
        loss = F.mse_loss(pred, target)
        cos = F.cosine_similarity(pred.detach().flatten(), target.flatten(), dim=0, eps=1e-12)
        return loss, loss.detach(), cos
