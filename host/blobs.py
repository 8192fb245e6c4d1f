"""The home's blob files: content-addressed (``<home>/blobs/<sha256>``), written atomically.

Both the code inside an action (:mod:`sp.actions.blobs`) and the worker storing a blob for a
sandboxed action (:mod:`sp.runner.broker`) write here, so it sits below both.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def store_blob(home: Path, data: bytes) -> str:
    """Store ``data`` under ``<home>/blobs/<sha256>`` (once) and return its hash; the worker
    calls it for a sandboxed action (:mod:`sp.runner.broker`)."""
    sha = hashlib.sha256(data).hexdigest()
    target = home / "blobs" / sha
    try:  # reused: fresh again, so that sp gc leaves it until this action records it
        os.utime(target)
    except FileNotFoundError:
        atomic_write(target, data, 0o600)
    return sha


def atomic_write(path: Path, data: bytes, mode: int | None) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, chmod, rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".sp-tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
