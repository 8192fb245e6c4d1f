"""Commands a worker issues around one attempt: claim (write-ahead start), heartbeat, finish.

``claim`` commits ``action.started`` and the owner's lease before anything is spawned; the
outcome is recorded after the process exits. After a crash an action may run again
(at-least-once), but its completion is recorded at most once: ``finish`` re-checks, under the
write lock, that this owner still holds the attempt it is reporting.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from sp.commands.actions import cascade, new_action_id, state_of
from sp.commands.preparation import (
    Limits,
    UnpreparedError,
    before_begin,
    discard,
    prepare_limits,
)
from sp.host import proc
from sp.ledger import codec, side
from sp.ledger import events as ev
from sp.ledger.errors import ActionNotFoundError
from sp.ledger.interface import Ledger, LedgerTransaction
from sp.machines import action as machine
from sp.machines.action import ActionState
from sp.projections.queue import READY_SQL

if TYPE_CHECKING:  # types only: the values are made by the runner and security layers
    from sp.host.limits import Prepared
    from sp.security.policy import Policy
    from sp.security.sandbox import SandboxSpec

LEASE_TTL_MS = 30_000
MAX_DENIALS = 50  # denials recorded per attempt; the rest are counted
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
    limits: dict[str, Any] = {}  # what was enforced (also in the started event)
    prepared: Prepared | None = None  # the attempt's cgroups and rlimits, when it asks for limits
    refused: str | None = None  # why it must not run (limits, sandbox or policy): do not run
    refused_kind: str = "limits_unavailable"
    sandbox: SandboxSpec | None = None  # what the process is confined to, when it is
    policy: Policy | None = None  # the policy of the action's agent (quotas)
    denials: list[dict[str, Any]] = []  # what the policy refused before spawning


def backoff_ms(policy: str, attempt: int, cap_ms: int = BACKOFF_CAP_S * 1000,
               jitter: float = 0.0) -> int:
    """Wait before attempt ``attempt + 1``: exponential ``2**attempt`` s or linear ``5*attempt`` s,
    capped (5 minutes by default, the seed's), then stretched by ``jitter`` (0..1, a fraction
    drawn by the caller) of up to a quarter so that retries of many actions spread out."""
    seconds = 2**attempt if policy == "exponential" else 5 * attempt
    base = min(cap_ms, seconds * 1000)
    return int(base * (1 + 0.25 * jitter))


def claim_next(store: Ledger, owner: str) -> Claim | None:
    """Atomically take the most urgent ready action, or return None when nothing is ready."""
    claims = claim_many(store, owner, 1)
    return claims[0] if claims else None


def claim_many(store: Ledger, owner: str, n: int,
               paused: frozenset[str] = frozenset()) -> list[Claim]:
    """Atomically take up to ``n`` ready actions (most urgent first) in one transaction.

    Actions of a paused agent (``paused``; ``""`` pauses everything) are left alone.
    """
    if n <= 0 or "" in paused:
        return []
    before_begin(store)
    ready = prepare_limits(store, _ready_ids(store, n, paused, store.clock.now_ms()))
    try:
        with store.transaction() as tx:
            return _claim_in(tx, owner, n, paused, store.clock.now_ms(), ready)
    finally:
        discard(ready)


def _ready_ids(reader: Ledger | LedgerTransaction, n: int, paused: frozenset[str],
               now: int) -> list[str]:
    """The ``n`` most urgent ready actions, leaving a paused agent's alone."""
    if n <= 0 or "" in paused:
        return []
    if paused:
        marks = ", ".join("?" for _ in paused)
        rows = reader.query(
            "SELECT q.action_id FROM queue q JOIN actions a USING (action_id)"
            " WHERE q.unmet_deps = 0 AND (q.not_before_ms IS NULL OR q.not_before_ms <= ?)"
            f" AND (a.agent IS NULL OR a.agent NOT IN ({marks}))"
            " ORDER BY q.priority DESC, q.submitted_seq LIMIT ?",
            (now, *sorted(paused), n),
        )
    else:
        rows = reader.query(READY_SQL, (now, n))
    return [str(r[0]) for r in rows]


