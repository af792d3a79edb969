"""Serial synthetic-gradient training of a complex network, and its multilevel scheme."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from datasets.batching import batches
from models.checkpoint import restore, training_state
from models.training import Progress, check_finite, make_optimizer, sync

from .complex import input_grads


class SGTrainer:
    """Per batch: forward through all sub-networks (each input detached at its cut); the
    last backpropagates the loss; every earlier one backpropagates its module's synthetic
    gradient (or, with ``true_gradients``, the true gradient from the sub-network after
    it); each module then regresses on the true gradient at its cut.

    The true gradient at cut i is what sub-network i+1's backward pass delivers to its
    input: the loss gradient for the last cut, the bootstrapped one (through a synthetic
    gradient) for earlier cuts, as in Jaderberg et al.
    """

    def __init__(self, cnet, *, lr, sg_lr, optimizer="adam", true_gradients=False):
        self.cnet, self.true_gradients = cnet, true_gradients
        M = cnet.num_stages
        self.opts = [make_optimizer(optimizer, cnet.stage_parameters(i), lr) for i in range(M)]
        self.sg_opts = [make_optimizer("adam", m.parameters(), sg_lr) for m in cnet.sg]
        self.lr = lr

    def train_batch(self, xb, yb, timed=False):
        """One batch; returns (loss, per-stage backward seconds or None, [(mse, cos)] per cut)."""
        cnet, M = self.cnet, self.cnet.num_stages
        device = xb.device
        inputs, outputs, h = [], [], xb
        for i in range(M):
            inp = h if i == 0 else tuple(t.detach().requires_grad_() for t in h)
            h = cnet.stage_forward(i, inp)
            inputs.append(inp)
            outputs.append(h)
        seconds = [0.0] * M if timed else None

        def clock(i, t0):
            if timed:
                sync(device)
                seconds[i] += time.perf_counter() - t0

        t0 = time.perf_counter()
        loss = F.cross_entropy(outputs[-1], yb)
        loss.backward()
        clock(M - 1, t0)
        stats = [None] * (M - 1)
        for i in reversed(range(M - 1)):
            t0 = time.perf_counter()
            true = input_grads(inputs[i + 1])
            state = tuple(t.detach() for t in outputs[i])
            pred = cnet.sg[i](state, yb)  # one module pass: the synthetic gradient and the regression
            grad = true if self.true_gradients else cnet.sg[i].synthetic(pred, yb)
            torch.autograd.backward(outputs[i], grad)
            sg_loss, mse, cos = cnet.sg[i].loss(pred, yb, true)
            self.sg_opts[i].zero_grad(set_to_none=True)
            sg_loss.backward()
            self.sg_opts[i].step()
            stats[i] = (mse, cos)
            clock(i, t0)
        for opt in self.opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.detach(), seconds, stats

    def train_epoch(self, x, y, batch_size, generator, timed=True, epoch=1, augment=False):
        """One epoch; returns its mean loss, the modules' mean MSE and cosine similarity
        to the true gradient (one entry per cut), its seconds and its theoretical seconds."""
        M = self.cnet.num_stages
        sync(x.device)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=x.device)
        mse_sum = torch.zeros(M - 1, device=x.device)
        cos_sum = torch.zeros(M - 1, device=x.device)
        backward_total, backward_max, n_batches, seen = 0.0, 0.0, 0, 0
        bar = Progress(-(-len(y) // batch_size), f"epoch {epoch}")
        for xb, yb in batches(x, y, batch_size, generator=generator, augment=augment):
            loss, seconds, stats = self.train_batch(xb, yb, timed)
            loss_sum += loss * len(yb)
            seen += len(yb)
            bar.step(loss_sum, seen)
            mse_sum += torch.stack([s[0] for s in stats])
            cos_sum += torch.stack([s[1] for s in stats])
            n_batches += 1
            if timed:
                backward_total += sum(seconds)
                backward_max += max(seconds)
        bar.close()
        sync(x.device)
        wall = time.perf_counter() - t0
        mean_loss = loss_sum.item() / len(y)
        check_finite(mean_loss, self.cnet.net, self.lr, epoch)
        return {"loss": mean_loss, "sg_mse": (mse_sum / n_batches).tolist(), "sg_cos": (cos_sum / n_batches).tolist(),
                "seconds": wall, "theoretical_s": wall - backward_total + backward_max if timed else wall}


def train_serial(cnet, data, *, epochs, lr, sg_lr, batch_size, optimizer="adam", true_gradients=False, seed=0,
                 log=None, tag="", resume=None, on_epoch_end=None, augment=False):
    """Train a complex network for some epochs; returns the per-epoch history.

    ``on_epoch_end(epoch, state)`` and ``resume`` as in models.training.fit: the state
    (network and modules, both kinds of optimiser, the batch generator, the history)
    continues the run after its epoch exactly as if it had never stopped.  ``augment``:
    random crops and flips of every batch (datasets.augment)."""
    from models.training import evaluate

    trainer = SGTrainer(cnet, lr=lr, sg_lr=sg_lr, optimizer=optimizer, true_gradients=true_gradients)
    gen = torch.Generator().manual_seed(seed)
    hist = {"epoch": [], "loss": [], "sg_mse": [], "sg_cos": [], "seconds": [], "theoretical_s": [], "test_acc": []}
    optimizers = trainer.opts + trainer.sg_opts
    start = 1
    if resume is not None:
        hist, start = restore(resume, cnet, optimizers, gen)

    for epoch in range(start, epochs + 1):
        stats = trainer.train_epoch(data.x_train, data.y_train, batch_size, gen, epoch=epoch, augment=augment)
        stats["test_acc"] = evaluate(cnet, data.x_test, data.y_test)
        hist["epoch"].append(epoch)
        for k, v in stats.items():
            hist[k].append(v)
        if log is not None:
            cos = ", ".join(f"{c:.3f}" for c in stats["sg_cos"])
            log(f"{tag}epoch {epoch:3d}  loss {stats['loss']:.4f}  test acc {stats['test_acc']:.4f}  "
                f"module cos [{cos}]  {stats['seconds']:.2f}s (theoretical {stats['theoretical_s']:.2f}s)")
        if on_epoch_end is not None:
            on_epoch_end(epoch, lambda epoch=epoch: training_state(epoch, cnet, optimizers, gen, hist))
    return hist
