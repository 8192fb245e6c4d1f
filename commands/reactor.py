"""The plan reactor: after each action outcome, decide the plan's next event.

Called inside the transaction that records the outcome (the worker's finish, a cancel, crash
recovery), so that the plan's events commit with the action's, or not at all. Everything is
decided from the projections of events already in the ledger, never from memory, so running
it again decides nothing new (it is idempotent) and it stays right after ``sp replay``.

* An action of the plan failed for good (no fallback took its place) and ``on_failure`` is
  ``stop`` or ``rollback``: every unfinished action of the plan is cancelled (running ones are
  asked to stop) and ``plan.stop_requested`` is recorded. With ``continue`` the ordinary
  dependency cascade already cancelled what depended on it; independent branches go on.
* Once no action of the plan is unfinished: ``plan.completed`` if all completed (or were
  skipped), else the rollback run (``on_failure: rollback``, after a stop) or ``plan.failed``.
* A compensating action ended: see :func:`sp.commands.rollback.on_compensation_finished`.
* ``sp plan cancel`` (:func:`cancel`): like a stop, by a person; once nothing runs the plan is
  ``cancelled``, or its rollback run starts (``--rollback``).
* An action of the plan was restarted (:func:`on_action_restarted`): its cancelled dependents
  are queued again with it (and, when it is the action whose failure stopped the plan, what
  the stop cancelled); a finished plan is reopened (``plan.reopened``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from sp.commands import rollback
from sp.commands.actions import cascade, state_of
from sp.ledger import events as ev
from sp.ledger.errors import UsageError
from sp.ledger.interface import LedgerTransaction
from sp.machines import action as action_machine
from sp.machines import plan as plan_machine
from sp.machines.plan import PlanState
from sp.machines.states import FINAL, SATISFIED, ActionState
from sp.projections.plans import stream_of

_A = ActionState


def on_action_finished(tx: LedgerTransaction, action_id: str, new_state: ActionState) -> None:
    """React to an action's outcome, if it belongs to a plan or to a plan's rollback."""
    if new_state not in FINAL:
        return
    row = tx.query_one("SELECT group_id FROM actions WHERE action_id = ?", (action_id,))
    if row is None or row[0] is None:
        return
    group = str(row[0])
    by = f"plan reactor (after {action_id} {new_state.value})"
    if group.startswith(rollback.ROLLBACK_GROUP):
        rollback.on_compensation_finished(tx, action_id, new_state, by)
        return
    plan = tx.query_one("SELECT state, version, on_failure FROM plans WHERE plan_id = ?",
                        (group,))
    if plan is None:  # a plain `sp submit --group`, not a plan
        return
    state, version, on_failure = PlanState(plan[0]), int(plan[1]), str(plan[2])
    if (new_state is _A.FAILED and state is PlanState.RUNNING
            and on_failure in ("stop", "rollback") and not _replaced(tx, action_id)):
        step = tx.query_one("SELECT step_id FROM plan_steps WHERE plan_id = ? AND action_id = ?",
                            (group, action_id))
        error = tx.query_one("SELECT error FROM actions WHERE action_id = ?", (action_id,))
        name = str(step[0]) if step else action_id
        cancelled = _cancel_rest(tx, group, f"plan {group} stopped: {name} failed", by)
        event = ev.PlanStopRequested(by=by, action_id=action_id, step=name,
                                     error=str(error[0] or "") if error else "",
                                     then=on_failure, cancelled=cancelled)
        plan_machine.check_event(group, state, event)
        tx.append(stream_of(group), [event], version)
    settle(tx, group, by)


def settle(tx: LedgerTransaction, plan_id: str, by: str) -> None:
    """Record the plan's outcome if its actions (or its rollback run) have all ended."""
    plan = tx.query_one("SELECT state, version, on_failure FROM plans WHERE plan_id = ?",
                        (plan_id,))
    if plan is None:
        return
    state, version, on_failure = PlanState(plan[0]), int(plan[1]), str(plan[2])
    if state is PlanState.ROLLING_BACK:
        rollback.settle_run(tx, plan_id, by)
        return
    if state not in (PlanState.RUNNING, PlanState.STOPPING, PlanState.CANCELLING):
        return
    rows = tx.query(
        "SELECT a.action_id, a.state, s.step_id FROM actions a LEFT JOIN plan_steps s"
        " ON s.plan_id = a.group_id AND s.action_id = a.action_id"
        " WHERE a.group_id = ? ORDER BY a.submitted_seq", (plan_id,),
    )
    if any(ActionState(s) not in FINAL for _, s, _ in rows):
        return
    failed = [str(step or a) for a, s, step in rows
              if s == _A.FAILED.value and not _replaced(tx, a)]
    cancelled = [str(step or a) for a, s, step in rows if s == _A.CANCELLED.value]
    event: ev.Event
    if state is PlanState.CANCELLING:
        if _last(tx, plan_id, "plan.cancel_requested").get("rollback"):
            rollback.start(tx, plan_id, "cancel", by)
            return
        completed = [str(step or a) for a, s, step in rows if s == _A.COMPLETED.value]
        event = ev.PlanCancelled(by=by, completed=completed, cancelled=cancelled,
                                 failed=failed)
    elif state is PlanState.RUNNING and not failed and not cancelled:
        event = ev.PlanCompleted(by=by)
    elif state is PlanState.STOPPING and on_failure == "rollback":
        rollback.start(tx, plan_id, "on_failure", by)
        return
    else:
        parts = [f"failed: {', '.join(failed)}" if failed else "",
                 f"cancelled: {', '.join(cancelled)}" if cancelled else ""]
        event = ev.PlanFailed(by=by, reason="; ".join(p for p in parts if p),
                              failed=failed, cancelled=cancelled)
    plan_machine.check_event(plan_id, state, event)
    tx.append(stream_of(plan_id), [event], version)


