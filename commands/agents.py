"""Agents: apply a configuration file (an audited event), and turn a task into an action."""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path
from typing import Any, Protocol

import msgspec

from sp.agents.config import AgentConfig, Step, Task, decode_agent, load_document
from sp.agents.units import enc_hook
from sp.commands.actions import SubmitSpec
from sp.ledger import events as ev
from sp.ledger.errors import UsageError
from sp.ledger.interface import Ledger


def stream_of(agent_id: str) -> str:
    return f"agent:{agent_id}"


def apply(store: Ledger, path: str | Path, by: str = "") -> tuple[str, bool]:
    """Validate an agent file and record it; returns (agent id, changed).

    Applying the same document again records nothing.

    :raises UsageError: unreadable, malformed, or invalid (the message names the path).
    """
    raw = load_document(path)
    agent = decode_agent(raw, str(path))
    _check_limits(agent, str(path))
    policy = None
    if agent.capabilities is not None or agent.storage is not None:
        from sp.security import policy as pol

        policy = pol.decode(raw.get("capabilities"), raw.get("storage"),
                            f"{path}: $.capabilities", f"{path}: $.storage")
    document = msgspec.to_builtins(raw, enc_hook=_plain)
    digest = hashlib.sha256(msgspec.json.encode(document)).hexdigest()
    stream = stream_of(agent.id)
    with store.transaction() as tx:
        row = tx.query_one("SELECT sha256 FROM agents WHERE agent_id = ?", (agent.id,))
        if row is not None and row[0] == digest:
            return agent.id, False
        version = tx.stream_version(stream)
        tx.append(stream, [ev.AgentConfigured(
            by=by, agent_id=agent.id, config=document, source=str(Path(path).resolve()),
            sha256=digest,
        )], version)
        # A task's `schedule:` becomes the schedule <agent>/<task>, in the same transaction.
        from sp.commands.schedules import sync_agent_in

        sync_agent_in(tx, agent, by, str(path))
        if policy is not None:
            from sp.commands.policies import set_in

            set_in(tx, agent.id, policy, f"agent file {Path(path).resolve()}", by)
    return agent.id, True


def _check_limits(agent: AgentConfig, where: str) -> None:
    """Values no kernel accepts (nice 40, io_weight 0) are refused before anything is written."""
    from sp.host import limits

    if agent.resources is not None:
        _check_one(limits, agent.resources, f"{where}: $.resources")
    for name, task in agent.all_tasks().items():
        if task.resources is not None:
            section = "actions" if name in agent.actions else "tasks"
            _check_one(limits, task.resources, f"{where}: $.{section}.{name}.resources")


def _check_one(limits: Any, resources: Any, where: str) -> None:
    try:
        limits.check(resources)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None


def _plain(obj: Any) -> Any:
    """TOML dates and the like become text in the recorded document."""
    return str(obj)


def get(store: Ledger, agent_id: str) -> AgentConfig:
    """The applied configuration of an agent.

    :raises UsageError: no such agent.
    """
    row = store.query_one("SELECT config FROM agents WHERE agent_id = ?", (agent_id,))
    if row is None:
        raise UsageError(f"no agent {agent_id!r}: apply its file first (sp agent apply FILE)")
    return decode_agent(msgspec.json.decode(row[0]), f"agent {agent_id}")


class _Query(Protocol):
    def query(self, sql: str, params: Any = ...) -> Any: ...
    def query_one(self, sql: str, params: Any = ...) -> Any: ...


def is_known(q: _Query, agent_id: str) -> bool:
    """Whether the ledger knows the agent: an agent file applied, a policy recorded, or an
    action of it recorded (the first one submitted with ``--agent-create``, or before sp
    refused unknown agents)."""
    return any(q.query_one(sql, (agent_id,)) is not None for sql in (
        "SELECT 1 FROM agents WHERE agent_id = ?",
        "SELECT 1 FROM policies WHERE agent_id = ?",
        "SELECT 1 FROM actions WHERE agent = ? LIMIT 1",  # index actions_agent
    ))


