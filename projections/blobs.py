"""The ``blob_owners`` read model: which action stored which blob through its worker.

The broker serves a sandboxed action a blob only if this table says the action, the action it
compensates, or an action of its own plan (``group_id``) stored it. Rows come from
``action.blob_stored`` events only, so a replay rebuilds the same ownership.
"""

from __future__ import annotations

from sp.ledger import events as ev
from sp.ledger.store import Recorded
from sp.projections.rows import RowDict, Rows, Table

DDL = """
CREATE TABLE blob_owners (
    sha256    TEXT NOT NULL,
    action_id TEXT NOT NULL,
    group_id  TEXT,               -- the storing action's plan (its group), NULL if none
    seq       INTEGER NOT NULL,   -- the latest action.blob_stored of this pair
    PRIMARY KEY (sha256, action_id)
) WITHOUT ROWID;
"""

TABLES = (Table("blob_owners", ("sha256", "action_id", "group_id", "seq"),
                ("sha256", "action_id")),)


def on_stored(rows: Rows, rec: Recorded, a: RowDict) -> None:
    """``a`` is the storing action's row (its group is the plan the blob belongs to)."""
    e = rec.event
    assert isinstance(e, ev.ActionBlobStored)
    rows.put("blob_owners", {"sha256": e.sha256, "action_id": rec.stream,
                             "group_id": a["group_id"], "seq": rec.seq})