def _replaced(tx: LedgerTransaction, action_id: str) -> bool:
    """Whether a fallback took the failed action's place (its dependents wait for that)."""
    row = tx.query_one(
        "SELECT json_extract(data, '$.fallback') FROM events WHERE stream = ?"
        " AND type = 'action.failed' ORDER BY version DESC LIMIT 1", (action_id,),
    )
    return row is not None and row[0] is not None


def _cancel_rest(tx: LedgerTransaction, plan_id: str, reason: str, by: str) -> list[str]:
    """Cancel every unfinished action of the plan; running ones are asked to stop."""
    touched: list[str] = []
    ids = [str(r[0]) for r in tx.query(
        "SELECT action_id FROM actions WHERE group_id = ? ORDER BY submitted_seq", (plan_id,))]
    for action_id in ids:
        state, version = state_of(tx, action_id)
        if state in FINAL:
            continue
        if state is _A.EXECUTING:
            asked = tx.query_one("SELECT cancel_requested FROM actions WHERE action_id = ?",
                                 (action_id,))
            if not (asked and asked[0]):
                tx.append(action_id, [ev.ActionCancelRequested(by=by, reason=reason)], version)
            touched.append(action_id)
            continue
        event = ev.ActionCancelled(by=by, reason=reason)
        action_machine.check_event(action_id, state, event)
        tx.append(action_id, [event], version)
        touched.append(action_id)
        touched += cascade(tx, action_id, f"dependency {action_id} was cancelled", by)
    return touched


def _last(tx: LedgerTransaction, plan_id: str, event_type: str) -> dict[str, Any]:
    """The data of the plan's latest event of ``event_type`` ({} when there is none)."""
    row = tx.query_one("SELECT data FROM events WHERE stream = ? AND type = ?"
                       " ORDER BY version DESC LIMIT 1", (stream_of(plan_id), event_type))
    return {} if row is None else dict(msgspec.json.decode(row[0]))


def cancel(tx: LedgerTransaction, plan_id: str, reason: str, then_rollback: bool,
           by: str) -> list[str]:
    """``sp plan cancel``: cancel every unfinished action of a running plan (running ones are
    asked to stop) and record ``plan.cancel_requested``; settle at once when nothing runs.
    Returns the actions cancelled or asked to stop.

    :raises PlanTransitionError: the plan is not running (stopping, finished, ...).
    """
    row = tx.query_one("SELECT state, version FROM plans WHERE plan_id = ?", (plan_id,))
    if row is None:
        from sp.plans.errors import PlanNotFoundError

        raise PlanNotFoundError(plan_id)
    state, version = PlanState(row[0]), int(row[1])
    plan_machine.check(plan_id, state, "cancel")
    why = f"plan {plan_id} cancelled" + (f": {reason}" if reason else "")
    touched = _cancel_rest(tx, plan_id, why, by)
    tx.append(stream_of(plan_id), [ev.PlanCancelRequested(
        by=by, reason=reason, rollback=then_rollback, cancelled=touched)], version)
    settle(tx, plan_id, by)
    return touched


