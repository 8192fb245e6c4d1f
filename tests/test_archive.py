"""``sp archive --before DATE FILE`` moves exactly the whole finished streams, keeps
``sp verify`` and ``sp replay --check`` green, lets verify re-check (and catch tampering in)
the archive, survives kill -9 at either step without losing or duplicating a row, and appends
to the same file the next time."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sp.commands import plans
from sp.commands.home import Home
from sp.commands.retention import archive, parse_before
from sp.ledger import events as ev
from sp.ledger.clock import ManualClock
from sp.ledger.errors import UsageError
from sp.ledger.store import EventStore
from sp.ledger.verify import verify
from sp.projections import engine
from sp.runner.worker import Worker
from tests.conftest import Sp
from tests.retentionkit import DAY, HOUR, action
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

Row = tuple[object, ...]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def rows(path: Path, table: str = "events", where: str = "1") -> list[Row]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT seq, stream, version, type, ts, data, prev_hash, hash"
                            f" FROM {table} WHERE {where} ORDER BY seq").fetchall()
    finally:
        conn.close()


def streams(path: Path) -> set[str]:
    return {str(r[1]) for r in rows(path)}


def counts(store: EventStore) -> dict[str, int]:
    return {str(s): int(n) for s, n in store.query(
        "SELECT state, n FROM metrics_counts WHERE dim = 'all' AND n > 0")}


@pytest.fixture
def scene(store: EventStore, clock: ManualClock, tmp_path: Path) -> dict[str, str]:
    """Old finished actions (some tied to unfinished ones), new ones, and other streams."""
    agent = tmp_path / "a.yaml"
    agent.write_text('id: keeper\nactions:\n  t: {command: ["true"]}\n')
    from sp.commands import agents

    agents.apply(store, agent)
    s = {
        "done": action(store, "completed"),
        "failed": action(store, "failed"),
        "cancelled": action(store, "cancelled"),
        "dep": action(store, "completed"),
        "grouped": action(store, "completed", group="g"),
        "skipped": action(store, "skipped"),
    }
    clock.advance(2 * HOUR)
    s["cutoff"] = iso(clock.now_ms())
    clock.advance(HOUR)
    s["waiting"] = action(store, "queued", depends_on=[s["dep"]])  # holds dep back
    s["running"] = action(store, "executing", group="g")  # holds grouped back
    s["recent"] = action(store, "completed")  # after the cutoff
    return s


def test_archive_moves_exactly_the_eligible_streams(
        sp: Sp, store: EventStore, home: Home, scene: dict[str, str], tmp_path: Path) -> None:
    ledger = home.ledger_path
    before = rows(ledger)
    assert sp("verify").stdout == f"ok: {len(before)} events\n"
    file = tmp_path / "archive.db"
    report = archive(store, scene["cutoff"], file, by="test")
    moved = {scene[k] for k in ("done", "failed", "cancelled", "skipped")}
    assert (report.streams, report.actions, report.plans, report.held) == (4, 4, 0, 2)
    assert streams(file) == moved
    # The archive holds the moved rows byte for byte; the ledger holds every other row.
    assert rows(file) == [r for r in before if r[1] in moved]
    after = rows(ledger)
    assert [r for r in after if r[3] != "ledger.archived"] == [
        r for r in before if r[1] not in moved]
    (record,) = [json.loads(str(r[5])) for r in after if r[3] == "ledger.archived"]
    assert record["count"] == report.events == len(rows(file))
    assert sorted(record["streams"]) == sorted(moved)
    assert record["file"] == str(file)
    # Agents, held and recent actions live on; the projections equal a rebuild.
    assert {scene[k] for k in ("dep", "grouped", "waiting", "running", "recent")} <= streams(
        ledger)
    assert "agent:keeper" in streams(ledger)
    assert engine.check(store)[1] is None
    assert sp("replay", "--check").stdout.startswith("ok: ")
    assert counts(store) == {"completed": 3, "queued": 1, "executing": 1}
    out = sp("verify").stdout
    assert out == (f"ok: {len(after)} events, {report.events} archived "
                   f"({report.events} re-checked from the archive)\n")
    # The waiting action still waits for its (kept) dependency: nothing got stuck or freed.
    assert store.query_one("SELECT unmet_deps FROM queue WHERE action_id = ?",
                           (scene["waiting"],)) == (0,)


def test_audit_and_status_of_an_archived_action(
        sp: Sp, store: EventStore, scene: dict[str, str], tmp_path: Path) -> None:
    done = scene["done"]
    live = json.loads(sp("audit", done, "--format", "json").stdout)
    file = tmp_path / "archive.db"
    archive(store, scene["cutoff"], file)
    doc = json.loads(sp("audit", done, "--format", "json").stdout)
    assert doc["archived_to"] == str(file)
    assert doc["events"] == live["events"]
    table = sp("audit", done[:6])
    assert f"archived to {file}" in table.stderr and "action.completed" in table.stdout
    status = sp("status", done, ok=False)
    assert status.exit_code == 2
    assert f"action {done} was archived to {file}" in status.stderr
    file.rename(tmp_path / "elsewhere.db")  # unreachable: says where it went, exit 2
    gone = sp("audit", done, ok=False)
    assert gone.exit_code == 2 and f"was archived to {file}" in gone.stderr
    assert gone.stderr.count("\n") == 1
    # verify still accepts the gap through the recorded runs, and says what it could not read.
    out = sp("verify").stdout
    assert out.startswith("ok: ") and f"not reachable, links checked only: {file}" in out
    assert "0 re-checked" in out
    ok = sp("verify", "--archive", str(tmp_path / "elsewhere.db")).stdout
    assert "re-checked from the archive" in ok and " 0 re-checked" not in ok


def _tamper(file: Path, sql: str) -> None:
    conn = sqlite3.connect(file, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS events_no_update")
        conn.execute("DROP TRIGGER IF EXISTS events_no_delete")
        conn.execute(sql)
    finally:
        conn.close()


def test_tampering_with_the_archive_is_caught(sp: Sp, store: EventStore,
                                              scene: dict[str, str], tmp_path: Path) -> None:
    file = tmp_path / "archive.db"
    archive(store, scene["cutoff"], file)
    seq = int(str(rows(file)[2][0]))
    _tamper(file, f"UPDATE events SET data = replace(data, 'boom', 'fine') WHERE seq = {seq}"
            if "boom" in str(rows(file)[2][5]) else
            f"UPDATE events SET ts = ts + 1 WHERE seq = {seq}")
    bad = sp("verify", "--archive", str(file), ok=False)
    assert bad.exit_code == 1
    assert bad.stdout.startswith(f"bad: seq {seq}: archived row: hash does not match")
    doc = json.loads(sp("verify", "--archive", str(file), "--format", "json", ok=False).stdout)
    assert doc["ok"] is False and doc["bad_seq"] == seq
    # A row deleted from the archive is named too.
    file2 = tmp_path / "a2.db"
    file.rename(file2)
    _tamper(file2, f"DELETE FROM events WHERE seq = {seq}")
    gone = sp("verify", "--archive", str(file2), ok=False)
    assert gone.stdout.startswith(f"bad: seq {seq}: archive ") and "lacks seq" in gone.stdout


def test_a_gap_no_ledger_archived_accounts_for_is_still_caught(
        sp: Sp, store: EventStore, home: Home, scene: dict[str, str], tmp_path: Path) -> None:
    archive(store, scene["cutoff"], tmp_path / "archive.db")
    kept = [r for r in rows(home.ledger_path) if r[1] == scene["recent"]]
    first = int(str(kept[0][0]))
    _tamper(home.ledger_path, f"DELETE FROM events WHERE seq = {first}")
    bad = sp("verify", ok=False)
    assert bad.exit_code == 1
    assert bad.stdout.startswith(f"bad: seq {first + 1}: expected seq {first}")


def test_archiving_twice_appends_to_the_same_file(
        sp: Sp, store: EventStore, clock: ManualClock, scene: dict[str, str],
        tmp_path: Path) -> None:
    file = tmp_path / "archive.db"
    first = archive(store, scene["cutoff"], file)
    n1 = len(rows(file))
    # The running action finishes; a week later its group (with "grouped") goes too.
    store.append(scene["running"], [ev.ActionCompleted()], 4)
    clock.advance(7 * DAY)
    second = archive(store, "1d", file)
    assert second.actions >= 3 and second.seq is not None and first.seq is not None
    assert len(rows(file)) == n1 + second.events
    assert {scene["grouped"], scene["running"], scene["recent"]} <= streams(file)
    seqs = [r[0] for r in rows(file)]
    assert seqs == sorted(set(seqs))  # no duplicates
    out = sp("verify").stdout
    assert f"{n1 + second.events} archived ({n1 + second.events} re-checked" in out
    assert engine.check(store)[1] is None
    # Nothing left to archive: a third run records nothing.
    head = store.head()
    assert archive(store, "1d", file).seq is None and store.head() == head


def test_bad_input_is_one_line_exit_2_and_changes_nothing(
        sp: Sp, store: EventStore, home: Home, scene: dict[str, str], tmp_path: Path) -> None:
    ledger = home.ledger_path
    before = rows(ledger)
    file = tmp_path / "archive.db"
    for args in (["--before", "last tuesday", str(file)], ["--before", "", str(file)],
                 ["--before", "2026-13-45", str(file)],
                 ["--before", "30d", str(tmp_path / "no" / "such" / "dir.db")],
                 ["--before", "30d", str(ledger)]):
        result = sp("archive", *args, ok=False)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert "--before" in sp("archive", "--before", "soon", str(file), ok=False).stderr
    assert not file.exists()
    # A file that is not an archive of this ledger.
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE x (y)").connection.close()
    assert sp("archive", "--before", "30d", str(foreign), ok=False).exit_code == 2
    other = Home(tmp_path / "other")
    with other.open() as o:
        action(o, "completed")
        o.clock = ManualClock(o.clock.now_ms() + 10 * DAY)
        archive(o, "1d", tmp_path / "theirs.db")
    theirs = sp("archive", "--before", "2099-01-01", str(tmp_path / "theirs.db"), ok=False)
    assert theirs.exit_code == 2 and "belongs to another ledger" in theirs.stderr
    assert rows(ledger) == before


def test_before_accepts_dates_datetimes_and_durations() -> None:
    now = 1_767_225_600_000  # 2026-01-01T00:00Z
    assert parse_before("2026-01-01", now) == now
    assert parse_before("2026-01-01T02:00:00+02:00", now) == now
    assert parse_before("2026-01-01T00:00Z", now) == now
    assert parse_before("30d", now) == now - 30 * DAY
    assert parse_before("12h", now) == now - 12 * HOUR
    for bad in ("30", "yesterday", "", "2026-02-30"):
        with pytest.raises(UsageError, match="--before"):
            parse_before(bad, now)


def test_a_finished_plan_moves_with_its_actions(
        store: EventStore, home: Home, clock: ManualClock, tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("name: tiny\nactions:\n"
                    "  - id: a\n    type: shell\n    payload: {command: [\"true\"]}\n"
                    "  - id: b\n    type: shell\n    payload: {command: [\"true\"]}\n"
                    "    depends_on: [a]\n")
    plan_id = plans.apply(store, path)
    Worker(store, home, concurrency=1).run(until_idle=True)
    assert plans.status(store, plan_id)["state"] == "completed"
    members = {str(r[0]) for r in store.query(
        "SELECT action_id FROM plan_steps WHERE plan_id = ?", (plan_id,))}
    clock.advance(DAY)
    report = archive(store, "1h", tmp_path / "archive.db")
    assert (report.actions, report.plans) == (2, 1)
    assert streams(tmp_path / "archive.db") == {f"plan:{plan_id}", *members}
    assert store.query("SELECT * FROM plans") == []
    assert engine.check(store)[1] is None and verify(store).ok


# -- kill -9 between the steps ------------------------------------------------------------------


@contextmanager
def write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold ``path``'s write lock (BEGIN IMMEDIATE) until the block ends."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def _staged(file: Path) -> int:
    if not file.exists():
        return 0
    conn = sqlite3.connect(f"file:{file}?mode=ro", uri=True, timeout=0.1)
    try:
        return int(conn.execute("SELECT count(*) FROM staged_events").fetchone()[0])
    finally:
        conn.close()


def _recorded(ledger: Path) -> int:
    conn = sqlite3.connect(ledger, timeout=0.1)
    try:
        return int(conn.execute(
            "SELECT count(*) FROM events WHERE type = 'ledger.archived'").fetchone()[0])
    finally:
        conn.close()


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_kill_9_after_the_copy_loses_and_duplicates_nothing(
        sp: Sp, store: EventStore, home: Home, scene: dict[str, str], tmp_path: Path) -> None:
    ledger, file = home.ledger_path, tmp_path / "archive.db"
    before = rows(ledger)
    with write_lock(ledger):  # the move waits for the ledger: stop it there
        proc = sp.popen("archive", "--before", scene["cutoff"], str(file))
        wait_until(lambda: _staged(file) > 0, what="the staged copy", ignoring=(sqlite3.Error,))
        _kill(proc)
    assert rows(ledger) == before  # nothing moved, nothing recorded
    assert rows(file) == []
    assert sp("verify", "--archive", str(file)).stdout == f"ok: {len(before)} events\n"
    assert sp("audit", scene["done"]).exit_code == 0
    # The next run discards the orphaned copy and moves everything exactly once.
    report = archive(store, scene["cutoff"], file)
    assert _staged(file) == 0
    assert len(rows(file)) == report.events == len(
        [r for r in before if r[1] in streams(file)])
    assert len({r[0] for r in rows(file)}) == report.events
    assert "re-checked from the archive" in sp("verify").stdout
    assert engine.check(store)[1] is None


@pytest.mark.slow
def test_kill_9_after_the_move_loses_and_duplicates_nothing(
        sp: Sp, store: EventStore, home: Home, scene: dict[str, str], tmp_path: Path) -> None:
    ledger, file = home.ledger_path, tmp_path / "archive.db"
    before = rows(ledger)
    with write_lock(ledger):
        proc = sp.popen("archive", "--before", scene["cutoff"], str(file))
        wait_until(lambda: _staged(file) > 0, what="the staged copy", ignoring=(sqlite3.Error,))
        archive_lock = sqlite3.connect(file, isolation_level=None, timeout=30)
        archive_lock.execute("BEGIN IMMEDIATE")  # the promotion will wait for the archive
    try:
        wait_until(lambda: _recorded(ledger) == 1, what="ledger.archived",
                   ignoring=(sqlite3.Error,))
        _kill(proc)
    finally:
        archive_lock.execute("ROLLBACK")
        archive_lock.close()
    moved = [r for r in before if r[1] not in streams(ledger)]
    assert moved and rows(file) == []  # only in staged_events, under a recorded batch
    assert rows(file, "staged_events") == moved
    # Readers already see them there: verify re-checks them, audit reads them.
    out = sp("verify").stdout
    assert f"{len(moved)} archived ({len(moved)} re-checked" in out
    assert "action.completed" in sp("audit", scene["done"]).stdout
    # The next run finishes the promotion; nothing is duplicated or lost.
    archive(store, scene["cutoff"], file)
    assert rows(file) == moved and rows(file, "staged_events") == []
    assert sp("verify").stdout == out
    assert engine.check(store)[1] is None
