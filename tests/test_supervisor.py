"""Recovery without a person: every process that runs work sweeps for actions a killed worker
left ``executing`` (first, then every half lease period), and a poison action that kills its
own worker ends. Real workers, real ``kill -9``, real ``sp tick`` processes; time is moved
through ``SP_CLOCK_OFFSET_FILE``, never slept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sp.commands.execution import LEASE_TTL_MS
from sp.host import proc
from sp.ledger.clock import OFFSET_FILE_ENV
from sp.ledger.store import EventStore
from sp.runner.sweeper import SWEEP_EVERY_MS
from tests.conftest import Sp
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# A checkpointing action: the first attempt checkpoints step 1 and then runs for long (the
# worker is killed meanwhile); a resumed one says where it resumed and ends.
SCRIPT = """#!/bin/sh
if [ -n "$SP_CHECKPOINT" ]; then
  echo "resumed at step $SP_RESUME_STEP from $SP_CHECKPOINT"
  exit 0
fi
"{py}" -m sp.cli checkpoint --step 1 '{{"done": ["fetch"]}}' >/dev/null || exit 9
echo $$ > "{pids}/$SP_ACTION_ID.pid"
exec sleep 120
"""


class Clock:
    """The time of the sp processes this test starts: the system's plus a file's offset."""

    def __init__(self, tmp_path: Path) -> None:
        self.file = tmp_path / "clock-offset-ms"
        self.file.write_text("0")
        self.env = {OFFSET_FILE_ENV: str(self.file)}

    def advance(self, ms: int) -> None:
        self.file.write_text(str(int(self.file.read_text()) + ms))


def _events(store: EventStore, action_id: str) -> list[tuple[str, dict[str, Any]]]:
    rows = store.query("SELECT type, data FROM events WHERE stream = ? ORDER BY version",
                       (action_id,))
    return [(str(t), json.loads(d)) for t, d in rows]


def _types(store: EventStore, action_id: str) -> list[str]:
    return [t for t, _ in _events(store, action_id)]


def _state(store: EventStore, action_id: str) -> str:
    row = store.query_one("SELECT state FROM actions WHERE action_id = ?", (action_id,))
    assert row is not None
    return str(row[0])


def _popen(sp: Sp, clock: Clock, *args: str) -> subprocess.Popen[str]:
    return sp.popen(*args, env={**os.environ, **clock.env})


def _orphans(sp: Sp, tmp_path: Path, clock: Clock, n: int = 1,
             retries: int = 1) -> list[tuple[str, int, int]]:
    """Submit ``n`` checkpointing actions, let a real worker run them past their checkpoint,
    kill -9 it: ``(action_id, child pid, child start)`` of each, left ``executing``."""
    pids = tmp_path / "pids"
    pids.mkdir(exist_ok=True)
    script = tmp_path / "task.sh"
    script.write_text(SCRIPT.format(py=sys.executable, pids=pids))
    script.chmod(0o755)
    ids = [sp.proc("submit", "--retries", str(retries), "--", str(script)).stdout.strip()
           for _ in range(n)]
    worker = _popen(sp, clock, "worker", "-c", str(n))
    try:
        wait_until(lambda: all((pids / f"{a}.pid").exists()
                               and (pids / f"{a}.pid").read_text().strip() for a in ids),
                   timeout=60)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate()
    out = []
    for a in ids:
        child = int((pids / f"{a}.pid").read_text())
        out.append((a, child, proc.start_time(child)))
    return out


def _assert_resumed_once(store: EventStore, home_logs: Path, action_id: str) -> None:
    events = _events(store, action_id)
    assert [t for t, _ in events] == [
        "action.submitted", "action.queued", "action.started", "action.checkpointed",
        "action.interrupted", "action.started", "action.completed"]
    interrupted = events[4][1]
    assert interrupted["by"].endswith("(recovery sweep)")
    assert "is no longer running" in interrupted["reason"]
    assert events[5][1]["resume_step"] == 2  # after the checkpointed step 1
    log = (home_logs / f"{action_id}.log").read_text()
    assert 'resumed at step 2 from {"done":["fetch"]}' in log


def test_a_worker_killed_mid_action_is_resumed_by_the_next_tick_from_its_checkpoint(
        sp: Sp, store: EventStore, tmp_path: Path) -> None:
    clock = Clock(tmp_path)
    ((a, child, child_start),) = _orphans(sp, tmp_path, clock)
    assert _state(store, a) == "executing"  # nobody recorded anything yet
    clock.advance(LEASE_TTL_MS + 1_000)  # the next cron tick, a lease period later
    p = sp.proc("tick", "--max-seconds", "30", env=clock.env)
    assert p.returncode == 0, p.stderr
    assert "1 completed" in p.stderr and "recovered 1 left by dead workers" in p.stderr
    _assert_resumed_once(store, sp.home.logs, a)
    wait_until(lambda: not proc.alive(child, child_start), timeout=60)  # the orphan was stopped
    assert sp.proc("replay", "--check").returncode == 0
    p = sp.proc("tick", "--max-seconds", "5", env=clock.env)  # nothing more to recover
    assert p.returncode == 0 and "recovered" not in p.stderr
    assert _types(store, a).count("action.completed") == 1


def test_two_ticks_started_together_recover_each_action_once(
        sp: Sp, store: EventStore, tmp_path: Path) -> None:
    clock = Clock(tmp_path)
    orphans = _orphans(sp, tmp_path, clock, n=3)
    clock.advance(LEASE_TTL_MS + 1_000)
    ticks = [_popen(sp, clock, "tick", "--max-seconds", "30", "-c", "3") for _ in range(2)]
    errs = [t.communicate(timeout=90)[1] for t in ticks]
    assert [t.returncode for t in ticks] == [0, 0], errs
    recovered = sum(int(e.split("recovered ")[1].split()[0]) for e in errs if "recovered" in e)
    assert recovered == 3, errs
    for a, _, _ in orphans:
        _assert_resumed_once(store, sp.home.logs, a)


def _agent_with_a_quick_task(sp: Sp, tmp_path: Path) -> None:
    agent = tmp_path / "agent.yaml"
    agent.write_text("id: quick\nactions:\n  noop:\n    command: [\"true\"]\n")
    assert sp.proc("agent", "apply", str(agent)).returncode == 0


@pytest.mark.parametrize("entry", ["worker", "daemon", "daemon -c 0", "action execute"])
def test_every_entry_point_that_runs_work_sweeps_first(
        sp: Sp, store: EventStore, tmp_path: Path, entry: str) -> None:
    clock = Clock(tmp_path)
    ((a, _, _),) = _orphans(sp, tmp_path, clock)
    if entry == "worker":
        p = sp.proc("worker", "--until-idle", env=clock.env)
        assert p.returncode == 0, p.stderr
        assert "recovered 1" in p.stderr
        _assert_resumed_once(store, sp.home.logs, a)
    elif entry.startswith("daemon"):
        daemon = _popen(sp, clock, *entry.split(), "--grace", "1s")
        try:
            want = "completed" if entry == "daemon" else "interrupted"
            wait_until(lambda: _state(store, a) == want, timeout=60)
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=30)
        assert daemon.returncode == 0, err
        if entry == "daemon":
            _assert_resumed_once(store, sp.home.logs, a)
            assert "1 recovered from dead workers" in err
        else:  # no worker of its own: recovered, waiting for one
            assert f"recovered {a}: interrupted" in err
    else:
        _agent_with_a_quick_task(sp, tmp_path)
        p = sp.proc("action", "execute", "--agent", "quick", "--task", "noop", env=clock.env)
        assert p.returncode == 0, p.stderr
        assert _state(store, a) == "interrupted"  # queued again, for a worker to resume
        assert _events(store, a)[-1][1]["by"].endswith("(recovery sweep)")


def test_a_long_running_worker_sweeps_again_every_half_lease_period(
        sp: Sp, store: EventStore, tmp_path: Path) -> None:
    """A worker that is busy when another one dies notices it at its next sweep, half a lease
    period later by the clock, and never touches what it runs itself."""
    clock = Clock(tmp_path)
    started = tmp_path / "blocker.started"
    blocker = sp.proc("submit", "--shell", "--", f"touch {started}; exec sleep 120"
                      ).stdout.strip()
    busy = _popen(sp, clock, "worker", "--grace", "0.5s")  # sweeps once, then takes blocker
    try:
        wait_until(started.exists, timeout=60)
        ((a, _, _),) = _orphans(sp, tmp_path, clock)  # another worker, killed -9
        assert _state(store, a) == "executing"
        clock.advance(SWEEP_EVERY_MS + 1_000)  # less than a lease: blocker's stays fresh
        wait_until(lambda: _state(store, a) == "interrupted", timeout=60)
        by = _events(store, a)[-1][1]["by"]
        assert by.startswith(f"worker:{busy.pid}:") and by.endswith("(recovery sweep)")
        assert _state(store, blocker) == "executing"  # its own attempt: left alone
    finally:
        busy.send_signal(signal.SIGTERM)
        busy.communicate(timeout=30)
    assert busy.returncode == 0


@pytest.mark.parametrize(("command", "most"), [
    ("echo poisoned; kill -9 $PPID", 1),  # output in its log: it ran, the attempt counts
    # No evidence (unless the worker noted the child before dying): given back once, no more.
    ("kill -9 $PPID", 2),
])
def test_an_action_that_kills_its_worker_ends_failed(
        sp: Sp, store: EventStore, tmp_path: Path, command: str, most: int) -> None:
    """$PPID of a ``--shell`` action is the worker itself (``sp tick`` here): each tick that
    runs it dies by it. The next tick's sweep counts the attempt, and ends the action."""
    clock = Clock(tmp_path)
    a = sp.proc("submit", "--retries", "0", "--shell", "--", command).stdout.strip()
    codes = []
    for _ in range(6):
        p = sp.proc("tick", "--max-seconds", "10", env=clock.env)
        codes.append(p.returncode)
        if _state(store, a) == "failed":
            break
    assert _state(store, a) == "failed", codes
    types = _types(store, a)
    runs = types.count("action.started")
    assert 1 <= runs <= most  # max_attempts + 1 at most
    assert codes == [-signal.SIGKILL] * runs + [0]
    assert types.count("action.interrupted") == runs - 1
    row = store.query_one("SELECT attempts, max_attempts, error FROM actions"
                          " WHERE action_id = ?", (a,))
    assert row is not None and row[0] == runs and row[1] == 1
    assert "no attempts left" in row[2]
    assert sp.proc("replay", "--check").returncode == 0
