"""How a sandboxed action talks to sp: through its worker, never to the ledger itself.

An action confined by its agent's policy cannot open the ledger or the blob store (they are
outside what its policy allows, and must stay so: a process that can write the ledger could
append a ``policy.set`` clearing its own policy). Everything it may ask of sp goes through a
broker instead: ``$SP_BROKER`` names a folder inside the action's private ``TMPDIR``; the action
appends one JSON request per line to ``requests`` and waits for the line with the same id in
``responses``, which the worker writes while polling the attempt (every 20 ms). The worker does
the work as the attempt's owner and only for this action:

* ``checkpoint`` / ``progress`` of the action itself;
* ``checkpoints``: the recorded checkpoint data of the action itself or of the action it
  compensates (a rollback step), nothing else;
* ``put_blob``: a file the action wrote in its own folder goes into the content-addressed blob
  store (hashed by the worker); ``get_blob``: a blob, by hash, copied into the action's folder;
* ``alert``: ``alert.sent`` from the action.

The client side (:func:`call`) is what :mod:`runner.api`, ``sp checkpoint``/``sp progress`` and
:mod:`actions.blobs` use when ``$SP_BROKER`` is set. A request the worker does not answer within
:data:`CALL_TIMEOUT_S` (it died, or the attempt is being stopped) fails the call.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

CALL_TIMEOUT_S = 60.0
MAX_REQUEST_BYTES = 1 << 20  # one request line; a checkpoint's data is meant to be small
_ENV = "SP_BROKER"
_ids = itertools.count(1)
_offset: dict[str, int] = {}


class BrokerError(Exception):
    """The worker refused or did not answer a request."""


def active() -> bool:
    return bool(os.environ.get(_ENV))


# -- the action's side ------------------------------------------------------------------------


def call(op: str, **args: Any) -> Any:
    """Ask the worker; return its answer.

    :raises BrokerError: refused (the worker's reason) or not answered in time.
    """
    folder = os.environ.get(_ENV)
    if not folder:
        raise BrokerError("$SP_BROKER is not set: not inside a sandboxed sp action")
    rid = f"{os.getpid()}-{next(_ids)}-{os.urandom(4).hex()}"
    line = (json.dumps({"id": rid, "op": op, **args}, separators=(",", ":")) + "\n").encode()
    if len(line) > MAX_REQUEST_BYTES:
        raise BrokerError(f"{op}: the request is larger than {MAX_REQUEST_BYTES} bytes")
    fd = os.open(os.path.join(folder, "requests"), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o600)
    try:
        os.write(fd, line)  # one write with O_APPEND: lines of several processes never mix
    finally:
        os.close(fd)
    responses = os.path.join(folder, "responses")
    deadline = time.monotonic() + CALL_TIMEOUT_S
    delay = 0.002
    while time.monotonic() < deadline:
        answer = _find(responses, rid)
        if answer is not None:
            if "error" in answer:
                raise BrokerError(str(answer["error"]))
            return answer.get("result")
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    raise BrokerError(f"{op}: the worker did not answer within {CALL_TIMEOUT_S:g}s")


def _find(path: str, rid: str) -> dict[str, Any] | None:
    start = _offset.get(path, 0)
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return None
    end = data.rfind(b"\n") + 1
    found = None
    for raw in data[:end].splitlines():
        try:
            answer = json.loads(raw)
        except ValueError:
            continue
        if isinstance(answer, dict) and answer.get("id") == rid:
            found = answer
    # Only this process's own answers matter; earlier lines are skipped next time.
    if found is not None:
        _offset[path] = start + end
    return found


# -- the worker's side ------------------------------------------------------------------------


class Broker:
    """Serves one attempt's requests (call :meth:`serve` from the attempt's poll)."""

    def __init__(self, store: Any, home_root: str, action_id: str, compensates: str | None,
                 folder: str, agent: str | None) -> None:
        self.store, self.home_root, self.action_id = store, home_root, action_id
        self.compensates, self.folder, self.agent = compensates, folder, agent
        self.offset = 0
        self.partial = b""
        os.makedirs(os.path.dirname(folder), mode=0o700, exist_ok=True)  # the private TMPDIR
        os.makedirs(folder, mode=0o700, exist_ok=True)
        for name in ("requests", "responses"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))

    @property
    def env(self) -> dict[bytes, bytes]:
        return {_ENV.encode(): os.fsencode(self.folder)}

    def serve(self) -> int:
        """Answer every complete request written since the last call; how many."""
        path = os.path.join(self.folder, "requests")
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return 0
        if size <= self.offset:
            return 0
        with open(path, "rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        self.offset += len(data)
        data = self.partial + data
        end = data.rfind(b"\n") + 1
        self.partial = data[end:]
        if len(self.partial) > MAX_REQUEST_BYTES:
            self.partial = b""  # a runaway line: dropped, its caller times out
        answers = []
        for raw in data[:end].splitlines():
            answers.append(self._answer(raw))
        if answers:
            out = b"".join(json.dumps(a, separators=(",", ":")).encode() + b"\n" for a in answers)
            fd = os.open(os.path.join(self.folder, "responses"),
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, out)
            finally:
                os.close(fd)
        return len(answers)

    def _answer(self, raw: bytes) -> dict[str, Any]:
        try:
            req = json.loads(raw)
        except ValueError:
            return {"id": None, "error": "not a JSON request"}
        if not isinstance(req, dict):
            return {"id": None, "error": "not a JSON object"}
        rid = req.get("id")
        op = req.get("op")
        handler = getattr(self, f"_op_{op}", None) if isinstance(op, str) else None
        if handler is None:
            return {"id": rid, "error": f"unknown request {op!r}"}
        try:
            return {"id": rid, "result": handler(req)}
        except Exception as e:  # any failure is the caller's answer
            return {"id": rid, "error": f"{op}: {e}"}

    def _op_checkpoint(self, req: dict[str, Any]) -> int:
        from commands import actions

        step = req.get("step")
        if step is not None and not isinstance(step, int):
            raise ValueError("step must be a whole number")
        return actions.checkpoint(self.store, self.action_id, req.get("data"), step,
                                  by=f"action:{self.action_id}")

    def _op_progress(self, req: dict[str, Any]) -> None:
        from commands import actions

        percent = req.get("percent")
        if percent is not None and not isinstance(percent, int | float):
            raise ValueError("percent must be a number")
        actions.progress(self.store, self.action_id, percent, str(req.get("message", "")),
                         by=f"action:{self.action_id}")

    def _op_compensates(self, req: dict[str, Any]) -> str | None:
        return self.compensates

    def _op_checkpoints(self, req: dict[str, Any]) -> list[Any]:
        from ledger import events as ev

        target = req.get("action_id") or self.action_id
        if target not in (self.action_id, self.compensates):
            raise PermissionError(f"action {self.action_id} may read only its own checkpoints"
                                  " and those of the action it compensates")
        return [r.event.data for r in self.store.read_stream(str(target))
                if isinstance(r.event, ev.ActionCheckpointed)]

    def _inside(self, path: str) -> Path:
        real = os.path.realpath(path)
        root = os.path.realpath(os.path.dirname(self.folder))
        if not real.startswith(root + os.sep) or os.path.islink(path):
            raise PermissionError(f"{path} is not a file in the action's own folder")
        return Path(real)

    def _op_put_blob(self, req: dict[str, Any]) -> str:
        src = self._inside(str(req.get("path", "")))
        if not src.is_file():
            raise FileNotFoundError(f"{src} is not a regular file")
        from actions.blobs import store_blob

        sha = store_blob(Path(self.home_root), src.read_bytes())
        src.unlink()
        return sha

    def _op_get_blob(self, req: dict[str, Any]) -> str:
        sha = str(req.get("sha", ""))
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError("not a sha256")
        source = Path(self.home_root) / "blobs" / sha
        out = Path(self.folder) / f"blob-{sha}"
        shutil.copyfile(source, out)
        return str(out)

    def _op_alert(self, req: dict[str, Any]) -> None:
        from runner.iot import record_alert

        record_alert(self.store, str(req.get("message", "")), str(req.get("level", "warning")),
                     f"action:{self.action_id}", self.agent or "")
