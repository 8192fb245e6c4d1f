"""Retention commands: gc (files past their retention) and archive (finished streams)."""

from __future__ import annotations

import click

from sp.cli.main import App, echo_json, echo_table, format_option, pass_app


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@click.command()
@click.option("--dry-run", is_flag=True, help="List what would go; remove and record nothing.")
@click.option("--temp", help="Keep temporary folders this long (overrides agents; default 24h).")
@click.option("--completed", help="Keep completed actions' logs and artefacts this long "
                                  "(overrides agents; default 7d).")
@click.option("--failed", help="Keep other finished actions' logs and artefacts this long "
                               "(overrides agents; default 30d).")
@format_option()
@pass_app
def gc(app: App, dry_run: bool, temp: str | None, completed: str | None, failed: str | None,
       fmt: str) -> None:
    """Remove logs, temporary folders and rollback artefacts past their retention.

    Ages count from when an action finished. Rules: temp files 24h, completed actions 7d,
    others 30d; an agent's storage.cleanup overrides them for its actions, the flags override
    both. Nothing of an unfinished action is touched, nor an artefact a rollback may still
    need. Each run that removes something records maintenance.gc_completed first.

    \b
    Example:
      sp gc --dry-run
      sp gc --completed 3d --format json
    """
    from sp.commands.actions import who
    from sp.commands.retention import gc as collect

    store = app.store()
    report = collect(store, app.home, temp=temp, completed=completed, failed=failed,
                     dry_run=dry_run, by=who())
    if fmt == "json":
        echo_json(report)
        return
    if report.removed:
        echo_table(["kind", "path", "size", "action", "why"],
                   [(r.kind, r.path, _size(r.bytes), r.action_id, r.reason)
                    for r in report.removed], wide=("why",))
    verb = "would remove" if dry_run else "removed"
    tail = f" (maintenance.gc_completed at seq {report.seq})" if report.seq else ""
    click.echo(f"{verb} {report.files} file(s), {_size(report.bytes_freed)}, of "
               f"{len(report.actions)} action(s){tail}", err=True)


@click.command()
@click.option("--before", "before", required=True,
              help="ISO date or datetime (UTC unless given), or a duration back from now: 30d.")
@click.argument("file", type=click.Path(dir_okay=False))
@format_option()
@pass_app
def archive(app: App, before: str, file: str, fmt: str) -> None:
    """Move finished streams whose last event is before DATE into an archive FILE.

    Only whole finished actions and plans move (with everything tied to them); FILE is an
    SQLite database with the ledger's events schema, appended to when it exists. The move is
    recorded as ledger.archived, so sp verify still checks the chain (and re-checks the
    archived rows when FILE is reachable); sp audit ID still reads an archived action.

    \b
    Example:
      sp archive --before 2026-01-01 /srv/sp/archive-2025.db
      sp archive --before 90d archive.db --format json
    """
    from sp.commands.actions import who
    from sp.commands.retention import archive as move

    store = app.store()
    report = move(store, before, file, by=who())
    if fmt == "json":
        echo_json(report)
        return
    if report.seq is None:
        click.echo(f"nothing to archive before --before {before} "
                   f"({report.held} finished stream(s) held by unfinished ones)", err=True)
        return
    click.echo(f"archived {report.events} events of {report.actions} action(s) and "
               f"{report.plans} plan(s) to {report.file} (ledger.archived at seq {report.seq}"
               f"; {report.held} held by unfinished ones)", err=True)


COMMANDS = [gc, archive]
