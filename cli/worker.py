"""``sp worker`` and ``sp tick``: run queued actions; ``sp pause`` / ``sp resume``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from sp.cli.main import App, pass_app

if TYPE_CHECKING:
    from sp.ledger.interface import Ledger


def _summary(summary: object) -> str:
    s = summary
    return (f"ran {s.ran}: {s.completed} completed, {s.failed} failed, "  # type: ignore[attr-defined]
            f"{s.retrying} retrying, {s.cancelled} cancelled, "  # type: ignore[attr-defined]
            f"{s.interrupted} interrupted"  # type: ignore[attr-defined]
            + (f"; recovered {s.recovered} left by dead workers"  # type: ignore[attr-defined]
               if getattr(s, "recovered", 0) else ""))


@click.command()
@click.option("-c", "--concurrency", type=click.IntRange(1, 256), default=1, show_default=True,
              help="How many actions to run at once.")
@click.option("--until-idle", is_flag=True,
              help="Exit when nothing is running, ready or waiting out a retry backoff.")
@click.option("--grace", default="30s", show_default=True,
              help="On SIGTERM/SIGINT, how long running actions may finish before they are "
                   "interrupted (recorded, resumable).")
@pass_app
def worker(app: App, concurrency: int, until_idle: bool, grace: str) -> None:
    """Claim ready actions and run up to N at once, in the foreground.

    Claims are atomic across processes: several workers and cron ticks never run one action
    twice. A submit wakes an idle worker at once (a named pipe in the home).

    \b
    Example:
      sp worker --concurrency 4
      sp worker --until-idle
    """
    from sp.agents.durations import parse_duration_ms
    from sp.runner.worker import Worker

    grace_s = parse_duration_ms(grace, "--grace") / 1000
    store = app.store()
    w = Worker(store, app.home, concurrency=concurrency, grace_s=grace_s)
    summary = w.run(until_idle=until_idle)
    click.echo(_summary(summary), err=True)


@click.command()
@click.option("--max-seconds", type=click.FloatRange(0, 86400), default=55, show_default=True,
              help="Run ready work for at most this long, then exit (what still runs is "
                   "interrupted and resumes on the next tick).")
@click.option("-c", "--concurrency", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--no-schedules", is_flag=True,
              help="Only run ready work; do not fire schedules (when cron or systemd runs "
                   "the exported schedules instead).")
@pass_app
def tick(app: App, max_seconds: float, concurrency: int, no_schedules: bool) -> None:
    """The cron entry point: fire due schedules, then run ready work for at most
    --max-seconds, then exit.

    Each due slot of each schedule fires exactly once, even when ticks overlap or run late;
    every fire and skip is an event (sp schedule show NAME).

    \b
    Example:
      * * * * * sp tick --max-seconds 55    # a crontab line
    """
    from sp.runner.worker import Worker

    store = app.store()
    if not no_schedules:
        _fire_schedules(store)
    w = Worker(store, app.home, concurrency=concurrency, grace_s=0)
    summary = w.run(until_idle=True, max_seconds=max_seconds)
    click.echo(_summary(summary), err=True)


def _fire_schedules(store: Ledger) -> None:
    from sp.projections.schedules import any_enabled

    if not any_enabled(store):  # spares a cron tick loading the schedule code
        return
    from sp.commands import schedules

    report = schedules.fire_due(store)
    for error in report.errors:
        click.echo(f"warning: {error}", err=True)
    if report.fired or report.skipped:
        skipped = sum(s["count"] for s in report.skipped)
        click.echo(f"schedules: fired {len(report.fired)}, skipped {skipped}", err=True)


@click.command()
@click.option("--agent", help="Pause only this agent's actions.")
@pass_app
def pause(app: App, agent: str | None) -> None:
    """Stop claiming new actions (running ones go on); nothing is lost.

    \b
    Example:
      sp pause --agent research-001
    """
    from sp.commands import actions, control

    changed = control.pause(app.store(), agent, by=actions.who())
    what = f"agent {agent}" if agent else "all agents"
    click.echo(f"{what}: {'paused' if changed else 'already paused'}", err=True)


@click.command()
@click.option("--agent", help="Resume only this agent's actions.")
@pass_app
def resume(app: App, agent: str | None) -> None:
    """Claim again after ``sp pause``.

    \b
    Example:
      sp resume --agent research-001
    """
    from sp.commands import actions, control

    changed = control.resume(app.store(), agent, by=actions.who())
    what = f"agent {agent}" if agent else "all agents"
    click.echo(f"{what}: {'resumed' if changed else 'was not paused'}", err=True)


COMMANDS = [worker, tick, pause, resume]
