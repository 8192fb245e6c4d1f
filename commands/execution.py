"""Commands a worker issues around one attempt: claim (write-ahead start), heartbeat, finish.

``claim`` commits ``action.started`` and the owner's lease before anything is spawned; the
outcome is recorded after the process exits. After a crash an action may run again
(at-least-once), but its completion is recorded at most once: ``finish`` re-checks, under the
write lock, that this owner still holds the attempt it is reporting.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from ledger import events as ev
from ledger.store import EventStore, Transaction
from machines import action as machine
from machines.action import ActionState
from projections.queue import READY_SQL
from runner import proc

from .actions import cascade, state_of

LEASE_TTL_MS = 30_000
BACKOFF_CAP_S = 300  # the seed's "Max 5 minutes"


class Claim(msgspec.Struct, frozen=True):
    """A claimed attempt: what to run and how to resume it."""

    action_id: str
    attempt: int
    owner: str
    spec: ev.ActionSubmitted
    checkpoint: str | None  # JSON of the last checkpoint's data
    checkpoint_step: int | None
    resume_step: int | None


def backoff_ms(policy: str, attempt: int) -> int:
    """Wait before attempt ``attempt + 1``: exponential ``2**attempt`` s or linear ``5*attempt`` s,
    capped at 5 minutes."""
    seconds = 2**attempt if policy == "exponential" else 5 * attempt
    return min(BACKOFF_CAP_S, seconds) * 1000


def claim_next(store: EventStore, owner: str) -> Claim | None:
    """Atomically take the most urgent ready action, or return None when nothing is ready."""
    now = store.clock.now_ms()
    with store.transaction() as tx:
        row = tx.query_one(READY_SQL, (now, 1))
        if row is None:
            return None
        return _start(tx, str(row[0]), owner, now)


def next_retry_ms(store: EventStore) -> int | None:
    """When the earliest runnable retry (an action waiting out its backoff) becomes due."""
    row = store.query_one(
        "SELECT min(q.not_before_ms) FROM queue q JOIN actions a USING (action_id)"
        " WHERE a.state = 'retrying' AND q.unmet_deps = 0"
    )
    return None if row is None or row[0] is None else int(row[0])


def claim(store: EventStore, action_id: str, owner: str) -> Claim:
    """Claim one given action (it must be waiting).

    :raises InvalidTransitionError: the action is not waiting to run.
    """
    with store.transaction() as tx:
        return _start(tx, action_id, owner, store.clock.now_ms())


def _start(tx: Transaction, action_id: str, owner: str, now: int) -> Claim:
    state, version = state_of(tx, action_id)
    row = tx.query_one(
        "SELECT attempts, checkpoint, checkpoint_step FROM actions WHERE action_id = ?",
        (action_id,),
    )
    assert row is not None
    attempt = int(row[0]) + 1
    history = tx.read_stream(action_id)
    spec = history[0].event
    assert isinstance(spec, ev.ActionSubmitted)
    resume = _resume_step(history)
    event = ev.ActionStarted(
        by=owner, attempt=attempt, owner=owner, pid=os.getpid(), host=tx.store.host,
        resume_step=resume,
    )
    machine.check_event(action_id, state, event)
    tx.append(action_id, [event], version)
    pid = os.getpid()
    tx.execute(
        "INSERT OR REPLACE INTO leases (name, owner, pid, pid_start, host, heartbeat_ms,"
        " expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (action_id, owner, pid, proc.start_time(pid), tx.store.host, now, now + LEASE_TTL_MS),
    )
    return Claim(action_id, attempt, owner, spec, row[1], row[2], resume)


def _resume_step(history: list[Any]) -> int | None:
    """A restart --from-step wins; otherwise resume after the last checkpointed step."""
    step: int | None = None
    for rec in history:
        e = rec.event
        if isinstance(e, ev.ActionCheckpointed) and e.step is not None:
            step = e.step + 1
        elif isinstance(e, ev.ActionRestarted):
            step = e.from_step
        elif isinstance(e, ev.ActionInterrupted) and e.then == "rerun":
            step = None
    return step


def record_child(store: EventStore, action_id: str, owner: str, pid: int) -> None:
    """Note the spawned process in the lease (ephemeral), for recovery to find orphans."""
    with store.transaction() as tx:
        tx.execute(
            "UPDATE leases SET child_pid = ?, child_start = ? WHERE name = ? AND owner = ?",
            (pid, proc.start_time(pid), action_id, owner),
        )


def heartbeat(store: EventStore, action_ids: list[str], owner: str) -> None:
    """Renew the leases of running attempts (a side table: never an event per heartbeat)."""
    now = store.clock.now_ms()
    with store.transaction() as tx:
        tx.executemany(
            "UPDATE leases SET heartbeat_ms = ?, expires_ms = ? WHERE name = ? AND owner = ?",
            [(now, now + LEASE_TTL_MS, a, owner) for a in action_ids],
        )


def cancel_requested(store: EventStore, action_id: str) -> bool:
    row = store.query_one("SELECT cancel_requested FROM actions WHERE action_id = ?",
                          (action_id,))
    return bool(row and row[0])


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    exit_code: int | None
    duration_ms: int
    error_kind: str | None = None  # None: success
    error: str = ""
    result: dict[str, Any] = {}
    retryable: bool = True


def finish(store: EventStore, claim_: Claim, outcome: Outcome) -> ActionState | None:
    """Record how an attempt ended; returns the new state.

    Returns None (and records nothing) when this owner no longer holds the attempt, e.g. a
    recovery already interrupted it: the completion of an attempt is recorded at most once.
    """
    aid = claim_.action_id
    now = store.clock.now_ms()
    with store.transaction() as tx:
        state, version = state_of(tx, aid)
        row = tx.query_one(
            "SELECT owner, attempts, max_attempts, cancel_requested FROM actions"
            " WHERE action_id = ?", (aid,),
        )
        assert row is not None
        if state is not ActionState.EXECUTING or row[0] != claim_.owner or row[1] != claim_.attempt:
            return None
        event: ev.Event
        if row[3]:
            event = ev.ActionCancelled(by=claim_.owner, reason="cancelled while running")
        elif outcome.error_kind is None:
            event = ev.ActionCompleted(by=claim_.owner, exit_code=outcome.exit_code or 0,
                                       duration_ms=outcome.duration_ms, result=outcome.result)
        elif outcome.retryable and row[1] < row[2]:
            event = ev.ActionRetryScheduled(
                by=claim_.owner, exit_code=outcome.exit_code, error_kind=outcome.error_kind,
                error=outcome.error, duration_ms=outcome.duration_ms,
                retry_at_ms=now + backoff_ms(claim_.spec.backoff, claim_.attempt),
            )
        else:
            event = ev.ActionFailed(by=claim_.owner, exit_code=outcome.exit_code,
                                    error_kind=outcome.error_kind, error=outcome.error,
                                    duration_ms=outcome.duration_ms)
        new = machine.check_event(aid, state, event)
        tx.append(aid, [event], version)
        tx.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (aid, claim_.owner))
        if new in (ActionState.FAILED, ActionState.CANCELLED):
            cascade(tx, aid, f"dependency {aid} {new.value}", claim_.owner)
        return new


def interrupt(store: EventStore, claim_: Claim, reason: str, duration_ms: int,
              then: str = "resume") -> None:
    """Give a running attempt back (graceful shutdown): it resumes, reruns or is held."""
    with store.transaction() as tx:
        state, version = state_of(tx, claim_.action_id)
        owner = tx.query_one("SELECT owner FROM actions WHERE action_id = ?",
                             (claim_.action_id,))
        if state is not ActionState.EXECUTING or owner is None or owner[0] != claim_.owner:
            return
        event = ev.ActionInterrupted(by=claim_.owner, reason=reason, owner=claim_.owner,
                                     duration_ms=duration_ms, then=then)
        machine.check_event(claim_.action_id, state, event)
        tx.append(claim_.action_id, [event], version)
        tx.execute("DELETE FROM leases WHERE name = ?", (claim_.action_id,))
