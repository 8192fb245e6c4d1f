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
* ``put_blob``: a file the action wrote in its own folder (a regular file with one name, owned
  by the action, at most :data:`MAX_BLOB_BYTES`) goes into the content-addressed blob store
  (hashed by the worker), is recorded as ``action.blob_stored`` and removed from the folder;
  ``get_blob``: a blob, by hash, copied into the broker's folder under a fresh name, only for
  the action that stored it, the action it compensates or an action of its plan
  (:mod:`sp.commands.blobs`);
* ``alert``: ``alert.sent`` from the action.

The worker is root and the action owns its folder, so the worker acts only on what it checked
(:mod:`sp.runner.beneath`): it holds directory fds of the action's folder and of the broker's folder
from the attempt's start, reaches every file relative to them without following a symlink
(``openat2`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``, else ``openat(O_NOFOLLOW)`` per
component), checks the opened fd (``fstat``), reads or writes through it, creates with
``O_CREAT | O_EXCL | O_NOFOLLOW`` and removes a name only while it still names the inode it
read. Swapping a folder for a symlink, or planting a symlink or a hard link where the worker
reads or writes, gets a refusal, never a file outside the action's folder.

The client side (:func:`call`) is what :mod:`sp.runner.api`, ``sp checkpoint``/``sp progress`` and
:mod:`sp.actions.blobs` use when ``$SP_BROKER`` is set. A request the worker does not answer within
:data:`CALL_TIMEOUT_S` (it died, or the attempt is being stopped) fails the call.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from sp.runner import beneath

CALL_TIMEOUT_S = 60.0
MAX_REQUEST_BYTES = 1 << 20  # one request line; a checkpoint's data is meant to be small
# The largest file put_blob takes (the worker reads it whole): before-images of config files,
# not disk images.
MAX_BLOB_BYTES = 64 << 20
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
                 folder: str, agent: str | None, uid: int | None = None) -> None:
        """``uid``: whom the action runs as (a policy's ``user:``); sp's own user by default."""
        self.store, self.home_root, self.action_id = store, home_root, action_id
        self.compensates, self.folder, self.agent = compensates, folder, agent
        self.offset = 0
        self.partial = b""
        self.requests_ino: tuple[int, int] | None = None
        # The action's folder (its TMPDIR) and the broker's folder in it, held by fd from here
        # on: every file the worker touches for the action is reached through them (beneath).
        tmpdir = os.path.dirname(folder)
        self.uid = os.geteuid() if uid is None else uid  # the action's files must be its own
        self.root = beneath.Folder(os.path.dirname(tmpdir), os.path.basename(tmpdir), self.uid)
        try:
            self.fd = self._broker_folder(os.path.basename(folder))
        except BaseException:
            self.root.close()
            raise

    def _broker_folder(self, name: str) -> int:
        """Create (or reuse) the broker's folder in the action's folder, empty of requests and
        responses of an earlier attempt; its fd. Whatever an earlier attempt left under that
        name that is not a folder (a symlink, say) is removed, never followed."""
        try:
            st = os.stat(name, dir_fd=self.root.fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=self.root.fd)
            st = None
        if st is None:
            os.mkdir(name, 0o700, dir_fd=self.root.fd)
        fd = beneath.open_dir(self.root.fd, name)
        for leftover in ("requests", "responses"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover, dir_fd=fd)
        return fd

    def close(self) -> None:
        """Release the folders' fds (the attempt is over)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.root.close()

    @property
    def env(self) -> dict[bytes, bytes]:
        return {_ENV.encode(): os.fsencode(self.folder)}

    def serve(self) -> int:
        """Answer every complete request written since the last call; how many."""
        if self.fd < 0:
            return 0
        data = self._new_requests()
        if not data:
            return 0
        data = self.partial + data
        end = data.rfind(b"\n") + 1
        self.partial = data[end:]
        if len(self.partial) > MAX_REQUEST_BYTES:
            self.partial = b""  # a runaway line: dropped, its caller times out
        answers = []
        for raw in data[:end].splitlines():
            answers.append(self._answer(raw))
        if answers:
            self._respond(b"".join(json.dumps(a, separators=(",", ":")).encode() + b"\n"
                                   for a in answers))
        return len(answers)

    def _new_requests(self) -> bytes:
        """What was appended to ``requests`` since the last call (a regular file of the
        action's, reached through the held folder; anything else there is ignored)."""
        try:
            fd = beneath.open_file(self.fd, "requests", self.uid, "requests")
        except OSError:  # none yet, or not a plain file of the action's: nothing to serve
            return b""
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self.requests_ino:  # a new file: read it from 0
                self.requests_ino, self.offset, self.partial = (st.st_dev, st.st_ino), 0, b""
            if st.st_size <= self.offset:
                return b""
            want = min(st.st_size - self.offset, 4 * MAX_REQUEST_BYTES)
            data = os.pread(fd, want, self.offset)
        finally:
            os.close(fd)
        self.offset += len(data)
        return data

    def _respond(self, out: bytes) -> None:
        """Append to ``responses`` in the held folder. A name there that is not the plain file
        the worker writes (a symlink, a hard link, a FIFO, the action's own file) is replaced;
        one that cannot be (a folder the action made) loses the answers: its calls time out."""
        try:
            fd = self._responses()
        except OSError:
            return
        try:
            os.write(fd, out)
        finally:
            os.close(fd)

    def _responses(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open("responses", flags, dir_fd=self.fd)
        except FileNotFoundError:
            fd = -1
        except OSError:  # ELOOP: a symlink; ENXIO: a FIFO nobody reads; ...
            os.unlink("responses", dir_fd=self.fd)
            fd = -1
        if fd >= 0:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
                os.close(fd)
                beneath.unlink_same(self.fd, "responses", st)
                fd = -1
        if fd < 0:
            fd = os.open("responses", flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=self.fd)
            if self.uid != os.geteuid():
                os.fchown(fd, self.uid, -1)
        return fd

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
        from sp.commands import actions

        step = req.get("step")
        if step is not None and not isinstance(step, int):
            raise ValueError("step must be a whole number")
        return actions.checkpoint(self.store, self.action_id, req.get("data"), step,
                                  by=f"action:{self.action_id}")

    def _op_progress(self, req: dict[str, Any]) -> None:
        from sp.commands import actions

        percent = req.get("percent")
        if percent is not None and not isinstance(percent, int | float):
            raise ValueError("percent must be a number")
        actions.progress(self.store, self.action_id, percent, str(req.get("message", "")),
                         by=f"action:{self.action_id}")

    def _op_compensates(self, req: dict[str, Any]) -> str | None:
        return self.compensates

    def _op_checkpoints(self, req: dict[str, Any]) -> list[Any]:
        from sp.ledger import events as ev

        target = req.get("action_id") or self.action_id
        if target not in (self.action_id, self.compensates):
            raise PermissionError(f"action {self.action_id} may read only its own checkpoints"
                                  " and those of the action it compensates")
        return [r.event.data for r in self.store.read_stream(str(target))
                if isinstance(r.event, ev.ActionCheckpointed)]

    def _op_put_blob(self, req: dict[str, Any]) -> str:
        path = str(req.get("path", ""))
        rel = self.root.relative(path)
        self.root.check()
        with beneath.parent_of(self.root.fd, rel) as (parent, name):
            fd = beneath.open_file(parent, name, self.uid, path)
            try:
                st = os.fstat(fd)
                data = beneath.read_capped(fd, MAX_BLOB_BYTES, path)
            finally:
                os.close(fd)
            from sp.commands import blobs
            from sp.host.blobs import store_blob

            sha = store_blob(Path(self.home_root), data)
            blobs.record_stored(self.store, self.action_id, sha, len(data),
                                by=f"action:{self.action_id}")
            beneath.unlink_same(parent, name, st)
        return sha

    def _op_get_blob(self, req: dict[str, Any]) -> str:
        sha = str(req.get("sha", ""))
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError("not a sha256")
        from sp.commands import blobs

        if not blobs.may_fetch(self.store, self.action_id, self.compensates, sha):
            raise PermissionError(f"blob {sha} was not stored by action {self.action_id},"
                                  " the action it compensates or its plan")
        data = (Path(self.home_root) / "blobs" / sha).read_bytes()
        # A fresh, unguessable name, created exclusively: nothing the action planted is used.
        name = f"blob-{sha}-{os.urandom(6).hex()}"
        beneath.create_file(self.fd, name, data, self.uid)
        return os.path.join(self.folder, name)

    def _op_alert(self, req: dict[str, Any]) -> None:
        from sp.runner.iot import record_alert

        record_alert(self.store, str(req.get("message", "")), str(req.get("level", "warning")),
                     f"action:{self.action_id}", self.agent or "")
