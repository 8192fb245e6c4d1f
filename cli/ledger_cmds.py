"""Commands about the ledger itself: init, replay, verify, sql."""

from __future__ import annotations

import csv
import sys

import click

from sp.cli.main import App, echo_json, echo_table, format_option, pass_app


@click.command()
@click.option("--force", is_flag=True,
              help="Start a new ledger where the home's is gone, empty or another one (the old "
                   "files are kept aside; recorded as ledger.reinitialised).")
@pass_app
def init(app: App, force: bool) -> None:
    """Create the home and its ledger (every other command also does on first use).

    A home remembers its ledger (ledger.id): if ledger.db is later deleted, emptied or
    replaced, every command refuses until it is restored, or until sp init --force.

    \b
    Example:
      sp --home /srv/sp init
      sp --home /srv/sp init --force
    """
    if force:
        from sp.commands.ledger_marker import reinitialise

        click.echo(reinitialise(app.home))
    app.new_home_expected = True
    store = app.store()
    seq, _ = store.head()
    click.echo(f"home {app.home.root}: ledger at {app.home.ledger_path} ({seq} events)")


@click.command()
@click.option("--check", is_flag=True,
              help="Rebuild into scratch tables and compare with the live ones; change nothing.")
@click.option("--report", is_flag=True,
              help="List every recovery decision with its evidence (also when there is none).")
@click.option("--force", is_flag=True,
              help="Rebuild even from a log that sp verify flags (damaged or tampered with).")
@format_option()
@pass_app
def replay(app: App, check: bool, report: bool, force: bool, fmt: str) -> None:
    """Rebuild every projection from the event log, then recover orphaned actions.

    Actions left executing by an owner that is gone are put back in the queue (to resume
    from their last checkpoint) or failed when no attempts are left; each gets an event.
    Running it twice in a row appends nothing the second time. A log that sp verify flags
    is refused (exit 1, the first bad seq named), nothing changed, unless --force.

    \b
    Example:
      sp replay
      sp replay --check
    """
    from sp.commands import replay as replaying

    store = app.store()
    if check:
        count, diff = replaying.check(store, force)
        if fmt == "json":
            echo_json({"events": count, "identical": diff is None, "difference": diff})
        elif diff is None:
            click.echo(f"ok: rebuilt {count} events; projections identical")
        else:
            click.echo(f"differs: {diff.table} {diff.key}: {diff.detail}")
        sys.exit(0 if diff is None else 1)
    count, (recovered, cleanup) = replaying.replay(store, force)
    from sp.runner import reaper

    reaper.clean_up(cleanup)
    if fmt == "json":
        echo_json({"events": count, "recovered": recovered})
        return
    click.echo(f"rebuilt projections from {count} events")
    for r in recovered:
        click.echo(f"recovered {r.action_id}: {r.outcome} ({r.reason})")
    if report:
        click.echo(f"recovery: {len(recovered)} action(s) found executing without a live owner"
                   + ("" if recovered else "; nothing to do"))


@click.command()
@click.option("--archive", "archives", multiple=True, type=click.Path(dir_okay=False),
              help="An archive file of sp archive to re-check (default: the recorded paths).")
@click.option("--full", is_flag=True,
              help="SQLite's integrity_check (every index against its table) instead of "
                   "quick_check: slower.")
@format_option()
@pass_app
def verify(app: App, archives: tuple[str, ...], full: bool, fmt: str) -> None:
    """Walk the hash chain: prove no event was edited, deleted or reordered.

    Prints ``ok: N events`` and exits 0, or names the first bad seq and exits 1. Seqs that
    sp archive moved out are accepted only as ledger.archived accounts for them; their rows
    are re-checked, linked into the chain, when the archive file is reachable. Then SQLite
    checks the file itself (quick_check; --full: integrity_check): each damaged table or
    index is one more ``bad:`` line.

    \b
    Example:
      sp verify
      sp verify --full
      sp verify --archive /srv/sp/archive-2025.db
    """
    from sp.commands.ledger_marker import verify_home

    store = app.store(write=False, projections=False)
    result = verify_home(app.home, store, archives, full)
    if fmt == "json":
        echo_json(result)
    elif result.ok and result.archived:
        unreachable = (f"; not reachable, links checked only: {', '.join(result.unreachable)}"
                       if result.unreachable else "")
        click.echo(f"ok: {result.events} events, {result.archived} archived "
                   f"({result.archive_checked} re-checked from the archive{unreachable})")
    elif result.ok:
        click.echo(f"ok: {result.events} events")
    else:
        if result.reason:
            where = f"seq {result.bad_seq}: " if result.bad_seq is not None else ""
            click.echo(f"bad: {where}{result.reason}")
        for line in result.damage:
            click.echo(f"bad: {result.sqlite_check}: {line}")
    sys.exit(0 if result.ok else 1)


@click.command()
@click.argument("query")
@format_option("table", "json", "csv")
@pass_app
def sql(app: App, query: str, fmt: str) -> None:
    """Run a read-only SQL query over the ledger and its projections.

    Writes are refused: the file is opened read-only and an authorizer denies every change.
    Views: v_events, v_actions, v_metrics, v_failures, v_retries, v_rollback_plans.

    \b
    Example:
      sp sql "SELECT state, count(*) FROM actions GROUP BY state"
      sp sql "SELECT * FROM v_metrics WHERE dim = 'type'" --format json
    """
    from sp.ledger.readonly import run_readonly

    app.store(write=False)  # create / migrate on first use
    cols, rows = run_readonly(app.home.ledger_path, query)
    if fmt == "json":
        echo_json([dict(zip(cols, r, strict=True)) for r in rows])
    elif fmt == "csv":
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(cols)
        out.writerows(rows)
    else:
        echo_table(cols, rows)


COMMANDS = [init, replay, verify, sql]
