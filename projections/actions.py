"""The ``actions`` read model: one row per action with its current state and latest facts."""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any

import msgspec

from sp.ledger import events as ev
from sp.ledger.store import Recorded
from sp.projections.rows import RowDict, Rows, Table

DDL = """
CREATE TABLE actions (
    action_id       TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    action_type     TEXT NOT NULL,
    agent           TEXT,
    task            TEXT,
    state           TEXT NOT NULL,
    priority        INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,   -- attempts started so far
    max_attempts    INTEGER NOT NULL,
    group_id        TEXT,
    compensation    TEXT,               -- JSON argv that undoes it, NULL if none
    idem_key        TEXT,
    depends_on      TEXT NOT NULL,      -- JSON list of action ids
    unmet_deps      INTEGER NOT NULL,   -- dependencies not completed yet
    submitted_seq   INTEGER NOT NULL,
    submitted_ms    INTEGER NOT NULL,
    started_ms      INTEGER,            -- start of the latest attempt
    finished_ms     INTEGER,
    finished_seq    INTEGER,
    updated_ms      INTEGER NOT NULL,
    duration_ms     INTEGER,            -- of the latest finished attempt
    exit_code       INTEGER,
    error_kind      TEXT,
    error           TEXT,
    progress        REAL,
    progress_msg    TEXT,
    checkpoint_step INTEGER,
    checkpoint      TEXT,               -- JSON of the last checkpoint's data
    result          TEXT,               -- JSON of the last result
    owner           TEXT,               -- who runs it now (while executing)
    cancel_requested INTEGER NOT NULL,
    held            INTEGER NOT NULL,   -- interrupted, waiting for a person (on_interrupt: hold)
    retry_at_ms     INTEGER,
    not_before_ms   INTEGER,
    timeout_ms      INTEGER,
    version         INTEGER NOT NULL,   -- stream version this row reflects
    last_seq        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX actions_state ON actions (state, submitted_seq);
-- Partial where the column is mostly NULL (an unfinished action, one outside any group): such
-- a row costs no index entry, and `col = ?` / `col IS NOT NULL` queries still use the index.
CREATE INDEX actions_finished ON actions (finished_seq) WHERE finished_seq IS NOT NULL;
CREATE INDEX actions_agent ON actions (agent, submitted_seq);
CREATE INDEX actions_group ON actions (group_id) WHERE group_id IS NOT NULL;
CREATE INDEX actions_idem ON actions (idem_key) WHERE idem_key IS NOT NULL;
"""

TABLE = Table(
    "actions",
    (
        "action_id", "name", "action_type", "agent", "task", "state", "priority", "attempts",
        "max_attempts", "group_id", "compensation", "idem_key", "depends_on", "unmet_deps",
        "submitted_seq",
        "submitted_ms", "started_ms", "finished_ms", "finished_seq", "updated_ms", "duration_ms",
        "exit_code", "error_kind", "error", "progress", "progress_msg", "checkpoint_step",
        "checkpoint", "result", "owner", "cancel_requested", "held", "retry_at_ms",
        "not_before_ms",
        "timeout_ms", "version", "last_seq",
    ),
    ("action_id",),
)

_json = msgspec.json.Encoder()


def to_json(value: Any) -> str:
    return _json.encode(value).decode()


# The fields on_submitted stores under another name or as JSON: column -> field.
MAPPED_FIELDS = {"group_id": "group", "idem_key": "key", "compensation": "compensation",
                 "depends_on": "depends_on"}
# The columns that hold a field of the submitted action unchanged (same name, same value),
# found from the one declaration of those fields (ledger.events.ActionFields), not listed again.
COPIED_FIELDS = tuple(c for c in TABLE.columns
                      if c in ev.ActionFields.__struct_fields__ and c not in MAPPED_FIELDS)
_copied = attrgetter(*COPIED_FIELDS)


def on_submitted(rows: Rows, rec: Recorded, e: ev.ActionSubmitted, unmet: int) -> RowDict:
    row: RowDict = dict(zip(COPIED_FIELDS, _copied(e), strict=True))
    row.update({
        "action_id": rec.stream, "state": "pending", "attempts": 0, "group_id": e.group,
        "compensation": None if e.compensation is None else to_json(e.compensation),
        "idem_key": e.key,
        "depends_on": to_json(e.depends_on) if e.depends_on else "[]", "unmet_deps": unmet,
        "submitted_seq": rec.seq,
        "submitted_ms": rec.ts, "started_ms": None, "finished_ms": None, "finished_seq": None,
        "updated_ms": rec.ts, "duration_ms": None, "exit_code": None, "error_kind": None,
        "error": None, "progress": None, "progress_msg": None, "checkpoint_step": None,
        "checkpoint": None, "result": None, "owner": None, "cancel_requested": 0, "held": 0,
        "retry_at_ms": None, "version": rec.version, "last_seq": rec.seq,
    })
    rows.put("actions", row)
    return row


