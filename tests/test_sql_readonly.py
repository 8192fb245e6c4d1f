"""``sp sql`` reads, and cannot write: every write is refused in one line, the file unchanged."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sp.commands import actions, execution
from sp.commands.home import Home
from sp.ledger.clock import ManualClock
from sp.ledger.schema import MIGRATIONS
from sp.projections import views
from tests.conftest import Sp


def build(root: Path) -> int:
    """A small ledger with one action in each interesting outcome; returns its event count.

    a: completed, in group g1 with a compensation    b: failed once, retried, completed
    c: failed for good (exit 3)                       d: cancelled while queued
    """
    clock = ManualClock()
    store = Home(root).open(clock=clock)
    try:
        a, b, c, d = actions.submit(store, [
            actions.SubmitSpec(command=["echo", "a"], name="a", agent="ag1", group="g1",
                               compensation=["echo", "undo a"]),
            actions.SubmitSpec(command=["false"], name="b", retries=1, action_type="shell"),
            actions.SubmitSpec(command=["sh", "-c", "exit 3"], name="c", agent="ag2"),
            actions.SubmitSpec(command=["echo", "d"], name="d"),
        ], by="test", agent_create=True)
        ok = execution.Outcome(exit_code=0, duration_ms=1200)
        bad = execution.Outcome(exit_code=3, duration_ms=300, error_kind="exit_code",
                                error="exit code 3")
        execution.finish(store, execution.claim(store, a, "w1"), ok)
        execution.finish(store, execution.claim(store, b, "w1"), bad)
        clock.advance(5_000)
        execution.finish(store, execution.claim(store, b, "w1"), ok)
        # c's program was refused a write by the sandbox before it failed (v_security)
        denied = msgspec.structs.replace(bad, security=[{"access": "fs.write_file",
                                                          "path": "/etc/x"}])
        execution.finish(store, execution.claim(store, c, "w1"), denied)
        actions.cancel(store, d, by="test")
        seq, _ = store.head()
        return seq
    finally:
        store.close()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    root = tmp_path_factory.mktemp("pristine")
    n = build(root)
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("ledger.db")) == [
        "ledger.db"], "the WAL must be checkpointed when the store closes"
    return root / "ledger.db", n


@pytest.fixture
def events(sp: Sp, pristine: tuple[Path, int]) -> int:
    """Copy the pristine ledger into this test's home; return its event count."""
    sp.home.ensure()
    shutil.copyfile(pristine[0], sp.home.ledger_path)
    return pristine[1]


def snapshot(home: Home) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(home.root.glob("ledger.db*"))}


