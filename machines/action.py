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

from sp.ledger import events as ev
from sp.ledger.errors import InvalidTransitionError
from sp.machines.lifecycle import Lifecycle
from sp.machines.states import ACTIVE, FINAL, WAITING, ActionState

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
    # the policy refused something (recorded before the outcome, the state stays)
    {"trigger": "deny", "source": S.EXECUTING, "dest": None},
    # the worker stored a blob for the action (recorded, the state stays)
    {"trigger": "store_blob", "source": S.EXECUTING, "dest": None},
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
    ev.ActionSecurityDenied: "deny",
    ev.ActionBlobStored: "store_blob",
}
INITIAL_EVENT = ev.ActionSubmitted


LIFECYCLE: Lifecycle[ActionState] = Lifecycle(
    "action", ActionState, TRANSITIONS, S.PENDING, TRIGGER_OF,
    lambda action_id, state, trigger: InvalidTransitionError(action_id, state.value, trigger),
)
TABLE = LIFECYCLE.table
TRIGGERS = LIFECYCLE.triggers
FOLD = LIFECYCLE.fold
check = LIFECYCLE.check
check_event = LIFECYCLE.check_event
is_legal = LIFECYCLE.is_legal


def __getattr__(name: str) -> Any:
    if name == "MACHINE":
        return LIFECYCLE.machine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from transitions import Machine

    MACHINE: Machine
