"""The worker's throughput path with real processes: attempts claimed ahead of a free slot
(write-ahead ``started``, spawned later) and how a stop, a cancel and a crash treat them; and
the ``posix_spawn`` start giving a step what ``Popen`` gave it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sp.commands import actions
from sp.commands.home import Home
from sp.ledger.store import EventStore
from sp.ledger.verify import verify
from sp.projections import queries
from sp.runner.worker import Worker
from tests.conftest import Sp
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


def _types(store: EventStore, action_id: str) -> list[str]:
    return [r.type for r in store.read_stream(action_id)]


def _max_executing(store: EventStore) -> int:
    """The most actions ever ``executing`` at once, replayed from the ledger's event order."""
    now = peak = 0
    for (kind,) in store.query("SELECT type FROM events ORDER BY seq"):
        if kind == "action.started":
            now += 1
        elif kind in ("action.completed", "action.failed", "action.interrupted",
                      "action.cancelled", "action.retry_scheduled", "action.skipped"):
            now -= 1
        peak = max(peak, now)
    return peak


def _blocker(tmp_path: Path) -> list[str]:
    """A command that runs until ``tmp_path/go`` exists (at most 30 s), noting its pid."""
    go, pid = tmp_path / "go", tmp_path / "blocker.pid"
    return ["sh", "-c", f"echo $$ > {pid}; i=0; while [ ! -e {go} ] && [ $i -lt 300 ];"
            " do sleep 0.1; i=$((i+1)); done"]


def _sig_ign(status_lines: list[str]) -> int:
    """The set of ignored signals from a ``/proc/<pid>/status`` (bit n-1: signal n)."""
    (mask,) = (int(ln.split()[1], 16) for ln in status_lines if ln.startswith("SigIgn:"))
    return mask


