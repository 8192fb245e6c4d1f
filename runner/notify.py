"""Notifications when an action finishes: run a command, or POST JSON to a URL.

The task's ``notify:`` (``sp.agents.config.Notify``) says when and where::

    notify: {on: [completion, failure], command: [notify-send, "sp"], url: https://hooks/x}

:func:`send` delivers one :class:`Notification` to every channel the ``Notify`` names and
returns one :class:`NotifyResult` per channel. A delivery failure (the command exits non-zero or
times out, the server answers non-2xx or cannot be reached) never raises: it comes back as
``ok=False`` with a one-line ``detail``, for the caller to record as an event after the commit.
Only programming errors raise (a ``Notify`` with no channel, a URL that is not http(s)).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from http.client import HTTPException
from typing import Any, Literal

import msgspec

from sp.agents.config import Notify

# Final states that count as each ``on:`` word. "failure" is an action that failed for good:
# ``failed``, and ``skipped`` (it failed, and its recovery strategy let its dependents go on).
# A cancel is a person's decision (they know already) and an interruption is not an outcome
# (the action resumes or waits for a person), so neither notifies.
EVENT_STATES: dict[str, frozenset[str]] = {
    "completion": frozenset({"completed"}),
    "failure": frozenset({"failed", "skipped"}),
}

DETAIL_MAX = 300  # characters of command stderr or response body kept in a detail
_STDERR_TAIL = 4096  # bytes of a notify command's stderr read back for the detail


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """What a notification says: the action and its outcome. Sent as JSON (stdin or body)."""

    action_id: str
    name: str
    state: str  # "completed", "failed", ...
    agent: str | None = None
    task: str | None = None
    exit_code: int | None = None
    duration_ms: int = 0
    error_kind: str | None = None
    error: str = ""
    result: dict[str, Any] = {}
    log_path: str | None = None


class NotifyResult(msgspec.Struct, frozen=True, kw_only=True):
    """How one delivery went, for the caller to record."""

    ok: bool
    channel: Literal["command", "url"]
    detail: str


def wants(notify: Notify, state: str) -> bool:
    """True if ``notify.on`` covers an action that ended in ``state``.

    ``completion`` matches ``completed``; ``failure`` matches ``failed`` and ``skipped``, not
    ``cancelled`` or ``interrupted`` (see :data:`EVENT_STATES`).
    """
    return any(state in EVENT_STATES[word] for word in notify.on)


def send(notify: Notify, n: Notification, *, timeout_s: float = 10) -> list[NotifyResult]:
    """Deliver ``n`` to the command and/or URL of ``notify`` if its ``on`` covers ``n.state``.

    Returns one result per channel, command first; an empty list when ``notify.on`` does not
    cover the state (nothing was sent). Each channel gets at most ``timeout_s`` seconds (for a
    URL: per connect and per read, as urllib counts it).

    :raises ValueError: ``notify`` names no channel, an empty command, or a non-http(s) URL;
        or ``timeout_s`` is not positive. The agent decoder refuses these, so reaching here
        with one is a bug.
    """
    if notify.command is None and notify.url is None:
        raise ValueError("notify needs a command or a url")
    if notify.command is not None and not notify.command:
        raise ValueError("notify.command is empty")
    if notify.url is not None and not notify.url.startswith(("http://", "https://")):
        raise ValueError(f"notify.url must be http(s), got {notify.url!r}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if not wants(notify, n.state):
        return []
    body = msgspec.json.encode(n)
    results: list[NotifyResult] = []
    if notify.command is not None:
        results.append(_run_command(notify.command, n, body, timeout_s))
    if notify.url is not None:
        results.append(_post(notify.url, body, timeout_s))
    return results


def notify_env(n: Notification) -> dict[str, str]:
    """The ``SP_NOTIFY_*`` variables a notify command receives (besides JSON on stdin)."""
    return {
        "SP_NOTIFY_ACTION_ID": n.action_id,
        "SP_NOTIFY_NAME": n.name,
        "SP_NOTIFY_STATE": n.state,
        "SP_NOTIFY_EXIT_CODE": "" if n.exit_code is None else str(n.exit_code),
        "SP_NOTIFY_DURATION_MS": str(n.duration_ms),
        "SP_NOTIFY_ERROR_KIND": n.error_kind or "",
        "SP_NOTIFY_ERROR": n.error,
        "SP_NOTIFY_AGENT": n.agent or "",
        "SP_NOTIFY_TASK": n.task or "",
        "SP_NOTIFY_LOG_PATH": n.log_path or "",
    }


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 3] + "..."


def _run_command(argv: list[str], n: Notification, body: bytes,
                 timeout_s: float) -> NotifyResult:
    # The notifier is not inside the action: drop the variables that would make `sp checkpoint`
    # or runner.api inside it write to the (finished) action.
    env = {k: v for k, v in os.environ.items()
           if k not in ("SP_ACTION_ID", "SP_ATTEMPT", "SP_CHECKPOINT", "SP_RESUME_STEP")}
    env.update(notify_env(n))
    # stderr goes to a temporary file, not a pipe: a chatty notifier cannot fill memory, and we
    # only read back its tail for the detail.
    with tempfile.TemporaryFile() as err:
        try:
            # Its own session, so that a timeout kills whatever the command started, too.
            child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=err, env=env, start_new_session=True)
        except OSError as e:
            return NotifyResult(ok=False, channel="command",
                                detail=_clip(f"cannot run {argv[0]}: {e.strerror or e}"))
        try:
            child.communicate(body, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_session(child)
            child.wait()
            return NotifyResult(ok=False, channel="command",
                                detail=f"{argv[0]} timed out after {timeout_s:g}s (killed)")
        code = child.returncode
        if code == 0:
            return NotifyResult(ok=True, channel="command", detail="exit 0")
        size = err.seek(0, os.SEEK_END)
        err.seek(max(0, size - _STDERR_TAIL))
        tail = err.read().decode("utf-8", "replace").strip().splitlines()
        why = f"killed by signal {-code}" if code < 0 else f"exit {code}"
        last = f": {tail[-1]}" if tail else ""
        return NotifyResult(ok=False, channel="command", detail=_clip(f"{argv[0]} {why}{last}"))


def _kill_session(child: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        child.kill()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirected POST would be replayed as a bodiless GET: report it as a failure instead."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def _post(url: str, body: bytes, timeout_s: float) -> NotifyResult:
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "sp-notify"},
    )
    try:
        with _opener.open(request, timeout=timeout_s) as response:
            status = int(response.status)
            response.read(DETAIL_MAX)
    except urllib.error.HTTPError as e:  # any non-2xx answer (redirects included, see above)
        with e:
            text = e.read(DETAIL_MAX).decode("utf-8", "replace")
        where = f" to {e.headers.get('Location')}" if 300 <= e.code < 400 else ""
        return NotifyResult(ok=False, channel="url",
                            detail=_clip(f"HTTP {e.code} {e.reason}{where}: {text}".rstrip(": ")))
    except urllib.error.URLError as e:
        return NotifyResult(ok=False, channel="url", detail=_clip(f"{url}: {e.reason}"))
    except TimeoutError:
        return NotifyResult(ok=False, channel="url",
                            detail=f"{url}: no answer within {timeout_s:g}s")
    except (HTTPException, OSError, ValueError) as e:
        # A malformed port, a dropped connection mid-answer, a bad status line.
        return NotifyResult(ok=False, channel="url",
                            detail=_clip(f"{url}: {type(e).__name__}: {e}"))
    if not 200 <= status < 300:
        return NotifyResult(ok=False, channel="url", detail=f"HTTP {status}")
    return NotifyResult(ok=True, channel="url", detail=f"HTTP {status}")
