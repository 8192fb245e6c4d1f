"""Deliver a completion/failure notification after the outcome is committed, and record it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from sp.ledger import events as ev
from sp.ledger.store import EventStore
from sp.machines.states import ActionState

if TYPE_CHECKING:
    from sp.runner.attempt import Attempt


def deliver(store: EventStore, attempt: Attempt, state: ActionState,
            notify: dict[str, Any] | None, by: str) -> None:
    """Send per the action's ``notify:`` settings and append one ``action.notified`` per
    channel; delivery failures are recorded, never raised."""
    from sp.agents.config import Notify
    from sp.runner.notify import Notification, send

    if notify is None:
        return
    settings = msgspec.convert(notify, Notify)
    outcome = attempt.outcome
    spec = attempt.claim.spec
    n = Notification(
        action_id=attempt.action_id, name=spec.name, agent=spec.agent, task=spec.task,
        state=state.value, exit_code=outcome.exit_code if outcome else None,
        duration_ms=outcome.duration_ms if outcome else 0,
        error_kind=outcome.error_kind if outcome else None,
        error=outcome.error if outcome else "", result=outcome.result if outcome else {},
        log_path=str(attempt.log_path),
    )
    results = send(settings, n)
    if not results:
        return
    with store.transaction() as tx:
        version = tx.stream_version(attempt.action_id)
        tx.append(attempt.action_id, [
            ev.ActionNotified(by=by, channel=r.channel, ok=r.ok, detail=r.detail[:500])
            for r in results
        ], version)
