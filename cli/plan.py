"""``sp plan``: validate, apply, show and follow plan files; ``sp rollback``."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import click

from sp.cli.main import App, echo_json, echo_table, format_option, one_line, pass_app


def _invalid(err: Any, fmt: str) -> None:
    """Every problem of a plan file: one ``Error:`` line each on stderr; exit 2."""
    if fmt == "json":
        echo_json({"valid": False, "problems": [
            {"file": p.file, "path": p.path, "message": p.message} for p in err.problems]})
    for problem in err.problems:
        click.echo(f"Error: {one_line(str(problem))}", err=True)
    sys.exit(2)


def _ms(ms: int | None) -> str:
    from sp.agents.durations import format_ms

    return "unknown" if ms is None else format_ms(ms)


@click.group()
def plan() -> None:
    """Plans: dependency graphs of actions, run in parallel, rolled back on failure.

    \b
    Example:
      sp plan validate deploy.yaml
      sp plan apply deploy.yaml
      sp plan status 3f2a
    """


@plan.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@format_option()
@pass_app
def plan_validate(app: App, file: str, fmt: str) -> None:
    """Check a plan file and report every problem with its path; writes nothing.

    Exit 0 when valid, 2 when not (one ``Error:`` line per problem on stderr).

    \b
    Example:
      sp plan validate deploy.yaml
    """
    from sp.commands import plans
    from sp.plans.errors import PlanInvalidError

    try:
        p = plans.validate(file)
    except PlanInvalidError as e:
        _invalid(e, fmt)
        return
    if fmt == "json":
        echo_json({"valid": True, "problems": [], "name": p.name, "actions": len(p.steps),
                   "levels": len(p.levels())})
        return
    click.echo(f"ok: plan {p.name}: {len(p.steps)} actions in {len(p.levels())} levels")


@plan.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@pass_app
def plan_apply(app: App, file: str) -> None:
    """Validate a plan file, record it and queue its actions; print the plan id.

    Workers run the actions as their dependencies complete (``sp worker -c 4``).

    \b
    Example:
      sp plan apply deploy.yaml
      sp worker -c 4 --until-idle
    """
    from sp.commands import actions, plans
    from sp.plans.errors import PlanInvalidError

    try:
        p = plans.validate(file)
    except PlanInvalidError as e:
        _invalid(e, "table")
        return
    plan_id = plans.apply(app.store(), file, by=actions.who())
    click.echo(plan_id)
    click.echo(f"plan {p.name}: {len(p.steps)} actions queued", err=True)


@plan.command("list")
@click.option("--limit", type=click.IntRange(0, 1_000_000), default=20, show_default=True)
@format_option()
@pass_app
def plan_list(app: App, limit: int, fmt: str) -> None:
    """List the most recently applied plans and their states.

    \b
    Example:
      sp plan list --format json
    """
    from sp.commands import plans

    rows = plans.listing(app.store(write=False), limit)
    if fmt == "json":
        echo_json(rows)
        return
    echo_table(["plan", "name", "state", "steps", "on_failure", "reason"],
               [(r["plan_id"], r["name"], r["state"], r["steps"], r["on_failure"], r["reason"])
                for r in rows], wide=("reason",))


@plan.command("status")
@click.argument("plan_id")
@click.option("--timeline", is_flag=True,
              help="A text Gantt chart of the actions (waiting, running, retries) from events.")
@format_option()
@pass_app
def plan_status(app: App, plan_id: str, fmt: str, timeline: bool) -> None:
    """Show a plan's state and its graph: each action's state, dependencies and outcome.

    \b
    Example:
      sp plan status 3f2a
      sp plan status 3f2a --timeline
    """
    from sp.commands import plans

    store = app.store(write=False)
    doc = plans.status(store, plans.resolve(store, plan_id))
    if timeline:
        from sp.cli.monitor import render_timeline
        from sp.projections.monitoring import timeline as plan_timeline

        tl = plan_timeline(store, [(s["step"], s["action_id"]) for s in doc["actions"]])
        if fmt == "json":
            echo_json(tl)
        else:
            click.echo(f"plan {doc['plan_id']} {doc['name']}: {doc['state']}")
            for line in render_timeline(tl):
                click.echo(line)
        return
    if fmt == "json":
        echo_json(doc)
        return
    reason = f": {doc['reason']}" if doc["reason"] else ""
    click.echo(f"plan {doc['plan_id']} {doc['name']}: {doc['state']}{reason}")
    click.echo(f"on_failure {doc['on_failure']}; rollback {doc['rollback_order']}, "
               f"{doc['rollback_strategy']}")
    echo_table(["level", "step", "state", "action", "depends_on", "attempts", "exit", "error"],
               [(s["level"], s["step"], s["state"], s["action_id"],
                 ", ".join(s["depends_on"]) or None, s["attempts"], s["exit_code"], s["error"])
                for s in doc["actions"]], wide=("error",))
    for o in doc["other_actions"]:
        click.echo(f"also: {o['name']} {o['action_id']} {o['state']}")
    for run in doc["rollback"]:
        click.echo(f"rollback run {run['run']}:")
        echo_table(["pos", "step", "state", "compensation", "compensation_state"],
                   [(s["position"], s["step"], s["state"], s["compensation_id"],
                     s["compensation_state"]) for s in run["steps"]])


@plan.command("show")
@click.argument("target", metavar="FILE|ID")
@format_option()
@pass_app
def plan_show(app: App, target: str, fmt: str) -> None:
    """Show the execution order (topological levels), what may run in parallel, and the
    estimated duration (p50 of earlier runs of each step, summed along the critical path).

    \b
    Example:
      sp plan show deploy.yaml
      sp plan show 3f2a --format json
    """
    from sp.commands import plans
    from sp.plans.errors import PlanInvalidError

    try:
        s = plans.show(app.store(write=False), target)
    except PlanInvalidError as e:
        _invalid(e, fmt)
        return
    if fmt == "json":
        echo_json(s)
        return
    click.echo(f"plan {s.name}{f' {s.plan_id}' if s.plan_id else ''}: {len(s.steps)} actions "
               f"in {len(s.levels)} levels, at most {s.max_parallel} in parallel; on_failure "
               f"{s.on_failure}; rollback {s.rollback_order}, {s.rollback_strategy}")
    echo_table(["level", "action", "type", "depends_on", "estimate", "runs", "rollback"],
               [(st.level, st.id, st.type, ", ".join(st.depends_on) or None,
                 _ms(st.estimate_ms), st.samples,
                 None if st.rollback is None else shlex.join(st.rollback))
                for st in s.steps], wide=("rollback",))
    for i, level in enumerate(s.levels, 1):
        if len(level) > 1:
            click.echo(f"parallel: level {i}: {', '.join(level)}")
    click.echo(f"critical path: {' -> '.join(s.critical_path)}")
    if s.estimated_ms is not None:
        click.echo(f"estimated duration: {_ms(s.estimated_ms)}")
    else:
        click.echo(f"estimated duration: unknown (no history for {', '.join(s.unknown)}); "
                   f"at least {_ms(s.lower_bound_ms)}")


@plan.command("cancel")
@click.argument("plan_id")
@click.option("--reason", default="", help="Why (recorded in the plan's events).")
@click.option("--rollback", "then_rollback", is_flag=True,
              help="Once nothing runs, undo the completed actions (as sp rollback does).")
@format_option()
@pass_app
def plan_cancel(app: App, plan_id: str, reason: str, then_rollback: bool, fmt: str) -> None:
    """Cancel a running plan: queued actions are cancelled, running ones are stopped.

    The plan is then ``cancelled``; what already completed stays as it is unless
    ``--rollback`` is given (``on_failure`` does not apply to a cancel). A cancelled plan can
    still be rolled back later with ``sp rollback``.

    \b
    Example:
      sp plan cancel 3f2a --reason "wrong target"
      sp plan cancel 3f2a --rollback
    """
    from sp.commands import actions, plans

    store = app.store()
    pid = plans.resolve(store, plan_id)
    state, touched = plans.cancel(store, pid, reason, then_rollback, by=actions.who())
    if fmt == "json":
        echo_json({"plan_id": pid, "state": state, "cancelled": touched,
                   "rollback": then_rollback})
        return
    click.echo(f"plan {pid}: {state}; {len(touched)} action(s) cancelled or asked to stop"
               + ("; its completed actions are rolled back once nothing runs"
                  if then_rollback and state == "cancelling" else ""), err=True)


@click.command()
@click.argument("plan_id")
@click.option("--dry-run", is_flag=True, help="Show the rollback plan; write nothing.")
@format_option()
@pass_app
def rollback(app: App, plan_id: str, dry_run: bool, fmt: str) -> None:
    """Undo a plan's completed actions with their compensations, in the plan's order.

    The rollback plan comes from the event log alone (the rollback_plans projection), so it
    is the same after a crash and ``sp replay``. Each compensation is an action of its own
    (audited, retried), chained in order and run by the workers; prints their ids.
    ``all-or-nothing`` stops at the first failed compensation, ``best-effort`` goes on.

    \b
    Example:
      sp rollback 3f2a --dry-run
      sp rollback 3f2a | xargs sp wait
    """
    from sp.commands import actions, plans

    store = app.store(write=not dry_run)
    pid = plans.resolve(store, plan_id)
    run: int | None = None
    ids: list[str] = []
    if dry_run:
        preview = plans.rollback_preview(store, pid)
    else:
        run, preview, ids = plans.rollback(store, pid, by=actions.who())
    if fmt == "json":
        echo_json({"plan_id": pid, "dry_run": dry_run, "run": run, "order": preview.order,
                   "strategy": preview.strategy, "steps": preview.steps,
                   "compensation_ids": ids})
        return
    if dry_run:
        click.echo(f"rollback of plan {pid} ({preview.name}, {preview.plan_state}): "
                   f"{preview.order}, {preview.strategy} (dry run: nothing written)")
        echo_table(["pos", "step", "action", "state", "compensation"],
                   [(s.position, s.step, s.action_id, s.state,
                     "(none: left as is)" if s.compensation is None
                     else shlex.join(s.compensation)) for s in preview.steps],
                   wide=("compensation",))
        if not preview.todo:
            click.echo("nothing to undo")
        return
    for cid in ids:
        click.echo(cid)
    click.echo(f"plan {pid}: rollback run {run}: {len(ids)} compensation(s) queued "
               f"({preview.order}, {preview.strategy})" if ids
               else f"plan {pid}: nothing to undo; rolled back", err=True)


COMMANDS = [plan, rollback]
