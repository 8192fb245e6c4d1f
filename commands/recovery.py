"""Crash recovery: actions left ``executing`` by an owner that is gone.

Each gets a recorded event, never a silent fix-up: ``action.interrupted`` (back to the queue,
to resume from its last checkpoint) when attempts remain, ``action.failed`` otherwise, or
``action.cancelled`` if a cancel had been requested. A second run finds nothing to do.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import msgspec

from ledger import events as ev
from ledger.store import EventStore
from machines import action as machine
from machines.action import ActionState
from runner import proc

from .actions import cascade, state_of


class Recovered(msgspec.Struct, frozen=True):
    action_id: str
    outcome: str  # interrupted, held, failed, cancelled
    reason: str


def owner_gone(store: EventStore, action_id: str, now_ms: int) -> str | None:
    """Why the owner of a running action is gone, or None if it is alive."""
    lease = store.query_one(
        "SELECT owner, pid, pid_start, host, expires_ms FROM leases WHERE name = ?",
        (action_id,),
    )
    if lease is None:
        return "no lease: its owner never heartbeated or is gone"
    owner, pid, pid_start, host, expires = lease
    if host == store.host and not proc.alive(int(pid), int(pid_start)):
        return f"owner {owner} (pid {pid}) is no longer running"
    if expires < now_ms:
        return f"heartbeat_missing: lease of {owner} expired {(now_ms - expires) // 1000}s ago"
    return None


def _denials_left(store: EventStore, action_id: str, attempt: int,
                  by: str) -> tuple[list[ev.Event], str | None]:
    """The kernel's denials a sandboxed attempt collected before its worker died (the shim
    writes them to ``<home>/run/<action>-<attempt>.denials``): recorded with the interruption,
    so a crash does not lose the security record."""
    from security.sandbox import denials_file, read_denials

    path = denials_file(os.path.dirname(os.path.abspath(store.path)), action_id, attempt)
    if not os.path.exists(path):
        return [], None
    from .execution import security_denied

    found = read_denials(path)
    if not found:
        return [], path
    return [security_denied(by, attempt, "run", found)], path


def recover(store: EventStore, by: str = "replay") -> list[Recovered]:
    """Record an event for every executing action whose owner is gone."""
    now = store.clock.now_ms()
    done: list[Recovered] = []
    orphans: list[tuple[int, int]] = []
    groups: list[dict[str, Any]] = []
    leftovers: list[str] = []
    stray_sets: list[list[tuple[int, int]]] = []
    running = store.query("SELECT action_id FROM actions WHERE state = 'executing' "
                          "ORDER BY submitted_seq")
    for (action_id,) in running:
        reason = owner_gone(store, action_id, now)
        if reason is None:
            continue
        with store.transaction() as tx:
            # Decide again under the write lock: the owner may have finished meanwhile.
            state, version = state_of(tx, action_id)
            if state is not ActionState.EXECUTING:
                continue
            row = tx.query_one(
                "SELECT attempts, max_attempts, cancel_requested, owner, started_ms"
                " FROM actions WHERE action_id = ?", (action_id,),
            )
            assert row is not None
            attempts, max_attempts, cancel_req, owner, started = row
            duration = max(0, now - int(started or now))
            event: ev.Event
            child = tx.query_one("SELECT child_pid, child_start FROM leases WHERE name = ?",
                                 (action_id,))
            # Spawned? The lease notes the child (within 20 ms of its spawn); a live process
            # whose environment names this attempt is evidence too (and is stopped below).
            # Neither: the attempt was claimed (perhaps ahead, by a worker that keeps a pool)
            # but maybe never spawned, and must not use up the last attempt: queued again,
            # which the at-least-once guarantee allows either way.
            strays = proc.of_attempt(action_id, int(attempts))
            stray_sets.append(strays)
            unspawned = not (child and child[0]) and not strays
            if unspawned and attempts >= max_attempts:
                reason = f"{reason}; no process of it was recorded, it may never have run"
            if cancel_req:
                event = ev.ActionCancelled(by=by, reason=f"cancelled; {reason}")
                outcome = "cancelled"
            elif attempts < max_attempts or unspawned:
                spec = tx.read_stream(action_id)[0].event
                then = spec.on_interrupt if isinstance(spec, ev.ActionSubmitted) else "resume"
                event = ev.ActionInterrupted(by=by, reason=reason, owner=owner or "",
                                             duration_ms=duration, then=then)
                outcome = "interrupted" if then != "hold" else "held"
            else:
                kind = "heartbeat_missing" if reason.startswith("heartbeat") else "interrupted"
                event = ev.ActionFailed(by=by, error_kind=kind,
                                        error=f"{reason}; no attempts left", duration_ms=duration)
                outcome = "failed"
            new = machine.check_event(action_id, state, event)
            denied, denials_file = _denials_left(store, action_id, int(attempts), by)
            tx.append(action_id, [*denied, event], version)
            if denials_file is not None:
                leftovers.append(denials_file)
            if child and child[0]:
                orphans.append((int(child[0]), int(child[1] or 0)))
            started = [r.event for r in tx.read_stream(action_id)
                       if isinstance(r.event, ev.ActionStarted)]
            if started and started[-1].limits.get("cgroups"):
                groups.append(started[-1].limits)
            tx.execute("DELETE FROM leases WHERE name = ?", (action_id,))
            if new in (ActionState.FAILED, ActionState.CANCELLED):
                cascade(tx, action_id, f"dependency {action_id} {new.value}", by)
                from plans import reactor  # a plan (or its rollback) decides its next event

                reactor.on_action_finished(tx, action_id, new)
        done.append(Recovered(action_id, outcome, reason))
    # After the commit: stop process groups whose owner died, so a resumed attempt does not
    # run beside its orphaned predecessor.
    for pid, started_at in orphans:
        proc.kill_group(pid, started_at)
    for strays in stray_sets:
        proc.kill_attempt(strays)
    for path in leftovers:  # recorded above: the evidence is in the ledger now
        with contextlib.suppress(OSError):
            os.unlink(path)
    if groups:
        # Processes that left the process group are still in the attempt's cgroups.
        import signal

        from runner import limits

        for enforced in groups:
            prepared = limits.from_enforced(enforced)
            if prepared is not None:
                limits.kill_all(prepared, signal.SIGKILL)
                limits.cleanup(prepared)
    return done
