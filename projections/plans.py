"""The plan read models: each plan's state, its steps (step -> action), its rollback runs.

Folded from the ``plan:<id>`` streams only; an action's own state is in ``actions`` (join
``plan_steps.action_id``). ``plan_rollback_steps`` holds each rollback run's chain: which
compensating action undoes which original, in the order they run.
"""

from __future__ import annotations

from collections.abc import Callable

from sp.ledger import events as ev
from sp.ledger.errors import CorruptEventError
from sp.ledger.store import Recorded
from sp.machines.plan import FOLD, PlanState
from sp.projections.actions import to_json
from sp.projections.rows import Rows, Table

DDL = """
CREATE TABLE plans (
    plan_id           TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    source            TEXT NOT NULL,
    sha256            TEXT NOT NULL,
    state             TEXT NOT NULL,
    on_failure        TEXT NOT NULL,     -- rollback | stop | continue
    rollback_order    TEXT NOT NULL,     -- reverse | forward
    rollback_strategy TEXT NOT NULL,     -- all-or-nothing | best-effort
    steps             INTEGER NOT NULL,
    levels            INTEGER NOT NULL,
    rollback_runs     INTEGER NOT NULL,
    reason            TEXT,              -- why it stopped, failed or rolled back
    applied_seq       INTEGER NOT NULL,
    applied_ms        INTEGER NOT NULL,
    updated_ms        INTEGER NOT NULL,
    finished_ms       INTEGER,
    version           INTEGER NOT NULL,
    last_seq          INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX plans_state ON plans (state, applied_seq);
CREATE TABLE plan_steps (
    plan_id      TEXT NOT NULL,
    step_id      TEXT NOT NULL,      -- qualified: publish/copy
    position     INTEGER NOT NULL,   -- topological order
    level        INTEGER NOT NULL,   -- the steps of one level may run in parallel
    action_id    TEXT,               -- NULL until the plan started
    type         TEXT NOT NULL,
    depends_on   TEXT NOT NULL,      -- JSON list of step ids
    compensation TEXT,               -- JSON: how to undo it (argv, cwd, env, timeout, attempts)
    PRIMARY KEY (plan_id, step_id)
) WITHOUT ROWID;
CREATE INDEX plan_steps_action ON plan_steps (action_id);
CREATE TABLE plan_rollback_steps (
    plan_id         TEXT NOT NULL,
    run             INTEGER NOT NULL,
    position        INTEGER NOT NULL,  -- 1 runs first
    action_id       TEXT NOT NULL,     -- the action undone
    step_id         TEXT,
    compensation_id TEXT NOT NULL,     -- the compensating action
    PRIMARY KEY (plan_id, run, position)
) WITHOUT ROWID;
CREATE INDEX plan_rollback_steps_comp ON plan_rollback_steps (compensation_id);
"""

TABLES = (
    Table("plans", ("plan_id", "name", "source", "sha256", "state", "on_failure",
                    "rollback_order", "rollback_strategy", "steps", "levels", "rollback_runs",
                    "reason", "applied_seq", "applied_ms", "updated_ms", "finished_ms",
                    "version", "last_seq"), ("plan_id",)),
    Table("plan_steps", ("plan_id", "step_id", "position", "level", "action_id", "type",
                         "depends_on", "compensation"), ("plan_id", "step_id")),
    Table("plan_rollback_steps", ("plan_id", "run", "position", "action_id", "step_id",
                                  "compensation_id"), ("plan_id", "run", "position")),
)

STREAM_PREFIX = "plan:"


def stream_of(plan_id: str) -> str:
    return f"{STREAM_PREFIX}{plan_id}"


