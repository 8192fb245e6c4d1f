"""The action lifecycle, declared once as data with ``transitions``.

The same table checks a live command (through a ``transitions.Machine``) and folds stored
events during replay (through :data:`FOLD`, because replaying a million events through
``Machine.trigger`` would cost ~30 µs each).

:data:`TABLE` and :data:`FOLD` are compiled from the declared rows, and the Machine is built
from the same rows when a command first asks it (``MACHINE``, :func:`check`), which also
proves that the Machine and the table agree. Read-only commands (``sp status``, ``sp audit``)
so never import ``transitions``: a cron invocation saves ~9 ms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ledger import events as ev
from ledger.errors import InvalidTransitionError

from .states import ACTIVE, FINAL, WAITING, ActionState

__all__ = ["ACTIVE", "FINAL", "WAITING", "ActionState"]


S = ActionState

TRANSITIONS: list[dict[str, Any]] = [
    # validation: synchronous at submit (pending -> queued) or in flight (pending -> validating)
    {"trigger": "validate", "source": S.PENDING, "dest": S.VALIDATING},
    {"trigger": "accept", "source": [S.PENDING, S.VALIDATING], "dest": S.QUEUED},
    {"trigger": "reject", "source": [S.PENDING, S.VALIDATING], "dest": S.FAILED},
    # execution; a retrying action runs again once its backoff is over
    {"trigger": "start", "source": [S.QUEUED, S.RETRYING, S.INTERRUPTED], "dest": S.EXECUTING},
    {"trigger": "progress", "source": S.EXECUTING, "dest": None},
    {"trigger": "checkpoint", "source": S.EXECUTING, "dest": None},
    {"trigger": "succeed", "source": S.EXECUTING, "dest": S.COMPLETED},
    {"trigger": "retry", "source": S.EXECUTING, "dest": S.RETRYING},
    {"trigger": "fail", "source": S.EXECUTING, "dest": S.FAILED},
    # recovery strategy "skip": the failure is recorded, dependents go ahead
    {"trigger": "skip", "source": S.EXECUTING, "dest": S.SKIPPED},
    # crash recovery / graceful shutdown: back to the queue, to resume from the checkpoint
    {"trigger": "interrupt", "source": S.EXECUTING, "dest": S.INTERRUPTED},
    # cancellation: a running action is asked first, its runner then records the cancel
    {"trigger": "request_cancel", "source": S.EXECUTING, "dest": None},
    {
        "trigger": "cancel",
        "source": [S.PENDING, S.VALIDATING, S.QUEUED, S.RETRYING, S.INTERRUPTED, S.EXECUTING],
        "dest": S.CANCELLED,
    },
    {
        "trigger": "restart",
        "source": [S.FAILED, S.CANCELLED, S.COMPLETED, S.INTERRUPTED],
        "dest": S.QUEUED,
    },
    # a notification about the outcome was sent (or failed): recorded, the state stays
    {
        "trigger": "notify",
        "source": [S.COMPLETED, S.FAILED, S.SKIPPED, S.CANCELLED],
        "dest": None,
    },
    # compensation
    {"trigger": "rollback", "source": S.COMPLETED, "dest": S.ROLLING_BACK},
    {"trigger": "finish_rollback", "source": S.ROLLING_BACK, "dest": S.ROLLED_BACK},
    {"trigger": "fail_rollback", "source": S.ROLLING_BACK, "dest": S.ROLLBACK_FAILED},
]

# Each event type names the trigger it fires. ActionSubmitted creates the action (PENDING).
TRIGGER_OF: dict[type[ev.Event], str] = {
    ev.ActionValidationStarted: "validate",
    ev.ActionQueued: "accept",
    ev.ActionRejected: "reject",
    ev.ActionStarted: "start",
    ev.ActionProgressed: "progress",
    ev.ActionCheckpointed: "checkpoint",
    ev.ActionCompleted: "succeed",
    ev.ActionRetryScheduled: "retry",
    ev.ActionFailed: "fail",
    ev.ActionSkipped: "skip",
    ev.ActionInterrupted: "interrupt",
    ev.ActionCancelRequested: "request_cancel",
    ev.ActionCancelled: "cancel",
    ev.ActionRestarted: "restart",
    ev.ActionRollbackStarted: "rollback",
    ev.ActionRolledBack: "finish_rollback",
    ev.ActionRollbackFailed: "fail_rollback",
    ev.ActionNotified: "notify",
}
INITIAL_EVENT = ev.ActionSubmitted


def _declared() -> dict[tuple[ActionState, str], ActionState]:
    """(state, trigger) -> destination, read from the TRANSITIONS rows (as Machine reads them)."""
    table: dict[tuple[ActionState, str], ActionState] = {}
    for row in TRANSITIONS:
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        for src in sources:
            table.setdefault((src, row["trigger"]), src if row["dest"] is None else row["dest"])
    return table


def _compile(machine: Machine) -> dict[tuple[ActionState, str], ActionState]:
    table: dict[tuple[ActionState, str], ActionState] = {}
    for trigger, event in machine.events.items():
        for source, transitions in event.transitions.items():
            src = ActionState[source]
            dest = transitions[0].dest
            table[(src, trigger)] = src if dest is None else ActionState[dest]
    return table


# (state, trigger) -> destination; absent pairs are illegal.
TABLE: dict[tuple[ActionState, str], ActionState] = _declared()
TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys(row["trigger"] for row in TRANSITIONS))
# For replay: (state, event tag) -> destination, skipping even the trigger lookup.
FOLD: dict[tuple[ActionState, str], ActionState] = {
    (state, ev.tag_of(cls)): dest
    for cls, trig in TRIGGER_OF.items()
    for (state, t), dest in TABLE.items()
    if t == trig
}


class _Model:
    """A model pinned to one state: only ever asked ``may_<trigger>()``, never triggered."""

    state: ActionState


# One model per state, attached once; asking may_<trigger>() does not move it.
_MODELS: dict[ActionState, _Model] = {}
_MACHINE: list[Machine] = []


def _machine() -> Machine:
    """The ``transitions`` Machine of the lifecycle, built on first use."""
    if not _MACHINE:
        from transitions import Machine

        machine = Machine(
            model=None,
            states=ActionState,
            transitions=TRANSITIONS,
            initial=S.PENDING,
            auto_transitions=False,
            ignore_invalid_triggers=False,
        )
        if _compile(machine) != TABLE or tuple(machine.events) != TRIGGERS:
            raise RuntimeError("the lifecycle Machine and its compiled table disagree")
        for state in ActionState:
            _MODELS[state] = _Model()
            machine.add_model(_MODELS[state], initial=state)
        _MACHINE.append(machine)
    return _MACHINE[0]


def __getattr__(name: str) -> Any:
    if name == "MACHINE":
        return _machine()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from transitions import Machine

    MACHINE: Machine


def check(action_id: str, state: ActionState, trigger: str) -> ActionState:
    """Ask the live Machine whether ``trigger`` is legal in ``state``; return the destination.

    :raises InvalidTransitionError: the transition is not in the table.
    """
    if not _MODELS:
        _machine()
    may = getattr(_MODELS[state], f"may_{trigger}", None)
    if may is None or not may():
        raise InvalidTransitionError(action_id, state.value, trigger)
    return TABLE[(state, trigger)]


def check_event(action_id: str, state: ActionState, event: ev.Event) -> ActionState:
    """:func:`check` for the trigger that ``event`` names."""
    return check(action_id, state, TRIGGER_OF[type(event)])


def is_legal(state: ActionState, trigger: str) -> bool:
    return (state, trigger) in TABLE
