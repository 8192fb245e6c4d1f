"""Read models of things that are not actions: paused claiming, applied agent configs and the
agents' capability policies."""

from __future__ import annotations

from collections.abc import Callable

from sp.ledger import events as ev
from sp.ledger.store import Recorded
from sp.projections.actions import to_json
from sp.projections.rows import Rows, Table

DDL = """
CREATE TABLE pauses (
    agent TEXT PRIMARY KEY,          -- '' pauses every agent
    seq   INTEGER NOT NULL,
    ts    INTEGER NOT NULL,
    by    TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE agents (
    agent_id   TEXT PRIMARY KEY,
    version    INTEGER NOT NULL,     -- how many times it was applied
    config     TEXT NOT NULL,        -- JSON: the document as written
    source     TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    seq        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE policies (
    agent_id   TEXT PRIMARY KEY,
    version    INTEGER NOT NULL,     -- how many times it was set
    policy     TEXT NOT NULL,        -- JSON: security.policy.Policy
    source     TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    seq        INTEGER NOT NULL
) WITHOUT ROWID;
"""

TABLES = (
    Table("pauses", ("agent", "seq", "ts", "by"), ("agent",)),
    Table("agents", ("agent_id", "version", "config", "source", "sha256", "updated_ms", "seq"),
          ("agent_id",)),
    Table("policies", ("agent_id", "version", "policy", "source", "sha256", "updated_ms", "seq"),
          ("agent_id",)),
)


def _paused(rows: Rows, rec: Recorded) -> None:
    e = rec.event
    assert isinstance(e, ev.WorkPaused)
    rows.put("pauses", {"agent": e.agent, "seq": rec.seq, "ts": rec.ts, "by": e.by})


def _resumed(rows: Rows, rec: Recorded) -> None:
    e = rec.event
    assert isinstance(e, ev.WorkResumed)
    # Symmetric: `sp resume` lifts `sp pause`; `--agent A` lifts that agent's pause.
    rows.delete("pauses", e.agent)


def _configured(rows: Rows, rec: Recorded) -> None:
    e = rec.event
    assert isinstance(e, ev.AgentConfigured)
    prev = rows.get("agents", e.agent_id)
    rows.put("agents", {
        "agent_id": e.agent_id, "version": (prev["version"] if prev else 0) + 1,
        "config": to_json(e.config), "source": e.source, "sha256": e.sha256,
        "updated_ms": rec.ts, "seq": rec.seq,
    })


def _policy_set(rows: Rows, rec: Recorded) -> None:
    e = rec.event
    assert isinstance(e, ev.PolicySet)
    prev = rows.get("policies", e.agent_id)
    if not e.policy:
        rows.delete("policies", e.agent_id)
        return
    rows.put("policies", {
        "agent_id": e.agent_id, "version": (prev["version"] if prev else 0) + 1,
        "policy": to_json(e.policy), "source": e.source, "sha256": e.sha256,
        "updated_ms": rec.ts, "seq": rec.seq,
    })


HANDLERS: dict[str, Callable[[Rows, Recorded], None]] = {
    ev.tag_of(ev.WorkPaused): _paused,
    ev.tag_of(ev.WorkResumed): _resumed,
    ev.tag_of(ev.AgentConfigured): _configured,
    ev.tag_of(ev.PolicySet): _policy_set,
}