def _claim_in(tx: LedgerTransaction, owner: str, n: int, paused: frozenset[str],
              now: int, ready: Limits) -> list[Claim]:
    """:func:`claim_many` inside a transaction the caller holds. An action whose cgroups were
    not prepared before the transaction (it became ready meanwhile) is left for the next
    claim."""
    claims: list[Claim] = []
    starts: list[_Start] = []
    try:
        for action_id in _ready_ids(tx, n, paused, now):
            try:
                start = _prepare_start(tx, action_id, owner, now, ready)
            except UnpreparedError:
                continue
            starts.append(start)
            claims.append(start.claim)
        _append_starts(tx, starts, now)
    except BaseException:
        _release(claims)
        raise
    return claims


def finish_and_claim(store: Ledger, owner: str, ended: list[tuple[Claim, Outcome]],
                     n: int, paused: frozenset[str] = frozenset(),
                     children: Sequence[tuple[str, int, int]] = (),
                     rng: random.Random | None = None,
                     ) -> tuple[list[ActionState | None], list[Claim]]:
    """One turn of a worker in one transaction (one fsync): record the attempts that ended
    (:func:`finish_many`), note spawned children in their leases (:func:`record_children`) and
    claim up to ``n`` ready actions (:func:`claim_many`).

    The claims commit before anything is spawned for them, as with :func:`claim_many`. If the
    transaction fails, nothing of it is written and the prepared claims are released.
    """
    rng = rng or random.Random()
    states: list[ActionState | None] = []
    claims: list[Claim] = []
    ready: Limits = {}
    if n > 0:
        before_begin(store)
        ready = prepare_limits(store, _ready_ids(store, n, paused, store.clock.now_ms()))
    try:
        with store.transaction() as tx:
            now = store.clock.now_ms()
            if children:
                _record_children_in(tx, owner, children)
            states = _finish_in(tx, ended, now, rng)
            claims = _claim_in(tx, owner, n, paused, now, ready)
    except BaseException:
        _release(claims)
        raise
    finally:
        discard(ready)
    return states, claims


def _release(claims: list[Claim]) -> None:
    """Undo the side preparations (cgroups) of claims whose transaction did not commit."""
    for c in claims:
        if c.prepared is not None:
            from sp.host import limits

            limits.cleanup(c.prepared)


def next_retry_ms(store: Ledger) -> int | None:
    """When the earliest runnable retry (an action waiting out its backoff) becomes due."""
    row = store.query_one(
        "SELECT min(q.not_before_ms) FROM queue q JOIN actions a USING (action_id)"
        " WHERE a.state = 'retrying' AND q.unmet_deps = 0"
    )
    return None if row is None or row[0] is None else int(row[0])


def submit_and_claim(store: Ledger, spec: Any, owner: str, by: str) -> Claim:
    """Submit an action and claim it in the same transaction, so no worker can take it first
    (``sp action execute`` runs it in the foreground)."""
    from sp.commands.actions import _validate, submit_in

    _validate(spec, "task")
    if spec.agent:
        from sp.commands.policies import refuse

        refuse(store, [spec], ["task"])
    before_begin(store)
    planned = action_id = new_action_id()
    ready = prepare_limits(store, (), [(planned, spec.resources or {},
                                         spec.limits_required)])
    try:
        with store.transaction() as tx:
            (action_id,) = submit_in(tx, [spec], by, ["task"], store.clock.now_ms(),
                                     new_ids=[planned])
            return _start(tx, action_id, owner, store.clock.now_ms(), ready)
    except UnpreparedError:
        # Its key named an existing action (nothing was submitted): claim that one.
        return claim(store, action_id, owner)
    finally:
        discard(ready)


def claim(store: Ledger, action_id: str, owner: str) -> Claim:
    """Claim one given action (it must be waiting).

    :raises InvalidTransitionError: the action is not waiting to run.
    """
    before_begin(store)
    while True:
        ready = prepare_limits(store, [action_id])
        try:
            with store.transaction() as tx:
                return _start(tx, action_id, owner, store.clock.now_ms(), ready)
        except UnpreparedError:
            continue  # another attempt began meanwhile: prepare for the one after it
        finally:
            discard(ready)


