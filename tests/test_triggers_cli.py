"""``sp trigger apply|list|show`` and ``sp daemon``: audited applies, refusals that write
nothing, and the daemon as a real process (files and webhooks in, actions run, SIGTERM out)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sp.commands import triggers
from sp.commands.fire import fire
from sp.commands.home import Home
from sp.ledger.store import EventStore
from sp.triggers import webhook
from sp.triggers.daemon import Daemon
from tests.conftest import REPO, Sp
from tests.triggerkit import AGENT, apply_agent, wait_for


def _events(sp: Sp) -> int:
    out = sp("sql", "SELECT count(*) AS n FROM events", "--format", "json").stdout
    return int(json.loads(out)[0]["n"])


def _setup(sp: Sp, tmp_path: Path) -> None:
    (tmp_path / "watcher.yaml").write_text(AGENT)
    sp("agent", "apply", str(tmp_path / "watcher.yaml"))


def _write(tmp_path: Path, text: str, name: str = "triggers.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


GOOD = """\
agent: watcher
triggers:
  filesystem:
    - path: incoming
      events: [close_write]
      glob: "*.csv"
      action: process_new_file
  network:
    - port: 18080
      name: github
      auth: hmac
      secret_env: GITHUB_SECRET
      action: watcher/handle_webhook
