"""Commands about actions: submit, status, cancel, restart, audit, logs, checkpoint, progress."""

from __future__ import annotations

import os
import shlex
import sys
import time
from datetime import UTC, datetime
from typing import Any

import click

from sp.cli.main import App, echo_json, echo_table, format_option, pass_app

# Bounds of integer options: what SQLite (64-bit) and range() accept, and far beyond use.
MAX_ROWS = 1_000_000
MAX_STEP = 2**31 - 1


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.command()
@click.option("--name", help="A readable name (default: the command).")
@click.option("--agent", help="Agent this action belongs to.")
@click.option("--task", help="Task name within the agent.")
@click.option("--priority", type=int, default=0, show_default=True,
              help="Higher runs first; equal priorities run oldest first.")
@click.option("--timeout", help='Kill after this long, e.g. "30s", "2h".')
@click.option("--retries", type=int, default=0, show_default=True,
              help="Extra attempts after a failure (exponential backoff, max 5 min).")
@click.option("--backoff", type=click.Choice(["exponential", "linear"]),
              default="exponential", show_default=True)
@click.option("--after", "after", multiple=True, help="Run only after this action completed.")
@click.option("--delay", help='Do not start before this long from now, e.g. "10m".')
@click.option("--key", help="Idempotency key: a repeated submit returns the existing action.")
@click.option("--group", help="Group (e.g. a plan) whose rollback plan includes this action.")
@click.option("--compensate", help="Command that undoes this action (for its rollback plan).")
@click.option("--shell", "use_shell", is_flag=True, help="Run the command through /bin/sh -c.")
@click.option("--cwd", type=click.Path(exists=True, file_okay=False),
              help="Working directory (an existing directory; made absolute here).")
@click.option("--allow-unsandboxed", is_flag=True,
              help="Run even where the machine cannot enforce all of the agent's policy.")
@click.option("--agent-create", is_flag=True,
              help="Accept an --agent sp does not know yet (no agent file, policy or action):"
                   " it runs with no policy, and is known from then on.")
