"""What every experiment script shares: its constants on the command line, validation
of bad values (one line, exit status 2), the run directory and the RESULT line."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from models.checkpoint import restart_count

ROOT = Path(__file__).resolve().parents[1]
_CONSTANT = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.+?)\s*#\s*(.*)$")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class UsageError(Exception):
    """A bad constant or argument: reported on one line, exit status 2."""


def check(condition, message):
    if not condition:
        raise UsageError(message)


class Config:
    """The constants of one run, readable as attributes (cfg.EPOCHS); ``given`` names those
    set on the command line."""

    def __init__(self, values, given=()):
        self.__dict__.update(values)
        self._given = frozenset(given)

    @property
    def given(self):
        return self._given

    def as_dict(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def replace(self, **changes):
        return Config({**self.as_dict(), **changes}, self._given)


def _parse_bool(text):
    low = str(text).strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected 0/1/true/false, got {text!r}")


def _typed(default):
    if isinstance(default, bool):
        return _parse_bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


def constants_of(script_file, namespace):
    """(name, default, comment) for each `NAME = value  # comment` line of a script."""
    found = []
    for line in Path(script_file).read_text().splitlines():
        m = _CONSTANT.match(line)
        if m and m.group(1) in namespace:
            found.append((m.group(1), namespace[m.group(1)], m.group(3)))
    return found


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def configure(script_file, namespace, argv=None, doc=None):
    """The script's UPPERCASE constants, each overridable as --lower-name value."""
    parser = _Parser(
        prog=Path(script_file).name, description=(doc or "").strip().split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    given = _Parser(prog=Path(script_file).name, argument_default=argparse.SUPPRESS, add_help=False)
    consts = constants_of(script_file, namespace)
    for name, default, comment in consts:
        flag = "--" + name.lower().replace("_", "-")
        parser.add_argument(flag, dest=name, type=_typed(default), default=default,
                            metavar=type(default).__name__.upper(), help=comment.replace("%", "%%"))
        given.add_argument(flag, dest=name, type=_typed(default))
    values = vars(parser.parse_args(argv))
    return Config(values, given=vars(given.parse_known_args(argv)[0]))


# ---- validation shared by the scripts --------------------------------------------------

def resolve(cfg, *, layers_name="N", step_names=("STEP",)):
    """Check the constants every script has; return (DataInfo, architecture name, device)."""
    import datasets
    from models import ACTIVATIONS, model_name
    from models.training import OPTIMIZERS, pick_device

    try:
        meta = datasets.info(cfg.DATASET)
        arch = model_name(cfg.CHOICE)
        device = pick_device(getattr(cfg, "DEVICE", "auto"))
    except (ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    check(getattr(cfg, layers_name) >= 1, f"{layers_name} (layers) must be >= 1, got {getattr(cfg, layers_name)}")
    for name in step_names:
        check(getattr(cfg, name) > 0, f"{name} (the step size h) must be > 0, got {getattr(cfg, name)}")
    check(cfg.BATCH_SIZE >= 1, f"BATCH_SIZE must be >= 1, got {cfg.BATCH_SIZE}")
    for name in ("EPOCHS", "EPOCHS_C", "EPOCHS_F"):
        if hasattr(cfg, name):
            check(getattr(cfg, name) >= 0, f"{name} must be >= 0, got {getattr(cfg, name)}")
    for name in ("LEARN_RATE", "LEARN_RATE_C", "LEARN_RATE_F"):
        if hasattr(cfg, name):
            check(getattr(cfg, name) > 0, f"{name} must be > 0, got {getattr(cfg, name)}")
    check(cfg.ACTIVATION in ACTIVATIONS,
          f"unknown ACTIVATION {cfg.ACTIVATION!r}; valid: {', '.join(ACTIVATIONS)}")
    check(getattr(cfg, "GAMMA", 0.0) >= 0, f"GAMMA must be >= 0, got {getattr(cfg, 'GAMMA', 0.0)}")
    if hasattr(cfg, "OPTIMIZER"):
        check(cfg.OPTIMIZER in OPTIMIZERS, f"unknown OPTIMIZER {cfg.OPTIMIZER!r}; valid: {', '.join(OPTIMIZERS)}")
    check(not cfg.CONV or meta.image,
          f"CONV needs an image dataset; {meta.name} has {meta.features} plain features "
          f"(image sets: {', '.join(n for n, i in datasets.INFO.items() if i.image)})")
    for name, low in (("CHECKPOINT_EVERY", 0), ("MAX_RESTARTS", 0), ("ELLIPSE_POINTS", 1)):
        check(getattr(cfg, name, low) >= low, f"{name} must be >= {low}, got {getattr(cfg, name, low)}")
    check(getattr(cfg, "FAIL_MODE", "raise") in ("raise", "kill"),
          f"unknown FAIL_MODE {getattr(cfg, 'FAIL_MODE', '')!r}; valid: raise, kill")
    check(getattr(cfg, "WIDTH", 0) >= 0, f"WIDTH must be >= 0, got {getattr(cfg, 'WIDTH', 0)}")
    if cfg.CONV and hasattr(cfg, "UNITS"):
        units = unit_channels(cfg)
        layers = getattr(cfg, layers_name) * getattr(cfg, "M", 1)
        check(layers >= len(units), f"UNITS has {len(units)} units but the network has {layers} layers "
                                    "(at least one per unit)")
        height = min(meta.shape[1:])
        check(height >> (len(units) - 1) >= 1, f"UNITS: {len(units)} units pool the {meta.shape[1]}x"
                                               f"{meta.shape[2]} images {len(units) - 1} times, too many")
    if hasattr(cfg, "AUGMENT"):
        check(str(cfg.AUGMENT).lower() in ("auto", *_TRUE, *_FALSE),
              f"AUGMENT must be auto, 1 or 0, got {cfg.AUGMENT!r}")
        check(not augmenting(cfg, meta) or meta.image, f"AUGMENT crops and flips images; {meta.name} has none")
    if meta.needs_files:
        root = Path(cfg.DATA_ROOT)
        check(not root.exists() or (root.is_dir() and os.access(root, os.R_OK | os.X_OK)),
              f"DATA_ROOT {str(root)!r} is not a readable directory")
    return meta, arch, device


def unit_channels(cfg):
    """UNITS ("16,32,64") as a tuple of channel counts; UsageError if it is not one."""
    text = str(getattr(cfg, "UNITS", "8"))
    try:
        units = tuple(int(c) for c in text.split(","))
    except ValueError:
        units = ()
    check(units and min(units) >= 1, f"UNITS must be channel counts separated by commas, such as 16,32,64; "
                                     f"got {text!r}")
    return units


def augmenting(cfg, meta):
    """Whether AUGMENT asks for random crops and flips: auto means on CIFAR-10 only (the
    papers' practice), off for the digit and clothing sets."""
    value = str(getattr(cfg, "AUGMENT", "0")).strip().lower()
    return meta.name == "CIFAR10" if value == "auto" else value in _TRUE


def model_kwargs(cfg, meta):
    """Keyword arguments of models.build_model taken from the constants.

    WIDTH is a minimum: a dense state is max(WIDTH, the input's features) wide, so that
    one WIDTH suits every dataset (the toy sets are padded, the image sets are not).
    UNITS gives a conv network its units (one: the single-block network)."""
    kw = {"conv": bool(cfg.CONV), "activation": cfg.ACTIVATION, "gamma": getattr(cfg, "GAMMA", 0.01)}
    if cfg.CONV:
        kw["units"] = unit_channels(cfg)
    else:
        kw["width"] = max(getattr(cfg, "WIDTH", 0), meta.features)
    return kw


def describe(model):
    """Print a multi-unit network's table of shapes (other networks say it in one line)."""
    if hasattr(model, "table"):
        print(f"{'piece':<26} {'shape':>10}  layers\n{model.table()}", flush=True)


def load_data(cfg, device=None, log=print):
    """Load cfg.DATASET (seeded by cfg.SEED) and move it to ``device``."""
    import datasets

    try:
        data = datasets.load(cfg.DATASET, data_root=cfg.DATA_ROOT, seed=cfg.SEED, log=log,
                             ellipse_points=getattr(cfg, "ELLIPSE_POINTS", 500))
    except datasets.DatasetNotFound as exc:
        raise UsageError(str(exc)) from None
    return data.to(device) if device is not None else data


# ---- resuming a run ---------------------------------------------------------------------

# Constants a resumed run may change: where and how it runs, not what it computes.
RESUME_FREE = frozenset({"RESUME", "DEVICE", "DATA_ROOT", "RESULTS_DIR", "THREADS", "VERBOSE", "CHECKPOINT_EVERY",
                         "MAX_RESTARTS", "FAIL_RANK", "FAIL_STAGE", "FAIL_EPOCH", "FAIL_ITERATION", "FAIL_MODE"})
# Constants a resumed run may raise, to train longer.
RESUME_GROW = frozenset({"EPOCHS", "EPOCHS_F", "ITERATIONS"})


def _restart_marker(script_file, cfg):
    """Under torchrun: the file naming this launch's run directory, so that the workers a
    restart brings up (TORCHELASTIC_RESTART_COUNT > 0) continue the same run.  Keyed by the
    rendezvous id (--rdzv-id, unique per job across machines); where torchrun has none
    (a plain single-machine launch), by the launching agent's process id as well, which is
    fixed across restarts."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id is None:
        return None
    key = run_id if run_id not in ("", "none") else f"{run_id}-{os.getppid()}"
    key = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
    return Path(getattr(cfg, "RESULTS_DIR", "results")) / Path(script_file).stem / f".launch-{key}"


def resume_constants(script_file, cfg):
    """The constants of the run to continue, or (cfg, None) for a new run.

    A run is continued when RESUME names its directory, or when torchrun restarted the
    workers of a run this launch began.  The run's own constants are used; constants
    given on the command line beside RESUME are changes, allowed for the RESUME_FREE ones
    and as growth for RESUME_GROW, refused (UsageError) for the rest."""
    path = getattr(cfg, "RESUME", "")
    marker = _restart_marker(script_file, cfg)
    if not path and marker is not None and restart_count() > 0:
        path = marker.read_text().strip() if marker.is_file() else ""
    if not path:
        return cfg, None
    path = Path(path)
    check((path / "config.json").is_file(), f"RESUME {str(path)!r} is not a run directory (it has no config.json)")
    try:
        saved = json.loads((path / "config.json").read_text())["constants"]
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"RESUME: cannot read {path / 'config.json'}: {exc}") from None
    merged = {**cfg.as_dict(), **saved}
    for name in sorted(cfg.given):
        new, old = getattr(cfg, name), saved.get(name)
        if name in RESUME_FREE or new == old or name not in saved:
            merged[name] = new
        elif name in RESUME_GROW:
            check(new >= old, f"RESUME: {name} may grow, not shrink ({old} -> {new})")
            merged[name] = new
        else:
            raise UsageError(f"RESUME: {name} differs from the run's ({old!r} -> {new!r}); a resumed run keeps the "
                             f"constants of its network, data and training (only {', '.join(sorted(RESUME_GROW))} "
                             "may grow)")
    merged["RESUME"] = str(path)
    return Config(merged, cfg.given), path


def load_checkpoint(run_path, name="checkpoint", quiet=False):
    """The latest intact checkpoint of a run directory (UsageError if none is usable)."""
    from models import checkpoint

    try:
        state, path = checkpoint.load(run_path, name)
    except checkpoint.CheckpointError as exc:
        raise UsageError(str(exc)) from None
    if state is not None and not quiet:
        print(f"resuming from {path} (epoch {state.get('epoch', '?')})", flush=True)
    return state


def _unchanged(state):
    return state


class Checkpointer:
    """Saves a run's state into its directory every CHECKPOINT_EVERY epochs and after the
    last; counts the seconds it spends.  ``wrap`` turns a trainer's state into the file's."""

    def __init__(self, run_path, cfg, last_epoch, name="checkpoint", wrap=None):
        self.path, self.cfg, self.last, self.name = run_path, cfg, last_epoch, name
        self.every = getattr(cfg, "CHECKPOINT_EVERY", 0)
        self.wrap = wrap or _unchanged
        self.seconds, self.count = 0.0, 0

    def __call__(self, epoch, state):
        from models import checkpoint

        if self.path is None or self.every <= 0 or (epoch % self.every and epoch != self.last):
            return
        t0 = time.perf_counter()
        checkpoint.save(self.path, {"constants": self.cfg.as_dict(), **self.wrap(state())}, self.name)
        self.seconds += time.perf_counter() - t0
        self.count += 1


class PhaseStates:
    """The latest training state of each phase of a run (each architecture of the toy
    scripts, each level of the multilevel ones), saved together in one checkpoint."""

    def __init__(self, state=None):
        self.latest = dict(state["phases"]) if state else {}

    def get(self, phase):
        return self.latest.get(phase)

    def wrap(self, phase):
        """A Checkpointer ``wrap``: record ``phase``'s state beside the others' latest."""
        def wrap(state):
            self.latest[phase] = state
            return {"epoch": state["epoch"], "phase": phase, "phases": dict(self.latest)}
        return wrap


# ---- run directory and results ----------------------------------------------------------

def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_json(path, obj):
    """Write JSON atomically: a temporary file beside ``path``, then a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=str)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class RunDir:
    """results/<script>/<timestamp>/ with config.json, metrics.json and figures; ``path``
    reopens an existing run directory (a resumed run) and records the resumption."""

    def __init__(self, script_file, cfg, results_root=None, extra=None, path=None):
        if path is not None:
            self.path = Path(path)
            config = json.loads((self.path / "config.json").read_text())
            config["constants"] = cfg.as_dict()
            config.setdefault("resumed", []).append({"at": _dt.datetime.now().isoformat(timespec="seconds"),
                                                     "argv": sys.argv, "git_commit": git_commit()})
            write_json(self.path / "config.json", config)
            return
        root = Path(results_root or getattr(cfg, "RESULTS_DIR", "results"))
        base = root / Path(script_file).stem / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path, k = base, 1
        while True:
            try:
                path.mkdir(parents=True, exist_ok=False)
                break
            except FileExistsError:
                k += 1
                path = base.with_name(f"{base.name}-{k}")
        self.path = path
        config = {"constants": cfg.as_dict(), "seed": getattr(cfg, "SEED", None),
                  "torch": torch.__version__, "python": platform.python_version(),
                  "platform": platform.platform(), "git_commit": git_commit(),
                  "argv": sys.argv, "cpu_count": os.cpu_count(), **(extra or {})}
        write_json(path / "config.json", config)
        marker = _restart_marker(script_file, cfg)
        if marker is not None:  # torchrun: a restart of this launch continues this run
            marker.write_text(str(path))

    def save_json(self, name, obj):
        write_json(self.path / name, obj)

    def file(self, name):
        return self.path / name


def is_main_process():
    """False only on the non-zero ranks of a torchrun launch."""
    return int(os.environ.get("RANK", "0")) == 0


def emit_result(result):
    """The last line of every script: RESULT followed by one JSON object."""
    print("RESULT " + json.dumps(result, default=float), flush=True)


def run(main, argv=None):
    """Run a script's main(): bad input -> one line on stderr and exit status 2."""
    from models.training import DivergenceError, preload
    from scripts.launch import WorkerFailed

    try:
        preload()
        main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except DivergenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except WorkerFailed as exc:
        print(f"error: a worker process failed; the run was stopped.\n{exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception:
        traceback.print_exc()
        sys.exit(1)
