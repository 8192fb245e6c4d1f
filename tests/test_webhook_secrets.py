"""Webhook secrets: compared in constant time, and never written anywhere: not in the ledger, the
logs, ``sp audit``, ``sp trigger list/show``, the daemon's output or any error message."""

from __future__ import annotations

import ast
import hashlib
import hmac
import http.client
import inspect
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from sp.triggers import webhook
from tests.conftest import Sp
from tests.triggerkit import AGENT

TOKEN = "tok-5f1e0c9a7d4b"
KEY = "key-9c2d7e4f1a3b"


def test_secrets_are_compared_with_compare_digest() -> None:
    """No ``==``/``!=`` anywhere near a secret in ``authorized``; compare_digest for both."""
    tree = ast.parse(inspect.getsource(webhook.authorized).lstrip())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "compare_digest"]
    assert len(calls) == 2
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq)
                                                 for op in node.ops):
            text = ast.unparse(node)
            assert not any(w in text for w in ("secret", "token", "expected", "given")), text


def _post(port: int, name: str, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", f"/hooks/{name}", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_secrets_appear_nowhere(sp: Sp, tmp_path: Path) -> None:
    agent = tmp_path / "watcher.yaml"
    agent.write_text(AGENT)
    sp("agent", "apply", str(agent))
    port = webhook.free_port()
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text(f"""\
agent: watcher
triggers:
  network:
    - {{port: {port}, name: deploy, secret_env: SP_T_TOKEN, action: handle_webhook}}
    - {{port: {port}, name: github, auth: hmac, secret_env: SP_T_KEY, action: handle_webhook}}
""")
    env = {**os.environ, "SP_T_TOKEN": TOKEN, "SP_T_KEY": KEY}
    outputs: list[str] = []
    daemon = sp.popen("daemon", "--config", str(triggers), "-c", "1", env=env)
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            assert daemon.poll() is None, daemon.communicate()
            assert time.monotonic() < deadline, "the daemon did not listen"
            time.sleep(0.05)
        body = b'{"ref": "main"}'
        good = "sha256=" + hmac.new(KEY.encode(), body, hashlib.sha256).hexdigest()
        bad = "sha256=" + hmac.new(TOKEN.encode(), body, hashlib.sha256).hexdigest()
        assert _post(port, "deploy", body, {"X-SP-Token": TOKEN + "x"}) == 401
        assert _post(port, "deploy", body, {"Authorization": f"Bearer {KEY}"}) == 401
        assert _post(port, "github", body, {"X-Hub-Signature-256": bad}) == 401
        assert _post(port, "deploy", body, {"Authorization": f"Bearer {TOKEN}"}) == 202
        assert _post(port, f"deploy?token={TOKEN}", body, {"X-SP-Token": TOKEN}) == 202
        assert _post(port, "github", body, {"X-Hub-Signature-256": good}) == 202
        deadline = time.monotonic() + 30
        while "completed 3" not in sp("status").stdout:
            assert time.monotonic() < deadline, sp("status").stdout
            time.sleep(0.1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=30)
        outputs += [out, err]
    assert "-> 401" in err and "-> 202" in err, err  # the daemon did log the requests

    ids = [r["action_id"] for r in json.loads(
        sp("sql", "SELECT action_id FROM actions", "--format", "json").stdout)]
    assert len(ids) == 3
    for args in (["trigger", "list"], ["trigger", "list", "--format", "json"],
                 ["trigger", "show", "deploy"], ["trigger", "show", "github"],
                 ["status", "--all"], ["sql", "SELECT * FROM events"], ["agent", "list"],
                 *(["audit", i] for i in ids), *(["logs", i] for i in ids)):
        result = sp(*args)
        outputs += [result.stdout, result.stderr]
    # An error about a file whose inline secret is fine but whose port is not.
    broken = tmp_path / "broken.yaml"
    broken.write_text(f"agent: watcher\ntriggers:\n  network:\n    - {{port: 70000, "
                      f"secret: {TOKEN}, action: handle_webhook}}\n")
    result = sp("trigger", "apply", str(broken), ok=False)
    assert result.exit_code == 2
    outputs.append(result.output)

    secrets = [TOKEN, KEY, good[7:], bad[7:]]
    for text in outputs:
        for secret in secrets:
            assert secret not in text, (secret, text)
    files = [p for p in sp.home.root.rglob("*") if p.is_file()]
    assert any(p.name == "ledger.db" for p in files)
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, (secret, path)