def _applied(rows: Rows, rec: Recorded) -> None:
    e = rec.event
    assert isinstance(e, ev.PlanApplied)
    if rec.stream != stream_of(e.plan_id) or rows.get("plans", e.plan_id) is not None:
        raise CorruptEventError(rec.seq, f"plan {e.plan_id} applied twice or in {rec.stream}")
    levels = 0
    for position, step in enumerate(e.steps, 1):
        level = int(step.get("level", 1))
        levels = max(levels, level)
        rows.put("plan_steps", {
            "plan_id": e.plan_id, "step_id": step["id"], "position": position, "level": level,
            "action_id": None, "type": step.get("type", "shell"),
            "depends_on": to_json(step.get("depends_on", [])),
            "compensation": None if step.get("rollback") is None else to_json(step["rollback"]),
        })
    rows.put("plans", {
        "plan_id": e.plan_id, "name": e.name, "source": e.source, "sha256": e.sha256,
        "state": PlanState.PENDING.value, "on_failure": e.on_failure,
        "rollback_order": e.rollback_order, "rollback_strategy": e.rollback_strategy,
        "steps": len(e.steps), "levels": levels, "rollback_runs": 0, "reason": None,
        "applied_seq": rec.seq, "applied_ms": rec.ts, "updated_ms": rec.ts,
        "finished_ms": None, "version": rec.version, "last_seq": rec.seq,
    })


def _moved(rows: Rows, rec: Recorded) -> None:
    """Every later plan event: fold the state through the machine's table, then the facts."""
    plan_id = rec.stream[len(STREAM_PREFIX):]
    p = rows.get("plans", plan_id)
    if p is None:
        raise CorruptEventError(rec.seq, f"{rec.type} for unknown plan {plan_id}")
    new = FOLD.get((PlanState(p["state"]), rec.type))
    if new is None:
        raise CorruptEventError(rec.seq, f"{rec.type} is illegal for a plan that is {p['state']}")
    e = rec.event
    if isinstance(e, ev.PlanStarted):
        for step_id, action_id in e.actions.items():
            s = rows.get("plan_steps", (plan_id, step_id))
            if s is not None:
                s["action_id"] = action_id
                rows.touch("plan_steps", (plan_id, step_id))
    elif isinstance(e, ev.PlanStopRequested):
        p["reason"] = f"{e.step or e.action_id} failed: {e.error}".rstrip(": ")
    elif isinstance(e, ev.PlanFailed):
        p["reason"] = e.reason or p["reason"]
    elif isinstance(e, ev.PlanRollbackStarted):
        p["rollback_runs"] = e.run
        p["reason"] = f"rollback run {e.run} ({e.reason or 'manual'})"
        for position, step in enumerate(e.steps, 1):
            rows.put("plan_rollback_steps", {
                "plan_id": plan_id, "run": e.run, "position": position,
                "action_id": step["action_id"], "step_id": step.get("step"),
                "compensation_id": step["compensation_id"],
            })
    elif isinstance(e, ev.PlanCancelRequested):
        p["reason"] = f"cancelled: {e.reason}" if e.reason else "cancelled"
    elif isinstance(e, ev.PlanReopened):
        p["reason"] = f"reopened: {e.step or e.action_id} restarted"
    elif isinstance(e, ev.PlanRollbackFailed):
        p["reason"] = (f"rollback run {e.run} failed: {', '.join(e.failed) or 'nothing'}"
                       " could not be undone")
    p["state"] = new.value
    p["finished_ms"] = rec.ts if new in _FINISHED else None
    p["updated_ms"] = rec.ts
    p["version"] = rec.version
    p["last_seq"] = rec.seq
    rows.touch("plans", plan_id)


_FINISHED = frozenset({PlanState.COMPLETED, PlanState.FAILED, PlanState.CANCELLED,
                       PlanState.ROLLED_BACK, PlanState.ROLLBACK_FAILED})

HANDLERS: dict[str, Callable[[Rows, Recorded], None]] = {
    ev.tag_of(ev.PlanApplied): _applied,
    **{ev.tag_of(cls): _moved for cls in (ev.PlanStarted, ev.PlanStopRequested,
                                          ev.PlanCompleted, ev.PlanFailed,
                                          ev.PlanRollbackStarted, ev.PlanRolledBack,
                                          ev.PlanRollbackFailed, ev.PlanCancelRequested,
                                          ev.PlanCancelled, ev.PlanReopened)},
}
