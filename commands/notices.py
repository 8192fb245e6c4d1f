"""What sp told people, on the record: ``alert.sent`` (an action's or a continuous trigger's
``send_alert``) and ``action.notified`` (a completion/failure notification was delivered, or
not). The sending itself is the runner's; these commands only decide and append, after it.
"""

from __future__ import annotations

from collections.abc import Sequence

from sp.commands.actions import state_of
from sp.ledger import events as ev
from sp.ledger.errors import InvalidTransitionError, UsageError
from sp.ledger.interface import Ledger, LedgerTransaction

ALERT_LEVELS = ("info", "warning", "error", "critical")
ALERT_STREAM = "alerts"


def alert_event(message: str, level: str, source: str, agent: str) -> ev.AlertSent:
    """Decide ``alert.sent``.

    :raises UsageError: ``level`` is not info, warning, error or critical.
    """
    if level not in ALERT_LEVELS:
        raise UsageError(f"send_alert: level must be one of {', '.join(ALERT_LEVELS)}, "
                         f"got {level!r}")
    return ev.AlertSent(by=source, message=str(message), level=level, source=source,
                        agent=agent)


def record_alert(store: Ledger, message: str, level: str, source: str,
                 agent: str) -> None:
    """Append ``alert.sent`` to the stream ``alerts`` (any version: alerts do not conflict).

    :raises UsageError: ``level`` is not a level (nothing written).
    """
    event = alert_event(message, level, source, agent)
    with store.transaction() as tx:
        tx.append(ALERT_STREAM, [event], None)


def notified_events(channels: Sequence[tuple[str, bool, str]], by: str) -> list[ev.Event]:
    """One ``action.notified`` per ``(channel, ok, detail)``, the detail cut to 500 chars."""
    return [ev.ActionNotified(by=by, channel=c, ok=ok, detail=detail[:500])
            for c, ok, detail in channels]


def record_notified_in(tx: LedgerTransaction, action_id: str,
                       channels: Sequence[tuple[str, bool, str]], by: str) -> bool:
    """Append the ``action.notified`` events if the lifecycle allows them in the action's
    current state (an outcome that is final). False, and nothing written, when it does not:
    the action moved on (restarted, retrying) between its outcome and the delivery, and a
    notification about an outcome it no longer has must not rewrite its story."""
    from sp.machines import action as machine

    events = notified_events(channels, by)
    if not events:
        return False
    state, version = state_of(tx, action_id)
    try:
        machine.check_event(action_id, state, events[0])
    except InvalidTransitionError:
        return False
    tx.append(action_id, events, version)
    return True


def record_notified(store: Ledger, action_id: str,
                    channels: Sequence[tuple[str, bool, str]], by: str) -> bool:
    """:func:`record_notified_in` in a transaction of its own."""
    with store.transaction() as tx:
        return record_notified_in(tx, action_id, channels, by)
