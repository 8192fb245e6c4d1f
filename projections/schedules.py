"""Read models of time-based schedules: their definitions and cursors, and every fire or skip.

A schedule's ``cursor_ms`` is the newest slot already decided (fired or skipped); the next tick
looks only at slots after it. Defining (or redefining) and enabling a schedule move the cursor
to the event's own time, so slots before a schedule existed, or while it was disabled, are
never due. Only event data is read (the event's ``ts`` included), never the clock.
"""

from __future__ import annotations

from collections.abc import Callable

from sp.ledger import events as ev
from sp.ledger.interface import Ledger
from sp.ledger.store import Recorded
from sp.projections.rows import RowDict, Rows, Table

STREAM_PREFIX = "schedule:"

DDL = """
CREATE TABLE schedules (
    name              TEXT PRIMARY KEY,
    cron              TEXT NOT NULL,
    timezone          TEXT NOT NULL,
    agent             TEXT NOT NULL,
    task              TEXT NOT NULL,
    jitter_ms         INTEGER NOT NULL,
    missed            TEXT NOT NULL,     -- skip | run_once | backfill | catchup
    backfill_max      INTEGER NOT NULL,
    catchup_window_ms INTEGER NOT NULL,
    overlap           TEXT NOT NULL,     -- skip | queue | allow
    run_window        TEXT NOT NULL,     -- adaptive: 'HH:MM-HH:MM' local time ('' if not)
    adaptive          INTEGER NOT NULL,  -- 1: once a day in run_window, at the quietest minute
    source            TEXT NOT NULL,     -- '' typed by a person, 'agent:<id>' from its file
    enabled           INTEGER NOT NULL,
    cursor_ms         INTEGER NOT NULL,  -- slots after this one are still to come
    defined_ms        INTEGER NOT NULL,
    updated_ms        INTEGER NOT NULL,
    fired             INTEGER NOT NULL,  -- slots fired
    skipped           INTEGER NOT NULL,  -- slots skipped (a lower bound after huge outages)
    last_slot_ms      INTEGER,           -- the slot of the last fire
    last_action_id    TEXT,              -- the action of the last fire
    version           INTEGER NOT NULL,  -- the stream's version (schedule:<name>)
    seq               INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE schedule_runs (
    seq          INTEGER PRIMARY KEY,    -- the schedule.fired / schedule.skipped event
    name         TEXT NOT NULL,
    slot_ms      INTEGER NOT NULL,       -- the (first) slot
    last_slot_ms INTEGER NOT NULL,
    outcome      TEXT NOT NULL,          -- fired | skipped
    count        INTEGER NOT NULL,
    reason       TEXT NOT NULL,          -- due, missed, backfill_limit, outside_window, ...
    action_id    TEXT,
    ts           INTEGER NOT NULL
);
CREATE INDEX schedule_runs_by_slot ON schedule_runs (name, slot_ms);
"""

TABLES = (
    Table("schedules", (
        "name", "cron", "timezone", "agent", "task", "jitter_ms", "missed", "backfill_max",
        "catchup_window_ms", "overlap", "run_window", "adaptive", "source", "enabled",
        "cursor_ms", "defined_ms", "updated_ms", "fired", "skipped", "last_slot_ms",
        "last_action_id", "version", "seq",
    ), ("name",)),
    Table("schedule_runs", ("seq", "name", "slot_ms", "last_slot_ms", "outcome", "count",
                            "reason", "action_id", "ts"), ("seq",)),
)


def any_enabled(store: Ledger) -> bool:
    """Whether a tick has any schedule to look at (cheap: a cron tick asks every minute)."""
    return store.query_one("SELECT 1 FROM schedules WHERE enabled = 1 LIMIT 1") is not None


def name_of(stream: str) -> str:
    return stream[len(STREAM_PREFIX):]


