"""How the stages of a pipeline talk: a batch's state forwards, its gradient backwards.

A stage sends the state (and labels) of batch b to the next stage and, unless the rule
is local, the gradient at its input back to the previous one.  ``Loopback`` carries the
messages between stages that live in one process (queues); ``PointToPoint`` between
processes, with torch.distributed's isend/irecv (gloo or NCCL).  Both count the messages
they send, per kind.

A receive is a generator (``x = yield from t.recv_state(...)``): in one process a stage
whose message has not come yet yields, so that the scheduler runs the others; between
processes it blocks until the message is there (and never yields).
"""
from __future__ import annotations

import math
from collections import defaultdict, deque

import torch
import torch.distributed as dist

TAG_STATE, TAG_GRAD = 0, 1


def pack(tensors, labels=None):
    """One message per batch: the state tensors flattened side by side (and the labels)."""
    parts = [t.detach().reshape(len(t), -1) for t in tensors]
    if labels is not None:
        parts.append(labels[:, None].to(parts[0].dtype))  # exact for class indices < 2^24
    return torch.cat(parts, 1)


def unpack(msg, n_state, state_shape, with_labels=False):
    """Inverse of ``pack``: a tuple of state-shaped tensors (and the labels)."""
    width = (msg.shape[1] - with_labels) // n_state
    tensors = tuple(msg[:, k * width:(k + 1) * width].reshape(len(msg), *state_shape).contiguous()
                    for k in range(n_state))
    return (tensors, msg[:, -1].long()) if with_labels else tensors


class Loopback:
    """The messages between the stages of one process: a queue per cut and direction."""

    def __init__(self):
        self.states = defaultdict(deque)  # cut i (between stage i and i+1) -> [(b, state, labels)]
        self.grads = defaultdict(dict)  # cut i -> {b: gradient tuple}
        self.sent = {"state": 0, "gradient": 0}
        self.moves = 0  # messages sent and taken: a round of the scheduler without any is a deadlock

    def endpoint(self, rank):
        return _LoopbackEnd(self, rank)


class _LoopbackEnd:
    def __init__(self, hub, rank):
        self.hub, self.rank = hub, rank

    def send_state(self, b, state, labels):
        self.hub.states[self.rank].append((b, tuple(t.detach() for t in state), labels))
        self.hub.sent["state"] += 1
        self.hub.moves += 1

    def recv_state(self, b, nb):
        queue = self.hub.states[self.rank - 1]
        while not queue:
            yield
        got, state, labels = queue.popleft()
        self.hub.moves += 1
        assert got == b, f"stage {self.rank} expected batch {b}, got {got}"
        return state, labels

    def expect_grad(self, b, nb):
        pass

    def send_grad(self, b, grads):
        self.hub.grads[self.rank - 1][b] = tuple(g.detach() for g in grads)
        self.hub.sent["gradient"] += 1
        self.hub.moves += 1

    def recv_grad(self, b):
        while b not in self.hub.grads[self.rank]:
            yield
        self.hub.moves += 1
        return self.hub.grads[self.rank].pop(b)

    def flush(self):
        pass


class PointToPoint:
    """The messages of one stage process: torch.distributed isend/irecv to its neighbours.
    ``in_shape``/``out_shape``: one sample's state shape at the stage's input and output
    cuts; the gradient receives are posted when the state is sent (``expect_grad``).
    Messages travel on ``wire`` (default ``device``): the CPU for GPU ranks over gloo,
    which cannot send CUDA tensors."""

    def __init__(self, rank, world, n_state, in_shape, out_shape, device, dtype, profile, wire=None):
        self.rank, self.world, self.n_state = rank, world, n_state
        self.in_shape, self.out_shape = in_shape, out_shape
        self.device, self.dtype, self.prof = device, dtype, profile
        self.wire = device if wire is None else wire
        self.pending_sends, self.grad_recvs = [], {}
        self.sent = {"state": 0, "gradient": 0}

    def _width(self, shape):
        return self.n_state * math.prod(shape)

    def _isend(self, t, dst, tag):
        self.pending_sends.append((t, dist.isend(t, dst, tag=tag)))
        self.pending_sends = [(m, w) for m, w in self.pending_sends if not w.is_completed()]

    def send_state(self, b, state, labels):
        with self.prof("send"):
            self._isend(pack(state, labels).to(self.wire), self.rank + 1, TAG_STATE)
        self.sent["state"] += 1

    def recv_state(self, b, nb):
        msg = torch.empty(nb, self._width(self.in_shape) + 1, device=self.wire, dtype=self.dtype)
        with self.prof("wait input"):
            dist.irecv(msg, self.rank - 1, tag=TAG_STATE).wait()
        with self.prof("send"):
            state, labels = unpack(msg.to(self.device), self.n_state, self.in_shape, with_labels=True)
        return state, labels
        yield  # a generator, like the loopback's; never reached

    def expect_grad(self, b, nb):
        """Post the receive of batch b's gradient (from the next stage)."""
        with self.prof("send"):
            buf = torch.empty(nb, self._width(self.out_shape), device=self.wire, dtype=self.dtype)
            self.grad_recvs[b] = (buf, dist.irecv(buf, self.rank + 1, tag=TAG_GRAD))

    def send_grad(self, b, grads):
        with self.prof("send"):
            self._isend(pack(grads).to(self.wire), self.rank - 1, TAG_GRAD)
        self.sent["gradient"] += 1

    def recv_grad(self, b):
        buf, work = self.grad_recvs.pop(b)
        with self.prof("wait gradient"):
            work.wait()
        return unpack(buf.to(self.device), self.n_state, self.out_shape)
        yield  # a generator, like the loopback's; never reached

    def flush(self):
        """Complete every send posted (at an epoch's end, before a checkpoint)."""
        with self.prof("send"):
            for _, w in self.pending_sends:
                w.wait()
        self.pending_sends = []