class _Start(msgspec.Struct):
    """A claim decided but not yet appended (see :func:`_append_starts`)."""

    claim: Claim
    event: ev.ActionStarted
    version: int


def _start(tx: LedgerTransaction, action_id: str, owner: str, now: int, ready: Limits) -> Claim:
    start = _prepare_start(tx, action_id, owner, now, ready)
    _append_starts(tx, [start], now)
    return start.claim


def _append_starts(tx: LedgerTransaction, starts: list[_Start], now: int) -> None:
    """Commit-to-be: the ``started`` events of several claims in one append (one projection
    pass), and their leases. On failure the caller releases the claims' preparations."""
    if not starts:
        return
    tx.append_many([(s.claim.action_id, [s.event], s.version) for s in starts])
    pid, pid_start = _own_identity()
    host = tx.store.host
    side.put_leases(tx, [(s.claim.action_id, s.claim.owner, pid, pid_start, host, now,
                          now + LEASE_TTL_MS) for s in starts])


def _prepare_start(tx: LedgerTransaction, action_id: str, owner: str, now: int,
                   ready: Limits) -> _Start:
    """Decide one claim (its limits, sandbox, ``started`` event) without appending it.

    :raises UnpreparedError: it asks for resources, and its cgroups were not made before the
        transaction (``ready``).
    """
    row = tx.query_one(
        "SELECT state, version, attempts, checkpoint, checkpoint_step FROM actions"
        " WHERE action_id = ?", (action_id,),
    )
    if row is None:
        raise ActionNotFoundError(action_id)
    state, version = ActionState(row[0]), int(row[1])
    attempt = int(row[2]) + 1
    spec, resume = _spec_and_resume(tx, action_id)
    prepared: Prepared | None = None
    enforced: dict[str, Any] = {}
    refused: str | None = None
    if spec.resources:
        # The cgroup was made before the transaction (prepare_limits) so that `started`
        # records what is enforced, read back from the kernel; this claim takes it over, and
        # removes it again if the transaction fails (_release).
        made = ready.pop((action_id, attempt), None)
        if made is None:
            raise UnpreparedError(action_id)
        if isinstance(made, Exception):
            # `limits: required` and a limit cannot be enforced: the attempt is started and
            # at once failed (not retried) without spawning anything: refused, on the record.
            refused = str(made)
            enforced = {"missing": list(getattr(made, "missing", [])), "refused": True}
        else:
            prepared = made
            enforced = {**prepared.enforced, "missing": prepared.missing}
    from sp.commands.policies import attempt_sandbox

    confined, sandboxed, policy, denials, why = attempt_sandbox(tx, action_id, attempt, spec)
    if why is not None and refused is None:
        refused, kind = why
    else:
        kind = "limits_unavailable"
    event = ev.ActionStarted(
        by=owner, attempt=attempt, owner=owner, pid=os.getpid(), host=tx.store.host,
        resume_step=resume, limits=enforced, sandbox=sandboxed,
    )
    try:
        machine.check_event(action_id, state, event)
    except BaseException:
        if prepared is not None:
            from sp.host import limits

            limits.cleanup(prepared)
        raise
    checkpoint = row[3] if resume is not None or spec.on_interrupt != "rerun" else None
    return _Start(Claim(action_id, attempt, owner, spec, checkpoint, row[4], resume, enforced,
                        prepared, refused, kind, confined, policy, denials), event, version)


# The events that decide where an attempt resumes (see _resume_step), by type tag.
_RESUME_TYPES = tuple(ev.tag_of(t) for t in (
    ev.ActionCheckpointed, ev.ActionRestarted, ev.ActionInterrupted))