"""


def test_apply_records_once_and_lists(sp: Sp, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_SECRET", "s")
    _setup(sp, tmp_path)
    path = _write(tmp_path, GOOD)
    before = _events(sp)
    r = sp("trigger", "apply", path)
    assert r.stderr == "triggers: 2 applied\n"
    assert _events(sp) == before + 1
    r = sp("trigger", "apply", path)
    assert r.stderr == "triggers: 2 unchanged\n" and _events(sp) == before + 1
    rows = json.loads(sp("trigger", "list", "--format", "json").stdout)
    assert [(r["kind"], r["name"], r["action"], r["fires"]) for r in rows] == [
        ("filesystem", "fs:incoming", "watcher/process_new_file", 0),
        ("webhook", "github", "watcher/handle_webhook", 0),
    ]
    assert rows[1]["watches"] == "POST http://127.0.0.1:18080/hooks/github (hmac)"
    table = sp("trigger", "list").stdout
    assert "fs:incoming" in table and "LAST FIRE" in table


BAD = [
    ("unknown task", GOOD.replace("action: process_new_file", "action: nope"),
     "$.triggers.filesystem[0].action: agent watcher has no task 'nope' "
     "(tasks: handle_webhook, process_new_file)"),
    ("unknown agent", GOOD.replace("watcher/handle_webhook", "ghost/handle_webhook"),
     "$.triggers.network[0].action: no agent 'ghost': apply its file first (sp agent apply "
     "FILE)"),
    ("no secret", GOOD.replace("      secret_env: GITHUB_SECRET\n", ""),
     "$.triggers.network[0]: a shared secret is required: set exactly one of secret or "
     "secret_env"),
    ("bad field", GOOD.replace("glob:", "globb:"),
     "$.triggers.filesystem[0]: Object contains unknown field `globb`"),
    ("bad event", GOOD.replace("[close_write]", "[written]"),
     "$.triggers.filesystem[0].events[0]: Invalid enum value 'written'"),
    ("same name twice", GOOD.replace("      action: process_new_file",
                                      "      action: process_new_file\n      name: github"),
     "$.triggers.network[0]: the name 'github' is taken by $.triggers.filesystem[0] "
     "(set name:)"),
    ("a name that is no name", GOOD.replace("name: github", "name: fs:incoming"),
     "$.triggers.network[0].name: trigger name 'fs:incoming' contains ':'; use letters, "
     "digits, '.', '_' and '-', starting with a letter or digit, at most 64"),
]


def test_apply_warns_of_secrets_it_cannot_see_or_that_the_ledger_would_keep(
        sp: Sp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_SECRET", raising=False)
    _setup(sp, tmp_path)
    path = _write(tmp_path, GOOD)
    assert sp("trigger", "apply", path).stderr == (
        f"warning: {path}: $.triggers.network[0].secret_env: $GITHUB_SECRET is not set here; "
        "the daemon needs it\ntriggers: 2 applied\n")
    path = _write(tmp_path, GOOD.replace("secret_env: GITHUB_SECRET", "secret: hunter2"))
    assert sp("trigger", "apply", path).stderr == (
        f"warning: {path}: $.triggers.network[0].secret: an inline secret is recorded in the "
        "ledger; prefer secret_env\ntriggers: 2 applied\n")
    assert "hunter2" not in sp("trigger", "list").stdout


@pytest.mark.parametrize(("why", "text", "message"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_file_is_refused_with_its_path_and_nothing_written(
        sp: Sp, tmp_path: Path, why: str, text: str, message: str) -> None:
    _setup(sp, tmp_path)
    path = _write(tmp_path, text)
    before = _events(sp)
    r = sp("trigger", "apply", path, ok=False)
    assert r.exit_code == 2, why
    assert r.stderr == f"Error: {path}: {message}\n"
    assert _events(sp) == before
    assert sp("trigger", "list", "--format", "json").stdout.strip() == "[]"


def test_show_lists_fires_with_their_actions_and_refuses_unknown_names(
        sp: Sp, tmp_path: Path, store: EventStore) -> None:
    apply_agent(store, tmp_path)
    triggers.apply(store, _write(tmp_path, GOOD))
    a = fire(store, "github", "webhook", "watcher", "handle_webhook", {"n": 1},
             detail="POST /hooks/github, 7 bytes")
    b = fire(store, "github", "webhook", "watcher", "handle_webhook", {"n": 2})
    doc = json.loads(sp("trigger", "show", "github", "--format", "json").stdout)
    assert doc["fires"] == 2 and doc["definition"]["kind"] == "webhook"
    assert [(r["action_id"], r["state"]) for r in doc["recent"]] == [(b, "queued"),
                                                                     (a, "queued")]
    rows = json.loads(sp("trigger", "list", "--format", "json").stdout)
    assert rows[1]["fires"] == 2 and rows[1]["last_action_id"] == b
    r = sp("trigger", "show", "nope", ok=False)
    assert r.exit_code == 2
    assert r.stderr == "Error: no trigger 'nope' (triggers: fs:incoming, github)\n"
    # The projections rebuilt from the log are the live ones, byte for byte.
    assert sp("replay", "--check").exit_code == 0


def test_supervised_source_is_restarted_without_stopping_the_daemon(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    """A webhook whose port is taken fails, is logged and retried; once the port is free
    it serves. Run in a thread (no signals), triggers only."""
    import socket

    apply_agent(store, tmp_path)
    port = webhook.free_port()
    triggers.apply(store, _write(tmp_path, f"""\
agent: watcher
triggers:
  network:
    - {{port: {port}, name: deploy, secret: tok, action: handle_webhook}}
"""))
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    logs: list[str] = []
    d = Daemon(home, concurrency=0, log=logs.append, backoff_min_s=0.05, backoff_max_s=0.1)
    thread = threading.Thread(target=d.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: d.restarts.get(f"webhook:127.0.0.1:{port}", 0) >= 2)
        blocker.close()
        wait_for(lambda: any("listening" in line for line in logs))
        req = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/deploy", data=b"{}",
                                     headers={"X-SP-Token": "tok"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 202
    finally:
        d.request_stop()
        thread.join(5)
    assert not thread.is_alive()
    assert any("cannot listen: Address already in use; restarting in 0.05s" in line
               for line in logs), logs
    assert logs[-1] == "daemon: stopped"


@pytest.mark.slow
def test_daemon_runs_triggered_actions_and_stops_on_sigterm(sp: Sp, tmp_path: Path) -> None:
    _setup(sp, tmp_path)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    port = webhook.free_port()
    config = _write(tmp_path, f"""\
