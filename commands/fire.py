"""Turning a trigger's observation into an action: one transaction records ``trigger.fired``
(what was seen, and why it fired) and submits the agent's task with the observation as payload,
so ``sp audit`` says why an action ran and nothing fires without its record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sp.commands import agents
from sp.commands.triggers import fire_in, stream_of
from sp.ledger.interface import Ledger

__all__ = ["PAYLOAD_ENV_MAX", "fire", "stream_of", "trigger_env"]


# Environment strings longer than 128 KiB make exec fail (Linux MAX_ARG_STRLEN): a bigger
# payload is left out of $SP_PAYLOAD (it is in the action's submitted event: sp audit ID).
PAYLOAD_ENV_MAX = 32 * 1024


def trigger_env(trigger: str, kind: str, payload: dict[str, Any]) -> dict[str, str]:
    """What a triggered action's process sees: ``$SP_TRIGGER``, ``$SP_TRIGGER_KIND``,
    ``$SP_PAYLOAD`` (the payload as JSON, when it is at most 32 KiB) and, for files,
    ``$SP_TRIGGER_PATH``."""
    import msgspec

    env = {"SP_TRIGGER": trigger, "SP_TRIGGER_KIND": kind}
    text = msgspec.json.encode(payload).decode()
    if len(text) <= PAYLOAD_ENV_MAX:
        env["SP_PAYLOAD"] = text
    path = payload.get("path")
    if kind == "filesystem" and isinstance(path, str):
        env["SP_TRIGGER_PATH"] = path
    return env


def fire(store: Ledger, trigger: str, kind: str, agent: str, task: str,
         payload: dict[str, Any], *, detail: str = "", key: str | None = None,
         by: str = "") -> str | None:
    """Record the fire and submit the task; returns the action id (None if ``key`` was seen).

    ``key`` makes a fire idempotent (a repeated delivery returns the existing action).
    :raises UsageError: the agent or task is unknown (nothing written).
    """
    import msgspec

    config = agents.get(store, agent)
    spec = agents.task_spec(config, task)
    spec = msgspec.structs.replace(spec, payload=payload, key=key,
                                   env={**spec.env, **trigger_env(trigger, kind, payload)})
    with store.transaction() as tx:
        action_id = fire_in(tx, spec, trigger, kind, agent, task, payload, detail=detail,
                            key=key, by=by)
    if action_id is None:
        return None
    from sp.host.wake import signal_workers

    signal_workers(Path(store.path).parent)
    return action_id
