from __future__ import annotations

import json

from tests.conftest import Sp


def test_submit_run_status_audit_verify(sp: Sp) -> None:
    a = sp("submit", "--name", "hello", "--", "echo", "hi").stdout.strip()
    b = sp("submit", "--after", a, "--", "sh", "-c", "exit 3").stdout.strip()
    sp("worker", "--until-idle")
    status = json.loads(sp("status", "--format", "json").stdout)
    states = {r["action_id"]: r["state"] for r in status["actions"]}
    assert states == {a: "completed", b: "failed"}
    events = json.loads(sp("audit", b, "--format", "json").stdout)["events"]
    assert [e["event"] for e in events] == [
        "action.submitted", "action.queued", "action.started", "action.failed"]
    assert events[-1]["details"]["exit_code"] == 3
    assert sp("verify").stdout == "ok: 8 events\n"
