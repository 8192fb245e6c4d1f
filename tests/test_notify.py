"""Notifications: a real HTTP server on 127.0.0.1 and real notify commands."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sp.agents.config import Notify
from sp.runner.notify import Notification, NotifyResult, notify_env, send, wants

DONE = Notification(
    action_id="a1b2c3", name="daily_arxiv_scan", agent="research-001", task="daily_arxiv_scan",
    state="completed", exit_code=0, duration_ms=1234, result={"papers": 12},
    log_path="/home/logs/a1b2c3.log",
)
FAILED = msgspec.structs.replace(DONE, state="failed", exit_code=3, error_kind="exit_code",
                                 error="exit 3", result={})


class Hook:
    """A webhook receiver: records each POST and answers with ``status``."""

    def __init__(self) -> None:
        self.status = 200
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.requests.append((self.path, dict(self.headers), body))
                self.send_response(hook.status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"server says no" if hook.status >= 400 else b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hook]:
    # A proxy from the environment would intercept the POST to 127.0.0.1.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    h = Hook()
    thread = threading.Thread(target=h.server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield h
    finally:
        h.server.shutdown()
        h.server.server_close()
        thread.join()


def test_url_receives_the_notification_as_json(hook: Hook) -> None:
    results = send(Notify(url=hook.url), DONE)
    assert results == [NotifyResult(ok=True, channel="url", detail="HTTP 200")]
    [(path, headers, body)] = hook.requests
    assert path == "/hook"
    assert headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["action_id"] == "a1b2c3"
    assert doc["state"] == "completed"
    assert doc["result"] == {"papers": 12}
    assert msgspec.json.decode(body, type=Notification) == DONE


def test_url_error_status_is_not_ok(hook: Hook) -> None:
    hook.status = 500
    [result] = send(Notify(url=hook.url), FAILED)
    assert not result.ok
    assert result.channel == "url"
    assert result.detail.startswith("HTTP 500")
    assert "server says no" in result.detail
    assert len(hook.requests) == 1


def test_url_redirect_is_not_followed(hook: Hook) -> None:
    hook.status = 302
    [result] = send(Notify(url=hook.url), DONE)
    assert not result.ok
    assert result.detail.startswith("HTTP 302")
    assert len(hook.requests) == 1


def test_refused_port_fails_quickly() -> None:
    # Bound but not listening: connecting is refused, and nobody else can take the port.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        began = time.monotonic()
        [result] = send(Notify(url=f"http://127.0.0.1:{port}/x"), DONE, timeout_s=5)
        took = time.monotonic() - began
    assert not result.ok
    assert result.channel == "url"
    assert "refused" in result.detail.lower()
    assert took < 2


def test_silent_server_times_out() -> None:
    # Listening but never answering: the read times out; the result says so.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        [result] = send(Notify(url=f"http://127.0.0.1:{s.getsockname()[1]}/"), DONE,
                        timeout_s=0.3)
    assert not result.ok
    assert "0.3s" in result.detail or "timed out" in result.detail


def test_command_gets_json_on_stdin_and_env(tmp_path: Path) -> None:
    out = tmp_path / "stdin.json"
    env_out = tmp_path / "env.json"
    script = (
        "import json, os, sys; "
        f"open({str(out)!r}, 'wb').write(sys.stdin.buffer.read()); "
        f"json.dump({{k: v for k, v in os.environ.items() if k.startswith('SP_')}}, "
        f"open({str(env_out)!r}, 'w'))"
    )
    results = send(Notify(command=[sys.executable, "-c", script]), FAILED)
    assert results == [NotifyResult(ok=True, channel="command", detail="exit 0")]
    assert msgspec.json.decode(out.read_bytes(), type=Notification) == FAILED
    env = json.loads(env_out.read_text())
    assert env["SP_NOTIFY_ACTION_ID"] == "a1b2c3"
    assert env["SP_NOTIFY_STATE"] == "failed"
    assert env["SP_NOTIFY_EXIT_CODE"] == "3"
    assert env["SP_NOTIFY_ERROR_KIND"] == "exit_code"
    assert {k: v for k, v in env.items() if k.startswith("SP_NOTIFY_")} == notify_env(FAILED)


def test_command_is_not_inside_the_action(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker run inside an action must not hand its SP_ACTION_ID on to the notifier.
    monkeypatch.setenv("SP_ACTION_ID", "outer")
    monkeypatch.setenv("SP_CHECKPOINT", '{"n": 1}')
    out = tmp_path / "seen"
    script = f"import os; open({str(out)!r}, 'w').write(os.environ.get('SP_ACTION_ID', '-'))"
    [result] = send(Notify(command=[sys.executable, "-c", script]), DONE)
    assert result.ok
    assert out.read_text() == "-"


def test_failing_command_is_not_ok() -> None:
    script = "import sys; sys.stdin.read(); sys.stderr.write('no route to pager\\n'); sys.exit(4)"
    [result] = send(Notify(command=[sys.executable, "-c", script]), FAILED)
    assert not result.ok
    assert result.channel == "command"
    assert "exit 4" in result.detail
    assert "no route to pager" in result.detail


def test_missing_command_is_not_ok(tmp_path: Path) -> None:
    [result] = send(Notify(command=[str(tmp_path / "no-such-notifier")]), DONE)
    assert not result.ok
    assert "cannot run" in result.detail


def test_command_timeout_kills_it_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # The shell starts a long child and waits; a timeout must kill the child too.
    script = f"sleep 30 & echo $! > {pidfile}; wait"
    began = time.monotonic()
    [result] = send(Notify(command=["sh", "-c", script]), DONE, timeout_s=0.5)
    assert time.monotonic() - began < 5
    assert not result.ok
    assert "timed out after 0.5s" in result.detail
    child = int(pidfile.read_text())
    # SIGKILL is already delivered; poll for the exit to show in /proc (no fixed sleep).
    deadline = time.monotonic() + 5
    while not _dead(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _dead(child)


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_on_failure_only_skips_a_completed_action(hook: Hook, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    notify = Notify(on=["failure"], url=hook.url,
                    command=["sh", "-c", f"touch {marker}"])
    assert send(notify, DONE) == []
    assert hook.requests == []
    assert not marker.exists()
    results = send(notify, FAILED)
    assert [r.channel for r in results] == ["command", "url"]
    assert all(r.ok for r in results)
    assert marker.exists()
    assert len(hook.requests) == 1


@pytest.mark.parametrize(
    ("on", "state", "expected"),
    [
        (["completion"], "completed", True),
        (["completion"], "failed", False),
        (["failure"], "failed", True),
        (["failure"], "skipped", True),
        (["failure"], "cancelled", False),
        (["failure"], "interrupted", False),
        (["completion", "failure"], "completed", True),
        (["completion", "failure"], "failed", True),
        ([], "failed", False),
    ],
)
def test_wants(on: list[Any], state: str, expected: bool) -> None:
    assert wants(Notify(on=on, url="http://127.0.0.1/"), state) is expected


@pytest.mark.parametrize(
    "notify",
    [Notify(), Notify(command=[]), Notify(url="file:///etc/passwd"), Notify(url="ftp://x/")],
)
def test_programming_errors_raise(notify: Notify) -> None:
    with pytest.raises(ValueError):
        send(notify, DONE)


def test_non_positive_timeout_raises() -> None:
    with pytest.raises(ValueError):
        send(Notify(url="http://127.0.0.1/"), DONE, timeout_s=0)