def _finish(a: RowDict, rec: Recorded) -> None:
    a["finished_ms"] = rec.ts
    a["finished_seq"] = rec.seq
    a["owner"] = None


def _rejected(a: RowDict, rec: Recorded, e: Any) -> None:
    a["error_kind"], a["error"] = "rejected", e.reason
    _finish(a, rec)


def _started(a: RowDict, rec: Recorded, e: Any) -> None:
    a["attempts"] = e.attempt
    a["held"] = 0
    a["started_ms"] = rec.ts
    a["owner"] = e.owner
    a["exit_code"] = None
    a["retry_at_ms"] = None
    a["finished_ms"] = a["finished_seq"] = None


def _progressed(a: RowDict, rec: Recorded, e: Any) -> None:
    a["progress"] = e.percent
    a["progress_msg"] = e.message


def _checkpointed(a: RowDict, rec: Recorded, e: Any) -> None:
    a["checkpoint_step"] = e.step
    a["checkpoint"] = to_json(e.data)


def _completed(a: RowDict, rec: Recorded, e: Any) -> None:
    a["exit_code"], a["duration_ms"], a["result"] = e.exit_code, e.duration_ms, to_json(e.result)
    a["error_kind"] = a["error"] = None
    _finish(a, rec)


def _retry(a: RowDict, rec: Recorded, e: Any) -> None:
    a["exit_code"], a["error_kind"], a["error"] = e.exit_code, e.error_kind, e.error
    a["duration_ms"], a["retry_at_ms"], a["owner"] = e.duration_ms, e.retry_at_ms, None


def _failed(a: RowDict, rec: Recorded, e: Any) -> None:
    a["exit_code"], a["error_kind"], a["error"] = e.exit_code, e.error_kind, e.error
    a["duration_ms"] = e.duration_ms
    _finish(a, rec)


def _interrupted(a: RowDict, rec: Recorded, e: Any) -> None:
    a["error_kind"], a["error"], a["owner"] = "interrupted", e.reason, None
    a["held"] = 1 if e.then == "hold" else 0
    if e.then == "rerun":
        a["checkpoint"] = a["checkpoint_step"] = None


def _cancel_requested(a: RowDict, rec: Recorded, e: Any) -> None:
    a["cancel_requested"] = 1


def _cancelled(a: RowDict, rec: Recorded, e: Any) -> None:
    a["error_kind"], a["error"] = "cancelled", e.reason
    _finish(a, rec)


def _restarted(a: RowDict, rec: Recorded, e: Any) -> None:
    a["finished_ms"] = a["finished_seq"] = None
    a["held"] = 0
    a["cancel_requested"] = 0
    a["retry_at_ms"] = None
    # A restart grants one more attempt than have been made.
    a["max_attempts"] = max(a["max_attempts"], a["attempts"] + 1)


def _rollback_failed(a: RowDict, rec: Recorded, e: Any) -> None:
    a["error_kind"], a["error"] = "rollback", e.error
    a["finished_ms"], a["finished_seq"] = rec.ts, rec.seq


def _rolled_back(a: RowDict, rec: Recorded, e: Any) -> None:
    a["finished_ms"], a["finished_seq"] = rec.ts, rec.seq


def _nothing(a: RowDict, rec: Recorded, e: Any) -> None:
    return None


HANDLERS: dict[str, Callable[[RowDict, Recorded, Any], None]] = {
    ev.tag_of(ev.ActionValidationStarted): _nothing,
    ev.tag_of(ev.ActionQueued): _nothing,
    ev.tag_of(ev.ActionRejected): _rejected,
    ev.tag_of(ev.ActionStarted): _started,
    ev.tag_of(ev.ActionProgressed): _progressed,
    ev.tag_of(ev.ActionCheckpointed): _checkpointed,
    ev.tag_of(ev.ActionCompleted): _completed,
    ev.tag_of(ev.ActionRetryScheduled): _retry,
    ev.tag_of(ev.ActionFailed): _failed,
    ev.tag_of(ev.ActionSkipped): _failed,
    ev.tag_of(ev.ActionInterrupted): _interrupted,
    ev.tag_of(ev.ActionCancelRequested): _cancel_requested,
    ev.tag_of(ev.ActionCancelled): _cancelled,
    ev.tag_of(ev.ActionRestarted): _restarted,
    ev.tag_of(ev.ActionRollbackStarted): _nothing,
    ev.tag_of(ev.ActionRolledBack): _rolled_back,
    ev.tag_of(ev.ActionRollbackFailed): _rollback_failed,
    ev.tag_of(ev.ActionNotified): _nothing,
    ev.tag_of(ev.ActionSecurityDenied): _nothing,
    ev.tag_of(ev.ActionBlobStored): _nothing,  # blob_owners (projections.blobs)
}