agent: watcher
triggers:
  filesystem:
    - {{path: incoming, events: [close_write], glob: "*.csv", debounce: 100ms,
       action: process_new_file}}
  network:
    - {{port: {port}, name: deploy, secret_env: SP_TEST_TOKEN, action: handle_webhook}}
""")
    err = tmp_path / "daemon.err"
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sp.cli", "daemon", "--home", str(sp.home.root), "--config",
             config], stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO,
            env={**os.environ, "SP_TEST_TOKEN": "tok"})
    try:
        wait_for(lambda: "daemon: started" in err.read_text(), timeout=45)  # = ready
        (incoming / "a.csv").write_text("1,2\n")
        (incoming / "skip.txt").write_text("no\n")

        def done() -> list[dict[str, Any]]:
            rows = json.loads(sp("status", "--format", "json").stdout)["actions"]
            return [r for r in rows if r["state"] == "completed"]

        ((row,),) = [wait_for(done, timeout=45)]
        assert row["task"] == "process_new_file"
        assert row["result"]["tail"] == [f"got {incoming / 'a.csv'}"]

        req = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/deploy",
                                     data=b'{"v": 2}', headers={"X-SP-Token": "tok"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            action_id = json.loads(resp.read())["action_id"]
        wait_for(lambda: len(done()) == 2, timeout=45)
        (hook,) = [r for r in done() if r["action_id"] == action_id]
        assert hook["result"]["tail"] == ['hook {"v":2}']

        # SIGHUP: the newly applied file replaces the running sources.
        port2 = webhook.free_port()
        sp("trigger", "apply", _write(tmp_path, f"""\
agent: watcher
triggers:
  network:
    - {{port: {port2}, name: v2, secret: tok2, action: handle_webhook}}
""", "v2.yaml"))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded: webhook:127.0.0.1:" in err.read_text(), timeout=45)
        req = urllib.request.Request(f"http://127.0.0.1:{port2}/hooks/v2", data=b"{}",
                                     headers={"Authorization": "Bearer tok2"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 202
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/hooks/deploy", data=b"{}",
                                   timeout=5)

        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=45) == 0
        assert time.monotonic() - start < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = err.read_text()
    assert "triggers: 2 applied" in log and "daemon: stopped" in log
    assert "tok" not in log.replace("stopped", "")
    rows = json.loads(sp("trigger", "list", "--format", "json").stdout)
    assert [(r["name"], r["fires"], r["applied"]) for r in rows] == [
        ("v2", 1, True), ("deploy", 1, False), ("fs:incoming", 1, False)]
    # Nothing but the fires and their actions was recorded: no heartbeats, no daemon events.
    types = {r["type"] for r in json.loads(sp(
        "sql", "SELECT DISTINCT type FROM events", "--format", "json").stdout)}
    assert types == {"agent.configured", "trigger.applied", "trigger.fired",
                     "action.submitted", "action.queued",
                     "action.started", "action.completed"}


@pytest.mark.slow
@pytest.mark.parametrize(("text", "message"), [
    (GOOD.replace("action: process_new_file", "action: nope"),
     "$.triggers.filesystem[0].action: agent watcher has no task 'nope' "
     "(tasks: handle_webhook, process_new_file)"),
    (GOOD, "$.triggers.network[0].secret_env: $GITHUB_SECRET is not set"),
], ids=["unknown task", "secret variable unset"])
def test_daemon_with_a_bad_config_exits_2_and_writes_nothing(
        sp: Sp, tmp_path: Path, text: str, message: str) -> None:
    _setup(sp, tmp_path)
    before = _events(sp)
    config = _write(tmp_path, text)
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_SECRET"}
    p = subprocess.run([sys.executable, "-m", "sp.cli", "--home", str(sp.home.root), "daemon",
                        "--config", config], capture_output=True, text=True, timeout=20,
                       cwd=REPO, env=env)
    assert p.returncode == 2
    assert p.stderr == f"Error: {config}: {message}\n"
    assert _events(sp) == before
