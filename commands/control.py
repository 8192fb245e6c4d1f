"""Pause and resume claiming, for all agents or one: recorded as events, so that every
worker (and every restart of one) sees the same answer."""

from __future__ import annotations

from pathlib import Path

from sp.agents import names
from sp.ledger import events as ev
from sp.ledger.interface import Ledger

STREAM = "control"


def pause(store: Ledger, agent: str | None = None, by: str = "") -> bool:
    """Stop claiming (running actions go on). False if it was already paused.

    :raises UsageError: ``agent`` is not a name.
    """
    names.check_optional(agent, "agent id", "--agent")
    key = agent or ""
    with store.transaction() as tx:
        if tx.query_one("SELECT 1 FROM pauses WHERE agent = ?", (key,)):
            return False
        tx.append(STREAM, [ev.WorkPaused(by=by, agent=key)], None)
        return True


def resume(store: Ledger, agent: str | None = None, by: str = "") -> bool:
    """Claim again. False if it was not paused.

    :raises UsageError: ``agent`` is not a name.
    """
    names.check_optional(agent, "agent id", "--agent")
    key = agent or ""
    with store.transaction() as tx:
        if not tx.query_one("SELECT 1 FROM pauses WHERE agent = ?", (key,)):
            return False
        tx.append(STREAM, [ev.WorkResumed(by=by, agent=key)], None)
    from sp.host.wake import signal_workers

    signal_workers(Path(store.path).parent)
    return True
