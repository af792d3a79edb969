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
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
_CONSTANT = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.+?)\s*#\s*(.*)$")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class UsageError(Exception):
    """A bad constant or argument: reported on one line, exit status 2."""


def check(condition, message):
    if not condition:
        raise UsageError(message)


class Config:
    """The constants of one run, readable as attributes (cfg.EPOCHS)."""

    def __init__(self, values):
        self.__dict__.update(values)

    def as_dict(self):
        return dict(self.__dict__)

    def replace(self, **changes):
        return Config({**self.__dict__, **changes})


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
    consts = constants_of(script_file, namespace)
    for name, default, comment in consts:
        parser.add_argument("--" + name.lower().replace("_", "-"), dest=name, type=_typed(default),
                            default=default, metavar=type(default).__name__.upper(),
                            help=comment.replace("%", "%%"))
    return Config(vars(parser.parse_args(argv)))


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
    check(getattr(cfg, "WIDTH", 0) >= 0, f"WIDTH must be >= 0, got {getattr(cfg, 'WIDTH', 0)}")
    if meta.needs_files:
        root = Path(cfg.DATA_ROOT)
        check(not root.exists() or (root.is_dir() and os.access(root, os.R_OK | os.X_OK)),
              f"DATA_ROOT {str(root)!r} is not a readable directory")
    return meta, arch, device


def model_kwargs(cfg, meta):
    """Keyword arguments of models.build_model taken from the constants.

    WIDTH is a minimum: a dense state is max(WIDTH, the input's features) wide, so that
    one WIDTH suits every dataset (the toy sets are padded, the image sets are not)."""
    kw = {"conv": bool(cfg.CONV), "activation": cfg.ACTIVATION, "gamma": getattr(cfg, "GAMMA", 0.01)}
    if cfg.CONV:
        kw["channels"] = getattr(cfg, "CHANNELS", 8)
    else:
        kw["width"] = max(getattr(cfg, "WIDTH", 0), meta.features)
    return kw


def load_data(cfg, device=None, log=print):
    """Load cfg.DATASET (seeded by cfg.SEED) and move it to ``device``."""
    import datasets

    try:
        data = datasets.load(cfg.DATASET, data_root=cfg.DATA_ROOT, seed=cfg.SEED, log=log)
    except datasets.DatasetNotFound as exc:
        raise UsageError(str(exc)) from None
    return data.to(device) if device is not None else data


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
    """results/<script>/<timestamp>/ with config.json, metrics.json and figures."""

    def __init__(self, script_file, cfg, results_root=None, extra=None):
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
