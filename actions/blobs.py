"""What the built-in file types share: before-images kept content-addressed under
``$SP_HOME/blobs/<sha256>``, atomic writes that keep modes, and finding what an action recorded.

A before-image is ``{"blob": sha256 or None, "mode": int or None}``: ``blob`` None means the
path did not exist. Images are recorded in the action's checkpoints (events), the bytes live
in the blob store, so an undo restores exactly what was there, even after a crash and a replay.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from sp.host.blobs import atomic_write as atomic_write
from sp.host.blobs import store_blob as store_blob
from sp.ledger.errors import UsageError


def home_root() -> Path:
    root = os.environ.get("SP_HOME")
    if not root:
        raise UsageError("$SP_HOME is not set: cannot find the home of this action")
    return Path(root)


def put_blob(data: bytes) -> str:
    """Store ``data`` under ``$SP_HOME/blobs/<sha256>`` (once) and return its hash."""
    if _brokered():
        return _put_via_worker(data)
    return store_blob(home_root(), data)


def _brokered() -> bool:
    """A sandboxed action reaches the blob store and the ledger only through its worker."""
    from sp.runner import broker

    return broker.active()


def _call(op: str, **args: Any) -> Any:
    from sp.runner import broker

    try:
        return broker.call(op, **args)
    except broker.BrokerError as e:
        raise UsageError(str(e)) from None


def _put_via_worker(data: bytes) -> str:
    fd, tmp = tempfile.mkstemp(prefix="blob-", dir=os.environ.get("TMPDIR") or None)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return str(_call("put_blob", path=tmp))


def get_blob(sha: str) -> bytes:
    if _brokered():
        copy = Path(str(_call("get_blob", sha=sha)))
        data = copy.read_bytes()
        copy.unlink(missing_ok=True)
    else:
        data = (home_root() / "blobs" / sha).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha:
        raise UsageError(f"blob {sha} is corrupt")
    return data


def image_of(path: Path) -> dict[str, Any]:
    """The before-image of ``path``: its bytes (stored as a blob) and permission bits."""
    if not path.is_file():
        if path.exists():
            raise UsageError(f"{path} exists and is not a regular file")
        return {"blob": None, "mode": None}
    return {"blob": put_blob(path.read_bytes()), "mode": stat.S_IMODE(path.stat().st_mode)}


def restore(path: Path, image: dict[str, Any]) -> None:
    """Put ``path`` back as the image says: its exact bytes and mode, or absent."""
    if image.get("blob") is None:
        path.unlink(missing_ok=True)
        return
    atomic_write(path, get_blob(str(image["blob"])), image.get("mode"))


def sha_of(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def checkpoints(action_id: str) -> list[Any]:
    """The data of every checkpoint the action recorded, oldest first (from the ledger)."""
    if _brokered():
        return list(_call("checkpoints", action_id=action_id))
    from sp.commands.home import Home
    from sp.ledger import events as ev

    store = Home(str(home_root())).open()
    try:
        return [r.event.data for r in store.read_stream(action_id)
                if isinstance(r.event, ev.ActionCheckpointed)]
    finally:
        store.close()


def compensated_action(explicit: str | None) -> str:
    """The action an undo compensates: given on the command line, or the ``compensates`` of
    the running compensation's own submission (a plan's rollback records it there)."""
    if explicit:
        return explicit
    from sp.commands.home import Home
    from sp.ledger import events as ev

    me = os.environ.get("SP_ACTION_ID")
    if not me:
        raise UsageError("undo needs the original action id (argument) or $SP_ACTION_ID")
    if _brokered():
        original = _call("compensates")
        if isinstance(original, str):
            return original
        raise UsageError(f"action {me} does not say which action it compensates")
    store = Home(str(home_root())).open()
    try:
        for r in store.read_stream(me):
            if isinstance(r.event, ev.ActionSubmitted):
                original = r.event.payload.get("compensates")
                if isinstance(original, str):
                    return original
    finally:
        store.close()
    raise UsageError(f"action {me} does not say which action it compensates")


def recorded(action_id: str, key: str) -> dict[str, Any] | None:
    """The last checkpoint of ``action_id`` that holds ``key``."""
    for data in reversed(checkpoints(action_id)):
        if isinstance(data, dict) and key in data:
            return data
    return None


def report(data: dict[str, Any], step: int) -> None:
    """Record ``data`` as a checkpoint of the running action (an event), when inside one."""
    from sp.runner import api

    if api.current_action() is not None:
        api.checkpoint(data, step=step)


def resolve(path: str) -> Path:
    return Path(os.path.abspath(path))