def _spec_and_resume(tx: LedgerTransaction,
                     action_id: str) -> tuple[ev.ActionSubmitted, int | None]:
    """The action's submitted spec and its resume step, decoding only the events that matter
    (the first, and those :func:`_resume_step` looks at), not the whole stream."""
    marks = ", ".join("?" for _ in _RESUME_TYPES)
    rows = tx.query(
        "SELECT seq, data FROM events WHERE stream = ? AND (version = 1"
        f" OR type IN ({marks})) ORDER BY version", (action_id, *_RESUME_TYPES),
    )
    events = [codec.decode(data, seq) for seq, data in rows]
    spec = events[0] if events else None
    assert isinstance(spec, ev.ActionSubmitted)
    return spec, _resume_step(events)


_identity: tuple[int, int] | None = None


def _own_identity() -> tuple[int, int]:
    """This process's pid and start time (read once per process: it cannot change)."""
    global _identity
    pid = os.getpid()
    if _identity is None or _identity[0] != pid:  # after a fork, another process
        _identity = (pid, proc.start_time(pid))
    return _identity


def _resume_step(events: list[Any]) -> int | None:
    """A restart --from-step wins; otherwise resume after the last checkpointed step."""
    step: int | None = None
    for e in events:
        if isinstance(e, ev.ActionCheckpointed) and e.step is not None:
            step = e.step + 1
        elif isinstance(e, ev.ActionRestarted):
            step = e.from_step
        elif isinstance(e, ev.ActionInterrupted) and e.then == "rerun":
            step = None
    return step


def record_child(store: Ledger, action_id: str, owner: str, pid: int) -> None:
    """Note the spawned process in the lease (ephemeral), for recovery to find orphans."""
    record_children(store, owner, [(action_id, pid, proc.start_time(pid))])


def record_children(store: Ledger, owner: str,
                    children: Sequence[tuple[str, int, int]]) -> None:
    """:func:`record_child` for several ``(action_id, pid, pid_start)`` in one transaction."""
    with store.transaction() as tx:
        _record_children_in(tx, owner, children)


def _record_children_in(tx: LedgerTransaction, owner: str,
                        children: Sequence[tuple[str, int, int]]) -> None:
    side.note_lease_children(tx, owner, children)


def heartbeat(store: Ledger, action_ids: list[str], owner: str) -> None:
    """Renew the leases of running attempts (a side table: never an event per heartbeat)."""
    now = store.clock.now_ms()
    with store.transaction() as tx:
        side.renew_leases(tx, action_ids, owner, now, LEASE_TTL_MS)


def cancel_requests(store: Ledger, action_ids: list[str]) -> list[str]:
    """Which of these running actions a person asked to cancel (one query for all)."""
    if not action_ids:
        return []
    marks = ", ".join("?" for _ in action_ids)
    rows = store.query(
        f"SELECT action_id FROM actions WHERE cancel_requested = 1 AND action_id IN ({marks})",
        action_ids,
    )
    return [str(r[0]) for r in rows]


def paused_agents(store: Ledger) -> frozenset[str]:
    """Agents whose actions are not claimed now; ``""`` means every action."""
    return frozenset(str(r[0]) for r in store.query("SELECT agent FROM pauses"))


def ready_count(store: Ledger, paused: frozenset[str] = frozenset()) -> int:
    """How many actions could be claimed right now."""
    now = store.clock.now_ms()
    marks = ", ".join("?" for _ in paused)
    not_paused = f" AND (a.agent IS NULL OR a.agent NOT IN ({marks}))" if paused else ""
    row = store.query_one(
        "SELECT count(*) FROM queue q JOIN actions a USING (action_id) WHERE q.unmet_deps = 0"
        f" AND (q.not_before_ms IS NULL OR q.not_before_ms <= ?){not_paused}",
        (now, *sorted(paused)),
    )
    return int(row[0]) if row else 0


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    exit_code: int | None
    duration_ms: int
    error_kind: str | None = None  # None: success
    error: str = ""
    result: dict[str, Any] = {}
    retryable: bool = True
    usage: dict[str, int] = {}
    # What the policy refused: before spawning ("validation") or the kernel while it ran
    # ("run"); recorded as action.security_denied before the outcome.
    security: list[dict[str, Any]] = []
    security_stage: str = "run"


