"""One fit loop and one evaluation for every model, on in-memory tensors."""
from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from datasets.batching import batches, epoch_batches
from models.checkpoint import restore, training_state

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class Hooks:
    """What a training loop tells whoever records its curve (models.recording.Recorder):
    ``start()`` before the first batch, ``batch_end(loss, size)`` after every batch,
    ``epoch_end()`` once an epoch's work is done, ``paused()`` around work that is not
    training (evaluation, logging), ``gather()`` the points of every rank.  This base
    records nothing (``OFF``)."""

    points = ()

    def start(self):
        pass

    def paused(self):
        return nullcontext()

    def batch_end(self, loss=None, size=0):
        pass

    def epoch_end(self, loss=None, epochs=1):
        pass

    def gather(self, replicated=False):
        return None


OFF = Hooks()


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


def preload():
    """Import what torch's optimisers import lazily at their first step (torch._dynamo,
    about a second), so that the clock of a run measures training, not that import."""
    try:
        import torch._dynamo  # noqa: F401
    except ImportError:
        pass


def make_optimizer(name, params, lr):
    """Adam or SGD; Adam uses the fused kernel (one pass over memory, several times faster
    than the per-tensor loop on a CPU) where every parameter's device supports it."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    params = list(params)
    if name == "adam":
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        fused = all(p.device.type in _get_fused_kernels_supported_devices() and p.is_floating_point() for p in params)
        return torch.optim.Adam(params, lr=lr, fused=fused or None)
    return OPTIMIZERS[name](params, lr=lr)


def schedule_factor(schedule, total_steps, steps_per_epoch):
    """The learning rate's factor at step t of a run of ``total_steps`` optimiser steps:

        halvings:H 0.5 ** floor(H t / total_steps): halved H times, at equal fractions of the run
        cosine     (1 + cos(pi t / total_steps)) / 2, from 1 at the first step towards 0 at the last
        constant   1
        halve:K    0.5 ** floor(t / (K steps_per_epoch)), halved every K epochs

    ValueError names the valid schedules for any other text."""
    text = str(schedule).strip().lower()
    if text == "cosine":
        return lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total_steps) / max(total_steps, 1)))
    if text == "constant":
        return lambda t: 1.0
    kind, _, count = text.partition(":")
    if kind == "halvings" and count.isdigit():
        return lambda t: 0.5 ** (int(count) * min(t, total_steps - 1) // max(total_steps, 1))
    if kind == "halve" and count.isdigit() and int(count) >= 1:
        return lambda t: 0.5 ** (t // (int(count) * steps_per_epoch))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; valid: halvings:H (H halvings over the run), "
                     "cosine, constant, halve:K (halved every K epochs)")


def check_finite(mean_loss, model, lr, epoch):
    """Raise DivergenceError, naming the likely cause, if an epoch's loss is NaN or infinite."""
    if not math.isfinite(mean_loss):
        h = getattr(model, "h", None)
        arch = getattr(model, "name", type(model).__name__)
        raise DivergenceError(
            f"the training loss became NaN/inf in epoch {epoch}: the step size h={h} is probably too "
            f"large for the {arch} architecture, or the learning rate {lr} too high; lower one of them")


