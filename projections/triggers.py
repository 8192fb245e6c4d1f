"""Read models of event-driven triggers: the applied trigger file, and every fire.

``trigger_config`` keeps one row per apply (``version`` is the apply's position in the stream
``triggers``); the current document is the row with the highest version. ``trigger_fires`` has
one row per ``trigger.fired``, whatever the kind (filesystem, webhook, serial, condition,
continuous), so ``sp trigger list`` counts them and ``sp trigger show`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable

from sp.ledger import events as ev
from sp.ledger.store import Recorded
from sp.projections.actions import to_json
from sp.projections.rows import Rows, Table

CONFIG_STREAM = "triggers"
FIRE_STREAM_PREFIX = "trigger:"

DDL = """
CREATE TABLE trigger_config (
    version    INTEGER PRIMARY KEY,  -- the apply's version in the stream 'triggers'
    config     TEXT NOT NULL,        -- JSON: the document as written
    source     TEXT NOT NULL,        -- the file it came from (absolute)
    sha256     TEXT NOT NULL,        -- of the document's canonical JSON
    ts         INTEGER NOT NULL,
    by         TEXT NOT NULL,
    seq        INTEGER NOT NULL
);
CREATE TABLE trigger_fires (
    seq        INTEGER PRIMARY KEY,  -- the trigger.fired event
    ts         INTEGER NOT NULL,
    trigger    TEXT NOT NULL,        -- the trigger's name (stream trigger:<name>)
    kind       TEXT NOT NULL,        -- filesystem | webhook | serial | condition | continuous
    action_id  TEXT NOT NULL,
    agent      TEXT NOT NULL,
    task       TEXT NOT NULL,
    detail     TEXT NOT NULL
);
CREATE INDEX trigger_fires_by_trigger ON trigger_fires (trigger, seq);
"""

TABLES = (
    Table("trigger_config", ("version", "config", "source", "sha256", "ts", "by", "seq"),
          ("version",)),
    Table("trigger_fires", ("seq", "ts", "trigger", "kind", "action_id", "agent", "task",
                            "detail"), ("seq",)),
)


def _applied(rows: Rows, rec: Recorded) -> None:
    e = rec.event
    assert isinstance(e, ev.TriggersApplied)
    rows.put("trigger_config", {
        "version": rec.version, "config": to_json(e.config), "source": e.source,
        "sha256": e.sha256, "ts": rec.ts, "by": e.by, "seq": rec.seq,
    })


def _fired(rows: Rows, rec: Recorded) -> None:
    e = rec.event
    assert isinstance(e, ev.TriggerFired)
    rows.put("trigger_fires", {
        "seq": rec.seq, "ts": rec.ts, "trigger": e.trigger, "kind": e.kind,
        "action_id": e.action_id, "agent": e.agent, "task": e.task, "detail": e.detail,
    })


HANDLERS: dict[str, Callable[[Rows, Recorded], None]] = {
    ev.tag_of(ev.TriggersApplied): _applied,
    ev.tag_of(ev.TriggerFired): _fired,
}
