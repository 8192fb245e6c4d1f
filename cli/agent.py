"""``sp agent``: apply, list and show agent configurations; ``sp action execute|run``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from sp.cli.main import App, echo_json, echo_table, format_option, pass_app


@click.group()
def agent() -> None:
    """Agents and their tasks, configured by YAML or TOML files in the seed's shape.

    \b
    Example:
      sp agent apply research-001.yaml
      sp agent list
    """


@agent.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@pass_app
def agent_apply(app: App, file: str) -> None:
    """Validate an agent file and record it (an audited event); unchanged files record nothing.

    \b
    Example:
      sp agent apply agents/research-001.yaml
    """
    from sp.commands import actions, agents

    agent_id, changed = agents.apply(app.store(), file, by=actions.who())
    click.echo(agent_id)
    click.echo(f"agent {agent_id}: {'applied' if changed else 'unchanged'}", err=True)


@agent.command("list")
@format_option()
@pass_app
def agent_list(app: App, fmt: str) -> None:
    """List applied agents and their tasks.

    \b
    Example:
      sp agent list --format json
    """
    from sp.commands import agents

    rows = agents.listing(app.store(write=False))
    if fmt == "json":
        echo_json(rows)
        return
    echo_table(["agent", "version", "tasks", "source"],
               [(r["agent_id"], r["version"], ", ".join(r["tasks"]), r["source"]) for r in rows],
               wide=("tasks",))


@agent.command("show")
@click.argument("agent_id")
@format_option("yaml", "json")
@pass_app
def agent_show(app: App, agent_id: str, fmt: str) -> None:
    """Show an agent's applied configuration, as written.

    \b
    Example:
      sp agent show research-001
    """
    import msgspec
    import yaml

    from sp.commands import agents
    from sp.projections.queries import agent_config_json

    store = app.store(write=False)
    agents.get(store, agent_id)  # validates and raises for an unknown agent
    config = agent_config_json(store, agent_id)
    assert config is not None
    doc = msgspec.json.decode(config)
    if fmt == "json":
        echo_json(doc)
    else:
        click.echo(yaml.safe_dump(doc, sort_keys=False).rstrip())


@agent.command("policy")
@click.argument("agent_id")
@click.option("--set", "policy_file", type=click.Path(dir_okay=False),
              help="Record this policy file (the seed's capabilities/storage shape).")
@click.option("--clear", is_flag=True, help="Remove the agent's policy (an audited event).")
@format_option()
@pass_app
def agent_policy(app: App, agent_id: str, policy_file: str | None, clear: bool,
                 fmt: str) -> None:
    """Show an agent's effective capability policy and quotas, and what this machine enforces.

    With --set, record a policy file first (nothing is recorded when it is unchanged).

    \b
    Example:
      sp agent policy research-001
      sp agent policy research-001 --set policies/research.yaml
    """
    from pathlib import Path

    from sp.commands import actions, policies
    from sp.ledger.errors import UsageError

    if policy_file and clear:
        raise UsageError("--set and --clear: choose one")
    if policy_file or clear:
        store = app.store()
        policy = None if clear else policies.decode_file(policy_file or "", agent_id)
        source = "cleared" if clear else f"policy file {Path(policy_file or '').resolve()}"
        changed = policies.set_policy(store, agent_id, policy, source, by=actions.who())
        click.echo(f"agent {agent_id}: policy {'recorded' if changed else 'unchanged'}",
                   err=True)
    info = policies.describe(app.store(write=False), agent_id)
    if fmt == "json":
        echo_json(info)
        return
    if info.get("policy", True) is None:
        click.echo(f"{agent_id}: {info['note']}")
        return
    click.echo(f"agent {agent_id}: policy v{info['version']} from {info['source']}"
               f" (unlisted categories: {info['default']})")
    rows = []
    for cat, rule in info["categories"].items():
        allowed = rule["allowed"]
        rows.append((cat, allowed if isinstance(allowed, str) else ", ".join(allowed) or "none",
                     ", ".join(rule["denied"]) or "-"))
    echo_table(("capability", "allowed", "denied"), rows, wide=("denied",))
    if "unix_sockets" in info:
        click.echo(f"unix sockets: {info['unix_sockets']}")
    for name, value in info["quotas"].items():
        click.echo(f"quota {name}: {value} bytes")
    enforcement = info.get("enforcement") or {}
    for line in enforcement.get("missing") or []:
        click.echo(f"not enforceable here: {line}")
    if enforcement.get("enforced"):
        click.echo("enforced here: " + _enforcement_line(enforcement["enforced"]))


def _enforcement_line(e: dict[str, Any]) -> str:
    """One readable line of what the sandbox applies here (``--format json`` has it all)."""
    parts = [f"Landlock ABI {e.get('landlock_abi', 0)}"] if e.get("fs") or e.get("tcp") else []
    if e.get("namespaces"):
        parts.append("namespaces " + ",".join(e["namespaces"]))
    tcp = e.get("tcp") or {}
    if tcp.get("connect") is not None:
        parts.append("tcp connect only " + ",".join(map(str, tcp["connect"])))
    if tcp.get("deny"):
        parts.append("tcp deny " + ",".join(map(str, tcp["deny"])))
    if e.get("unix_sockets"):
        parts.append("unix sockets refused")
    if e.get("exec_mounts"):
        parts.append("only allowed programs executable (noexec mounts)")
    if e.get("memfd_exec"):
        parts.append("no memfd execution")
    if e.get("no_new_privs"):
        parts.append("no_new_privs")
    if e.get("dropped_capabilities"):
        parts.append(f"{len(e['dropped_capabilities'])} root capabilities dropped")
    parts.append("denials from " + (e.get("denial_log") or "nowhere (no kernel audit)"))
    return "; ".join(parts)


@click.group()
def action() -> None:
    """Run an agent's task (the seed's cron lines), and watch actions.

    \b
    Example:
      sp action execute --agent research-001 --task daily_arxiv_scan --checkpoint-enabled
    """


def _execute(app: App, agent_id: str, task: str, timeout: str | None, checkpoint_enabled: bool,
             notify_on_completion: bool, detach: bool, allow_unsandboxed: bool = False) -> None:
    from sp.agents import names
    from sp.agents.durations import parse_duration_ms
    from sp.commands import actions, agents, execution
    from sp.machines.states import ActionState
    from sp.runner.foreground import run_claimed

    names.check(agent_id, "agent id", "--agent")
    names.check(task, "task name", "--task")
    timeout_ms = None if timeout is None else parse_duration_ms(timeout, "--timeout")
    store = app.store()
    config = agents.get(store, agent_id)
    spec = agents.task_spec(config, task, timeout_ms=timeout_ms,
                            checkpoint_enabled=checkpoint_enabled)
    if allow_unsandboxed:
        import msgspec

        spec = msgspec.structs.replace(spec, allow_unsandboxed=True)
    if spec.cwd is not None and not os.path.isdir(spec.cwd):  # refused now, not at spawn
        from sp.ledger.errors import UsageError

        raise UsageError(f"agent {agent_id}, task {task}: cwd {spec.cwd}: no such directory")
    by = actions.who()
    if detach:
        (action_id,) = actions.submit(store, [spec], by=by, wheres=["task"])
        click.echo(action_id)
        return
    owner = f"foreground:{by}"
    claim = execution.submit_and_claim(store, spec, owner, by)
    click.echo(claim.action_id)
    state = run_claimed(store, app.home, claim)
    if notify_on_completion:
        from sp.projections import queries

        row = queries.get_action(store, claim.action_id)
        click.echo(f"sp: {agent_id}/{task} {state.value} ({claim.action_id}, attempts "
                   f"{row['attempts']}, exit {row['exit_code']})", err=True)
    sys.exit(0 if state in (ActionState.COMPLETED, ActionState.SKIPPED) else 1)


_EXECUTE_OPTIONS = [
    click.option("--agent", "agent_id", required=True, help="The agent (applied first)."),
    click.option("--task", required=True, help="The task of that agent."),
    click.option("--timeout", help='Overrides the task\'s timeout, e.g. "3600" or "2h".'),
    click.option("--checkpoint-enabled", is_flag=True,
                 help="Checkpoint each finished step, so a resumed run skips it."),
    click.option("--notify-on-completion", is_flag=True,
                 help="Report the outcome on stderr (and through the task's notify: settings)."),
    click.option("--detach", is_flag=True,
                 help="Queue the task for a worker and return at once, printing its id."),
    click.option("--allow-unsandboxed", is_flag=True,
                 help="Run even where the machine cannot enforce all of the agent's policy"
                 " (the started event records what was and was not enforced)."),
]


F = TypeVar("F", bound=Callable[..., Any])


def _with_options(f: F) -> F:
    for option in reversed(_EXECUTE_OPTIONS):
        f = option(f)
    return f


@action.command("execute")
@_with_options
@pass_app
def action_execute(app: App, agent_id: str, task: str, timeout: str | None,
                   checkpoint_enabled: bool, notify_on_completion: bool, detach: bool,
                   allow_unsandboxed: bool) -> None:
    """Run an agent's task in the foreground, record everything, exit with its outcome.

    Prints the action id first. Exit 0 when the task completed, 1 when it failed.

    \b
    Example:
      0 9 * * * systemprompt-os action execute --agent research-001 \\
          --task daily_arxiv_scan --checkpoint-enabled --notify-on-completion
    """
    _execute(app, agent_id, task, timeout, checkpoint_enabled, notify_on_completion, detach,
             allow_unsandboxed)


@action.command("run")
@_with_options
@pass_app
def action_run(app: App, agent_id: str, task: str, timeout: str | None,
               checkpoint_enabled: bool, notify_on_completion: bool, detach: bool,
               allow_unsandboxed: bool) -> None:
    """Same as ``sp action execute`` (the seed uses both spellings).

    \b
    Example:
      */5 * * * * systemprompt-os action run --agent monitor-001 --task health_check
    """
    _execute(app, agent_id, task, timeout, checkpoint_enabled, notify_on_completion, detach,
             allow_unsandboxed)


COMMANDS = [agent, action]
