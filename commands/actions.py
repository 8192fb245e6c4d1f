"""Commands on actions: submit, cancel, checkpoint, progress, restart.

Each command runs inside one ``BEGIN IMMEDIATE`` transaction: it reads the action's current
state from the projection (consistent: nobody else can write meanwhile), asks the lifecycle
machine, and appends with the version it read as ``expected_version``.
"""

from __future__ import annotations

import getpass
import os
import uuid
from pathlib import Path
from typing import Any

import msgspec

from sp.ledger import events as ev
from sp.ledger.errors import ActionNotFoundError, AmbiguousActionError, UsageError
from sp.ledger.interface import Ledger, LedgerTransaction

# machines.action (and with it ``transitions``) is imported by the commands that decide, not
# at module level: sp status and sp audit only need resolve() and should start quickly.
from sp.machines.states import FINAL, ActionState


class SubmitSpec(ev.ActionFields, frozen=True, kw_only=True, omit_defaults=True):
    """What a person (or a trigger, a plan, a fallback) asks to run: the action's fields
    (:class:`~sp.ledger.events.ActionFields`, declared once), of which :func:`submit_in`
    records most as given in ``action.submitted`` and reads four differently:

    - ``name``: may be left out; sp names the action after its task, else its command line.
    - ``depends_on``: ids or unique prefixes of earlier actions; sp records the full ids.
    - ``retries`` (attempts after the first) is recorded as ``max_attempts``.
    - ``delay_ms`` (from the submit) is recorded as ``not_before_ms`` (an instant).

    The event's own ``by``, ``max_attempts`` and ``not_before_ms`` are sp's to fill in: a
    request that sets them is refused (they would be silently ignored otherwise).
    """

    name: str | None = None  # type: ignore[assignment]  # None: sp derives it (see above)
    command: list[str]
    retries: int = 0
    delay_ms: int | None = None

    def __post_init__(self) -> None:
        if self.by or self.max_attempts != 1 or self.not_before_ms is not None:
            raise ValueError("a submit spec gives retries and delay_ms; by, max_attempts and "
                             "not_before_ms are recorded by sp")