def _touch(rows: Rows, rec: Recorded) -> RowDict | None:
    row = rows.get("schedules", name_of(rec.stream))
    if row is not None:
        row["updated_ms"] = rec.ts
        row["version"] = rec.version
        row["seq"] = rec.seq
        rows.touch("schedules", row["name"])
    return row


def _defined(rows: Rows, rec: Recorded) -> None:
    e = rec.event
    assert isinstance(e, ev.ScheduleDefined)
    name = name_of(rec.stream)
    prev = rows.get("schedules", name)
    rows.put("schedules", {
        "name": name, "cron": e.cron, "timezone": e.timezone, "agent": e.agent,
        "task": e.task, "jitter_ms": e.jitter_ms, "missed": e.missed,
        "backfill_max": e.backfill_max, "catchup_window_ms": e.catchup_window_ms,
        "overlap": e.overlap, "run_window": e.window, "adaptive": int(e.adaptive),
        "source": e.source, "enabled": int(e.enabled),
        "cursor_ms": max(rec.ts, prev["cursor_ms"]) if prev else rec.ts,
        "defined_ms": prev["defined_ms"] if prev else rec.ts, "updated_ms": rec.ts,
        "fired": prev["fired"] if prev else 0, "skipped": prev["skipped"] if prev else 0,
        "last_slot_ms": prev["last_slot_ms"] if prev else None,
        "last_action_id": prev["last_action_id"] if prev else None,
        "version": rec.version, "seq": rec.seq,
    })


def _removed(rows: Rows, rec: Recorded) -> None:
    rows.delete("schedules", name_of(rec.stream))


def _enabled(rows: Rows, rec: Recorded) -> None:
    row = _touch(rows, rec)
    if row is not None:
        row["enabled"] = 1
        row["cursor_ms"] = max(int(row["cursor_ms"]), rec.ts)


def _disabled(rows: Rows, rec: Recorded) -> None:
    row = _touch(rows, rec)
    if row is not None:
        row["enabled"] = 0


def _fired(rows: Rows, rec: Recorded) -> None:
    e = rec.event
    assert isinstance(e, ev.ScheduleFired)
    row = _touch(rows, rec)
    name = name_of(rec.stream)
    if row is not None:
        row["cursor_ms"] = max(int(row["cursor_ms"]), e.slot_ms)
        row["fired"] = int(row["fired"]) + 1
        row["last_slot_ms"] = e.slot_ms
        row["last_action_id"] = e.action_id
    rows.put("schedule_runs", {
        "seq": rec.seq, "name": name, "slot_ms": e.slot_ms, "last_slot_ms": e.slot_ms,
        "outcome": "fired", "count": 1, "reason": "missed" if e.missed else "due",
        "action_id": e.action_id, "ts": rec.ts,
    })


def _skipped(rows: Rows, rec: Recorded) -> None:
    e = rec.event
    assert isinstance(e, ev.ScheduleSkipped)
    row = _touch(rows, rec)
    name = name_of(rec.stream)
    last = e.last_slot_ms if e.last_slot_ms is not None else e.slot_ms
    if row is not None:
        row["cursor_ms"] = max(int(row["cursor_ms"]), last)
        row["skipped"] = int(row["skipped"]) + e.count
    rows.put("schedule_runs", {
        "seq": rec.seq, "name": name, "slot_ms": e.slot_ms, "last_slot_ms": last,
        "outcome": "skipped", "count": e.count, "reason": e.reason, "action_id": e.running,
        "ts": rec.ts,
    })


HANDLERS: dict[str, Callable[[Rows, Recorded], None]] = {
    ev.tag_of(ev.ScheduleDefined): _defined,
    ev.tag_of(ev.ScheduleRemoved): _removed,
    ev.tag_of(ev.ScheduleEnabled): _enabled,
    ev.tag_of(ev.ScheduleDisabled): _disabled,
    ev.tag_of(ev.ScheduleFired): _fired,
    ev.tag_of(ev.ScheduleSkipped): _skipped,
}
