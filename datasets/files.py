"""Every file a run writes is written whole or not at all.

``atomic(path)`` hands out a temporary path beside ``path``; when the block ends
without an exception the temporary file is flushed to disk and renamed onto ``path``
(one ``os.replace``, atomic on POSIX), otherwise it is removed.  A run killed at any
moment therefore leaves each of its files either as it was before or complete, never
half-written.  ``write_bytes``, ``write_text``, ``write_json`` and ``save_torch`` are
the usual cases.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic(path):
    """``with atomic(path) as tmp:`` write ``tmp`` (a str path) in any way; on success it
    becomes ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # on disk before the rename: a crash leaves the old file or the new
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path, data):
    with atomic(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path, text):
    with atomic(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, default=str))


def save_torch(path, obj):
    """``torch.save(obj, path)``, atomically."""
    import torch

    with atomic(path) as tmp:
        torch.save(obj, tmp)
