"""Webhook triggers over real HTTP on 127.0.0.1: good requests enqueue, bad ones get their
status and change nothing in the ledger."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sp.commands.home import Home
from sp.ledger.store import EventStore
from sp.triggers import webhook
from sp.triggers.sources import SourceContext
from tests.triggerkit import (
    apply_agent,
    context,
    doc_of,
    event_count,
    fired,
    payload_of,
    running,
    wait_for,
)

TOKEN = "t0ken-secret"
KEY = "hmac-secret"


class Client:
    def __init__(self, port: int, logs: list[str]) -> None:
        self.port = port
        self.logs = logs  # what the server logged

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, path, body=body if method != "GET" else None,
                         headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, (json.loads(data) if data else {})
        finally:
            conn.close()

    def post(self, path: str, doc: Any = None, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        body = raw if raw is not None else json.dumps(doc).encode()
        return self.request("POST", path, body, headers)


def sign(body: bytes, key: str = KEY) -> str:
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def hooks(store: EventStore, home: Home, tmp_path: Path) -> Iterator[Client]:
    """Two webhook triggers on one port (one server): token auth and GitHub-style HMAC."""
    apply_agent(store, tmp_path)
    port = webhook.free_port()
    doc = doc_of({"triggers": {"network": [
        {"port": port, "name": "deploy", "secret": TOKEN, "max_body": 1024,
         "action": "handle_webhook"},
        {"port": port, "name": "github", "auth": "hmac", "secret": KEY,
         "action": "handle_webhook"},
    ]}})
    (server,) = webhook.build(doc, context(home, doc))
    assert isinstance(server, webhook.WebhookServer)
    with running(server, home, doc) as r:
        wait_for(server.bound.is_set)
        yield Client(port, r.logs)


def test_good_token_enqueues_one_action_with_the_body_as_payload(
        hooks: Client, store: EventStore) -> None:
    body = {"ref": "refs/heads/main", "n": 3}
    status, doc = hooks.post("/hooks/deploy", body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 202
    action_id = doc["action_id"]
    assert fired(store) == [("deploy", action_id, "POST /hooks/deploy, 34 bytes")]
    assert payload_of(store, action_id) == body
    status, doc = hooks.post("/hooks/deploy", {}, headers={"X-SP-Token": TOKEN})
    assert status == 202 and doc["action_id"] != action_id


def test_good_hmac_enqueues(hooks: Client, store: EventStore) -> None:
    body = json.dumps({"action": "opened"}).encode()
    status, doc = hooks.post("/hooks/github", raw=body,
                             headers={"X-Hub-Signature-256": sign(body)})
    assert status == 202
    assert payload_of(store, doc["action_id"]) == {"action": "opened"}


def test_duplicate_delivery_id_enqueues_once(hooks: Client, store: EventStore) -> None:
    body = b'{"x": 1}'
    headers = {"X-Hub-Signature-256": sign(body), "X-GitHub-Delivery": "72d3162e-cc78"}
    first = hooks.post("/hooks/github", raw=body, headers=headers)
    before = event_count(store)
    second = hooks.post("/hooks/github", raw=body, headers=headers)
    assert first[0] == 202 and second == (200, {"action_id": first[1]["action_id"],
                                                "duplicate": True})
    assert event_count(store) == before and len(fired(store)) == 1


BIG = json.dumps({"blob": "x" * 2000}).encode()
BAD = [
    ("no secret", "POST", "/hooks/deploy", b"{}", {}, 401),
    ("wrong token", "POST", "/hooks/deploy", b"{}", {"Authorization": "Bearer nope"}, 401),
    ("token of the other scheme", "POST", "/hooks/deploy", b"{}",
     {"X-Hub-Signature-256": sign(b"{}", TOKEN)}, 401),
    ("bad hmac", "POST", "/hooks/github", b"{}", {"X-Hub-Signature-256": sign(b"{}", "no")},
     401),
    ("hmac of another body", "POST", "/hooks/github", b'{"a":1}',
     {"X-Hub-Signature-256": sign(b"{}")}, 401),
    ("no signature", "POST", "/hooks/github", b"{}", {}, 401),
    ("too large", "POST", "/hooks/deploy", BIG, {"X-SP-Token": TOKEN}, 413),
    ("malformed", "POST", "/hooks/deploy", b'{"a": ', {"X-SP-Token": TOKEN}, 400),
    ("not an object", "POST", "/hooks/deploy", b"[1, 2]", {"X-SP-Token": TOKEN}, 400),
    ("unknown path", "POST", "/hooks/nope", b"{}", {"X-SP-Token": TOKEN}, 404),
    ("outside /hooks", "POST", "/deploy", b"{}", {"X-SP-Token": TOKEN}, 404),
    ("GET", "GET", "/hooks/deploy", b"", {"X-SP-Token": TOKEN}, 405),
    ("PUT", "PUT", "/hooks/deploy", b"{}", {"X-SP-Token": TOKEN}, 405),
]


@pytest.mark.parametrize(("why", "method", "path", "body", "headers", "status"), BAD,
                         ids=[b[0] for b in BAD])
def test_bad_request_gets_its_status_and_changes_nothing(
        hooks: Client, store: EventStore, why: str, method: str, path: str, body: bytes,
        headers: dict[str, str], status: int) -> None:
    before = event_count(store)
    got, doc = hooks.request(method, path, body, headers)
    assert got == status, (why, doc)
    assert "error" in doc
    assert TOKEN not in json.dumps(doc) and KEY not in json.dumps(doc)
    assert event_count(store) == before
    assert fired(store) == []


def test_expect_continue_too_large_is_refused_before_the_body(hooks: Client,
                                                              store: EventStore) -> None:
    """curl's ``Expect: 100-continue``: a body over the limit is refused unsent."""
    with socket.create_connection(("127.0.0.1", hooks.port), timeout=5) as s:
        s.sendall(b"POST /hooks/deploy HTTP/1.1\r\nHost: x\r\nX-SP-Token: " + TOKEN.encode()
                  + b"\r\nContent-Length: 999999\r\nExpect: 100-continue\r\n\r\n")
        answer = s.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 413 ")
    assert fired(store) == []


