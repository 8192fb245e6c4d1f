"""Commands on plans: validate, apply, status, show (order, parallelism, estimate), cancel,
rollback.

``apply`` records the plan and submits all its actions in one transaction; from then on the
queue runs them as their dependencies complete, and the plan reactor (commands/reactor.py) moves
the plan's own lifecycle from their outcomes.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import msgspec

from sp.commands.actions import SubmitSpec, submit_in
from sp.commands.policies import refuse
from sp.commands.rollback import RollbackPlan, plan_of
from sp.ledger import events as ev
from sp.ledger.errors import UsageError
from sp.ledger.interface import Ledger
from sp.machines import plan as plan_machine
from sp.machines.plan import PlanState
from sp.machines.states import FINAL
from sp.plans import graph
from sp.plans.errors import AmbiguousPlanError, PlanNotFoundError
from sp.plans.load import load_plan
from sp.plans.model import Plan, Step, steps_from
from sp.projections.plans import stream_of
from sp.projections.queries import details_of


def new_plan_id() -> str:
    return uuid.uuid4().hex[:16]


def validate(path: str | Path) -> Plan:
    """:raises PlanInvalidError: every problem of the file, each with its path."""
    return load_plan(path)


def _spec(plan: Plan, plan_id: str, step: Step, ids: dict[str, str]) -> SubmitSpec:
    name = f"{plan.name}/{step.id}"
    fallback = None
    if step.fallback is not None:
        fb = step.fallback
        fb_name = f"{name}:fallback"
        fallback = {"plan": plan_id, "step": step.id, "spec": msgspec.to_builtins(SubmitSpec(
            command=list(fb["argv"]), shell=bool(fb.get("shell")), name=fb_name, task=fb_name,
            cwd=fb.get("cwd"), env=dict(fb.get("env") or {}), action_type=str(fb["type"]),
            priority=step.priority, timeout_ms=step.timeout_ms, group=plan_id,
        ))}
    return SubmitSpec(
        command=step.command, shell=step.shell, name=name, task=name, priority=step.priority,
        agent=plan.agent,
        timeout_ms=step.timeout_ms, retries=step.max_attempts - 1, backoff=step.backoff,
        depends_on=[ids[d] for d in step.depends_on], group=plan_id,
        compensation=None if step.rollback is None else step.rollback.argv,
        cwd=step.cwd, env=step.env, action_type=step.type, payload=step.payload,
        retry_max_delay_ms=step.retry_max_delay_ms, retry_jitter=step.retry_jitter,
        non_retryable_exit_codes=step.non_retryable_exit_codes, recovery=step.recovery,
        fallback=fallback,
    )


def apply(store: Ledger, path: str | Path, by: str = "") -> str:
    """Validate a plan file, record it and submit its actions (one transaction); its id.

    :raises PlanInvalidError: the file has problems (nothing written).
    :raises UsageError: the plan's ``agent:`` is unknown (nothing written).
    """
    plan = load_plan(path)
    plan_id = new_plan_id()
    stream = stream_of(plan_id)
    with store.transaction() as tx:
        if plan.agent:  # a mistyped agent would run the plan with no policy at all
            from sp.commands.agents import require_known

            require_known(tx, plan.agent, f"{path}: $.agent")
        now = store.clock.now_ms()
        tx.append(stream, [ev.PlanApplied(
            by=by, plan_id=plan_id, name=plan.name, source=plan.source, sha256=plan.sha256,
            description=plan.description, on_failure=plan.on_failure,
            rollback_order=plan.rollback_order, rollback_strategy=plan.rollback_strategy,
            steps=[msgspec.to_builtins(s) for s in plan.steps],
        )], 0)
        ids: dict[str, str] = {}
        # One batch per level: a level depends only on earlier ones, already submitted.
        for level in plan.levels():
            steps = [plan.step(s) for s in level]
            specs = [_spec(plan, plan_id, s, ids) for s in steps]
            refuse(tx, specs, [s.where for s in steps])  # the agents' policies
            got = submit_in(tx, specs, by, [s.where for s in steps], now)
            ids.update(zip(level, got, strict=True))
        started = ev.PlanStarted(by=by, actions=ids)
        plan_machine.check_event(plan_id, PlanState.PENDING, started)
        tx.append(stream, [started], 1)
    _wake(store)
    return plan_id


def _wake(store: Ledger) -> None:
    from sp.host.wake import signal_workers

    signal_workers(Path(store.path).parent)


def resolve(store: Ledger, ref: str) -> str:
    """A full plan id from an id or a unique prefix of one.

    :raises PlanNotFoundError: nothing matches.
    :raises AmbiguousPlanError: several plans match.
    """
    rows = store.query(
        "SELECT plan_id FROM plans WHERE plan_id >= ? AND plan_id < ? ORDER BY plan_id LIMIT 6",
        (ref, ref + "\U0010ffff"),
    )
    ids = [str(r[0]) for r in rows]
    if ref in ids:
        return ref
    if not ids or not ref:
        raise PlanNotFoundError(ref)
    if len(ids) > 1:
        raise AmbiguousPlanError(ref, ids)
    return ids[0]


_PLAN_COLS = ("plan_id", "name", "source", "sha256", "state", "on_failure", "rollback_order",
              "rollback_strategy", "steps", "levels", "rollback_runs", "reason", "applied_seq",
              "applied_ms", "updated_ms", "finished_ms", "version")


def listing(store: Ledger, limit: int = 20) -> list[dict[str, Any]]:
    """The most recently applied plans, newest first."""
    rows = store.query(f"SELECT {', '.join(_PLAN_COLS)} FROM plans ORDER BY applied_seq DESC"
                       " LIMIT ?", (limit,))
    return [dict(zip(_PLAN_COLS, r, strict=True)) for r in rows]


def status(store: Ledger, plan_id: str) -> dict[str, Any]:
    """The plan, each step with its action's state, its rollback runs and its own events.

    :raises PlanNotFoundError: no such plan.
    """
    found = store.query_one(f"SELECT {', '.join(_PLAN_COLS)} FROM plans WHERE plan_id = ?",
                            (plan_id,))
    if found is None:
        raise PlanNotFoundError(plan_id)
    plan = dict(zip(_PLAN_COLS, found, strict=True))
    steps = []
    for row in store.query(
        "SELECT s.step_id, s.level, s.action_id, s.type, s.depends_on, s.compensation,"
        " a.state, a.attempts, a.exit_code, a.error, a.duration_ms FROM plan_steps s"
        " LEFT JOIN actions a USING (action_id) WHERE s.plan_id = ? ORDER BY s.position",
        (plan_id,),
    ):
        step, level, aid, type_, deps, comp, state, attempts, code, error, duration = row
        steps.append({"step": step, "level": level, "action_id": aid, "type": type_,
                      "depends_on": msgspec.json.decode(deps),
                      "rollback": None if comp is None else msgspec.json.decode(comp)["argv"],
                      "state": state, "attempts": attempts, "exit_code": code, "error": error,
                      "duration_ms": duration})
    others = [{"action_id": a, "name": n, "state": s, "exit_code": c, "error": e}
              for a, n, s, c, e in store.query(
                  "SELECT action_id, name, state, exit_code, error FROM actions"
                  " WHERE group_id = ? AND action_id NOT IN"
                  " (SELECT action_id FROM plan_steps WHERE plan_id = ? AND action_id"
                  " IS NOT NULL) ORDER BY submitted_seq", (plan_id, plan_id))]
    runs: dict[int, list[dict[str, Any]]] = {}
    for run, pos, aid, step, cid, c_state, o_state in store.query(
        "SELECT r.run, r.position, r.action_id, r.step_id, r.compensation_id, c.state,"
        " o.state FROM plan_rollback_steps r LEFT JOIN actions c ON c.action_id ="
        " r.compensation_id LEFT JOIN actions o ON o.action_id = r.action_id"
        " WHERE r.plan_id = ? ORDER BY r.run, r.position", (plan_id,),
    ):
        runs.setdefault(run, []).append({
            "position": pos, "action_id": aid, "step": step, "state": o_state,
            "compensation_id": cid, "compensation_state": c_state})
    history: list[dict[str, Any]] = []
    for r in store.read_stream(stream_of(plan_id)):
        details = details_of(r.event)
        if r.type == "plan.applied":
            details.pop("steps", None)  # shown as "actions"
        history.append({"seq": r.seq, "ts": r.ts, "event": r.type, "by": r.event.by,
                        "details": details})
    return {**plan, "actions": steps, "other_actions": others,
            "rollback": [{"run": k, "steps": v} for k, v in sorted(runs.items())],
            "history": history}


class ShowStep(msgspec.Struct, frozen=True):
    id: str
    type: str
    level: int
    depends_on: list[str]
    estimate_ms: int | None  # p50 of completed attempts of the same step; None: no history
    samples: int
    rollback: list[str] | None


class Show(msgspec.Struct, frozen=True, kw_only=True):
    plan_id: str | None
    name: str
    source: str
    on_failure: str
    rollback_order: str
    rollback_strategy: str
    steps: list[ShowStep]
    levels: list[list[str]]
    parallel: list[list[str]]  # the levels with more than one step
    max_parallel: int
    critical_path: list[str]
    estimated_ms: int | None  # None when a step has no history
    lower_bound_ms: int  # the critical path counting steps without history as 0
    unknown: list[str]


def recorded_plan(store: Ledger, plan_id: str) -> Plan:
    """The plan as ``plan.applied`` recorded it.

    :raises PlanNotFoundError: no such plan.
    """
    history = store.read_stream(stream_of(plan_id))
    first = history[0].event if history else None
    if not isinstance(first, ev.PlanApplied):
        raise PlanNotFoundError(plan_id)
    return Plan(name=first.name, description=first.description, source=first.source,
                sha256=first.sha256, on_failure=first.on_failure,
                rollback_order=first.rollback_order,
                rollback_strategy=first.rollback_strategy, steps=steps_from(first.steps))


def show(store: Ledger, target: str) -> Show:
    """Execution order, parallelism and estimated duration of a plan file or a recorded plan.

    :raises PlanInvalidError: ``target`` is a file with problems.
    :raises PlanNotFoundError: ``target`` is neither a file nor a known plan.
    """
    plan_id: str | None = None
    if Path(target).is_file():
        plan = load_plan(target)
    else:
        plan_id = resolve(store, target)
        plan = recorded_plan(store, plan_id)
    estimates = {s.id: _p50(store, f"{plan.name}/{s.id}") for s in plan.steps}
    order = [s.id for s in plan.steps]
    deps = {s.id: s.depends_on for s in plan.steps}
    known = {k: v[0] for k, v in estimates.items() if v[0] is not None}
    total, path = graph.critical_path(order, deps, known)
    unknown = [k for k, v in estimates.items() if v[0] is None]
    levels = plan.levels()
    return Show(
        plan_id=plan_id, name=plan.name, source=plan.source, on_failure=plan.on_failure,
        rollback_order=plan.rollback_order, rollback_strategy=plan.rollback_strategy,
        steps=[ShowStep(s.id, s.type, s.level, s.depends_on, *estimates[s.id],
                        None if s.rollback is None else s.rollback.argv) for s in plan.steps],
        levels=levels, parallel=[lv for lv in levels if len(lv) > 1],
        max_parallel=max((len(lv) for lv in levels), default=0), critical_path=path,
        estimated_ms=None if unknown else total, lower_bound_ms=total, unknown=unknown,
    )


def _p50(store: Ledger, task: str) -> tuple[int | None, int]:
    """Nearest-rank median of the completed attempts of ``task`` (as ``v_metrics`` computes
    it) and how many there were."""
    durations = [int(r[0]) for r in store.query(
        "SELECT duration_ms FROM metrics_attempts WHERE task = ? AND agent IS NULL"
        " AND outcome = 'completed' ORDER BY duration_ms", (task,))]
    if not durations:
        return None, 0
    return durations[(len(durations) + 1) // 2 - 1], len(durations)


def rollback_preview(store: Ledger, plan_id: str) -> RollbackPlan:
    """The rollback plan as it stands (``sp rollback --dry-run``): reads only.

    :raises PlanNotFoundError: no such plan.
    """
    return plan_of(store, plan_id)


def rollback(store: Ledger, plan_id: str, by: str = "") -> tuple[int, RollbackPlan,
                                                                      list[str]]:
    """Start a rollback run of the plan: its compensating actions are queued, chained.

    Returns the run number, the plan it follows and the compensating actions' ids.

    :raises PlanTransitionError: the plan cannot roll back now (running, rolling back, ...).
    :raises UsageError: some of its actions have not finished (a plan that is stopping).
    """
    from sp.commands import rollback as rb

    with store.transaction() as tx:
        preview = plan_of(tx, plan_id)
        plan_machine.check(plan_id, PlanState(preview.plan_state), "rollback")
        active = tx.query(
            "SELECT count(*) FROM actions WHERE group_id = ? AND state NOT IN"
            f" ({', '.join(repr(s.value) for s in FINAL)})", (plan_id,))[0][0]
        if active:
            # An action still running could complete after the rollback plan was drawn up
            # and would then never be undone.
            raise UsageError(f"plan {plan_id} is {preview.plan_state}: {active} of its actions"
                             f" have not finished; wait for them (sp plan status {plan_id})")
        run, ids = rb.start(tx, plan_id, "manual", by)
    _wake(store)
    return run, preview, ids


def cancel(store: Ledger, plan_id: str, reason: str = "", then_rollback: bool = False,
           by: str = "") -> tuple[str, list[str]]:
    """Cancel a running plan: its unfinished actions are cancelled (running ones are asked to
    stop); once none runs the plan is ``cancelled``, or rolled back with ``then_rollback``.

    Returns the plan's state after the call and the actions cancelled or asked to stop.

    :raises PlanTransitionError: the plan is not running.
    :raises PlanNotFoundError: no such plan.
    """
    from sp.commands import reactor

    with store.transaction() as tx:
        touched = reactor.cancel(tx, plan_id, reason, then_rollback, by)
        row = tx.query_one("SELECT state FROM plans WHERE plan_id = ?", (plan_id,))
        state = str(row[0]) if row else ""
    _wake(store)
    return state, touched