def progress_bar(total, desc=""):
    """A tqdm bar over an epoch's batches, on a terminal only (never in logs or CI), shown
    once the epoch has run for 3 seconds; None when the output is not a terminal."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", delay=3, leave=False, dynamic_ncols=True)


class Progress:
    """Batches per second and the running loss on a progress bar (reads the loss every
    ``every`` batches only: on a GPU each read waits for the queued work)."""

    def __init__(self, total, desc="", every=20):
        self.bar, self.every, self.n = progress_bar(total, desc), every, 0

    def step(self, loss_sum=None, count=0):
        if self.bar is None:
            return
        self.n += 1
        self.bar.update(1)
        if loss_sum is not None and self.n % self.every == 0:
            self.bar.set_postfix(loss=f"{float(loss_sum) / max(count, 1):.4f}", refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def fit(model, x, y, *, epochs, lr, batch_size, optimizer="adam", schedule="constant",
        alpha_f=0.0, alpha_c=0.0, seed=0, log=None, resume=None, on_epoch_end=None, augment=False,
        recorder=None, test=None):
    """Train ``model`` on the tensors x, y (already on the model's device).

    Cross-entropy on the logits, plus the paper's regularisers when alpha_f/alpha_c > 0.
    ``schedule`` sets the learning rate at every step over the run's epochs x batches
    (``schedule_factor``: cosine, constant or halve:K); a run resumed with more epochs
    continues it over its new length.
    ``augment``: random crops (padding 4) and flips of every batch (datasets.augment).
    ``seed`` draws the batches (datasets.batching.epoch_batches, as every trainer does).
    ``log`` (e.g. print) receives one progress line per epoch.  Returns the history:
    per-epoch loss, train accuracy (on the fly, during the epoch) and seconds.
    Raises DivergenceError if the loss becomes NaN or infinite.

    ``on_epoch_end(epoch, state)`` is called after every epoch with a function that builds
    the training state (model, optimiser, scheduler, random generators, history, epoch);
    given back as ``resume``, that state continues the run after its epoch exactly as if it
    had never stopped (the same batches, the same parameters, bit for bit).
    ``recorder`` (Hooks: a models.recording.Recorder) takes the points of a training curve.
    ``test`` (x_test, y_test) adds each epoch's test accuracy to the history (measured
    after the epoch's clock has stopped).
    """
    opt = make_optimizer(optimizer, model.parameters(), lr)
    n_batches = -(-len(y) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule_factor(schedule, epochs * n_batches, n_batches))
    regularised = bool(alpha_f or alpha_c)
    history = {"epoch": [], "loss": [], "train_acc": [], "seconds": []}
    start = 1
    if resume is not None:
        history, start = restore(resume, model, [opt], None, sched)

    model.train()
    recorder = recorder or OFF
    recorder.start()
    for epoch in range(start, epochs + 1):
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=x.device)
        correct = torch.zeros((), dtype=torch.long, device=x.device)
        bar = Progress(n_batches, f"epoch {epoch}")
        seen = 0
        for xb, yb in epoch_batches(x, y, batch_size, seed, epoch, augment):
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            total = loss + model.regularization(alpha_f, alpha_c) if regularised else loss
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += len(yb)
            bar.step(loss_sum, seen)
            recorder.batch_end(loss, len(yb))
        bar.close()
        recorder.epoch_end()
        mean_loss = loss_sum.item() / len(y)
        seconds = time.perf_counter() - t0
        check_finite(mean_loss, model, lr, epoch)
        acc = correct.item() / len(y)
        for key, val in zip(("epoch", "loss", "train_acc", "seconds"), (epoch, mean_loss, acc, seconds)):
            history[key].append(val)
        tested = ""
        if test is not None:
            with recorder.paused():
                history.setdefault("test_acc", []).append(evaluate(model, *test))
            tested = f"  test acc {history['test_acc'][-1]:.4f}"
        if log is not None:
            log(f"epoch {epoch:4d}  loss {mean_loss:.4f}  train acc {acc:.4f}{tested}  {seconds:.2f}s")
        if on_epoch_end is not None:
            on_epoch_end(epoch, lambda epoch=epoch: training_state(epoch, model, [opt], None, history, sched))
    return history


@torch.no_grad()
def evaluate(model, x, y, batch_size=1024):
    """Accuracy (a fraction in [0, 1]) of ``model`` on x, y."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for xb, yb in batches(x, y, batch_size, shuffle=False):
        correct += (model(xb).argmax(1) == yb).sum()
    model.train(was_training)
    return correct.item() / max(len(y), 1)


@torch.no_grad()
def mean_loss(model, x, y, batch_size=1024):
    """Mean cross-entropy of ``model`` on x, y (no regulariser)."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for xb, yb in batches(x, y, batch_size, shuffle=False):
        total += F.cross_entropy(model(xb), yb, reduction="sum").double()
    return total.item() / max(len(y), 1)