def test_secrets_come_from_the_environment_and_are_required(
        monkeypatch: pytest.MonkeyPatch, home: Home) -> None:
    doc = doc_of({"triggers": {"network": [
        {"port": 9, "secret_env": "SP_TEST_HOOK_SECRET", "action": "handle_webhook"}]}})
    monkeypatch.delenv("SP_TEST_HOOK_SECRET", raising=False)
    logs: list[str] = []
    ctx = SourceContext(home, doc, source="/etc/sp/triggers.yaml", log=logs.append)
    assert webhook.build(doc, ctx) == []  # not served, and said so in one line
    assert logs == ["webhook /hooks/handle_webhook not started: /etc/sp/triggers.yaml: "
                    "$.triggers.network[0]: $SP_TEST_HOOK_SECRET is not set (the hook's secret)"]
    monkeypatch.setenv("SP_TEST_HOOK_SECRET", "from-env")
    (server,) = webhook.build(doc, context(home, doc))
    assert isinstance(server, webhook.WebhookServer)
    assert server.hooks["handle_webhook"].secret == b"from-env"


def test_secrets_are_never_logged(hooks: Client) -> None:
    assert hooks.post("/hooks/deploy?token=" + TOKEN, {},
                      headers={"Authorization": f"Bearer {TOKEN}"})[0] == 202
    assert hooks.post("/hooks/deploy", {}, headers={"X-SP-Token": TOKEN + "x"})[0] == 401
    body = b"{}"
    assert hooks.post("/hooks/github", raw=body,
                      headers={"X-Hub-Signature-256": sign(body)})[0] == 202
    logs = hooks.logs
    assert any("POST /hooks/deploy -> 202" in line for line in logs), logs
    assert any("POST /hooks/deploy -> 401" in line for line in logs), logs
    assert not any(TOKEN in line or KEY in line or sign(body) in line for line in logs), logs


def test_a_burst_of_500_signed_deliveries_50_at_once_loses_none(
        hooks: Client, store: EventStore) -> None:
    """50 senders at once, 500 valid deliveries over real sockets: a small listen backlog
    (http.server's default, 5) overflows and the kernel resets connections; none may be."""
    from concurrent.futures import ThreadPoolExecutor

    def deliver(i: int) -> tuple[int, str]:
        body = json.dumps({"n": i}).encode()
        try:
            status, doc = hooks.post("/hooks/github", raw=body, headers={
                "X-Hub-Signature-256": sign(body), "X-GitHub-Delivery": f"burst-{i}"})
        except OSError as e:  # a reset, a refused or timed-out connection
            return -1, f"{type(e).__name__}: {e}"
        return status, str(doc.get("action_id"))

    import shutil
    import subprocess

    if shutil.which("ss"):  # the kernel's view of the listen backlog (Send-Q), when ss exists
        out = subprocess.run(["ss", "-Hltn", f"sport = :{hooks.port}"], capture_output=True,
                             text=True, check=True).stdout.split()
        assert int(out[2]) >= min(1024, int(Path("/proc/sys/net/core/somaxconn").read_text()))
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(deliver, range(500)))
    errors = [r for r in results if r[0] != 202]
    assert errors == [], f"{len(errors)} of 500 deliveries failed, e.g. {errors[:3]}"
    ids = {r[1] for r in results}
    assert len(ids) == 500
    row = store.query_one(
        "SELECT count(*) FROM actions WHERE idem_key LIKE 'webhook:github:burst-%'")
    assert row is not None and row[0] == 500
