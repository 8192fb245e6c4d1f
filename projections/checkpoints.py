"""The ``checkpoints`` read model: the latest checkpoint of each action, and how many."""

from __future__ import annotations

from sp.ledger.store import Recorded
from sp.projections.rows import RowDict, Rows, Table

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


def on_checkpoint(rows: Rows, rec: Recorded, a: RowDict) -> None:
    """``a`` is the action's row, which already holds this checkpoint (its JSON encoded once,
    by the actions projection)."""
    prev = rows.get("checkpoints", rec.stream)
    rows.put("checkpoints", {
        "action_id": rec.stream, "seq": rec.seq, "ts": rec.ts, "attempt": a["attempts"],
        "step": a["checkpoint_step"], "data": a["checkpoint"],
        "count": (prev["count"] if prev else 0) + 1,
    })