def security_denied(by: str, attempt: int, stage: str,
                    denials: list[dict[str, Any]]) -> ev.ActionSecurityDenied:
    """The event for what a policy refused an attempt: the first :data:`MAX_DENIALS`
    denials, the rest counted (a loop can be refused millions of times)."""
    return ev.ActionSecurityDenied(by=by, attempt=attempt, stage=stage,
                                   denials=denials[:MAX_DENIALS],
                                   dropped=max(0, len(denials) - MAX_DENIALS))


def finish(store: Ledger, claim_: Claim, outcome: Outcome,
           rng: random.Random | None = None) -> ActionState | None:
    """Record how an attempt ended, applying the action's retry and recovery policy.

    Returns the new state, or None (recording nothing) when this owner no longer holds the
    attempt, e.g. a recovery already interrupted it: an attempt's end is recorded at most once.
    """
    results = finish_many(store, [(claim_, outcome)], rng)
    return results[0]


def finish_many(store: Ledger, ended: list[tuple[Claim, Outcome]],
                rng: random.Random | None = None) -> list[ActionState | None]:
    """:func:`finish` for several attempts in one transaction (one fsync for all)."""
    rng = rng or random.Random()
    out: list[ActionState | None] = []
    with store.transaction() as tx:
        out = _finish_in(tx, ended, store.clock.now_ms(), rng)
    return out


def _finish_in(tx: LedgerTransaction, ended: list[tuple[Claim, Outcome]], now: int,
               rng: random.Random) -> list[ActionState | None]:
    """:func:`_finish` for each, in order; the plain ones (an outcome that cascades to nothing
    and belongs to no plan) are appended together, in one append and one projection pass, just
    before anything else would write (a cascade may touch an ended action's stream)."""
    out: list[ActionState | None] = []
    plain: list[tuple[str, list[ev.Event], int]] = []
    leases: list[tuple[str, str]] = []

    def flush() -> None:
        if plain:
            tx.append_many(plain)
            side.drop_leases(tx, leases)
            plain.clear()
            leases.clear()

    for claim_, outcome in ended:
        if claim_.spec.group is not None or claim_.spec.recovery == "fallback":
            flush()
            out.append(_finish(tx, claim_, outcome, now, rng))
            continue
        decided = _decide(tx, claim_, outcome, now, rng)
        if decided is None:
            out.append(None)
            continue
        events, version, new = decided
        if _cascades(claim_, new):
            flush()
            out.append(_finish(tx, claim_, outcome, now, rng, decided))
            continue
        plain.append((claim_.action_id, events, version))
        leases.append((claim_.action_id, claim_.owner))
        out.append(new)
    flush()
    return out


def _cascades(claim_: Claim, new: ActionState) -> bool:
    return new is ActionState.CANCELLED or (
        new is ActionState.FAILED and claim_.spec.recovery != "fallback")


def _finish(tx: LedgerTransaction, claim_: Claim, outcome: Outcome, now: int, rng: random.Random,
            decided: tuple[list[ev.Event], int, ActionState] | None = None,
            ) -> ActionState | None:
    if decided is None:
        decided = _decide(tx, claim_, outcome, now, rng)
        if decided is None:
            return None
    events, version, new = decided
    aid = claim_.action_id
    tx.append(aid, events, version)
    side.drop_leases(tx, [(aid, claim_.owner)])
    if _cascades(claim_, new):
        cascade(tx, aid, f"dependency {aid} {new.value}", claim_.owner)
    if claim_.spec.group is not None:  # a plan (or its rollback) decides its next event
        from sp.commands import reactor

        reactor.on_action_finished(tx, aid, new)
    return new