def on_action_restarted(tx: LedgerTransaction, action_id: str, by: str) -> list[str]:
    """An action was restarted (its ``action.restarted`` is in this transaction): if it
    belongs to a plan, queue again its cancelled dependents that can run (and, if its failure
    stopped the plan, what the stop cancelled), and reopen the plan if it had finished.
    Returns the actions queued again with it.

    :raises PlanTransitionError: the plan is stopping, cancelling or rolled back (nothing of
        it may run again).
    :raises UsageError: the action waits on a dependency that failed or was cancelled.
    """
    row = tx.query_one("SELECT group_id FROM actions WHERE action_id = ?", (action_id,))
    if row is None or row[0] is None or str(row[0]).startswith(rollback.ROLLBACK_GROUP):
        return []
    plan_id = str(row[0])
    plan = tx.query_one("SELECT state, version FROM plans WHERE plan_id = ?", (plan_id,))
    if plan is None:
        return []
    state, version = PlanState(plan[0]), int(plan[1])
    if state is not PlanState.RUNNING:
        plan_machine.check(plan_id, state, "reopen")
    facts: dict[str, tuple[ActionState, list[str]]] = {
        str(a): (ActionState(s), list(msgspec.json.decode(d)))
        for a, s, d in tx.query("SELECT action_id, state, depends_on FROM actions"
                                " WHERE group_id = ?", (plan_id,))}
    blocked = [d for d in facts[action_id][1] if _dead(facts, d)]
    if blocked:
        raise UsageError(f"cannot restart {action_id}: it depends on {', '.join(blocked)}, "
                         f"which {'is' if len(blocked) == 1 else 'are'} "
                         f"{'/'.join(sorted({facts[d][0].value for d in blocked}))}; "
                         "restart that first")
    candidates = _dependents(facts, action_id)
    stop = _last(tx, plan_id, "plan.stop_requested")
    if state is PlanState.FAILED and stop.get("action_id") == action_id:
        candidates |= set(stop.get("cancelled") or [])
    candidates = {c for c in candidates
                  if c in facts and facts[c][0] is ActionState.CANCELLED}
    while True:  # keep those whose every dependency is done, coming, or queued with them
        keep = {c for c in candidates
                if not any(_dead(facts, d) and d != action_id and d not in candidates
                           for d in facts[c][1])}
        if keep == candidates:
            break
        candidates = keep
    order = [str(r[0]) for r in tx.query(
        "SELECT action_id FROM actions WHERE group_id = ? ORDER BY submitted_seq", (plan_id,))]
    requeued = [a for a in order if a in candidates]
    for dependent in requeued:
        a_state, a_version = state_of(tx, dependent)
        event = ev.ActionRestarted(by=by)
        action_machine.check_event(dependent, a_state, event)
        tx.append(dependent, [event], a_version)
    if state is not PlanState.RUNNING:
        step = tx.query_one("SELECT step_id FROM plan_steps WHERE plan_id = ? AND"
                            " action_id = ?", (plan_id, action_id))
        tx.append(stream_of(plan_id), [ev.PlanReopened(
            by=by, action_id=action_id, step=str(step[0]) if step else "",
            requeued=requeued)], version)
    return requeued


def _dead(facts: dict[str, tuple[ActionState, list[str]]], action_id: str) -> bool:
    """Whether a dependency has finished without letting its dependents go ahead."""
    found = facts.get(action_id)
    return found is not None and found[0] in FINAL and found[0] not in SATISFIED


def _dependents(facts: dict[str, tuple[ActionState, list[str]]], action_id: str) -> set[str]:
    """Every action of the plan that waits on ``action_id``, transitively."""
    out: set[str] = set()
    todo = [action_id]
    while todo:
        current = todo.pop()
        for other, (_, deps) in facts.items():
            if current in deps and other not in out:
                out.add(other)
                todo.append(other)
    return out