def require_known(q: _Query, agent_id: str, where: str) -> None:
    """Refuse an agent the ledger does not know: a typo (``research-01`` for ``research_01``)
    would otherwise run with no policy at all. The message suggests the closest known one.

    :raises UsageError: unknown, with a "did you mean" hint and how to create it.
    """
    if is_known(q, agent_id):
        return
    import difflib

    names = [str(r[0]) for r in q.query(
        "SELECT agent_id FROM agents UNION SELECT agent_id FROM policies"
        " UNION SELECT DISTINCT agent FROM actions WHERE agent IS NOT NULL")]
    close = difflib.get_close_matches(agent_id, names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    raise UsageError(f"{where}: unknown agent {agent_id!r} (no agent file, policy or action "
                     f"of it): {hint}sp agent apply FILE registers one; --agent-create "
                     "starts a new agent without a policy")


def listing(store: Ledger) -> list[dict[str, Any]]:
    rows = store.query(
        "SELECT agent_id, version, source, sha256, updated_ms, config FROM agents"
        " ORDER BY agent_id"
    )
    out = []
    for agent_id, version, source, digest, updated, config in rows:
        doc = msgspec.json.decode(config)
        tasks = sorted({**(doc.get("tasks") or {}), **(doc.get("actions") or {})})
        out.append({"agent_id": agent_id, "version": version, "source": source,
                    "sha256": digest, "updated_ms": updated, "tasks": tasks})
    return out


def _argv(command: list[str] | str | None, shell: bool) -> list[str]:
    if command is None:
        return []
    if isinstance(command, list):
        return [" ".join(command)] if shell else list(command)
    return [command] if shell else shlex.split(command)


def task_spec(agent: AgentConfig, task_name: str, *, timeout_ms: int | None = None,
              checkpoint_enabled: bool = False, with_fallback: bool = True) -> SubmitSpec:
    """The action that runs ``task_name`` of ``agent``, every setting resolved.

    :raises UsageError: the agent has no such task.
    """
    tasks = agent.all_tasks()
    task = tasks.get(task_name)
    if task is None:
        known = ", ".join(sorted(tasks)) or "none"
        raise UsageError(f"agent {agent.id} has no task {task_name!r} (tasks: {known})")
    steps = [_step(task, s) for s in task.steps]
    resources = task.resources or agent.resources
    # Only what the task (or agent) sets is passed: everything else keeps the default of its
    # field, declared once in ledger.events.ActionFields (no second copy of the defaults here).
    settings: dict[str, Any] = {}
    if (retry := task.retry) is not None:
        settings.update(retries=retry.max_attempts - 1, backoff=retry.backoff,
                        retry_max_delay_ms=int(retry.max_delay), retry_jitter=retry.jitter,
                        non_retryable_exit_codes=list(retry.non_retryable_exit_codes))
    if (recovery := task.recovery) is not None:
        settings["recovery"] = recovery.strategy
        if recovery.strategy == "fallback" and recovery.fallback and with_fallback:
            fb = task_spec(agent, recovery.fallback, with_fallback=False)
            settings["fallback"] = {"agent": agent.id, "task": recovery.fallback,
                                    "spec": msgspec.to_builtins(fb)}
    if timeout_ms is None and task.timeout is not None:
        timeout_ms = int(task.timeout)
    if resources:
        settings["resources"] = msgspec.to_builtins(resources, enc_hook=enc_hook)
    if task.notify:
        settings["notify"] = msgspec.to_builtins(task.notify)
    return SubmitSpec(
        command=_argv(task.command, task.shell) if task.command is not None
        else ["(steps)"],
        shell=task.shell and not steps,
        name=task_name, agent=agent.id, task=task_name, priority=task.priority,
        timeout_ms=timeout_ms, cwd=task.cwd, env=dict(task.env), steps=steps,
        failure_patterns=list(task.failure_patterns),
        limits_required=agent.limits == "required", on_interrupt=task.on_interrupt,
        checkpoint_enabled=checkpoint_enabled or task.checkpoint_enabled, **settings,
    )


def _step(task: Task, step: Step | str) -> dict[str, Any]:
    if isinstance(step, str):
        base = _argv(task.command, False)
        return {"name": step, "command": [*base, step], "shell": False}
    if step.command is None:
        return {"name": step.name, "command": [*_argv(task.command, False), step.name],
                "shell": False}
    return {"name": step.name, "command": _argv(step.command, step.shell), "shell": step.shell}
