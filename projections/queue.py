"""The ``queue`` read model: actions waiting to run, and the unmet dependency edges.

Ready = ``unmet_deps = 0 AND (not_before_ms IS NULL OR not_before_ms <= :now)``, ordered by
priority (higher first), then age (submission order). ``:now`` is supplied by the reader: the
projection itself never looks at the clock.
"""

from __future__ import annotations

from sp.machines.states import SATISFIED, WAITING, ActionState
from sp.projections.rows import RowDict, Rows, Table

DDL = """
CREATE TABLE queue (
    action_id     TEXT PRIMARY KEY,
    priority      INTEGER NOT NULL,
    submitted_seq INTEGER NOT NULL,
    not_before_ms INTEGER,           -- a delay or a retry backoff
    unmet_deps    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX queue_order ON queue (priority DESC, submitted_seq);
CREATE TABLE dependencies (
    depends_on TEXT NOT NULL,        -- not completed yet
    action_id  TEXT NOT NULL,        -- waits for it
    PRIMARY KEY (depends_on, action_id)
) WITHOUT ROWID;
"""

TABLES = (
    Table("queue", ("action_id", "priority", "submitted_seq", "not_before_ms", "unmet_deps"),
          ("action_id",)),
    Table("dependencies", ("depends_on", "action_id"), ("depends_on", "action_id")),
)

_SATISFIED_VALUES = frozenset(s.value for s in SATISFIED)
# Membership by value: a str hashes in C (its hash is cached), an Enum member in Python.
_WAITING_VALUES = frozenset(s.value for s in WAITING)
_RETRYING = ActionState.RETRYING

READY_SQL = """
SELECT action_id FROM queue
WHERE unmet_deps = 0 AND (not_before_ms IS NULL OR not_before_ms <= ?)
ORDER BY priority DESC, submitted_seq
LIMIT ?
"""


def on_submitted(rows: Rows, action_id: str, depends_on: list[str]) -> int:
    """Record the edges to unfinished dependencies; return how many are unmet."""
    unmet = 0
    for dep in dict.fromkeys(depends_on):
        d = rows.get("actions", dep)
        if d is None or d["state"] not in _SATISFIED_VALUES:
            rows.put("dependencies", {"depends_on": dep, "action_id": action_id})
            unmet += 1
    return unmet


def on_state(rows: Rows, a: RowDict, old: ActionState | None, new: ActionState) -> None:
    new_value = new._value_
    if new_value in _WAITING_VALUES and not a["held"]:
        not_before = a["retry_at_ms"] if new is _RETRYING else a["not_before_ms"]
        rows.put("queue", {
            "action_id": a["action_id"], "priority": a["priority"],
            "submitted_seq": a["submitted_seq"], "not_before_ms": not_before,
            "unmet_deps": a["unmet_deps"],
        })
    elif old is not None and old._value_ in _WAITING_VALUES:
        rows.delete("queue", a["action_id"])
    if new_value in _SATISFIED_VALUES and (old is None or old._value_ not in _SATISFIED_VALUES):
        _satisfy_dependents(rows, a["action_id"])


def move_dependents(rows: Rows, action_id: str, to: str) -> None:
    """A fallback takes ``action_id``'s place: whoever waited for it now waits for ``to``."""
    for key in rows.find("dependencies", "depends_on", action_id):
        rows.delete("dependencies", key)
        rows.put("dependencies", {"depends_on": to, "action_id": key[1]})


def _satisfy_dependents(rows: Rows, action_id: str) -> None:
    for key in rows.find("dependencies", "depends_on", action_id):
        rows.delete("dependencies", key)
        dependent = key[1]
        d = rows.get("actions", dependent)
        if d is not None:
            d["unmet_deps"] -= 1
            rows.touch("actions", dependent)
        q = rows.get("queue", dependent)
        if q is not None:
            q["unmet_deps"] -= 1
            rows.touch("queue", dependent)
