"""Rollback plans: derived from events only (the ``rollback_plans`` projection), run as actions.

A rollback run undoes the plan's completed actions that have a compensation, in the plan's
order (``reverse``: the last completed first). Each compensation is an action of its own
(group ``rollback:<plan id>``: audited, retried, visible in ``sp audit``), chained to the one
before it by a dependency so that they run one at a time, in order:

* ``all-or-nothing``: a failed compensation fails for good, so the chain behind it is cancelled
  (the ordinary dependency cascade); the originals not reached stay ``completed``.
* ``best-effort``: compensations are submitted with the ``skip`` recovery strategy, so a failed
  one is ``skipped`` and the next goes ahead.

The original action moves ``completed -> rolling_back`` when its compensation is next to run,
then ``rolled_back`` or ``rollback_failed`` when the compensation ends.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from sp.commands.actions import SubmitSpec, state_of, submit_in
from sp.ledger import events as ev
from sp.ledger.interface import LedgerTransaction
from sp.ledger.store import Row
from sp.machines import action as action_machine
from sp.machines import plan as plan_machine
from sp.machines.plan import PlanState
from sp.machines.states import FINAL, ActionState
from sp.plans.errors import PlanNotFoundError
from sp.plans.model import Compensation
from sp.projections.plans import stream_of

ROLLBACK_GROUP = "rollback:"


class Reader(Protocol):
    def query(self, sql: str, params: Any = ()) -> list[Row]: ...


class RollbackStep(msgspec.Struct, frozen=True, kw_only=True):
    """One completed action of the plan and what undoing it takes."""

    position: int | None  # 1 runs first; None: nothing to run for it
    action_id: str
    step: str | None  # None for an action not declared in the file (a fallback)
    state: str  # the action's state: completed, rolling_back, rolled_back, rollback_failed
    completed_seq: int
    compensation: list[str] | None


class RollbackPlan(msgspec.Struct, frozen=True, kw_only=True):
    plan_id: str
    name: str
    plan_state: str
    order: str
    strategy: str
    steps: list[RollbackStep]  # in rollback order

    @property
    def todo(self) -> list[RollbackStep]:
        return [s for s in self.steps if s.position is not None]

    @property
    def without(self) -> list[RollbackStep]:
        """Completed actions that have no compensation: left as they are."""
        return [s for s in self.steps if s.position is None and s.state == "completed"]


def plan_of(reader: Reader, plan_id: str) -> RollbackPlan:
    """The rollback plan of ``plan_id`` as the projections hold it now.

    :raises PlanNotFoundError: no such plan.
    """
    found = reader.query(
        "SELECT name, state, rollback_order, rollback_strategy FROM plans WHERE plan_id = ?",
        (plan_id,),
    )
    if not found:
        raise PlanNotFoundError(plan_id)
    name, state, order, strategy = found[0]
    direction = "DESC" if order == "reverse" else "ASC"
    rows = reader.query(
        "SELECT r.action_id, r.completed_seq, r.compensation, r.state, s.step_id"
        " FROM rollback_plans r LEFT JOIN plan_steps s"
        " ON s.plan_id = r.group_id AND s.action_id = r.action_id"
        f" WHERE r.group_id = ? ORDER BY r.completed_seq {direction}",
        (plan_id,),
    )
    steps: list[RollbackStep] = []
    position = 0
    for action_id, seq, compensation, a_state, step in rows:
        argv = None if compensation is None else msgspec.json.decode(compensation)
        todo = argv is not None and a_state == ActionState.COMPLETED.value
        if todo:
            position += 1
        steps.append(RollbackStep(position=position if todo else None, action_id=action_id,
                                  step=step, state=a_state, completed_seq=seq,
                                  compensation=argv))
    return RollbackPlan(plan_id=plan_id, name=name, plan_state=state, order=order,
                        strategy=strategy, steps=steps)


def start(tx: LedgerTransaction, plan_id: str, reason: str, by: str) -> tuple[int, list[str]]:
    """Begin a rollback run of the plan (inside the caller's transaction).

    Returns the run number and the compensating actions' ids, in the order they run.

    :raises PlanTransitionError: the plan cannot roll back in its state (running, ...).
    """
    row = tx.query_one("SELECT state, version, rollback_runs FROM plans WHERE plan_id = ?",
                       (plan_id,))
    if row is None:
        raise PlanNotFoundError(plan_id)
    state, version, runs = PlanState(row[0]), int(row[1]), int(row[2])
    plan_machine.check(plan_id, state, "rollback")
    rp = plan_of(tx, plan_id)
    run = runs + 1
    now = tx.store.clock.now_ms()
    ids: list[str] = []
    steps: list[dict[str, Any]] = []
    for step in rp.todo:
        assert step.compensation is not None
        spec = _spec(tx, rp, step, step.compensation, run, ids[-1] if ids else None)
        (cid,) = submit_in(tx, [spec], by, [f"rollback of {step.step or step.action_id}"], now)
        ids.append(cid)
        steps.append({"action_id": step.action_id, "step": step.step, "compensation_id": cid})
    events: list[ev.Event] = [ev.PlanRollbackStarted(
        by=by, run=run, order=rp.order, strategy=rp.strategy, reason=reason, steps=steps,
        without=[s.action_id for s in rp.without],
    )]
    if not steps:
        events.append(ev.PlanRolledBack(by=by, run=run))
    tx.append(stream_of(plan_id), events, version)
    if rp.todo:
        _begin(tx, rp.todo[0].action_id, rp.todo[0].compensation, by)
    return run, ids


def _spec(tx: LedgerTransaction, rp: RollbackPlan, step: RollbackStep, argv: list[str], run: int,
          after: str | None) -> SubmitSpec:
    """The compensating action: the recorded compensation, run as the plan file said."""
    how = Compensation(argv=argv)
    if step.step is not None:
        found = tx.query_one("SELECT compensation FROM plan_steps WHERE plan_id = ? AND"
                             " step_id = ?", (rp.plan_id, step.step))
        if found is not None and found[0] is not None:
            how = msgspec.json.decode(found[0], type=Compensation)
    name = f"{rp.name}/{step.step or step.action_id}:rollback"
    # The undo runs under the same agent's policy as what it undoes.
    agent = tx.query_one("SELECT agent FROM actions WHERE action_id = ?", (step.action_id,))
    return SubmitSpec(
        agent=None if agent is None else agent[0],
        command=argv, name=name, task=name, cwd=how.cwd, env=dict(how.env),
        timeout_ms=how.timeout_ms, retries=how.max_attempts - 1, backoff=how.backoff,
        depends_on=[] if after is None else [after], group=f"{ROLLBACK_GROUP}{rp.plan_id}",
        recovery="skip" if rp.strategy == "best-effort" else "retry",
        payload={"plan": rp.plan_id, "run": run, "compensates": step.action_id},
    )


def _begin(tx: LedgerTransaction, action_id: str, compensation: list[str] | None, by: str) -> None:
    """The original action's compensation is next to run: ``completed -> rolling_back``."""
    state, version = state_of(tx, action_id)
    if state is not ActionState.COMPLETED:
        return
    event = ev.ActionRollbackStarted(by=by, compensation=compensation)
    action_machine.check_event(action_id, state, event)
    tx.append(action_id, [event], version)


def on_compensation_finished(tx: LedgerTransaction, compensation_id: str, outcome: ActionState,
                             by: str) -> None:
    """A compensating action ended: record the original's outcome, mark the next original
    as rolling back when its compensation goes ahead, and settle the run when it is over."""
    row = tx.query_one(
        "SELECT r.plan_id, r.run, r.position, r.action_id, p.rollback_runs, p.state"
        " FROM plan_rollback_steps r JOIN plans p USING (plan_id)"
        " WHERE r.compensation_id = ?", (compensation_id,),
    )
    if row is None:
        return
    plan_id, run, position, original, current_run, plan_state = row
    if run != current_run or plan_state != PlanState.ROLLING_BACK.value:
        return
    state, version = state_of(tx, original)
    if state is ActionState.ROLLING_BACK:
        facts = tx.query_one("SELECT exit_code, error FROM actions WHERE action_id = ?",
                             (compensation_id,))
        exit_code, error = facts if facts is not None else (None, None)
        event: ev.Event
        if outcome is ActionState.COMPLETED:
            event = ev.ActionRolledBack(by=by, exit_code=exit_code)
        else:
            event = ev.ActionRollbackFailed(
                by=by, exit_code=exit_code,
                error=f"compensation {compensation_id} {outcome.value}: {error or ''}".rstrip(
                    ": "))
        action_machine.check_event(original, state, event)
        tx.append(original, [event], version)
    nxt = tx.query_one(
        "SELECT r.action_id, a.state, o.compensation FROM plan_rollback_steps r"
        " JOIN actions a ON a.action_id = r.compensation_id"
        " JOIN actions o ON o.action_id = r.action_id"
        " WHERE r.plan_id = ? AND r.run = ? AND r.position = ?",
        (plan_id, run, position + 1),
    )
    if nxt is not None and ActionState(nxt[1]) not in FINAL:
        _begin(tx, nxt[0], None if nxt[2] is None else msgspec.json.decode(nxt[2]), by)
    settle_run(tx, plan_id, by)


def settle_run(tx: LedgerTransaction, plan_id: str, by: str) -> None:
    """When every compensation of the current run has ended, record how the run ended."""
    row = tx.query_one("SELECT state, version, rollback_runs FROM plans WHERE plan_id = ?",
                       (plan_id,))
    if row is None or row[0] != PlanState.ROLLING_BACK.value:
        return
    version, run = int(row[1]), int(row[2])
    rows = tx.query(
        "SELECT r.action_id, c.state, o.state FROM plan_rollback_steps r"
        " JOIN actions c ON c.action_id = r.compensation_id"
        " JOIN actions o ON o.action_id = r.action_id"
        " WHERE r.plan_id = ? AND r.run = ? ORDER BY r.position",
        (plan_id, run),
    )
    if any(ActionState(c) not in FINAL for _, c, _ in rows):
        return
    done = [a for a, _, o in rows if o == ActionState.ROLLED_BACK.value]
    failed = [a for a, _, o in rows if o == ActionState.ROLLBACK_FAILED.value]
    untouched = [a for a, _, o in rows if o == ActionState.COMPLETED.value]
    event: ev.Event
    if failed or untouched:
        event = ev.PlanRollbackFailed(by=by, run=run, rolled_back=done, failed=failed,
                                      not_attempted=untouched)
    else:
        event = ev.PlanRolledBack(by=by, run=run, rolled_back=done)
    plan_machine.check_event(plan_id, PlanState.ROLLING_BACK, event)
    tx.append(stream_of(plan_id), [event], version)
