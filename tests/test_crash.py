"""Crash recovery with real processes: kill -9 the worker mid-action, then ``sp replay``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sp.host import proc
from tests.conftest import Sp
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SCRIPT = """#!/bin/sh
if [ -n "$SP_CHECKPOINT" ]; then
  echo "resumed at step $SP_RESUME_STEP from $SP_CHECKPOINT"
  exit 0
fi
"{py}" -m sp.cli checkpoint --step 1 '{{"done": ["fetch_new_papers"]}}' >/dev/null || exit 9
echo $$ > "{pidfile}"
exec sleep 120
"""


def _script(tmp_path: Path) -> tuple[Path, Path]:
    pidfile = tmp_path / "child.pid"
    path = tmp_path / "task.sh"
    path.write_text(SCRIPT.format(py=sys.executable, pidfile=pidfile))
    path.chmod(0o755)
    return path, pidfile


def _status(sp: Sp, action_id: str) -> dict[str, Any]:
    p = sp.proc("status", action_id, "--format", "json")
    assert p.returncode == 0, p.stderr
    result: dict[str, Any] = json.loads(p.stdout)
    return result


def _event_count(sp: Sp) -> int:
    p = sp.proc("verify")
    assert p.returncode == 0, p.stdout
    return int(p.stdout.split()[1])


def _start_and_checkpoint(
    sp: Sp, tmp_path: Path, retries: int
) -> tuple[str, subprocess.Popen[str], Path]:
    script, pidfile = _script(tmp_path)
    a = sp.proc("submit", "--retries", str(retries), "--", str(script)).stdout.strip()
    worker = sp.popen("worker", "--until-idle", "--grace", "0.2s")
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    assert _status(sp, a)["checkpoint"] == {"done": ["fetch_new_papers"]}
    return a, worker, pidfile


def test_kill_9_then_replay_resumes_from_checkpoint(sp: Sp, tmp_path: Path) -> None:
    a, worker, pidfile = _start_and_checkpoint(sp, tmp_path, retries=1)
    child = int(pidfile.read_text())
    child_start = proc.start_time(child)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert _status(sp, a)["state"] == "executing"  # nobody recorded anything yet

    p = sp.proc("replay")
    assert p.returncode == 0, p.stderr
    assert f"recovered {a}: interrupted" in p.stdout
    row = _status(sp, a)
    assert row["state"] == "interrupted" and row["error_kind"] == "interrupted"
    wait_until(lambda: not proc.alive(child, child_start))  # the orphan was stopped

    n = _event_count(sp)
    assert sp.proc("replay").returncode == 0
    assert _event_count(sp) == n  # a second replay appends nothing

    p = sp.proc("worker", "--until-idle")
    assert p.returncode == 0, p.stderr
    row = _status(sp, a)
    assert row["state"] == "completed" and row["attempts"] == 2
    assert row["result"]["tail"] == [
        'resumed at step 2 from {"done":["fetch_new_papers"]}']
    events = [e["event"] for e in json.loads(sp.proc("audit", a, "--format", "json").stdout)
              ["events"]]
    assert events == ["action.submitted", "action.queued", "action.started",
                      "action.checkpointed", "action.interrupted", "action.started",
                      "action.completed"]
    assert sp.proc("replay", "--check").returncode == 0


def test_kill_9_without_attempts_left_fails_it(sp: Sp, tmp_path: Path) -> None:
    a, worker, _ = _start_and_checkpoint(sp, tmp_path, retries=0)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    p = sp.proc("replay")
    assert f"recovered {a}: failed" in p.stdout
    row = _status(sp, a)
    assert row["state"] == "failed" and row["error_kind"] == "interrupted"


def test_replay_leaves_a_live_owner_alone(sp: Sp, tmp_path: Path) -> None:
    a, worker, _ = _start_and_checkpoint(sp, tmp_path, retries=0)
    try:
        n = _event_count(sp)
        p = sp.proc("replay")
        assert p.returncode == 0 and "recovered" not in p.stdout
        assert _event_count(sp) == n
        assert _status(sp, a)["state"] == "executing"
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


def test_sigterm_hands_the_action_back_to_the_queue(sp: Sp, tmp_path: Path) -> None:
    a, worker, _ = _start_and_checkpoint(sp, tmp_path, retries=0)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    row = _status(sp, a)
    assert row["state"] == "interrupted" and row["error"] == "worker stopped (signal)"
    p = sp.proc("worker", "--until-idle")
    assert p.returncode == 0
    assert _status(sp, a)["state"] == "completed"


def test_cancel_stops_a_running_action_quickly(sp: Sp, tmp_path: Path) -> None:
    a, worker, pidfile = _start_and_checkpoint(sp, tmp_path, retries=3)
    child = int(pidfile.read_text())
    started = time.monotonic()
    assert sp.proc("cancel", a).returncode == 0
    wait_until(lambda: not proc.alive(child, 0), timeout=10)
    stopped_after = time.monotonic() - started
    assert worker.wait(30) == 0
    row = _status(sp, a)
    assert row["state"] == "cancelled" and row["attempts"] == 1
    assert stopped_after < 5  # generous: the worker checks every 0.25 s


def test_timeout_kills_the_process_group(sp: Sp, tmp_path: Path) -> None:
    marker = tmp_path / "grandchild"
    a = sp.proc("submit", "--timeout", "1s", "--shell", "--",
                f"(sleep 30; touch {marker}) & sleep 30").stdout.strip()
    p = sp.proc("worker", "--until-idle")
    assert p.returncode == 0
    row = _status(sp, a)
    assert row["state"] == "failed" and row["error_kind"] == "timeout"
    assert row["exit_code"] == -signal.SIGTERM
    assert not marker.exists()


def test_command_not_found_is_recorded(sp: Sp) -> None:
    a = sp.proc("submit", "--", "/nonexistent/tool").stdout.strip()
    assert sp.proc("worker", "--until-idle").returncode == 0
    row = _status(sp, a)
    assert row["state"] == "failed" and row["error_kind"] == "spawn"
    assert "/nonexistent/tool" in row["error"]


def test_environment_of_an_action(sp: Sp, tmp_path: Path) -> None:
    out = tmp_path / "env.txt"
    line = f'echo "$SP_ACTION_ID $SP_HOME $SP_ATTEMPT [$SP_CHECKPOINT]" > {out}'
    a = sp.proc("submit", "--shell", "--", line).stdout.strip()
    assert sp.proc("worker", "--until-idle").returncode == 0
    assert out.read_text().split() == [a, str(sp.home.root), "1", "[]"]
    assert os.path.exists(sp.home.log_path(a))


STEPS_AGENT = """
id: research-001
actions:
  daily_arxiv_scan:
    command:
      - sh
      - -c
      - 'echo "$1 attempt $SP_ATTEMPT" >> {out}; [ "$1" != extract ] || [ -e {go} ] ||
         exec sleep 120'
      - step
    steps: [fetch, extract, summarize]
    retry: {{max_attempts: 2}}
