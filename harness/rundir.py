"""A run's directory, results/<script>/<timestamp>/: config.json (every constant, the
versions, the git commit), metrics.json, figures, weights and checkpoints, every file
written atomically (datasets.files); and the RESULT line that ends every script."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from datasets import files

from .resume import restart_marker

ROOT = Path(__file__).resolve().parents[1]


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunDir:
    """results/<script>/<timestamp>/ with config.json, metrics.json and figures; ``path``
    reopens an existing run directory (a resumed run) and records the resumption."""

    def __init__(self, cfg, extra=None, path=None):
        if path is not None:
            self.path = Path(path)
            for stale in list(self.path.rglob(".*.tmp")):  # a write the killed run did not finish
                if stale.is_dir():  # TensorBoard's (harness.board)
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
            config = json.loads((self.path / "config.json").read_text())
            config["constants"] = cfg.as_dict()
            config.setdefault("resumed", []).append({"at": _dt.datetime.now().isoformat(timespec="seconds"),
                                                     "argv": sys.argv, "git_commit": git_commit()})
            files.write_json(self.path / "config.json", config)
            return
        base = Path(cfg.RESULTS_DIR) / Path(cfg.script).stem / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path, k = base, 1
        while True:
            try:
                path.mkdir(parents=True, exist_ok=False)
                break
            except FileExistsError:
                k += 1
                path = base.with_name(f"{base.name}-{k}")
        self.path = path
        config = {"constants": cfg.as_dict(), "seed": cfg.SEED,
                  "torch": torch.__version__, "python": platform.python_version(),
                  "platform": platform.platform(), "git_commit": git_commit(),
                  "argv": sys.argv, "cpu_count": os.cpu_count(), **(extra or {})}
        files.write_json(path / "config.json", config)
        marker = restart_marker(cfg)
        if marker is not None:  # torchrun: a restart of this launch continues this run
            files.write_text(marker, str(path))

    def record_placement(self, placement):
        """config.json notes where a launch's ranks ran: {"backend", "rank_devices"}."""
        config = json.loads((self.path / "config.json").read_text())
        config["placement"] = placement
        files.write_json(self.path / "config.json", config)

    def save_json(self, name, obj):
        files.write_json(self.path / name, obj)

    def save_weights(self, name, state_dict):
        files.save_torch(self.path / name, state_dict)

    def file(self, name):
        return self.path / name


def is_main_process():
    """False only on the non-zero ranks of a torchrun launch."""
    return int(os.environ.get("RANK", "0")) == 0


# Keys every script's RESULT carries.
RESULT_KEYS = ("train_acc", "test_acc", "train_time_s", "run_dir")


def emit_result(result, keys=RESULT_KEYS):
    """The last line of every script: RESULT followed by one JSON object holding at least
    ``keys`` (RESULT_KEYS for every script that trains)."""
    missing = [k for k in keys if k not in result]
    if missing:
        raise ValueError(f"a RESULT lacks {', '.join(missing)}")
    print("RESULT " + json.dumps(result, default=float), flush=True)