def direct(path: Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        cur = conn.execute(sql)
        return [d[0] for d in cur.description], cur.fetchall()
    finally:
        conn.close()


# -- writes are refused --------------------------------------------------------------------------

WRITES = {
    "insert event": "INSERT INTO events (stream, version, type, ts, data, prev_hash, hash)"
                    " VALUES ('x', 1, 'action.rejected', 0, '{}', '', '')",
    "insert select": "INSERT INTO meta SELECT 'k' || seq, 'v' FROM events",
    "replace": "REPLACE INTO meta VALUES ('projection_version', '0')",
    "update projection": "UPDATE actions SET state = 'completed'",
    "update returning": "UPDATE actions SET state = 'completed' RETURNING action_id",
    "update event": "UPDATE events SET data = '{}'",
    "delete events": "DELETE FROM events",
    "delete projection": "DELETE FROM actions",
    "cte delete": "WITH x AS (SELECT 1) DELETE FROM leases",
    "drop table": "DROP TABLE actions",
    "drop view": "DROP VIEW v_events",
    "drop trigger": "DROP TRIGGER events_no_update",
    "create table": "CREATE TABLE x (a)",
    "create temp table": "CREATE TEMP TABLE x (a)",
    "create view": "CREATE VIEW v_x AS SELECT 1",
    "create index": "CREATE INDEX x ON events (ts)",
    "create trigger": "CREATE TEMP TRIGGER x AFTER INSERT ON events BEGIN SELECT 1; END",
    "attach": "ATTACH DATABASE '{tmp}/attached.db' AS x",
    "pragma user_version": "PRAGMA user_version = 99",
    "pragma journal_mode": "PRAGMA journal_mode = DELETE",
    "pragma writable_schema": "PRAGMA writable_schema = ON",
    "pragma query_only off": "PRAGMA query_only = OFF",
    "pragma wal_checkpoint": "PRAGMA wal_checkpoint(TRUNCATE)",
    "pragma foreign_keys": "PRAGMA foreign_keys = OFF",
    "attach memory": "ATTACH DATABASE ':memory:' AS m",
    "detach": "DETACH DATABASE main",
    "load_extension": "SELECT load_extension('{tmp}/evil.so')",
    "create virtual table": "CREATE VIRTUAL TABLE temp.x USING fts5(a)",
    "insert into temp": "INSERT INTO temp.sqlite_master VALUES (1, 2, 3, 4, 5)",
    "pragma schema user_version": "PRAGMA main.user_version = 5",
    "pragma call form": "PRAGMA user_version(5)",
    "pragma optimize": "PRAGMA optimize",
    "pragma incremental_vacuum": "PRAGMA incremental_vacuum",
    "pragma temp_store": "PRAGMA temp_store = MEMORY",
    "vacuum": "VACUUM",
    "vacuum into": "VACUUM INTO '{tmp}/copy.db'",
    "reindex": "REINDEX",
    "analyze": "ANALYZE",
    "begin": "BEGIN IMMEDIATE",
    "savepoint": "SAVEPOINT s",
    "write after select": "SELECT 1; DELETE FROM events",
    "two selects": "SELECT 1; SELECT 2",
    "not sql": "SELEKT * FROM events",
    "no such table": "SELECT * FROM nowhere",
}


@pytest.mark.parametrize("sql", WRITES.values(), ids=WRITES.keys())
def test_a_write_is_refused_and_changes_nothing(sp: Sp, events: int, tmp_path: Path,
                                                sql: str) -> None:
    before = snapshot(sp.home)
    result = sp("sql", sql.replace("{tmp}", str(tmp_path)), ok=False)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ")
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n")
    assert "Traceback" not in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert snapshot(sp.home) == before
    assert not (tmp_path / "attached.db").exists()
    assert not (tmp_path / "copy.db").exists()
    assert sp("verify").stdout == f"ok: {events} events\n"
    assert sp("replay", "--check").exit_code == 0


def test_refusals_say_why(sp: Sp, events: int) -> None:
    assert sp("sql", "DELETE FROM events", ok=False).stderr == (
        "Error: sp sql is read-only: not authorized\n")
    assert sp("sql", "SELECT 1; SELECT 2", ok=False).stderr.startswith(
        "Error: sql: You can only execute one statement at a time")


@pytest.mark.slow
def test_a_refused_write_as_a_real_process(sp: Sp, events: int) -> None:
    before = snapshot(sp.home)
    proc = sp.proc("sql", "DROP TABLE events")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1
    assert snapshot(sp.home) == before


# -- reads work ----------------------------------------------------------------------------------


def test_reading_does_not_change_the_file(sp: Sp, events: int) -> None:
    before = snapshot(sp.home)
    sp("sql", "SELECT * FROM events")
    sp("sql", "SELECT * FROM v_metrics", "--format", "json")
    assert snapshot(sp.home) == before


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
@pytest.mark.parametrize("view", views.NAMES)
def test_documented_views_in_every_format(sp: Sp, events: int, view: str, fmt: str) -> None:
    query = f"SELECT * FROM {view}"
    cols, rows = direct(sp.home.ledger_path, query)
    assert rows, f"{view} should have rows in this ledger"
    out = sp("sql", query, "--format", fmt).stdout
    if fmt == "json":
        assert json.loads(out) == [dict(zip(cols, r, strict=True)) for r in rows]
    elif fmt == "csv":
        parsed = list(csv.reader(io.StringIO(out)))
        assert parsed[0] == cols
        assert parsed[1:] == [["" if v is None else str(v) for v in r] for r in rows]
    else:
        lines = out.splitlines()
        assert lines[0].split() == [c.upper() for c in cols]
        assert len(lines) == len(rows) + 1


def test_table_format_is_the_default(sp: Sp, events: int) -> None:
    out = sp("sql", "SELECT state, count(*) AS n FROM actions GROUP BY state ORDER BY state")
    assert out.stdout.splitlines() == [
        "STATE      N", "cancelled  1", "completed  2", "failed     1"]


def test_views_answer_the_documented_questions(sp: Sp, events: int) -> None:
    def q(sql: str) -> list[dict[str, Any]]:
        doc: list[dict[str, Any]] = json.loads(sp("sql", sql, "--format", "json").stdout)
        return doc

    assert len(q("SELECT * FROM v_events")) == events
    assert {r["name"]: r["state"] for r in q("SELECT * FROM v_actions")} == {
        "a": "completed", "b": "completed", "c": "failed", "d": "cancelled"}
    assert [(r["name"], r["retries"]) for r in q("SELECT * FROM v_retries")] == [("b", 1)]
    assert q("SELECT compensation, step FROM v_rollback_plans WHERE group_id = 'g1'") == [
        {"compensation": '["echo","undo a"]', "step": 1}]
    failures = q("SELECT error_kind, sum(failures) AS n FROM v_failures GROUP BY error_kind")
    assert failures == [{"error_kind": "exit_code", "n": 2}]
    (total,) = q("SELECT * FROM v_metrics WHERE dim = 'all'")
    assert (total["total"], total["completed"], total["failed"], total["cancelled"]) == (
        4, 2, 1, 1)
    assert total["retries"] == 1
    assert total["p50_ms"] == 1200


def test_json_functions_and_read_only_pragmas_work(sp: Sp, events: int) -> None:
    doc = json.loads(sp("sql", "SELECT json_extract(data, '$.name') AS name FROM events"
                               " WHERE type = 'action.submitted' ORDER BY seq",
                        "--format", "json").stdout)
    assert [r["name"] for r in doc] == ["a", "b", "c", "d"]
    info = json.loads(sp("sql", "PRAGMA table_info(events)", "--format", "json").stdout)
    assert [r["name"] for r in info] == [
        "seq", "stream", "version", "type", "ts", "data", "prev_hash", "hash"]
    assert json.loads(sp("sql", "PRAGMA user_version", "--format", "json").stdout) == [
        {"user_version": len(MIGRATIONS)}]
    rec = json.loads(sp("sql", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                               " WHERE i < 3) SELECT i FROM n", "--format", "json").stdout)
    assert rec == [{"i": 1}, {"i": 2}, {"i": 3}]


def test_an_empty_result_still_has_a_header(sp: Sp, events: int) -> None:
    assert sp("sql", "SELECT seq, type FROM events WHERE 0", "--format", "csv").stdout == (
        "seq,type\n")
    assert sp("sql", "SELECT seq FROM events WHERE 0", "--format", "json").stdout == "[]\n"
