"""The ``rollback_plans`` read model: per group, its completed actions and their compensations.

Read newest first (``ORDER BY completed_seq DESC``) for the reverse rollback order.
"""

from __future__ import annotations

from sp.ledger.store import Recorded
from sp.machines.states import ActionState
from sp.projections.rows import RowDict, Rows, Table

DDL = """
CREATE TABLE rollback_plans (
    group_id      TEXT NOT NULL,
    action_id     TEXT NOT NULL,
    completed_seq INTEGER NOT NULL,
    compensation  TEXT,           -- JSON argv of the compensating command, NULL if none
    state         TEXT NOT NULL,  -- completed, rolling_back, rolled_back, rollback_failed
    PRIMARY KEY (group_id, action_id)
) WITHOUT ROWID;
CREATE INDEX rollback_plans_order ON rollback_plans (group_id, completed_seq DESC);
"""

TABLES = (
    Table("rollback_plans", ("group_id", "action_id", "completed_seq", "compensation", "state"),
          ("group_id", "action_id")),
)

_IN_PLAN = frozenset({ActionState.COMPLETED, ActionState.ROLLING_BACK, ActionState.ROLLED_BACK,
                      ActionState.ROLLBACK_FAILED})
_IN_PLAN_VALUES = frozenset(s.value for s in _IN_PLAN)  # a str hashes in C, an Enum in Python


def on_state(rows: Rows, a: RowDict, old: ActionState | None, new: ActionState,
             rec: Recorded) -> None:
    group = a["group_id"]
    if group is None:
        return
    key = (group, a["action_id"])
    if new is ActionState.COMPLETED and old is ActionState.EXECUTING:
        rows.put("rollback_plans", {
            "group_id": group, "action_id": a["action_id"], "completed_seq": rec.seq,
            "compensation": a["compensation"], "state": new.value,
        })
    elif new._value_ in _IN_PLAN_VALUES:
        row = rows.get("rollback_plans", key)
        if row is not None:
            row["state"] = new.value
            rows.touch("rollback_plans", key)
    elif old is not None and old._value_ in _IN_PLAN_VALUES:
        rows.delete("rollback_plans", key)
