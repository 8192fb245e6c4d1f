"""``sp trigger``: apply, list and show event-driven triggers; ``sp daemon`` runs them."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from sp.cli.main import App, echo_json, echo_table, format_option, pass_app, warn


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@click.group()
def trigger() -> None:
    """Event-driven triggers: files, webhooks, serial devices, conditions, continuous actions.

    A trigger file in the seed's shape (triggers: filesystem / network / hardware,
    conditions:, continuous:) is applied as an audited event; ``sp daemon`` runs it. Every
    fire is recorded (trigger.fired) in the transaction that submits its action.

    \b
    Example:
      sp trigger apply triggers.yaml
      sp trigger list
      sp daemon
    """


@trigger.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@pass_app
def trigger_apply(app: App, file: str) -> None:
    """Validate a trigger file and record it; it replaces the previous one.

    Every named agent and task must exist (sp agent apply first) and every webhook needs a
    secret; any problem is one line naming the file and path, exit 2, nothing written. An
    unchanged file records nothing. A running daemon picks the new file up on SIGHUP.

    \b
    Example:
      sp trigger apply /etc/sp/triggers.yaml
    """
    from sp.commands import actions, triggers

    doc, changed, warnings = triggers.apply(app.store(), file, by=actions.who())
    for w in warnings:
        warn(f"warning: {w}")
    n = len(triggers.entries(doc))
    warn(f"triggers: {n} {'applied' if changed else 'unchanged'}")


@trigger.command("list")
@format_option()
@pass_app
def trigger_list(app: App, fmt: str) -> None:
    """List the applied triggers: kind, name, what each watches, its action, its fires.

    \b
    Example:
      sp trigger list --format json
    """
    from sp.commands import triggers

    rows = triggers.listing(app.store(write=False))
    if fmt == "json":
        echo_json(rows)
        return
    echo_table(["kind", "name", "watches", "action", "fires", "last fire", "last action"],
               [(r["kind"], r["name"], r["watches"], r["action"], r["fires"],
                 _iso(r["last_fire_ms"]), r["last_action_id"]) for r in rows])


@trigger.command("show")
@click.argument("name")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True,
              help="How many of the latest fires to list.")
@format_option()
@pass_app
def trigger_show(app: App, name: str, limit: int, fmt: str) -> None:
    """Show one trigger and its latest fires (newest first) with their actions' states.

    \b
    Example:
      sp trigger show fs:/data/incoming
      sp trigger show github --format json
    """
    from sp.commands import triggers

    doc = triggers.show(app.store(write=False), name, limit)
    if fmt == "json":
        echo_json(doc)
        return
    d = doc["definition"]
    if d:
        click.echo(f"{d['kind']} {doc['name']}: {d['watches']} -> {d['action']}")
    else:
        click.echo(f"{doc['name']}: not in the applied trigger file")
    click.echo(f"fires: {doc['fires']}")
    echo_table(["seq", "time", "action", "state", "detail"],
               [(r["seq"], _iso(r["ts"]), r["action_id"], r["state"], r["detail"])
                for r in doc["recent"]], wide=("detail",))


@click.command()
@click.option("--config", "config", type=click.Path(dir_okay=False),
              help="Apply this trigger file first (as sp trigger apply), then run it.")
@click.option("-c", "--concurrency", type=click.IntRange(0, 256), default=1,
              show_default=True,
              help="Actions the built-in worker runs at once; 0 runs the triggers only "
                   "(workers elsewhere run the actions).")
@click.option("--grace", default="30s", show_default=True,
              help="On SIGTERM/SIGINT, how long running actions may finish before they are "
                   "interrupted (recorded, resumable).")
@click.option("--home", "home", type=click.Path(file_okay=False),
              help="Home folder (same as sp --home).")
@pass_app
def daemon(app: App, config: str | None, concurrency: int, grace: str,
           home: str | None) -> None:
    """Run the applied triggers (files, webhooks, serial, conditions, continuous) and a
    worker, until SIGTERM or SIGINT.

    Each trigger source runs in a supervised thread: one that fails is logged here (stderr)
    and restarted after a backoff. SIGTERM stops the sources at once and lets running actions
    finish for the grace period; exit 0. SIGHUP reloads the applied trigger file.

    \b
    Example:
      sp daemon --config triggers.yaml
      sp daemon --concurrency 4 --grace 1m
      sp daemon --concurrency 0      # triggers only; sp worker runs the actions
    """
    from sp.agents.durations import parse_duration_ms
    from sp.commands import actions, triggers
    from sp.commands.home import Home
    from sp.triggers.daemon import Daemon

    if home is not None:
        app.home = Home(home)
    grace_s = parse_duration_ms(grace, "--grace") / 1000
    store = app.store()
    if config is not None:
        doc, changed, warnings = triggers.apply(store, config, by=actions.who("daemon"),
                                                require_env=True)
        for w in warnings:
            warn(f"warning: {w}")
        warn(f"triggers: {len(triggers.entries(doc))} "
             f"{'applied' if changed else 'unchanged'}")
    store.close()
    raise SystemExit(Daemon(app.home, concurrency=concurrency, grace_s=grace_s, log=warn).run())


COMMANDS = [trigger, daemon]
