"""The registry probe that lets the install_dependencies tests skip when offline: it says
"unreachable" only when nothing answers (refused, unroutable, not HTTP, no network at all), and
"reachable" whenever an HTTP server answers, whatever its status. Real sockets throughout."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import REPO
from tests.registry import unreachable


@contextmanager
def http_server(status: int) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 answering every HEAD with ``status``; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # the name http.server calls
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/six/"
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("status", [200, 404, 503])
def test_any_http_answer_is_reachable(status: int) -> None:
    with http_server(status) as url:
        assert unreachable(url) is None


def test_a_closed_port_is_unreachable_at_once() -> None:
    url = f"http://127.0.0.1:{closed_port()}/"
    began = time.monotonic()
    reason = unreachable(url)
    assert reason is not None and reason.startswith(url) and "refused" in reason
    assert time.monotonic() - began < 3  # refused at once: no waiting for the timeout


def test_an_unroutable_address_is_unreachable_within_the_timeout() -> None:
    url = "http://192.0.2.1:81/"  # TEST-NET-1 (RFC 5737): routed nowhere
    began = time.monotonic()
    reason = unreachable(url, timeout=0.5)
    assert reason is not None and reason.startswith(url)
    assert time.monotonic() - began < 4  # bounded by its timeout: it never hangs a session


def test_a_listener_that_does_not_speak_http_is_unreachable() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def hang_up() -> None:
            conn, _ = listener.accept()
            conn.sendall(b"SSH-2.0-not-a-registry\r\n")
            conn.close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        reason = unreachable(f"http://127.0.0.1:{port}/")
        thread.join(10)
    assert reason is not None


@pytest.mark.timeout(300)
def test_offline_the_registry_tests_skip_and_nothing_fails() -> None:
    """The install_dependencies tests in a network namespace of their own (no network at all,
    as on a plane): every test that needs a registry is skipped with the reason, the others
    pass, and the run is green."""
    unshare = shutil.which("unshare")
    assert unshare is not None, "util-linux's unshare is needed to take the network away"
    p = subprocess.run(
        [unshare, "--net", sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider",
         "tests/test_actions_deps.py"],
        capture_output=True, text=True, timeout=280, cwd=REPO)
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    summary = out.splitlines()[-1]
    assert " passed" in summary and " skipped" in summary, out
    assert " failed" not in summary and " error" not in summary, out
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert all("is unreachable (" in line for line in skipped), skipped
    assert any("PyPI is unreachable (https://pypi.org/simple/six/: " in line
               for line in skipped), skipped
    assert any("the npm registry is unreachable (https://registry.npmjs.org/is-number: " in line
               for line in skipped), skipped
