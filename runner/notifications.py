"""Deliver a completion/failure notification after the outcome is committed, and record it
(:func:`sp.commands.notices.record_notified`: the lifecycle machine checks it like any event)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from sp.commands import notices
from sp.ledger.interface import Ledger
from sp.machines.states import ActionState

if TYPE_CHECKING:
    from sp.runner.attempt import Attempt


def deliver(store: Ledger, attempt: Attempt, state: ActionState,
            notify: dict[str, Any] | None, by: str) -> None:
    """Send per the action's ``notify:`` settings and append one ``action.notified`` per
    channel; delivery failures are recorded, never raised. Nothing is recorded when the
    action is no longer in a final state (the machine refuses ``notify`` there)."""
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
    # The machine decides whether it is recorded (the action may have moved on meanwhile).
    notices.record_notified(store, attempt.action_id,
                            [(r.channel, r.ok, r.detail) for r in results], by)
