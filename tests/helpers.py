"""Small utilities shared by the tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def operator_matrix(apply, shape):
    """The dense matrix of a linear map on tensors of ``shape`` (one sample)."""
    n = 1
    for d in shape:
        n *= d
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return apply(basis).reshape(n, n).t()


def run_script(name, *args, timeout=300, env=None):
    """Run scripts/<name>.py with the given arguments; returns the CompletedProcess."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)


def result_of(proc):
    """The JSON object of a script's RESULT line (its last line)."""
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    return json.loads(last[len("RESULT "):])