@pytest.fixture
def short_under_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every action counts as short: claiming ahead starts after a `true` that a loaded machine
    ran in more than the 50 ms bound, and these tests are about what happens once it does."""
    monkeypatch.setenv("SP_AHEAD_MAX_MS", "60000")


@pytest.mark.usefixtures("short_under_load")
def test_short_actions_are_claimed_ahead_and_each_runs_once(store: EventStore,
                                                            home: Home) -> None:
    ids = actions.submit(store, [actions.SubmitSpec(command=["true"]) for _ in range(40)])
    summary = Worker(store, home, concurrency=2).run(until_idle=True)
    assert summary.completed == 40 and summary.ran == 40
    assert summary.peak_running == 2  # never more processes than slots
    assert _max_executing(store) > 2  # but more started than running: claimed ahead
    for aid in ids:
        assert _types(store, aid) == ["action.submitted", "action.queued", "action.started",
                                      "action.completed"]
        assert home.log_path(aid).read_text().startswith(f"--- sp: attempt 1 of {aid}\n")
    assert verify(store).ok


def test_long_actions_are_not_claimed_ahead(store: EventStore, home: Home) -> None:
    actions.submit(store, [actions.SubmitSpec(command=["sleep", "0.2"]) for _ in range(3)])
    summary = Worker(store, home, concurrency=1).run(until_idle=True)
    assert summary.completed == 3
    assert _max_executing(store) == 1  # each waited in the queue until a slot was free


@pytest.mark.usefixtures("short_under_load")
def test_the_end_of_max_seconds_gives_back_what_was_claimed_ahead(store: EventStore,
                                                                  home: Home,
                                                                  tmp_path: Path) -> None:
    a, b, c, d = actions.submit(store, [
        actions.SubmitSpec(command=["true"]),  # short: the worker starts claiming ahead
        actions.SubmitSpec(command=_blocker(tmp_path), on_interrupt="rerun"),
        actions.SubmitSpec(command=["true"], on_interrupt="hold"),
        actions.SubmitSpec(command=["true"]),
    ])
    summary = Worker(store, home, concurrency=1).run(max_seconds=2.5)
    assert summary.completed == 1 and summary.interrupted == 3
    assert queries.get_action(store, a)["state"] == "completed"
    assert queries.get_action(store, b)["error"] == "sp tick reached --max-seconds 2.5"
    why = "sp tick reached --max-seconds 2.5 (before it ran)"
    for aid in (c, d):  # claimed while b ran, never spawned, back in the queue
        row = queries.get_action(store, aid)
        # Not held despite on_interrupt: hold, nothing of it ran.
        assert row["state"] == "interrupted" and row["error"] == why
        assert _types(store, aid)[-2:] == ["action.started", "action.interrupted"]
        assert f"--- sp: not run: {why}" in home.log_path(aid).read_text()
    (tmp_path / "go").touch()
    summary = Worker(store, home, concurrency=1).run(until_idle=True)
    assert summary.completed == 3
    for aid in (b, c, d):
        row = queries.get_action(store, aid)
        assert row["state"] == "completed" and row["attempts"] == 2
    assert verify(store).ok


def test_nothing_is_claimed_ahead_near_the_end_of_max_seconds(store: EventStore,
                                                              home: Home) -> None:
    actions.submit(store, [actions.SubmitSpec(command=["true"]),
                           actions.SubmitSpec(command=["sleep", "1.5"]),
                           actions.SubmitSpec(command=["true"])])
    summary = Worker(store, home, concurrency=1).run(max_seconds=0.9)
    assert summary.completed == 1 and summary.interrupted == 1
    assert _max_executing(store) == 1  # the last one was left queued, not claimed
    assert [r[0] for r in store.query("SELECT state FROM actions ORDER BY submitted_seq")] == [
        "completed", "interrupted", "queued"]


def _status(sp: Sp, action_id: str) -> dict[str, Any]:
    p = sp.proc("status", action_id, "--format", "json")
    assert p.returncode == 0, p.stderr
    row: dict[str, Any] = json.loads(p.stdout)
    return row


def _claimed_ahead(sp: Sp, tmp_path: Path, retries: int, grace: str = "0.2s",
                   ) -> tuple[list[str], subprocess.Popen[str]]:
    """A worker (-c 1) running the blocker with two more actions claimed ahead of it."""
    store = Home(sp.home.root).open()
    try:
        ids = actions.submit(store, [
            actions.SubmitSpec(command=["true"], retries=retries),
            actions.SubmitSpec(command=_blocker(tmp_path), retries=retries),
            actions.SubmitSpec(command=["true"], retries=retries),
            actions.SubmitSpec(command=["true"], retries=retries),
        ])
    finally:
        store.close()
    worker = sp.popen("worker", "-c", "1", "--grace", grace,
                      env={**os.environ, "SP_AHEAD_MAX_MS": "60000"})
    pidfile = tmp_path / "blocker.pid"
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip())
    # The worker claims ahead in its turn after the spawn: on a loaded machine the blocker can
    # write its pid first, so wait for the claims rather than expect them at once.
    wait_until(lambda: [_status(sp, i)["state"] for i in ids]
               == ["completed", "executing", "executing", "executing"])
    return ids, worker


@pytest.mark.slow
def test_kill_9_recovers_attempts_claimed_ahead_like_running_ones(sp: Sp,
                                                                  tmp_path: Path) -> None:
    ids, worker = _claimed_ahead(sp, tmp_path, retries=1)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    p = sp.proc("replay")
    assert p.returncode == 0, p.stderr
    for aid in ids[1:]:  # the running one and the two never spawned: the same recovery
        assert f"recovered {aid}: interrupted" in p.stdout
        assert _status(sp, aid)["state"] == "interrupted"
    (tmp_path / "go").touch()
    p = sp.proc("worker", "--until-idle")
    assert p.returncode == 0, p.stderr
    for aid in ids[1:]:
        row = _status(sp, aid)
        assert row["state"] == "completed" and row["attempts"] == 2


@pytest.mark.slow
def test_cancel_of_an_attempt_claimed_ahead_never_spawns_it(sp: Sp, tmp_path: Path) -> None:
    ids, worker = _claimed_ahead(sp, tmp_path, retries=0)
    try:
        assert sp.proc("cancel", ids[2]).returncode == 0
        wait_until(lambda: _status(sp, ids[2])["state"] == "cancelled", timeout=10)
        log = (sp.home.log_path(ids[2])).read_text()
        assert "--- sp: not run: cancelled before it ran" in log
        assert _status(sp, ids[3])["state"] == "executing"  # still waiting for the slot
        (tmp_path / "go").touch()
        wait_until(lambda: _status(sp, ids[3])["state"] == "completed", timeout=10)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    events = [e["event"] for e in json.loads(
        sp.proc("audit", ids[2], "--format", "json").stdout)["events"]]
    assert events[-3:] == ["action.started", "action.cancel_requested", "action.cancelled"]


@pytest.mark.slow
def test_sigterm_lets_what_was_claimed_ahead_run_in_the_grace_period(sp: Sp,
                                                                     tmp_path: Path) -> None:
    ids, worker = _claimed_ahead(sp, tmp_path, retries=0, grace="20s")
    store = Home(sp.home.root).open()
    try:  # not claimed yet: as many are claimed ahead as it holds at most (2 a slot)
        (late,) = actions.submit(store, [actions.SubmitSpec(command=["true"])])
    finally:
        store.close()
    worker.send_signal(signal.SIGTERM)
    (tmp_path / "go").touch()
    assert worker.wait(30) == 0
    for aid in ids:
        row = _status(sp, aid)
        assert row["state"] == "completed" and row["attempts"] == 1
    assert _status(sp, late)["state"] == "queued"


# -- posix_spawn: what Popen gave a step -------------------------------------------------------
def _run_one(store: EventStore, home: Home, spec: actions.SubmitSpec) -> tuple[dict[str, Any],
                                                                              str]:
    (aid,) = actions.submit(store, [spec])
    Worker(store, home).run(until_idle=True)
    return queries.get_action(store, aid), home.log_path(aid).read_text()


def test_a_step_sees_only_fds_0_to_2_and_default_sigpipe(store: EventStore, home: Home) -> None:
    r, w = os.pipe()
    os.dup2(r, 200, inheritable=True)  # inheritable, as one the worker was started with
    try:
        assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # Python ignores it
        own = _sig_ign(Path("/proc/self/status").read_text().splitlines())
        row, log = _run_one(store, home, actions.SubmitSpec(
            command=["sh", "-c", "ls /proc/$$/fd; grep SigIgn /proc/$$/status"]))
    finally:
        for fd in (r, w, 200):
            os.close(fd)
    assert row["state"] == "completed", log
    lines = log.splitlines()[1:]
    assert sorted(ln for ln in lines if ln.isdigit()) == ["0", "1", "2"]
    ignored = _sig_ign(lines)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # back at their defaults, as Popen leaves them
        assert not ignored & (1 << (sig - 1))
    # Besides glibc's two internal signals (its posix_spawn ignores them; no portable program
    # can use them, SIGRTMIN is past them), only what this test run was itself started with
    # may be ignored, as Popen passes it on (nohup ignores SIGHUP, a shell's background job
    # SIGINT and SIGQUIT, make a signal of its own); but not SIGPIPE and SIGXFSZ, which
    # Python ignores, nor SIGINT and SIGTERM, which the worker catches while it runs (a caught
    # signal is at its default in the program it executes).
    not_passed_on = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM)
    expected = own & ~sum(1 << (sig - 1) for sig in not_passed_on)
    internal = (1 << 31) | (1 << 32)
    assert ignored & ~internal == expected & ~internal


def test_a_step_leads_its_own_session(store: EventStore, home: Home) -> None:
    row, log = _run_one(store, home, actions.SubmitSpec(
        command=["sh", "-c", 'echo "$$ $(cut -d" " -f6 /proc/$$/stat)"']))
    pid, sid = log.splitlines()[1].split()
    assert row["state"] == "completed" and pid == sid


def test_the_program_is_found_on_the_actions_path(store: EventStore, home: Home,
                                                  tmp_path: Path) -> None:
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    tool = bin_ / "sp-test-tool"
    tool.write_text("#!/bin/sh\necho tool ran in $PWD\n")
    tool.chmod(0o755)
    (bin_ / "sp-test-noexec").write_text("#!/bin/sh\n")
    path = f"{bin_}:/usr/bin:/bin"
    row, log = _run_one(store, home, actions.SubmitSpec(command=["sp-test-tool"],
                                                        env={"PATH": path}))
    assert row["state"] == "completed" and "tool ran in" in log
    row, _ = _run_one(store, home, actions.SubmitSpec(command=["sp-test-tool"],
                                                      env={"PATH": path}, cwd=str(tmp_path)))
    assert row["state"] == "completed"  # with a cwd: through Popen
    assert f"tool ran in {tmp_path}" in home.log_path(row["action_id"]).read_text()
    row, _ = _run_one(store, home, actions.SubmitSpec(command=["sp-test-noexec"],
                                                      env={"PATH": path}))
    assert row["error"] == "cannot run 'sp-test-noexec': Permission denied"
    row, _ = _run_one(store, home, actions.SubmitSpec(command=["sp-test-missing"],
                                                      env={"PATH": path}))
    assert row["error"] == "cannot run 'sp-test-missing': No such file or directory"
