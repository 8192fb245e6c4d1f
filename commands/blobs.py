"""Who may fetch a blob: the worker records each blob it stores for a sandboxed action
(``action.blob_stored``) and asks here before serving one back (:mod:`sp.runner.broker`)."""

from __future__ import annotations

from sp.ledger import events as ev
from sp.ledger.interface import Ledger


def record_stored(store: Ledger, action_id: str, sha256: str, size: int,
                  by: str = "") -> None:
    """Record that ``action_id`` stored ``blobs/<sha256>`` (once per action and blob).

    :raises InvalidTransitionError: the action is not executing.
    """
    from sp.commands.actions import state_of
    from sp.machines import action as machine

    with store.transaction() as tx:
        state, version = state_of(tx, action_id)
        event = ev.ActionBlobStored(by=by, sha256=sha256, size=size)
        machine.check_event(action_id, state, event)
        if tx.query_one("SELECT 1 FROM blob_owners WHERE sha256 = ? AND action_id = ?",
                        (sha256, action_id)) is not None:
            return  # already its own: the fact is on record
        tx.append(action_id, [event], version)


def may_fetch(store: Ledger, action_id: str, compensates: str | None, sha256: str) -> bool:
    """Whether ``action_id`` may have ``blobs/<sha256>``: stored by itself, by the action it
    compensates (a rollback step restoring before-images), or by an action of its plan."""
    row = store.query_one(
        "SELECT 1 FROM blob_owners WHERE sha256 = ?1 AND (action_id IN (?2, ?3) OR group_id"
        " = (SELECT group_id FROM actions WHERE action_id = ?2)) LIMIT 1",
        (sha256, action_id, compensates or action_id))
    return row is not None
