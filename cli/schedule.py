"""``sp schedule``: time-based schedules (cron expressions) that ``sp tick`` fires."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from sp.cli.main import App, echo_json, echo_table, format_option, pass_app


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@click.group()
def schedule() -> None:
    """Time-based schedules: run an agent's task at the times a cron expression names.

    ``sp tick`` (cron runs it every minute) fires each due slot exactly once and records every
    fire and skip as an event; or export the schedules to crontab lines or systemd timers.

    \b
    Example:
      sp schedule add daily-scan --cron "0 9 * * *" --agent research-001 \\
          --task daily_arxiv_scan --jitter 5m --persistent
      sp schedule list
      * * * * * sp tick        # a crontab line
    """


@schedule.command("add")
@click.argument("name")
@click.option("--cron", "cron",
              help='Five fields (minute hour day month weekday) or @hourly/@daily/...; '
                   'e.g. "0 9 * * *", "*/15 8-18 * * mon-fri".')
@click.option("--window", help='With --adaptive: the daily window it may run in, local time, '
                               'e.g. "01:00-05:00".')
@click.option("--adaptive", is_flag=True,
              help="Instead of --cron: once a day inside --window, at the minute of lowest "
                   "recorded machine load (learnt from the daemon's load samples; the "
                   "window's start without any).")
@click.option("--agent", "agent_id", required=True, help="The agent (applied first).")
@click.option("--task", required=True, help="The agent's task to run.")
@click.option("--timezone", "tz", help="IANA zone the expression is read in (default: this "
                                       "machine's, recorded).")
@click.option("--jitter", help='Random delay in [0, JITTER] per run (systemd '
                               'RandomizedDelaySec), e.g. "5m".')
@click.option("--persistent", is_flag=True,
              help="A slot missed while the device was off runs once on the next tick "
                   "(systemd Persistent=true; same as --missed run_once).")
@click.option("--missed", help="Missed-run policy: skip (default), run_once, backfill:N, "
                               "catchup:WINDOW (e.g. catchup:2h).")
@click.option("--overlap", default="skip", show_default=True,
              help="When a slot comes while the previous run still goes: skip, queue "
                   "(submit; it waits its turn), allow (submit; may run alongside).")
@click.option("--disabled", is_flag=True, help="Define it disabled (sp schedule enable NAME).")
@click.option("--replace", is_flag=True, help="Redefine an existing schedule of that name.")
@pass_app
def schedule_add(app: App, name: str, cron: str | None, window: str | None, adaptive: bool,
                 agent_id: str, task: str, tz: str | None, jitter: str | None,
                 persistent: bool, missed: str | None, overlap: str, disabled: bool,
                 replace: bool) -> None:
    """Add a schedule (an audited event); a bad expression or zone is refused with the reason.

    Slots count from now on: a slot before the schedule existed never fires.

    \b
    Example:
      sp schedule add health --cron "*/5 * * * *" --agent monitor-001 --task health_check
      sp schedule add backup --cron "0 2 * * *" --agent backup-001 --task daily_backup \\
          --timezone Europe/Paris --missed catchup:6h --overlap skip
      sp schedule add reindex --window 01:00-05:00 --adaptive --agent db-001 --task reindex
    """
    from sp.agents.durations import parse_duration_ms
    from sp.commands import actions, schedules

    jitter_ms = 0 if jitter is None else parse_duration_ms(jitter, "--jitter")
    event = schedules.define(
        app.store(), name, cron, agent_id, task, timezone=tz, jitter_ms=jitter_ms,
        persistent=persistent, missed=missed, overlap=overlap, enabled=not disabled,
        replace=replace, by=actions.who(), window=window, adaptive=adaptive,
    )
    when = f"adaptive in {event.window}" if event.adaptive else event.cron
    click.echo(name)
    click.echo(f"schedule {name}: {when} ({event.timezone}) runs {event.agent}/"
               f"{event.task}{'' if event.enabled else '; disabled'}", err=True)


def _row_json(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "next_slot": _iso(row["next_slot_ms"]), "last_slot": _iso(row["last_slot_ms"])}


@schedule.command("list")
@format_option()
@pass_app
def schedule_list(app: App, fmt: str) -> None:
    """List schedules: expression, zone, task, policies, the next slot and the last run.

    \b
    Example:
      sp schedule list --format json
    """
    from sp.commands import schedules

    rows = schedules.listing(app.store(write=False))
    if fmt == "json":
        echo_json([_row_json(r) for r in rows])
        return
    echo_table(
        ["name", "cron", "timezone", "task", "enabled", "missed", "overlap", "next", "last",
         "fired", "skipped"],
        [(r["name"], f"adaptive {r['run_window']}" if r["adaptive"] else r["cron"],
          r["timezone"], f"{r['agent']}/{r['task']}",
          "yes" if r["enabled"] else "no", r["missed_policy"], r["overlap"],
          _iso(r["next_slot_ms"]), _iso(r["last_slot_ms"]), r["fired"], r["skipped"])
         for r in rows],
    )


@schedule.command("show")
@click.argument("name")
@format_option()
@pass_app
def schedule_show(app: App, name: str, fmt: str) -> None:
    """Show a schedule, its next slots, and its history: every event of its stream.

    A removed schedule still shows its history.

    \b
    Example:
      sp schedule show daily-scan
    """
    from sp.commands import schedules
    from sp.ledger.errors import UsageError

    store = app.store(write=False)
    history = schedules.history(store, name)
    try:
        row: dict[str, Any] | None = schedules.get(store, name)
    except UsageError:
        row = None
    upcoming: list[int] = []
    if row is not None:
        cron = schedules.slots_of(store.query, row)
        upcoming = cron.upcoming(max(row["cursor_ms"], store.clock.now_ms()), 5)
    if fmt == "json":
        echo_json({"schedule": None if row is None else _row_json(row),
                   "upcoming": [_iso(ms) for ms in upcoming], "history": history})
        return
    if row is None:
        click.echo(f"schedule {name}: removed")
    else:
        adaptive = ("run_window", "adaptive") if row["adaptive"] else ()
        for key in ("name", "cron", *adaptive, "timezone", "agent", "task", "enabled",
                    "missed_policy",
                    "overlap", "jitter_ms", "source", "fired", "skipped", "last_action_id"):
            click.echo(f"{key + ':':16} {row[key]}")
        click.echo(f"{'next:':16} {', '.join(str(_iso(ms)) for ms in upcoming) or '-'}")
    click.echo("")
    echo_table(["seq", "time", "event", "by", "details"],
               [(h["seq"], _iso(h["ts"]), h["event"], h["by"],
                 " ".join(f"{k}={v}" for k, v in h["details"].items())) for h in history],
               wide=("details",))


@schedule.command("rm")
@click.argument("name")
@click.option("--reason", default="", help="Recorded with the removal.")
@pass_app
def schedule_rm(app: App, name: str, reason: str) -> None:
    """Remove a schedule; its history stays in the log (sp schedule show NAME).

    \b
    Example:
      sp schedule rm daily-scan --reason "replaced by the weekly scan"
    """
    from sp.commands import actions, schedules

    schedules.remove(app.store(), name, reason, by=actions.who())
    click.echo(f"schedule {name}: removed", err=True)


@schedule.command("enable")
@click.argument("name")
@pass_app
def schedule_enable(app: App, name: str) -> None:
    """Enable a schedule; slots count from now (those while disabled are not missed).

    \b
    Example:
      sp schedule enable daily-scan
    """
    from sp.commands import actions, schedules

    changed = schedules.enable(app.store(), name, by=actions.who())
    click.echo(f"schedule {name}: {'enabled' if changed else 'already enabled'}", err=True)


@schedule.command("disable")
@click.argument("name")
@click.option("--reason", default="", help="Recorded with the change.")
@pass_app
def schedule_disable(app: App, name: str, reason: str) -> None:
    """Disable a schedule: ticks pass it by until it is enabled again.

    \b
    Example:
      sp schedule disable daily-scan --reason "maintenance"
    """
    from sp.commands import actions, schedules

    changed = schedules.disable(app.store(), name, reason, by=actions.who())
    click.echo(f"schedule {name}: {'disabled' if changed else 'already disabled'}", err=True)


@schedule.command("export")
@click.option("--crontab", "as_crontab", is_flag=True,
              help="Print crontab lines in the seed's form on stdout.")
@click.option("--systemd", "systemd_dir", type=click.Path(file_okay=False),
              help="Write a .service and a .timer per schedule into DIR.")
@click.option("--tick", is_flag=True, help="With --crontab: the one `sp tick` line instead.")
@pass_app
def schedule_export(app: App, as_crontab: bool, systemd_dir: str | None, tick: bool) -> None:
    """Export the schedules for cron or systemd (the OS then runs the tasks directly).

    The lines and units run ``systemprompt-os action execute``; do not also let ``sp tick``
    fire the same schedules (use ``sp tick --no-schedules`` then).

    \b
    Example:
      sp schedule export --crontab
      sp schedule export --systemd /etc/systemd/system && systemctl daemon-reload
    """
    from sp.commands import schedule_export as export
    from sp.ledger.errors import UsageError

    if as_crontab == (systemd_dir is not None):
        raise UsageError("choose one: --crontab or --systemd DIR")
    if tick and not as_crontab:
        raise UsageError("--tick goes with --crontab")
    store = app.store(write=False)
    if as_crontab:
        sys.stdout.write(export.crontab_text(store, app.home.root, tick=tick))
        return
    assert systemd_dir is not None
    for path in export.write_systemd(store, app.home.root, Path(systemd_dir)):
        click.echo(str(path))


@schedule.command("install")
@click.option("--crontab", "as_crontab", is_flag=True, required=True,
              help="Install into the user's crontab (crontab -l / crontab -).")
@click.option("--tick", is_flag=True,
              help="Install the one `sp tick` line (sp drives the schedules) instead of a "
                   "line per schedule.")
@pass_app
def schedule_install(app: App, as_crontab: bool, tick: bool) -> None:
    """Install the schedules into the user's crontab, idempotently.

    sp's lines live in one marked block per home, replaced in place; the rest of the crontab
    is kept. Installing the same schedules again changes nothing.

    \b
    Example:
      sp schedule install --crontab
      sp schedule install --crontab --tick
    """
    from sp.commands import schedule_export as export

    changed = export.install_crontab(app.store(write=False), app.home.root, tick=tick)
    click.echo(f"crontab: {'installed' if changed else 'unchanged'}", err=True)


COMMANDS = [schedule]
