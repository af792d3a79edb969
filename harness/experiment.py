"""The first steps of every experiment: validate the constants (a resumed run's own),
load the data, build the network, open the run directory and its latest checkpoint."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .cli import UsageError, augmenting, unit_channels, validate
from .launch import world_size_for
from .resume import load_checkpoint, resume_constants
from .rundir import RunDir, is_main_process


@dataclass
class Opened:
    """What ``open_run`` hands an experiment."""
    cfg: object  # the run's harness.configs family, as resumed
    meta: object  # datasets.DataInfo
    arch: str
    device: torch.device
    data: object  # datasets.Data
    run: RunDir | None  # None on the non-zero ranks of a torchrun launch
    state: dict | None  # the latest checkpoint of a resumed run


def open_run(cfg, *, world_size_of=None, device_data=True, extra=None, announce=True):
    """Resume constants (under torchrun the constant named ``world_size_of``, such as M,
    becomes the world size) -> validate (each constant, then the family's ``check``) ->
    load the data (onto the run's device with ``device_data``) -> open the run directory
    (on the main process only) -> read its latest checkpoint (a resumed run; a damaged or
    unsafe one stops the run here with one line; ``announce``: say which one)."""
    cfg, resume_path = resume_constants(cfg)
    if world_size_of is not None:
        cfg = cfg.replace(**{world_size_of: world_size_for(getattr(cfg, world_size_of))})
    meta, arch, device = validate(cfg)
    data = load_data(cfg, device if device_data else None)
    run, state = None, None
    if is_main_process():
        run = RunDir(cfg, extra={"device": str(device), "architecture": arch, **(extra or {})}, path=resume_path)
        state = load_checkpoint(run.path, quiet=not announce) if resume_path else None
    return Opened(cfg, meta, arch, device, data, run, state)


TOY_SIZES = ("ELLIPSE_POINTS", "ELLIPSE_VALIDATION", "SWISS_POINTS")  # ToyRun's; datasets.load's defaults elsewhere


def load_data(cfg, device=None, log=print):
    """Load cfg.DATASET (seeded by cfg.SEED) and move it to ``device``."""
    import datasets

    try:
        data = datasets.load(cfg.DATASET, data_root=cfg.DATA_ROOT, seed=cfg.SEED, log=log,
                             **{k.lower(): getattr(cfg, k) for k in TOY_SIZES if hasattr(cfg, k)})
    except datasets.DatasetNotFound as exc:
        raise UsageError(str(exc)) from None
    data = data.head(getattr(cfg, "TRAIN_SAMPLES", 0))  # the families that take a subset
    return data.to(device) if device is not None else data


def model_kwargs(cfg, meta):
    """Keyword arguments of models.build_model taken from the constants.

    WIDTH is a minimum: a dense state is max(WIDTH, the input's features) wide, so that
    one WIDTH suits every dataset (the toy sets are padded, the image sets are not).
    UNITS gives a conv network its units (one: the single-block network)."""
    kw = {"conv": bool(cfg.CONV), "activation": cfg.ACTIVATION, "gamma": cfg.GAMMA}
    if cfg.CONV:
        kw["units"] = unit_channels(cfg)
    else:
        kw["width"] = max(cfg.WIDTH, meta.features)
    return kw


def build(cfg, arch, meta, device=None, n_layers=None, h=None):
    """The network of the constants (cfg.N layers of step cfg.STEP unless given), seeded by cfg.SEED."""
    from models import build_model

    torch.manual_seed(cfg.SEED)
    model = build_model(arch, meta.shape, meta.classes, n_layers or cfg.N, h or cfg.STEP, **model_kwargs(cfg, meta))
    return model.to(device) if device is not None else model


def describe(model):
    """Print a multi-unit network's table of shapes (other networks say it in one line)."""
    if hasattr(model, "table"):
        print(f"{'piece':<26} {'shape':>10}  layers\n{model.table()}", flush=True)


__all__ = ["Opened", "augmenting", "build", "describe", "load_data", "model_kwargs", "open_run"]