def who(kind: str = "cli") -> str:
    """The audit 'by' of a command typed by a person: ``cli:user pid N``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{kind}:{user} pid {os.getpid()}"


def new_action_id() -> str:
    return uuid.uuid4().hex[:16]


def state_of(tx: LedgerTransaction, action_id: str) -> tuple[ActionState, int]:
    """The action's state and stream version, read inside the transaction.

    :raises ActionNotFoundError: no such action.
    """
    row = tx.query_one("SELECT state, version FROM actions WHERE action_id = ?", (action_id,))
    if row is None:
        raise ActionNotFoundError(action_id)
    return ActionState(row[0]), int(row[1])


def resolve(store: Ledger, ref: str) -> str:
    """A full action id from an id or a unique prefix of one.

    :raises ActionNotFoundError: nothing matches.
    :raises AmbiguousActionError: several actions match the prefix.
    """
    if not ref:
        raise UsageError("an action id is required")
    rows = store.query(
        "SELECT action_id FROM actions WHERE action_id >= ? AND action_id < ? "
        "ORDER BY action_id LIMIT 6",
        (ref, ref + "\U0010ffff"),
    )
    ids = [r[0] for r in rows]
    if ref in ids:
        return ref
    if not ids:
        from sp.commands.retention import archived

        raise archived(store, ref) or ActionNotFoundError(ref)
    if len(ids) > 1:
        raise AmbiguousActionError(ref, ids)
    return str(ids[0])


def _validate(spec: SubmitSpec, where: str) -> None:
    if not spec.command or not spec.command[0].strip():
        raise UsageError(f"{where}: the command is empty")
    if any("\x00" in arg for arg in spec.command):
        raise UsageError(f"{where}: the command contains a NUL character")
    _check_names(spec, where)
    if spec.retries < 0 or spec.retries > 1000:
        raise UsageError(f"{where}: retries must be between 0 and 1000, got {spec.retries}")
    if spec.timeout_ms is not None and spec.timeout_ms <= 0:
        raise UsageError(f"{where}: timeout must be positive")
    if spec.backoff not in ("exponential", "linear"):
        raise UsageError(f"{where}: backoff must be exponential or linear, got {spec.backoff!r}")
    if not -1_000_000 <= spec.priority <= 1_000_000:
        raise UsageError(f"{where}: priority must be within ±1000000, got {spec.priority}")


def _check_names(spec: SubmitSpec, where: str) -> None:
    """The agent is a name; a name or task sp derived (``plan/step:rollback``) at least never
    carries a control or bidi character into a log line or a listing, whoever built the spec.

    :raises UsageError: one line naming ``where`` and the field.
    """
    from sp.agents import names

    names.check_optional(spec.agent, "agent id", f"{where}: agent")
    for field, value in (("name", spec.name), ("task", spec.task)):
        why = None if value is None else names.hidden(value)
        if why is not None:
            raise UsageError(f"{where}: {field} {names.shown(value or '')} {why}")


def submit(store: Ledger, specs: list[SubmitSpec], by: str = "",
           wheres: list[str] | None = None, *, agent_create: bool = False) -> list[str]:
    """Submit actions in one transaction; return their ids in order.

    An action whose idempotency ``key`` is already known returns the existing id and records
    nothing new. Every spec is checked before anything is written. An agent the ledger does
    not know is refused unless ``agent_create`` (``sp submit --agent-create``): the action
    then records it, and it is known from then on.

    :raises UsageError: a spec is invalid, names an unknown agent or an unknown dependency
        (nothing written).
    """
    wheres = wheres or [f"action {i + 1}" for i in range(len(specs))]
    for spec, where in zip(specs, wheres, strict=True):
        _validate(spec, where)
    if not agent_create:
        from sp.commands.agents import require_known

        checked: set[str] = set()
        for spec, where in zip(specs, wheres, strict=True):
            if spec.agent and spec.agent not in checked:
                require_known(store, spec.agent, where)
                checked.add(spec.agent)
    if any(spec.agent for spec in specs):
        from sp.commands.policies import refuse

        refuse(store, specs, wheres)
    with store.transaction() as tx:
        ids = submit_in(tx, specs, by, wheres, store.clock.now_ms())
    _wake(store)
    return ids


def submit_in(tx: LedgerTransaction, specs: list[SubmitSpec], by: str, wheres: list[str],
              now: int, new_ids: list[str] | None = None) -> list[str]:
    """:func:`submit` inside a transaction the caller holds (e.g. a fallback at finish).

    ``new_ids``: the new actions' ids, chosen by the caller (one per spec, used unless the
    spec's key finds an existing action): a foreground run prepares its cgroups before the
    transaction, and their name carries the id.
    """
    from sp.machines import action as machine

    ids: list[str] = []
    batches: list[tuple[str, list[ev.Event], int | None]] = []
    keys: dict[str, str] = {}
    for i, (spec, where) in enumerate(zip(specs, wheres, strict=True)):
        if spec.key is not None:
            existing = keys.get(spec.key) or _by_key(tx, spec.key)
            if existing:
                ids.append(existing)
                continue
        deps = [_dependency(tx, d, ids, where) for d in spec.depends_on]
        action_id = new_ids[i] if new_ids is not None else new_action_id()
        if spec.key is not None:
            keys[spec.key] = action_id
        ids.append(action_id)
        submitted = _submitted(spec, by, deps, now)
        queued = ev.ActionQueued(by=by, checks=_checks(spec))
        machine.check_event(action_id, ActionState.PENDING, queued)
        batches.append((action_id, [submitted, queued], 0))
    if batches:
        tx.append_many(batches)
    return ids


def _submitted(spec: SubmitSpec, by: str, deps: list[str], now: int) -> ev.ActionSubmitted:
    """The ``action.submitted`` event of a request: its fields as given, but for the four that
    :class:`SubmitSpec` reads differently (derived from the one declaration, not copied)."""
    fields = msgspec.structs.asdict(spec)
    retries, delay_ms = fields.pop("retries"), fields.pop("delay_ms")
    fields.update(by=by, name=spec.name or _default_name(spec), depends_on=deps,
                  max_attempts=retries + 1,
                  not_before_ms=None if delay_ms is None else now + delay_ms)
    return ev.ActionSubmitted(**fields)


def _wake(store: Ledger) -> None:
    """Tell an idle worker, at once, that work arrived (the seed's dispatcher pipe)."""
    from sp.host.wake import signal_workers

    signal_workers(Path(store.path).parent)


def _default_name(spec: SubmitSpec) -> str:
    if spec.task:
        return spec.task
    name = " ".join(spec.command)
    return name if len(name) <= 60 else name[:57] + "..."


def _checks(spec: SubmitSpec) -> list[str]:
    checks = ["command present", f"attempts {spec.retries + 1}"]
    if spec.depends_on:
        checks.append(f"dependencies known: {len(spec.depends_on)}")
    return checks


def _by_key(tx: LedgerTransaction, key: str) -> str | None:
    row = tx.query_one("SELECT action_id FROM actions WHERE idem_key = ? LIMIT 1", (key,))
    return None if row is None else str(row[0])


def _dependency(tx: LedgerTransaction, ref: str, earlier: list[str], where: str) -> str:
    if ref in earlier:
        return ref
    rows = tx.query(
        "SELECT action_id FROM actions WHERE action_id >= ? AND action_id < ? LIMIT 2",
        (ref, ref + "\U0010ffff"),
    )
    if len(rows) != 1:
        raise UsageError(f"{where}: unknown dependency {ref!r}")
    return str(rows[0][0])


def cancel(store: Ledger, action_id: str, reason: str = "", by: str = "") -> ActionState:
    """Cancel an action. A running one is asked to stop (its runner records the cancel).

    Dependents that can no longer run are cancelled in the same transaction.

    :raises InvalidTransitionError: the action already finished.
    """
    from sp.machines import action as machine

    with store.transaction() as tx:
        state, version = state_of(tx, action_id)
        if state is ActionState.EXECUTING:
            requested = tx.query_one(
                "SELECT cancel_requested FROM actions WHERE action_id = ?", (action_id,)
            )
            if requested and requested[0]:
                return state
            event: ev.Event = ev.ActionCancelRequested(by=by, reason=reason)
            machine.check_event(action_id, state, event)
            tx.append(action_id, [event], version)
            return state
        event = ev.ActionCancelled(by=by, reason=reason or "cancelled")
        new = machine.check_event(action_id, state, event)
        tx.append(action_id, [event], version)
        cascade(tx, action_id, f"dependency {action_id} was cancelled", by)
        from sp.commands import reactor  # a plan (or its rollback) decides its next event

        reactor.on_action_finished(tx, action_id, new)
        return new


def cascade(tx: LedgerTransaction, action_id: str, reason: str, by: str) -> list[str]:
    """Cancel every not-yet-finished action waiting on ``action_id``, transitively.

    ``reason`` is given to the direct dependents; theirs name the dependency they waited on.
    """
    from sp.machines import action as machine

    cancelled: list[str] = []
    todo = [(action_id, reason)]
    while todo:
        dep, why = todo.pop()
        for (dependent,) in tx.query(
            "SELECT action_id FROM dependencies WHERE depends_on = ? ORDER BY action_id", (dep,)
        ):
            state, version = state_of(tx, dependent)
            if state in FINAL or not machine.is_legal(state, "cancel"):
                continue
            if state is ActionState.EXECUTING:
                tx.append(dependent, [ev.ActionCancelRequested(by=by, reason=why)], version)
                continue
            tx.append(dependent, [ev.ActionCancelled(by=by, reason=why)], version)
            cancelled.append(dependent)
            todo.append((dependent, f"dependency {dependent} was cancelled"))
    return cancelled


def checkpoint(store: Ledger, action_id: str, data: Any, step: int | None = None,
               by: str = "") -> int:
    """Record a checkpoint of a running action; returns its seq.

    :raises InvalidTransitionError: the action is not executing.
    """
    from sp.machines import action as machine

    with store.transaction() as tx:
        state, version = state_of(tx, action_id)
        event = ev.ActionCheckpointed(by=by, step=step, data=data)
        machine.check_event(action_id, state, event)
        return tx.append(action_id, [event], version)[0].seq


def progress(store: Ledger, action_id: str, percent: float | None, message: str = "",
             by: str = "") -> None:
    """Record reported progress of a running action."""
    from sp.machines import action as machine

    if percent is not None and not 0 <= percent <= 100:
        raise UsageError(f"progress must be between 0 and 100, got {percent}")
    with store.transaction() as tx:
        state, version = state_of(tx, action_id)
        event = ev.ActionProgressed(by=by, percent=percent, message=message)
        machine.check_event(action_id, state, event)
        tx.append(action_id, [event], version)


def restart(store: Ledger, action_id: str, from_step: int | None = None,
            by: str = "") -> ActionState:
    """Queue a finished (failed, cancelled or completed) action for one more attempt."""
    return restart_with(store, action_id, from_step, by)[0]


def restart_with(store: Ledger, action_id: str, from_step: int | None = None,
                 by: str = "") -> tuple[ActionState, list[str]]:
    """:func:`restart`, and the actions queued again with it: for an action of a plan, its
    cancelled dependents (the plan is reopened if it had finished; commands/reactor.py).

    :raises InvalidTransitionError: the action (or its plan) cannot be restarted now.
    """
    from sp.commands import reactor
    from sp.machines import action as machine

    with store.transaction() as tx:
        state, version = state_of(tx, action_id)
        check_from_step(tx, action_id, from_step)
        event = ev.ActionRestarted(by=by, from_step=from_step)
        new = machine.check_event(action_id, state, event)
        tx.append(action_id, [event], version)
        return new, reactor.on_action_restarted(tx, action_id, by)


def check_from_step(reader: Ledger | LedgerTransaction, action_id: str,
                    from_step: int | None) -> None:
    """``restart --from-step N`` must name one of the action's steps (0 to steps - 1). An
    action without declared steps counts its own (``$SP_RESUME_STEP``): any N >= 0.

    :raises UsageError: N is negative, or past the action's last declared step.
    """
    if from_step is None:
        return
    row = reader.query_one("SELECT seq, data FROM events WHERE stream = ? AND version = 1",
                           (action_id,))
    if row is None:
        raise ActionNotFoundError(action_id)
    from sp.ledger import codec

    spec = codec.decode(row[1], int(row[0]))
    steps = len(spec.steps) if isinstance(spec, ev.ActionSubmitted) else 0
    if from_step < 0 or (steps and from_step >= steps):
        has = f"steps 0 to {steps - 1}" if steps else "no declared steps (0 or more)"
        raise UsageError(f"--from-step {from_step}: action {action_id} has {has}")


def failed_ids(store: Ledger) -> list[str]:
    """Every action that failed for good, oldest first."""
    return [str(r[0]) for r in store.query(
        "SELECT action_id FROM actions WHERE state = 'failed' ORDER BY submitted_seq")]
