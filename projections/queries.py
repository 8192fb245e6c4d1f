"""Read helpers over the projections (status, audit). Reads only; never writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from sp.ledger import events as ev
from sp.ledger.errors import ActionNotFoundError
from sp.ledger.interface import Ledger
from sp.ledger.side import Reader
from sp.ledger.store import Recorded, Row
from sp.machines.states import ActionState
from sp.projections.actions import TABLE as ACTIONS

_COLS = ", ".join(ACTIONS.columns)
_JSON_COLS = ("depends_on", "checkpoint", "result", "compensation")
_json_decode = msgspec.json.decode


def _row(values: tuple[Any, ...]) -> dict[str, Any]:
    row = dict(zip(ACTIONS.columns, values, strict=True))
    for col in _JSON_COLS:
        if row[col] is not None:
            row[col] = _json_decode(row[col])
    row["cancel_requested"] = bool(row["cancel_requested"])
    row["held"] = bool(row["held"])
    return row


def get_action(store: Ledger, action_id: str) -> dict[str, Any]:
    """:raises ActionNotFoundError: no such action."""
    found = store.query_one(f"SELECT {_COLS} FROM actions WHERE action_id = ?", (action_id,))
    if found is None:
        raise ActionNotFoundError(action_id)
    return _row(found)


def list_actions(store: Ledger, *, everything: bool = False, recent: int = 10,
                 agent: str | None = None) -> list[dict[str, Any]]:
    """Unfinished actions, plus the ``recent`` most recently finished (or all with everything).

    Both halves use an index, so this stays fast on a ledger of millions of events.
    """
    where_agent = " AND agent = ?" if agent else ""
    params: tuple[Any, ...] = (agent,) if agent else ()
    if everything:
        rows = store.query(
            f"SELECT {_COLS} FROM actions WHERE 1 {where_agent} ORDER BY submitted_seq", params
        )
        return [_row(r) for r in rows]
    active = store.query(
        f"SELECT {_COLS} FROM actions WHERE state IN "
        "('pending', 'validating', 'queued', 'executing', 'retrying', 'interrupted',"
        " 'rolling_back')"
        f"{where_agent} ORDER BY submitted_seq",
        params,
    )
    finished = store.query(
        f"SELECT {_COLS} FROM actions WHERE finished_seq IS NOT NULL{where_agent}"
        " ORDER BY finished_seq DESC LIMIT ?",
        (*params, recent),
    )
    rows = sorted([*active, *finished], key=lambda r: r[ACTIONS.columns.index("submitted_seq")])
    return [_row(r) for r in rows]


def counts(store: Ledger) -> dict[str, int]:
    rows = store.query("SELECT state, n FROM metrics_counts WHERE dim = 'all' AND n > 0")
    return {state.value: 0 for state in ActionState} | {str(s): int(n) for s, n in rows}


class AuditEntry(msgspec.Struct, frozen=True):
    seq: int
    version: int
    ts: int
    event: str
    from_state: str | None
    to_state: str | None
    by: str
    details: dict[str, Any]


def audit(store: Ledger, action_id: str) -> list[AuditEntry]:
    """Every event of an action in order, with the states it moved between.

    :raises ActionNotFoundError: the action has no events.
    """
    history = store.read_stream(action_id)
    if not history:
        raise ActionNotFoundError(action_id)
    return audit_entries(history)


def audit_entries(history: list[Recorded]) -> list[AuditEntry]:
    """Audit entries of one action's events (from the log, or from an archive file)."""
    from sp.machines.action import FOLD

    entries: list[AuditEntry] = []
    state: ActionState | None = None
    for rec in history:
        if isinstance(rec.event, ev.ActionSubmitted):
            new = ActionState.PENDING
        else:
            assert state is not None
            new = FOLD.get((state, rec.type), state)
        entries.append(AuditEntry(
            seq=rec.seq, version=rec.version, ts=rec.ts, event=rec.type,
            from_state=None if state is None else state.value, to_state=new.value,
            by=rec.event.by, details=details_of(rec.event),
        ))
        state = new
    return entries