"""


def test_kill_9_mid_steps_resumes_without_redoing_finished_steps(sp: Sp,
                                                                 tmp_path: Path) -> None:
    out, go = tmp_path / "ran.txt", tmp_path / "go"
    agent = tmp_path / "agent.yaml"
    agent.write_text(STEPS_AGENT.format(out=out, go=go))
    assert sp.proc("agent", "apply", str(agent)).returncode == 0
    p = sp.proc("action", "execute", "--agent", "research-001", "--task", "daily_arxiv_scan",
                "--checkpoint-enabled", "--detach")
    a = p.stdout.strip()
    worker = sp.popen("worker")
    wait_until(lambda: out.exists() and "extract" in out.read_text())
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    go.touch()
    p = sp.proc("replay", "--report")
    assert f"recovered {a}: interrupted" in p.stdout and "1 action(s)" in p.stdout
    assert sp.proc("worker", "--until-idle").returncode == 0
    assert out.read_text().split("\n")[:-1] == [
        "fetch attempt 1", "extract attempt 1",  # killed inside extract
        "extract attempt 2", "summarize attempt 2",  # fetch was not redone
    ]
    events = [e["event"] for e in json.loads(
        sp.proc("audit", a, "--format", "json").stdout)["events"]]
    assert events.count("action.completed") == 1
    assert events.count("action.interrupted") == 1
    assert sp.proc("verify").returncode == 0
