"""Read model of alerts (``send_alert`` from continuous actions and actions' Python code): one
row per ``alert.sent``, for ``sp sql "SELECT * FROM alerts ORDER BY seq DESC"``."""

from __future__ import annotations

from collections.abc import Callable

from sp.ledger import events as ev
from sp.ledger.store import Recorded
from sp.projections.rows import Rows, Table

DDL = """
CREATE TABLE alerts (
    seq      INTEGER PRIMARY KEY,  -- the alert.sent event
    ts       INTEGER NOT NULL,
    level    TEXT NOT NULL,        -- info | warning | error | critical
    message  TEXT NOT NULL,
    source   TEXT NOT NULL,        -- continuous:<name>, action:<id>
    agent    TEXT NOT NULL
);
CREATE INDEX alerts_by_agent ON alerts (agent, seq);
"""

TABLES = (Table("alerts", ("seq", "ts", "level", "message", "source", "agent"), ("seq",)),)


def _sent(rows: Rows, rec: Recorded) -> None:
    e = rec.event
    assert isinstance(e, ev.AlertSent)
    rows.put("alerts", {"seq": rec.seq, "ts": rec.ts, "level": e.level, "message": e.message,
                        "source": e.source, "agent": e.agent})


HANDLERS: dict[str, Callable[[Rows, Recorded], None]] = {ev.tag_of(ev.AlertSent): _sent}
