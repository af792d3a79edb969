"""The pipeline of a complex network: one stage per sub-network, a decoupling rule, and a
transport.  ``train_serial`` runs every stage in this process over the loopback
transport; ``synthetic.distributed.stage_worker`` runs one stage per process over
torch.distributed.  Both run the same ``Stage`` code, and every rule takes its gradients
at fixed batches, so that both give the same parameters.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from models.devices import sync
from models.training import OFF, Progress, check_finite, evaluate

from .profile import StageProfile
from .rules import Rule, backprop, make_rule
from .stage import Stage, run_together
from .transport import Loopback


@dataclass
class PipelineConfig:
    rule: Rule | str  # a rule (synthetic.rules), or a registered rule's name built with rule_options
    epochs: int = 10
    lr: float = 3e-3
    batch_size: int = 64
    optimizer: str = "adam"
    rule_options: dict = field(default_factory=dict)  # options of a rule given by name
    exact_epochs: int = 0  # the last epochs backpropagate (a hybrid finish)
    seed: int = 0
    augment: bool = False  # stage 0 crops and flips its batches at random (datasets.augment)
    # one stage per process (synthetic.distributed)
    fail_stage: int = -1  # testing aid: this stage fails at the first batch of fail_epoch (-1: none)
    fail_epoch: int = 1  # ... in the first attempt only (a restarted group trains on)
    fail_mode: str = "raise"  # raise an exception, or "kill": the process sends itself SIGKILL
    verbose: bool = True
    run_dir: str | None = None  # checkpoints go here (rank 0's value counts); None: none
    checkpoint_every: int = 0  # epochs between checkpoints (0: none); the last epoch always
    timeline_batches: int = 8  # batches of the profile's timeline (the first ones)
    points_per_epoch: int = 0  # one stage per process: points of a training curve an epoch (0: none)
    point_states: bool = True  # the points hold the parameters (False: their times and losses alone)
    balance: str | None = None  # one stage per process: the ranks choose the cuts ("cost" or "even"; None: keep)

    def __post_init__(self):
        if isinstance(self.rule, str):
            self.rule = make_rule(self.rule, **self.rule_options)

    def rule_in(self, epoch):
        """The rule of an epoch (a template that each stage copies): the last
        ``exact_epochs`` backpropagate."""
        return backprop() if epoch > self.epochs - self.exact_epochs else self.rule


def make_stage(cnet, i, cfg, transport, profile):
    return Stage(cnet, i, dataclasses.replace(cfg.rule), transport, lr=cfg.lr, optimizer=cfg.optimizer,
                 profile=profile, seed=cfg.seed)


def set_rule(stage, cfg, epoch):
    """The stage's rule for ``epoch`` (every stage switches at the same epoch boundary,
    when nothing is in flight)."""
    rule = cfg.rule_in(epoch)
    stage.sends = rule.receives_gradients
    if not stage.last and stage.rule.name != rule.name:
        stage.rule = stage.rules.setdefault(rule.name, dataclasses.replace(rule))
        stage.rule.attach(stage)


def epoch_record(cut_stages, hist, epoch, loss, seconds):
    """One epoch's entries: the loss, and for each of ``cut_stages`` (the stages before a
    cut) the means of its rule's statistics (``Rule.stats``: a list per key, one value a
    cut)."""
    means = [st.stats.means() for st in cut_stages]
    hist["epoch"].append(epoch)
    hist["loss"].append(loss)
    hist["seconds"].append(seconds)
    for key in dict.fromkeys(k for st in cut_stages for rule in (st.primary, st.rule) for k in rule.stats):
        hist.setdefault(key, []).append([m[key] for m in means if key in m])


def train_serial(cnet, data, cfg: PipelineConfig, *, log=None, tag="", resume=None, on_epoch_end=None,
                 recorder=None):
    """Train ``cnet`` (on the data's device) as a pipeline whose stages take turns in this
    process; returns the per-epoch history (its ``theoretical_s``: the busiest stage's
    compute, the time of the pipeline whose stages never wait).

    ``on_epoch_end(epoch, state)`` and ``resume`` as in models.training.fit: the state
    (the network with its modules, every stage's optimiser and rule, the history)
    continues the run after its epoch exactly as if it had never stopped.  ``recorder``
    (models.recording.Recorder) takes the points of a training curve, its clock paused
    for the per-epoch test accuracy."""
    device = data.x_train.device
    hub = Loopback()
    profiles = [StageProfile(device) for _ in range(cnet.num_stages)]
    stages = [make_stage(cnet, i, cfg, hub.endpoint(i), profiles[i]) for i in range(cnet.num_stages)]
    hist = {"epoch": [], "loss": [], "seconds": [], "theoretical_s": [], "test_acc": []}
    start = 1
    if resume is not None:
        cnet.load_state_dict(resume["model"])
        for st, saved in zip(stages, resume["stages"], strict=True):
            st.load_state_dict(saved)
        hist, start = {k: list(v) for k, v in resume["history"].items()}, resume["epoch"] + 1
    recorder = recorder or OFF
    recorder.start()
    for epoch in range(start, cfg.epochs + 1):
        for st in stages:
            set_rule(st, cfg, epoch)
        busy = [p.summary()["busy_s"] for p in profiles]
        bar = Progress(-(-len(data.y_train) // cfg.batch_size), f"{tag}epoch {epoch}")
        sync(device)
        t0 = time.perf_counter()
        works = [st.epoch(epoch, data, cfg.batch_size, cfg.seed, cfg.augment,
                          before_batch=(lambda e, b: bar.step()) if st.i == 0 else None,
                          after_batch=recorder.batch_end if st.last else None)
                 for st in stages]
        loss = run_together(works, hub)[-1].item()
        sync(device)
        seconds = time.perf_counter() - t0
        bar.close()
        recorder.epoch_end()
        check_finite(loss, cnet.net, cfg.lr, epoch)
        epoch_record(stages[:-1], hist, epoch, loss, seconds)
        hist["theoretical_s"].append(max(p.summary()["busy_s"] - b for p, b in zip(profiles, busy)))
        with recorder.paused():
            hist["test_acc"].append(evaluate(cnet, data.x_test, data.y_test))
        if log is not None:
            log(f"{tag}epoch {epoch:3d}  {cfg.rule_in(epoch).name}  loss {loss:.4f}  "
                f"test acc {hist['test_acc'][-1]:.4f}  {seconds:.2f}s (theoretical {hist['theoretical_s'][-1]:.2f}s)")
        if on_epoch_end is not None:
            on_epoch_end(epoch, lambda epoch=epoch: {"epoch": epoch, "model": cnet.state_dict(),
                                                     "stages": [st.state_dict() for st in stages],
                                                     "history": hist})
    hist["profile"] = [p.summary() for p in profiles]
    hist["messages"] = dict(hub.sent)
    return hist

