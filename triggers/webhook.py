"""Webhook triggers: ``POST /hooks/NAME`` with a shared secret; the JSON body becomes the
action's payload.

```yaml
triggers:
  network:
    - port: 8080                 # host: 127.0.0.1 unless set
      protocol: webhook
      name: github               # POST http://127.0.0.1:8080/hooks/github (default: the action)
      auth: hmac                 # token (default) | hmac
      secret_env: GITHUB_SECRET  # or secret: ... (recorded in the ledger: prefer the env)
      max_body: 1M
      action: handle_webhook
```

* ``auth: token``: ``Authorization: Bearer <secret>`` or ``X-SP-Token: <secret>``.
* ``auth: hmac``: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`` (GitHub's).
* Secrets are compared in constant time and never logged (nor are headers).
* Answers: 202 ``{"action_id"}``; 200 ``{"action_id", "duplicate": true}`` for a delivery id
  (``X-GitHub-Delivery`` or ``X-Request-Id``) already seen; 401 wrong or missing secret;
  413 body over ``max_body`` (judged by Content-Length, before reading); 411 no
  Content-Length; 400 malformed JSON or not an object; 404 unknown hook; 405 not POST.
  Nothing is recorded or enqueued unless the answer is 202. An empty body is ``{}``.

Webhook triggers on the same port share one server (one :class:`WebhookServer` source).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msgspec

from sp.agents import trigger_names
from sp.agents.trigger_file import TriggerFile, WebhookTrigger
from sp.ledger import jsoninput
from sp.ledger.errors import SpError, UsageError
from sp.triggers.sources import Source, SourceContext

PREFIX = "/hooks/"
READ_TIMEOUT_S = 10.0  # a client that stalls mid-request is dropped after this
DRAIN_MAX = 1 << 20  # unread body bytes read and dropped before closing, so the client gets
# the answer instead of a TCP reset; a bigger unread body is cut off
DELIVERY_HEADERS = ("X-GitHub-Delivery", "X-Request-Id")
DELIVERY_MAX = 200


class Hook(NamedTuple):
    name: str
    trigger: WebhookTrigger
    secret: bytes


class Reply(Exception):
    """An answer decided before the end of the request (an error)."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def resolve_secret(t: WebhookTrigger, where: str) -> bytes:
    """The hook's secret, from the file or the environment.

    :raises UsageError: none is set, or the variable is unset or empty (its value is never
        part of a message).
    """
    if t.secret_env is not None:
        value = os.environ.get(t.secret_env, "")
        if not value:
            raise UsageError(f"{where}: ${t.secret_env} is not set (the hook's secret)")
        return value.encode()
    if not t.secret:
        raise UsageError(f"{where}: a shared secret is required: set secret or secret_env")
    return t.secret.encode()


def authorized(hook: Hook, headers: Any, body: bytes | None) -> bool:
    """Whether the request carries the hook's secret (token) or a valid signature (hmac).

    ``body`` is needed for hmac only. Comparisons take constant time.
    """
    if hook.trigger.auth == "hmac":
        if body is None:
            return False
        given = str(headers.get("X-Hub-Signature-256", ""))
        if not given.startswith("sha256="):
            return False
        expected = hmac.new(hook.secret, body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected.encode(), given[7:].strip().lower().encode())
    token = str(headers.get("X-SP-Token", "")).strip()
    auth = str(headers.get("Authorization", ""))
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        token = value.strip()
    return bool(token) and hmac.compare_digest(token.encode(), hook.secret)