@click.option("--each", "each", type=click.Path(dir_okay=False, allow_dash=True),
              help="Submit one shell action per line of FILE ('-' for stdin).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_app
def submit(app: App, name: str | None, agent: str | None, task: str | None, priority: int,
           timeout: str | None, retries: int, backoff: str, after: tuple[str, ...],
           delay: str | None, key: str | None, group: str | None, compensate: str | None,
           use_shell: bool, cwd: str | None, allow_unsandboxed: bool, agent_create: bool,
           each: str | None,
           command: tuple[str, ...]) -> None:
    """Queue an action; print its id (one per line with --each).

    \b
    Example:
      sp submit --name nightly --retries 2 --timeout 1h -- ./backup.sh /data
      sp submit --after 3f2a --delay 10m -- make deploy
      seq 1 100 | sed 's/^/echo item /' | sp submit --each -
    """
    from sp.agents import names
    from sp.agents.durations import parse_duration_ms
    from sp.commands import actions
    from sp.ledger.errors import UsageError

    names.check_optional(name, "action name", "--name")
    names.check_optional(agent, "agent id", "--agent")
    names.check_optional(task, "task name", "--task")
    timeout_ms = None if timeout is None else parse_duration_ms(timeout, "--timeout")
    delay_ms = None if delay is None else parse_duration_ms(delay, "--delay")
    try:
        compensation = None if compensate is None else shlex.split(compensate)
    except ValueError as e:
        raise UsageError(f"--compensate: {e}") from None
    text = None if each is None else _each_text(each)  # bad input: refused before the ledger
    store = app.store()
    deps = [actions.resolve(store, a) for a in after]
    common: dict[str, Any] = dict(
        agent=agent, task=task, priority=priority, timeout_ms=timeout_ms, retries=retries,
        backoff=backoff, depends_on=deps, delay_ms=delay_ms, group=group,
        # Absolute: a worker runs elsewhere, and a relative cwd would mean its directory.
        compensation=compensation, cwd=None if cwd is None else os.path.abspath(cwd),
        allow_unsandboxed=allow_unsandboxed,
    )
    if text is not None:
        if command:
            raise UsageError("give either --each FILE or a command, not both")
        lines = [(i + 1, ln.strip()) for i, ln in enumerate(text.split("\n"))]
        lines = [(n, ln) for n, ln in lines if ln and not ln.startswith("#")]
        specs = [actions.SubmitSpec(command=[ln], shell=True, name=name, **common,
                                    key=None if key is None else f"{key}:{n}")
                 for n, ln in lines]
        wheres = [f"{each}:{n}" for n, _ in lines]
    else:
        if not command:
            raise UsageError("a command is required: sp submit [OPTIONS] -- CMD [ARGS...]")
        argv = [" ".join(command)] if use_shell else list(command)
        specs = [actions.SubmitSpec(command=argv, shell=use_shell, name=name, key=key, **common)]
        wheres = ["command"]
    ids = actions.submit(store, specs, by=actions.who(), wheres=wheres,
                         agent_create=agent_create)
    for action_id in ids:
        click.echo(action_id)


def _each_text(each: str) -> str:
    """The text of ``--each FILE`` (``-``: stdin), read as bounded configuration.

    :raises UsageError: not a regular file, too large, or not UTF-8; the file and byte named.
    """
    from sp.ledger import configfile
    from sp.ledger.errors import UsageError

    data = (configfile.read_stream(sys.stdin.buffer, "--each -") if each == "-"
            else configfile.read_config(each))
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise UsageError(f"--each {each}: not UTF-8 text (byte {e.start})") from None


@click.command()
@click.argument("action", required=False)
@click.option("--all", "everything", is_flag=True, help="List every action, not just recent.")
@click.option("--agent", help="Only this agent's actions.")
@click.option("--recent", type=click.IntRange(0, MAX_ROWS), default=10, show_default=True,
              help="How many finished actions to show besides the unfinished ones.")
@format_option()
@pass_app
def status(app: App, action: str | None, everything: bool, agent: str | None, recent: int,
           fmt: str) -> None:
    """Show actions: unfinished ones and the most recent finished, or one in detail.

    \b
    Example:
      sp status
      sp status 3f2a --format json
    """
    from sp.agents.durations import format_ms
    from sp.commands.actions import resolve
    from sp.projections import queries

    store = app.store(write=False)
    if action:
        row = queries.get_action(store, resolve(store, action))
        if fmt == "json":
            echo_json(row)
            return
        for k, v in row.items():
            click.echo(f"{k:17} {'-' if v is None else v}")
        _log_line(app, store, row["action_id"])
        return
    rows = queries.list_actions(store, everything=everything, recent=recent, agent=agent)
    counts = queries.counts(store)
    if fmt == "json":
        echo_json({"counts": counts, "actions": rows})
        return
    click.echo("  ".join(f"{k} {v}" for k, v in counts.items() if v) or "no actions yet")
    if rows:
        echo_table(
            ["id", "name", "state", "try", "agent", "submitted", "took", "exit", "info"],
            [(r["action_id"], r["name"], r["state"], f"{r['attempts']}/{r['max_attempts']}",
              r["agent"], _when(r["submitted_ms"]), format_ms(r["duration_ms"]),
              r["exit_code"], r["error"] or r["progress_msg"]) for r in rows],
        )


def _log_line(app: App, store: Any, action_id: str) -> None:
    """Where the action's log is, or that sp gc collected it."""
    path = app.home.log_path(action_id)
    if path.exists():
        click.echo(f"{'log':17} {path}")
        return
    from sp.security.retention import log_collected

    collected = log_collected(store, action_id)
    if collected is not None:
        click.echo(f"{'log':17} collected by sp gc at {_when(collected[1])} "
                   f"(maintenance.gc_completed at seq {collected[0]})")


@click.command()
@click.argument("action")
@click.option("--reason", default="", help="Why (recorded in the audit).")
@pass_app
def cancel(app: App, action: str, reason: str) -> None:
    """Cancel an action; a running one is stopped within a second.

    \b
    Example:
      sp cancel 3f2a --reason "wrong input"
    """
    from sp.commands import actions
    from sp.machines.states import ActionState

    store = app.store()
    action_id = actions.resolve(store, action)
    state = actions.cancel(store, action_id, reason, by=actions.who())
    if state is ActionState.EXECUTING:
        click.echo(f"{action_id}: cancel requested; its worker stops it", err=True)
    else:
        click.echo(f"{action_id}: {state.value}", err=True)


@click.command()
@click.argument("action", required=False)
@click.option("--all-failed", is_flag=True, help="Restart every failed action.")
@click.option("--from-step", type=click.IntRange(0, MAX_STEP),
              help="Resume at this step (0 is the first) instead of the checkpoint.")
@pass_app
def restart(app: App, action: str | None, all_failed: bool, from_step: int | None) -> None:
    """Queue a failed, cancelled, interrupted or completed action for one more attempt.

    For an action of a plan, its cancelled dependents are queued again with it, and a plan
    that had finished (failed, completed, cancelled) runs again (``plan.reopened``).

    \b
    Example:
      sp restart 3f2a --from-step 2
      sp restart --all-failed
    """
    from sp.commands import actions
    from sp.ledger.errors import UsageError

    if bool(action) == all_failed:
        raise UsageError("give an action id or --all-failed (not both)")
    store = app.store()
    ids = actions.failed_ids(store) if all_failed else [actions.resolve(store, action or "")]
    for action_id in ids:  # every one checked before any is restarted
        actions.check_from_step(store, action_id, from_step)
    for action_id in ids:
        state, requeued = actions.restart_with(store, action_id, from_step, by=actions.who())
        click.echo(f"{action_id}: {state.value}", err=True)
        for other in requeued:
            click.echo(f"{other}: {state.value} (waited on {action_id})", err=True)
    if all_failed:
        click.echo(f"restarted {len(ids)} failed action(s)", err=True)


@click.command()
@click.argument("action_ids", nargs=-1, required=True)
@click.option("--timeout", help='Give up after this long (exit 75), e.g. "10m".')
@format_option()
@pass_app
def wait(app: App, action_ids: tuple[str, ...], timeout: str | None, fmt: str) -> None:
    """Block until the actions finish; exit 0 if all completed, 1 otherwise.

    \b
    Example:
      sp wait $(sp submit -- make build) && echo built
    """
    from sp.agents.durations import parse_duration_ms
    from sp.commands.actions import resolve
    from sp.ledger.errors import WaitTimeoutError
    from sp.machines.states import FINAL, SATISFIED, ActionState
    from sp.projections import queries

    store = app.store(write=False)
    ids = [resolve(store, a) for a in action_ids]
    timeout_s = None if timeout is None else parse_duration_ms(timeout, "--timeout") / 1000
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    delay = 0.05
    while True:
        rows = [queries.get_action(store, a) for a in ids]
        if all(ActionState(r["state"]) in FINAL for r in rows):
            break
        if deadline is not None and timeout_s is not None and time.monotonic() > deadline:
            pending = [r["action_id"] for r in rows if ActionState(r["state"]) not in FINAL]
            raise WaitTimeoutError(pending, timeout_s)
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    ok = all(ActionState(r["state"]) in SATISFIED for r in rows)
    if fmt == "json":
        echo_json([{"action_id": r["action_id"], "state": r["state"],
                    "exit_code": r["exit_code"]} for r in rows])
    else:
        for r in rows:
            click.echo(f"{r['action_id']}  {r['state']}  exit {r['exit_code']}")
    sys.exit(0 if ok else 1)


@click.command()
@click.argument("action")
@format_option()
@pass_app
def audit(app: App, action: str, fmt: str) -> None:
    """Every event of an action, in order: time, event, from-state, to-state, details.

    Any other stream is shown the same way by its name: ``policy:<agent>`` (policy changes),
    ``agent:<id>``, ``plan:<id>``, ``schedule:<name>``.

    \b
    Example:
      sp audit 3f2a
      sp audit 3f2a --format json | jq '.events[].event'
      sp audit policy:research-001
    """
    import msgspec

    from sp.commands.actions import resolve
    from sp.commands.retention import ActionArchivedError, audit_archived
    from sp.projections import queries

    store = app.store(write=False)
    archived_to = None
    if ":" in action:
        action_id = action
        entries = queries.audit_stream(store, action)
    else:
        try:
            action_id = resolve(store, action)
            entries = queries.audit(store, action_id)
        except ActionArchivedError as e:  # moved by sp archive: read it from there
            action_id, archived_to = e.action_id, e.file
            entries = audit_archived(store, e)
    if fmt == "json":
        echo_json({"action_id": action_id, "events": entries}
                  | ({"archived_to": archived_to} if archived_to else {}))
        return
    if archived_to:
        click.echo(f"{action_id} was archived to {archived_to}; its events are read from there",
                   err=True)
    echo_table(
        ["seq", "time", "event", "from", "to", "by", "details"],
        [(e.seq, _when(e.ts), e.event, e.from_state, e.to_state, e.by,
          " ".join(f"{k}={msgspec.json.encode(v).decode()}" for k, v in e.details.items()
                   if k != "result") or "") for e in entries],
        wide=("details",),
    )


@click.command()
@click.argument("action")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the action finishes.")
@pass_app
def logs(app: App, action: str, follow: bool) -> None:
    """Print an action's output (every attempt, each headed by a marker line).

    \b
    Example:
      sp logs 3f2a -f
    """
    from sp.commands.actions import resolve
    from sp.machines.states import FINAL, ActionState
    from sp.projections import queries

    store = app.store(write=False)
    action_id = resolve(store, action)
    path = app.home.log_path(action_id)
    if not path.exists():
        from sp.security.retention import log_collected

        collected = log_collected(store, action_id)
        if collected is not None:
            click.echo(f"{action_id}: the log was collected by sp gc at {_when(collected[1])}"
                       f" (maintenance.gc_completed at seq {collected[0]})", err=True)
            return
    offset = 0
    while True:
        if path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
                offset += len(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        if not follow:
            return
        state = ActionState(queries.get_action(store, action_id)["state"])
        if state in FINAL:
            follow = False
            continue
        time.sleep(0.2)


def _current_action(action: str | None) -> str:
    from sp.ledger.errors import UsageError

    action = action or os.environ.get("SP_ACTION_ID")
    if not action:
        raise UsageError("no action: pass --action or run inside an action (SP_ACTION_ID)")
    return action


@click.command()
@click.argument("data", default="null")
@click.option("--step", type=click.IntRange(0, MAX_STEP),
              help="The step just finished (a resume starts after it).")
@click.option("--action", help="Action id (default: $SP_ACTION_ID, set for running actions).")
@pass_app
def checkpoint(app: App, data: str, step: int | None, action: str | None) -> None:
    """Record a checkpoint of the running action (JSON data, e.g. where it got to).

    A resumed attempt receives the last checkpoint in $SP_CHECKPOINT.

    \b
    Example:
      sp checkpoint --step 2 '{"cursor": 4180}'
    """
    from sp.commands import actions
    from sp.ledger import jsoninput
    from sp.ledger.errors import UsageError

    try:
        value = jsoninput.decode(data)
    except UsageError as e:
        raise UsageError(f"checkpoint data: {e}") from None
    if _brokered(action):  # a sandboxed action: its worker records it
        from sp.runner import api

        click.echo(str(api.checkpoint(value, step)))
        return
    store = app.store()
    action_id = actions.resolve(store, _current_action(action))
    seq = actions.checkpoint(store, action_id, value, step, by=actions.who("action"))
    click.echo(str(seq))


@click.command()
@click.argument("percent", type=float)
@click.argument("message", default="")
@click.option("--action", help="Action id (default: $SP_ACTION_ID).")
@pass_app
def progress(app: App, percent: float, message: str, action: str | None) -> None:
    """Report the running action's progress (0-100) and a short message.

    \b
    Example:
      sp progress 40 "classified 120 of 300 papers"
    """
    from sp.commands import actions

    if _brokered(action):
        from sp.runner import api

        api.progress(percent, message)
        return
    store = app.store()
    action_id = actions.resolve(store, _current_action(action))
    actions.progress(store, action_id, percent, message, by=actions.who("action"))


def _brokered(action: str | None) -> bool:
    """Inside a sandboxed action, about itself: the ledger is out of reach, the worker is not."""
    import os

    from sp.runner import broker

    return broker.active() and action in (None, os.environ.get("SP_ACTION_ID"))


COMMANDS = [submit, status, cancel, restart, wait, audit, logs, checkpoint, progress]