def _decide(tx: LedgerTransaction, claim_: Claim, outcome: Outcome, now: int, rng: random.Random,
            ) -> tuple[list[ev.Event], int, ActionState] | None:
    """The events that record how the attempt ended (nothing appended yet; a fallback task is
    submitted here), or None when this owner no longer holds the attempt."""
    aid = claim_.action_id
    spec = claim_.spec
    row = tx.query_one(
        "SELECT state, version, owner, attempts, max_attempts, cancel_requested FROM actions"
        " WHERE action_id = ?", (aid,),
    )
    if row is None:
        raise ActionNotFoundError(aid)
    state, version = ActionState(row[0]), int(row[1])
    owner, attempts, max_attempts, cancel_req = row[2:]
    if state is not ActionState.EXECUTING or owner != claim_.owner or attempts != claim_.attempt:
        return None
    by = claim_.owner
    usage = outcome.usage
    kind = outcome.error_kind
    events: list[ev.Event] = []
    if cancel_req:
        reason = outcome.error if kind == "cancelled" else "cancelled while running"
        events.append(ev.ActionCancelled(by=by, reason=reason, usage=usage))
    elif kind is None:
        events.append(ev.ActionCompleted(by=by, exit_code=outcome.exit_code or 0,
                                         duration_ms=outcome.duration_ms,
                                         result=outcome.result, usage=usage))
    elif (outcome.retryable and attempts < max_attempts and spec.recovery != "abort"):
        wait = backoff_ms(spec.backoff, attempts, spec.retry_max_delay_ms,
                          rng.random() if spec.retry_jitter else 0.0)
        events.append(ev.ActionRetryScheduled(
            by=by, exit_code=outcome.exit_code, error_kind=kind, error=outcome.error,
            duration_ms=outcome.duration_ms, retry_at_ms=now + wait, usage=usage,
        ))
    elif spec.recovery == "skip":
        events.append(ev.ActionSkipped(by=by, exit_code=outcome.exit_code, error_kind=kind,
                                       error=outcome.error, duration_ms=outcome.duration_ms,
                                       usage=usage))
    else:
        fallback = _submit_fallback(tx, aid, spec, by) if spec.recovery == "fallback" else None
        events.append(ev.ActionFailed(
            by=by, exit_code=outcome.exit_code, error_kind=kind, error=outcome.error,
            duration_ms=outcome.duration_ms, usage=usage,
            recovery=spec.recovery if spec.recovery in ("fallback", "abort") else "",
            fallback=fallback,
        ))
    new = machine.check_event(aid, state, events[0])
    if outcome.security:
        events.insert(0, security_denied(by, claim_.attempt, outcome.security_stage,
                                         outcome.security))
    return events, version, new


def _submit_fallback(tx: LedgerTransaction, failed: str, spec: ev.ActionSubmitted,
                     by: str) -> str | None:
    """Submit the fallback task in the failed action's place (same transaction)."""
    from sp.commands.actions import submit_in

    fb = spec.fallback or {}
    fb_spec = fb.get("spec")
    if not isinstance(fb_spec, dict):
        return None
    from sp.commands.actions import SubmitSpec

    sub = msgspec.convert(fb_spec, SubmitSpec)
    ids = submit_in(tx, [msgspec.structs.replace(sub, key=None)], by=f"{by} (fallback of {failed})",
                    wheres=[f"fallback of {failed}"], now=tx.store.clock.now_ms())
    return ids[0]


def interrupt(store: Ledger, claim_: Claim, reason: str, duration_ms: int,
              then: str = "resume", usage: dict[str, int] | None = None) -> None:
    """Give a running attempt back (graceful shutdown): it resumes, reruns or is held."""
    with store.transaction() as tx:
        state, version = state_of(tx, claim_.action_id)
        owner = tx.query_one("SELECT owner FROM actions WHERE action_id = ?",
                             (claim_.action_id,))
        if state is not ActionState.EXECUTING or owner is None or owner[0] != claim_.owner:
            return
        event = ev.ActionInterrupted(by=claim_.owner, reason=reason, owner=claim_.owner,
                                     duration_ms=duration_ms, then=then, usage=usage or {})
        machine.check_event(claim_.action_id, state, event)
        tx.append(claim_.action_id, [event], version)
        side.drop_lease(tx, claim_.action_id)