def decode_body(body: bytes) -> dict[str, Any]:
    """:raises Reply: 400 for malformed JSON or anything but an object."""
    if not body.strip():
        return {}
    try:
        value = jsoninput.decode(body)
    except UsageError as e:
        raise Reply(400, f"malformed JSON: {e}") from None
    if not isinstance(value, dict):
        raise Reply(400, f"expected a JSON object, got {type(value).__name__}")
    return value


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog (socketserver's default is 5): connections the kernel completes
    # while the accept loop is busy wait here instead of being reset. 50 senders at once
    # lost 22 of 500 deliveries with 5. The kernel caps it at net.core.somaxconn.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], hooks: dict[str, Hook],
                 ctx: SourceContext, label: str) -> None:
        self.hooks = hooks
        self.ctx = ctx
        self.label = label
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        err = sys.exc_info()[1]
        self.ctx.log(f"{self.label}: request from {client_address[0]} failed: "
                     f"{type(err).__name__}: {err}")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # so that "Expect: 100-continue" is answered (or refused)
    timeout = READ_TIMEOUT_S

    def version_string(self) -> str:
        return "sp-webhook"

    # -- plumbing ---------------------------------------------------------------------------
    def handle(self) -> None:
        try:
            super().handle()
        finally:
            self.server.ctx.close()  # this request thread's ledger connection, if it opened one

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The path without its query, the status: never headers (they carry the secret).
        self.server.ctx.log(f"{self.server.label}: {self.command} {self._path()} -> {code}")

    def log_message(self, format: str, *args: Any) -> None:
        self.server.ctx.log(f"{self.server.label}: {format % args}")

    def _path(self) -> str:
        return urlsplit(self.path).path

    def _send(self, status: int, doc: dict[str, Any],
              extra: dict[str, str] | None = None) -> None:
        body = msgspec.json.encode(doc) + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    def _drain(self, length: int) -> None:
        left = min(length, DRAIN_MAX)
        with contextlib.suppress(OSError):
            self.connection.settimeout(1.0)
            while left > 0:
                chunk = self.rfile.read1(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)

    # -- checks -----------------------------------------------------------------------------
    def _hook(self) -> Hook:
        path = self._path()
        hook = self.server.hooks.get(path[len(PREFIX):]) if path.startswith(PREFIX) else None
        if hook is None:
            raise Reply(404, f"no hook at {path}")
        return hook

    def _length(self, hook: Hook) -> int:
        text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise Reply(411, "chunked bodies are not accepted: send Content-Length")
        if text is None:
            raise Reply(411, "Content-Length is required")
        try:
            length = int(text)
        except ValueError:
            raise Reply(400, "bad Content-Length") from None
        if length < 0:
            raise Reply(400, "bad Content-Length")
        if length > hook.trigger.max_body:
            raise Reply(413, f"body of {length} bytes is over the limit of "
                             f"{int(hook.trigger.max_body)}")
        return length

    def _precheck(self) -> tuple[Hook, int]:
        hook = self._hook()
        if self.command != "POST":
            raise Reply(405, "only POST is accepted")
        length = self._length(hook)
        if hook.trigger.auth == "token" and not authorized(hook, self.headers, None):
            raise Reply(401, "wrong or missing secret")
        return hook, length

    def handle_expect_100(self) -> bool:
        try:
            self._precheck()
        except Reply as r:
            self._refuse(r, drain=False)  # the client waits for our word before sending it
            return False
        return super().handle_expect_100()

    def _refuse(self, r: Reply, drain: bool) -> None:
        extra = {"Allow": "POST"} if r.status == 405 else None
        self._send(r.status, {"error": r.error}, extra)
        text = self.headers.get("Content-Length", "")
        if drain and text.isdigit():
            self._drain(int(text))

    # -- methods ----------------------------------------------------------------------------
    def do_POST(self) -> None:
        body: bytes | None = None
        try:
            hook, length = self._precheck()
            body = self.rfile.read(length)
            if len(body) < length:
                raise Reply(400, "body shorter than its Content-Length")
            if not authorized(hook, self.headers, body):
                raise Reply(401, "wrong or missing secret")
            payload = decode_body(body)
            delivery = next((str(self.headers[h]).strip() for h in DELIVERY_HEADERS
                             if self.headers.get(h)), "")
            if len(delivery) > DELIVERY_MAX:
                raise Reply(400, "delivery id too long")
        except Reply as r:
            self._refuse(r, drain=body is None)
            return
        self._fire(hook, payload, delivery, len(body))

    def _fire(self, hook: Hook, payload: dict[str, Any], delivery: str, size: int) -> None:
        ctx = self.server.ctx
        key = f"webhook:{hook.name}:{delivery}" if delivery else None
        detail = f"POST {PREFIX}{hook.name}, {size} bytes"
        if delivery:
            detail += f", delivery {delivery}"
        try:
            action_id = ctx.fire(hook.name, trigger_names.WEBHOOK, hook.trigger.action, payload,
                                 detail=detail, key=key)
        except SpError as e:
            ctx.log(f"{self.server.label}: {PREFIX}{hook.name}: not fired: {e}")
            status = 503 if getattr(e, "exit_code", 1) == 75 else 500
            self._send(status, {"error": f"not recorded: {e}"})
            return
        if action_id is None:
            row = ctx.store().query_one(
                "SELECT action_id FROM actions WHERE idem_key = ?", (key,))
            self._send(200, {"action_id": row[0] if row else None, "duplicate": True})
            return
        self._send(202, {"action_id": action_id})

    def _not_post(self) -> None:
        try:
            self._hook()
            raise Reply(405, "only POST is accepted")
        except Reply as r:
            self._refuse(r, drain=True)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_post


class WebhookServer:
    """One HTTP server for the webhook triggers that share a host and port."""

    def __init__(self, host: str, port: int, hooks: dict[str, Hook]) -> None:
        self.host = host
        self.port = port
        self.hooks = hooks
        self.name = f"webhook:{host}:{port}"
        self.bound = threading.Event()  # set while listening (for tests and logs)

    def run(self, ctx: SourceContext, stop: threading.Event) -> None:
        try:
            server = _Server((self.host, self.port), self.hooks, ctx, self.name)
        except OSError as e:
            raise SpError(f"{self.name}: cannot listen: {e.strerror or e}") from None
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                  name=f"sp-{self.name}", daemon=True)
        thread.start()
        self.bound.set()
        ctx.log(f"{self.name}: listening for "
                f"{', '.join(PREFIX + n for n in sorted(self.hooks))}")
        try:
            while not stop.wait(0.25):
                if not thread.is_alive():
                    raise SpError(f"{self.name}: the server stopped")
        finally:
            self.bound.clear()
            if thread.is_alive():
                server.shutdown()
            server.server_close()


def build(doc: TriggerFile, ctx: SourceContext) -> list[Source]:
    """One server per port, serving every webhook trigger on it.

    A hook whose secret cannot be had here (its variable unset or empty in the daemon's
    environment, an empty inline secret applied by an older sp) is not served: one log line
    names it, and every other trigger starts (one bad hook must not stop them all).

    :raises UsageError: two hooks that cannot share a port.
    """
    servers: dict[int, WebhookServer] = {}
    for i, t in enumerate(doc.triggers.network):
        name = trigger_names.webhook(t)
        where = f"{ctx.source or 'trigger file'}: $.triggers.network[{i}]"
        try:
            secret = resolve_secret(t, where)
        except UsageError as e:
            ctx.log(f"webhook /hooks/{name} not started: {e}")
            continue
        hook = Hook(name, t, secret)
        server = servers.setdefault(t.port, WebhookServer(t.host, t.port, {}))
        if server.host != t.host or name in server.hooks:
            raise UsageError(f"{where}: conflicts with another hook on port {t.port}")
        server.hooks[name] = hook
    return list(servers.values())


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for tests and examples)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
