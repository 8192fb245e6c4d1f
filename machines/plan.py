"""The plan lifecycle, declared once as data with ``transitions`` (like machines/action.py).

```
pending ─start─▶ running ─succeed─▶ completed ─rollback─┐
                 ▲ │  └─fail──────▶ failed ────rollback─┤
                 │ ├─stop─▶ stopping ─fail─▶ failed     ├─▶ rolling_back ─┬─▶ rolled_back
                 │ │          └──────────rollback───────┤        ▲         └─▶ rollback_failed
                 │ └─cancel─▶ cancelling ──rollback─────┘        └────rollback────────┘
                 │              └─finish_cancel─▶ cancelled ─rollback─▶ rolling_back
                 └──reopen── completed | failed | cancelled
```

``stop`` is recorded when an action fails for good and ``on_failure`` is stop or rollback: the
rest of the plan is cancelled, and once nothing of it runs the plan fails or rolls back.
``cancel`` is ``sp plan cancel``: the same, by a person; once nothing runs the plan is
cancelled, or rolls back with ``--rollback`` (``on_failure`` does not apply to a cancel).
``reopen``: an action of a finished plan was restarted, so the plan runs again. The
events live in the stream ``plan:<id>``; each event type names one trigger.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

from sp.ledger import events as ev
from sp.ledger.errors import InvalidTransitionError, SpError
from sp.machines.lifecycle import Lifecycle


class PlanState(Enum):
    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


P = PlanState


class PlanTransitionError(InvalidTransitionError):
    """The plan lifecycle refuses ``trigger`` in ``state``. Nothing was appended."""

    def __init__(self, plan_id: str, state: str, trigger: str) -> None:
        SpError.__init__(self, f"plan {plan_id} is {state}: cannot {trigger} it")
        self.action_id, self.state, self.trigger = plan_id, state, trigger
        self.plan_id = plan_id

TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "start", "source": P.PENDING, "dest": P.RUNNING},
    {"trigger": "stop", "source": P.RUNNING, "dest": P.STOPPING},
    {"trigger": "succeed", "source": P.RUNNING, "dest": P.COMPLETED},
    {"trigger": "fail", "source": [P.RUNNING, P.STOPPING], "dest": P.FAILED},
    {"trigger": "cancel", "source": P.RUNNING, "dest": P.CANCELLING},
    {"trigger": "finish_cancel", "source": P.CANCELLING, "dest": P.CANCELLED},
    {"trigger": "reopen", "source": [P.COMPLETED, P.FAILED, P.CANCELLED], "dest": P.RUNNING},
    {
        "trigger": "rollback",
        "source": [P.STOPPING, P.CANCELLING, P.COMPLETED, P.FAILED, P.CANCELLED,
                   P.ROLLBACK_FAILED],
        "dest": P.ROLLING_BACK,
    },
    {"trigger": "finish_rollback", "source": P.ROLLING_BACK, "dest": P.ROLLED_BACK},
    {"trigger": "fail_rollback", "source": P.ROLLING_BACK, "dest": P.ROLLBACK_FAILED},
]

# Each event type names the trigger it fires. PlanApplied creates the plan (PENDING).
TRIGGER_OF: dict[type[ev.Event], str] = {
    ev.PlanStarted: "start",
    ev.PlanStopRequested: "stop",
    ev.PlanCompleted: "succeed",
    ev.PlanFailed: "fail",
    ev.PlanCancelRequested: "cancel",
    ev.PlanCancelled: "finish_cancel",
    ev.PlanReopened: "reopen",
    ev.PlanRollbackStarted: "rollback",
    ev.PlanRolledBack: "finish_rollback",
    ev.PlanRollbackFailed: "fail_rollback",
}
INITIAL_EVENT = ev.PlanApplied
# Nothing more happens to the plan by itself in these states.
SETTLED = frozenset({P.COMPLETED, P.FAILED, P.CANCELLED, P.ROLLED_BACK, P.ROLLBACK_FAILED})


LIFECYCLE: Lifecycle[PlanState] = Lifecycle(
    "plan", PlanState, TRANSITIONS, P.PENDING, TRIGGER_OF,
    lambda plan_id, state, trigger: PlanTransitionError(plan_id, state.value, trigger),
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
