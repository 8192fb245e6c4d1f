"""The ``metrics`` read model: counts by state per type and agent, and every finished attempt.

Percentiles, success rates and retry counts are SQL views over these (projections/views.py).
"""

from __future__ import annotations

from sp.ledger import events as ev
from sp.ledger.store import Recorded
from sp.machines.states import ActionState
from sp.projections.rows import RowDict, Rows, Table

DDL = """
CREATE TABLE metrics_counts (
    dim   TEXT NOT NULL,      -- 'all', 'type', 'agent' or 'task'
    key   TEXT NOT NULL,      -- the type, agent or agent/task ('' for all / none)
    state TEXT NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (dim, key, state)
) WITHOUT ROWID;
CREATE TABLE metrics_attempts (
    action_id   TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    agent       TEXT,
    task        TEXT,
    action_type TEXT NOT NULL,
    outcome     TEXT NOT NULL,  -- completed, failed, skipped, retry, interrupted, cancelled
    error_kind  TEXT,
    exit_code   INTEGER,
    duration_ms INTEGER NOT NULL,
    finished_ms INTEGER NOT NULL,
    cpu_user_ms INTEGER,        -- resource use of the attempt (NULL when not measured)
    cpu_sys_ms  INTEGER,
    peak_rss_bytes INTEGER,
    io_read_bytes  INTEGER,
    io_write_bytes INTEGER,
    PRIMARY KEY (action_id, attempt)
) WITHOUT ROWID;
-- (action_type, outcome) had an index no query used (the views read every row anyway).
CREATE INDEX metrics_attempts_time ON metrics_attempts (finished_ms);
"""

TABLES = (
    Table("metrics_counts", ("dim", "key", "state", "n"), ("dim", "key", "state"), counter="n"),
    Table("metrics_attempts", ("action_id", "attempt", "agent", "task", "action_type",
                               "outcome", "error_kind", "exit_code", "duration_ms",
                               "finished_ms", "cpu_user_ms", "cpu_sys_ms", "peak_rss_bytes",
                               "io_read_bytes", "io_write_bytes"),
          ("action_id", "attempt")),
)

_OUTCOME = {
    ev.tag_of(ev.ActionCompleted): "completed",
    ev.tag_of(ev.ActionFailed): "failed",
    ev.tag_of(ev.ActionSkipped): "skipped",
    ev.tag_of(ev.ActionRetryScheduled): "retry",
    ev.tag_of(ev.ActionInterrupted): "interrupted",
    ev.tag_of(ev.ActionCancelled): "cancelled",
}


def on_state(rows: Rows, a: RowDict, old: ActionState | None, new: ActionState) -> None:
    agent = a["agent"] or ""
    type_ = a["action_type"]
    task = task_key(a["agent"], a["task"])
    if old is not None:
        rows.add("metrics_counts", ("all", "", old.value), -1)
        rows.add("metrics_counts", ("type", type_, old.value), -1)
        rows.add("metrics_counts", ("agent", agent, old.value), -1)
        if task:
            rows.add("metrics_counts", ("task", task, old.value), -1)
    rows.add("metrics_counts", ("all", "", new.value), 1)
    rows.add("metrics_counts", ("type", type_, new.value), 1)
    rows.add("metrics_counts", ("agent", agent, new.value), 1)
    if task:
        rows.add("metrics_counts", ("task", task, new.value), 1)


def task_key(agent: str | None, task: str | None) -> str:
    """The 'task' dimension's key: ``agent/task`` (tasks are named within an agent)."""
    if not task:
        return ""
    return f"{agent or ''}/{task}"


def on_attempt_end(rows: Rows, a: RowDict, rec: Recorded) -> None:
    """An attempt ended (left EXECUTING): record its outcome and duration."""
    e = rec.event
    duration = getattr(e, "duration_ms", 0) or max(0, rec.ts - (a["started_ms"] or rec.ts))
    usage = getattr(e, "usage", None) or {}
    rows.put("metrics_attempts", {
        "action_id": a["action_id"], "attempt": a["attempts"], "agent": a["agent"],
        "task": a["task"], "action_type": a["action_type"],
        "outcome": _OUTCOME.get(rec.type, rec.type), "error_kind": a["error_kind"],
        "exit_code": a["exit_code"], "duration_ms": duration, "finished_ms": rec.ts,
        "cpu_user_ms": usage.get("cpu_user_ms"), "cpu_sys_ms": usage.get("cpu_sys_ms"),
        "peak_rss_bytes": usage.get("peak_rss_bytes"),
        "io_read_bytes": usage.get("io_read_bytes"),
        "io_write_bytes": usage.get("io_write_bytes"),
    })
