"""``sp worker``: run queued actions."""

from __future__ import annotations

import click

from .main import App, pass_app


@click.command()
@click.option("--until-idle", is_flag=True, help="Exit when no action is ready to run.")
@pass_app
def worker(app: App, until_idle: bool) -> None:
    """Claim ready actions and run them, one at a time, in the foreground.

    SIGTERM or Ctrl-C stops claiming and hands a running action back to the queue
    (recorded; it resumes from its last checkpoint).

    \b
    Example:
      sp worker --until-idle
    """
    from runner.worker import Worker

    store = app.store()
    summary = Worker(store, app.home).run(until_idle=until_idle)
    click.echo(
        f"ran {summary.ran}: {summary.completed} completed, {summary.failed} failed, "
        f"{summary.retrying} retrying, {summary.cancelled} cancelled, "
        f"{summary.interrupted} interrupted",
        err=True,
    )


COMMANDS = [worker]
