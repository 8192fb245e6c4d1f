"""The Python API an action uses from inside: progress, checkpoints, and where to resume.

The worker starts every action with ``SP_ACTION_ID``, ``SP_HOME``, ``SP_ATTEMPT``,
``SP_CHECKPOINT`` (the last checkpoint's JSON, empty if none) and ``SP_RESUME_STEP``. This module
reads them; :func:`checkpoint` and :func:`progress` record events on the action's ledger, the
same as ``sp checkpoint`` and ``sp progress``::

    from sp.runner import api

    start = api.resume_step() or 0
    state = api.last_checkpoint() or {"done": []}
    for step in range(start, len(STEPS)):
        run(STEPS[step], state)
        api.progress(100 * (step + 1) / len(STEPS), STEPS[step])
        api.checkpoint(state, step=step)          # a resumed attempt starts at step + 1

Each call opens the ledger and closes it again: actions report rarely, and an open connection
held for hours would gain nothing. Readers (:func:`last_checkpoint`, :func:`resume_step`,
:func:`attempt`) only look at the environment, so a script run by hand outside sp sees "no
checkpoint" and starts from the beginning; the writers raise there instead.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import msgspec

from sp.ledger.errors import UsageError
from sp.runner import broker

if TYPE_CHECKING:
    from sp.ledger.interface import Ledger

_OUTSIDE = ("not inside an sp action: $SP_ACTION_ID is not set (the worker sets it for the "
            "actions it runs)")


def current_action() -> str | None:
    """The id of the action this process runs in (``$SP_ACTION_ID``), or None outside one."""
    return os.environ.get("SP_ACTION_ID") or None


def attempt() -> int | None:
    """Which attempt this is, from 1 (``$SP_ATTEMPT``); None outside an action.

    :raises UsageError: ``$SP_ATTEMPT`` is set but not a whole number.
    """
    return _int_env("SP_ATTEMPT")


def last_checkpoint() -> Any:
    """The data of the action's last checkpoint (decoded ``$SP_CHECKPOINT``), None if none.

    Set when an attempt resumes after a failure or an interruption.

    :raises UsageError: ``$SP_CHECKPOINT`` is set but not JSON.
    """
    raw = os.environ.get("SP_CHECKPOINT", "")
    if not raw.strip():
        return None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as e:
        raise UsageError(f"$SP_CHECKPOINT is not JSON: {e}") from None


def resume_step() -> int | None:
    """The step to resume at (``$SP_RESUME_STEP``): one after the last checkpointed step, or
    the step a restart asked for; None to start from the beginning.

    :raises UsageError: ``$SP_RESUME_STEP`` is set but not a whole number.
    """
    return _int_env("SP_RESUME_STEP")


def checkpoint(data: Any, step: int | None = None) -> int:
    """Record a checkpoint (``action.checkpointed``) of the running action; returns its seq.

    ``data`` is anything JSON can hold; a later attempt gets it from :func:`last_checkpoint`.
    ``step`` is the step just finished: a resumed attempt starts after it.

    :raises UsageError: not inside an action, or ``data`` is not JSON-encodable.
    :raises InvalidTransitionError: the action is no longer running (e.g. it was cancelled).
    """
    from sp.commands import actions

    action_id = _require_action()
    try:
        msgspec.json.encode(data)
    except (TypeError, OverflowError) as e:
        raise UsageError(f"checkpoint data is not JSON-encodable: {e}") from None
    if broker.active():  # sandboxed: the worker records it (the ledger is out of reach)
        return int(_brokered("checkpoint", data=data, step=step))
    store = _open()
    try:
        return actions.checkpoint(store, action_id, data, step, by=actions.who("action"))
    finally:
        store.close()


def progress(percent: float | None, message: str = "") -> None:
    """Record the running action's progress (``action.progressed``): 0-100 and/or a message.

    :raises UsageError: not inside an action, or ``percent`` is outside 0-100.
    :raises InvalidTransitionError: the action is no longer running.
    """
    from sp.commands import actions

    action_id = _require_action()
    if percent is not None and not 0 <= percent <= 100:
        raise UsageError(f"progress must be between 0 and 100, got {percent}")
    if broker.active():
        _brokered("progress", percent=percent, message=message)
        return
    store = _open()
    try:
        actions.progress(store, action_id, percent, message, by=actions.who("action"))
    finally:
        store.close()


class ActionContext(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the environment says about the running action (the seed's ``context``),
    with the two writers at hand: ``ctx.progress(...)``, ``ctx.checkpoint(...)``."""

    action_id: str
    home: str
    attempt: int | None
    checkpoint_data: Any
    resume_step: int | None

    def progress(self, percent: float | None, message: str = "") -> None:
        progress(percent, message)

    def checkpoint(self, data: Any, step: int | None = None) -> int:
        return checkpoint(data, step)


def context() -> ActionContext:
    """A snapshot of the running action's environment.

    :raises UsageError: not inside an action, or a variable is malformed.
    """
    return ActionContext(action_id=_require_action(), home=_home_root(), attempt=attempt(),
                         checkpoint_data=last_checkpoint(), resume_step=resume_step())


def _brokered(op: str, **args: Any) -> Any:
    """A request to the worker (:mod:`sp.runner.broker`); its refusal as a UsageError."""
    try:
        return broker.call(op, **args)
    except broker.BrokerError as e:
        raise UsageError(str(e)) from None


def _require_action() -> str:
    action_id = current_action()
    if action_id is None:
        raise UsageError(_OUTSIDE)
    return action_id


def _home_root() -> str:
    # Never fall back to the default home: an action writing to another ledger than the one
    # that runs it would report into the void.
    root = os.environ.get("SP_HOME")
    if not root:
        raise UsageError("$SP_HOME is not set: cannot find the ledger of this action")
    return root


def _open() -> Ledger:
    # Imported here: an action that only reads its checkpoint need not load the ledger code.
    from sp.commands.home import Home

    return Home(_home_root()).open()


def _int_env(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"${name} is not a whole number: {raw!r}") from None