def audit_stream(store: Ledger, stream: str) -> list[AuditEntry]:
    """Every event of a stream that is not an action (``policy:<agent>``, ``agent:<id>``,
    ``plan:<id>``, ``schedule:<name>``...), in order.

    :raises UsageError: the stream has no events.
    """
    history = store.read_stream(stream)
    if not history:
        from sp.ledger.errors import UsageError

        raise UsageError(f"no events in stream {stream!r}")
    return [AuditEntry(seq=rec.seq, version=rec.version, ts=rec.ts, event=rec.type,
                       from_state=None, to_state=None, by=rec.event.by,
                       details=details_of(rec.event)) for rec in history]


def details_of(event: ev.Event) -> dict[str, Any]:
    """The event's fields that carry information: not empty, not ``type`` or ``by``."""
    out: dict[str, Any] = {}
    for field in msgspec.structs.fields(type(event)):
        value = getattr(event, field.name)
        if field.name == "by" or value is None or value is False or value in ("", [], {}):
            continue
        out[field.name] = value
    return out


# -- what the CLI shows beside status and audit (it runs no SQL of its own) -----------------------

def agent_config_json(store: Reader, agent_id: str) -> str | None:
    """The agent's recorded configuration, as the JSON text it was recorded in."""
    row = store.query_one("SELECT config FROM agents WHERE agent_id = ?", (agent_id,))
    return None if row is None else str(row[0])


def last_checkpoint_json(store: Reader, action_id: str) -> str | None:
    """The data of the action's last checkpoint (JSON text), or None."""
    row = store.query_one("SELECT data FROM checkpoints WHERE action_id = ?", (action_id,))
    return None if row is None else str(row[0])


def action_state(store: Reader, action_id: str) -> str | None:
    """The action's state (its text), or None for an unknown action."""
    row = store.query_one("SELECT state FROM actions WHERE action_id = ?", (action_id,))
    return None if row is None else str(row[0])


def active_actions(store: Reader, states: Sequence[str], limit: int = 200) -> list[Row]:
    """``(action_id, name, agent, task, state, progress, progress_msg, started_ms,
    child_pid)`` of the actions in ``states``, executing ones first (``sp monitor --live``).
    The child's pid comes from its lease, a side table: what is running now."""
    marks = ", ".join("?" * len(states))
    return store.query(
        "SELECT a.action_id, a.name, a.agent, a.task, a.state, a.progress, a.progress_msg,"
        " a.started_ms, l.child_pid FROM actions a LEFT JOIN leases l ON l.name = a.action_id"
        f" WHERE a.state IN ({marks}) ORDER BY a.state != 'executing', a.submitted_seq"
        " LIMIT ?", (*states, limit))


def actions_since(store: Reader, start_ms: int, limit: int = 500) -> list[Row]:
    """``(action_id, name, agent, state, submitted_ms, started_ms, finished_ms, error)`` of
    the actions submitted since ``start_ms``, in submission order (``sp report``)."""
    return store.query(
        "SELECT action_id, name, agent, state, submitted_ms, started_ms, finished_ms, error"
        " FROM actions WHERE submitted_ms >= ? ORDER BY submitted_seq LIMIT ?",
        (start_ms, limit))


def attempts_since(store: Reader, start_ms: int, limit: int = 500) -> list[Row]:
    """``(action_id, attempt, outcome, duration_ms, finished_ms, peak_rss_bytes)`` of the
    attempts that finished since ``start_ms``, oldest first (``sp report``)."""
    return store.query(
        "SELECT action_id, attempt, outcome, duration_ms, finished_ms, peak_rss_bytes"
        " FROM metrics_attempts WHERE finished_ms >= ? ORDER BY finished_ms LIMIT ?",
        (start_ms, limit))
