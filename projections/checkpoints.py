"""The ``checkpoints`` read model: the latest checkpoint of each action, and how many."""

from __future__ import annotations

from ledger import events as ev
from ledger.store import Recorded

from .actions import to_json
from .rows import Rows, Table

DDL = """
CREATE TABLE checkpoints (
    action_id TEXT PRIMARY KEY,
    seq       INTEGER NOT NULL,   -- the event that recorded it
    ts        INTEGER NOT NULL,
    attempt   INTEGER NOT NULL,
    step      INTEGER,
    data      TEXT NOT NULL,      -- JSON
    count     INTEGER NOT NULL    -- checkpoints recorded so far
) WITHOUT ROWID;
"""

TABLES = (
    Table("checkpoints", ("action_id", "seq", "ts", "attempt", "step", "data", "count"),
          ("action_id",)),
)


def on_checkpoint(rows: Rows, rec: Recorded, e: ev.ActionCheckpointed, attempt: int) -> None:
    prev = rows.get("checkpoints", rec.stream)
    rows.put("checkpoints", {
        "action_id": rec.stream, "seq": rec.seq, "ts": rec.ts, "attempt": attempt,
        "step": e.step, "data": to_json(e.data), "count": (prev["count"] if prev else 0) + 1,
    })
