"""The ``metrics`` read model: counts by state per type and agent, and every finished attempt.

Percentiles, success rates and retry counts are SQL views over these (projections/views.py).
"""

from __future__ import annotations

from ledger import events as ev
from ledger.store import Recorded
from machines.states import ActionState

from .rows import RowDict, Rows, Table

DDL = """
CREATE TABLE metrics_counts (
    dim   TEXT NOT NULL,      -- 'all', 'type' or 'agent'
    key   TEXT NOT NULL,      -- the type or agent name ('' for all / no agent)
    state TEXT NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (dim, key, state)
) WITHOUT ROWID;
CREATE TABLE metrics_attempts (
    action_id   TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    agent       TEXT,
    action_type TEXT NOT NULL,
    outcome     TEXT NOT NULL,  -- completed, failed, retry, interrupted, cancelled
    error_kind  TEXT,
    exit_code   INTEGER,
    duration_ms INTEGER NOT NULL,
    finished_ms INTEGER NOT NULL,
    PRIMARY KEY (action_id, attempt)
) WITHOUT ROWID;
CREATE INDEX metrics_attempts_type ON metrics_attempts (action_type, outcome);
CREATE INDEX metrics_attempts_time ON metrics_attempts (finished_ms);
"""

TABLES = (
    Table("metrics_counts", ("dim", "key", "state", "n"), ("dim", "key", "state"), counter="n"),
    Table("metrics_attempts", ("action_id", "attempt", "agent", "action_type", "outcome",
                               "error_kind", "exit_code", "duration_ms", "finished_ms"),
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
    if old is not None:
        rows.add("metrics_counts", ("all", "", old.value), -1)
        rows.add("metrics_counts", ("type", type_, old.value), -1)
        rows.add("metrics_counts", ("agent", agent, old.value), -1)
    rows.add("metrics_counts", ("all", "", new.value), 1)
    rows.add("metrics_counts", ("type", type_, new.value), 1)
    rows.add("metrics_counts", ("agent", agent, new.value), 1)


def on_attempt_end(rows: Rows, a: RowDict, rec: Recorded) -> None:
    """An attempt ended (left EXECUTING): record its outcome and duration."""
    e = rec.event
    duration = getattr(e, "duration_ms", 0) or max(0, rec.ts - (a["started_ms"] or rec.ts))
    rows.put("metrics_attempts", {
        "action_id": a["action_id"], "attempt": a["attempts"], "agent": a["agent"],
        "action_type": a["action_type"], "outcome": _OUTCOME.get(rec.type, rec.type),
        "error_kind": a["error_kind"], "exit_code": a["exit_code"], "duration_ms": duration,
        "finished_ms": rec.ts,
    })
