"""The plan lifecycle, declared once as data with ``transitions`` (like machines/action.py).

```
pending ─start─▶ running ─succeed─▶ completed ─rollback─┐
                   │  └─fail──────▶ failed ────rollback─┤
                   └─stop─▶ stopping ─fail─▶ failed     ├─▶ rolling_back ─┬─▶ rolled_back
                              └──────────rollback───────┘        ▲         └─▶ rollback_failed
                                                                 └────rollback────────┘
```

``stop`` is recorded when an action fails for good and ``on_failure`` is stop or rollback: the
rest of the plan is cancelled, and once nothing of it runs the plan fails or rolls back. The
events live in the stream ``plan:<id>``; each event type names one trigger.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

from ledger import events as ev
from ledger.errors import InvalidTransitionError, SpError


class PlanState(Enum):
    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
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
    {
        "trigger": "rollback",
        "source": [P.STOPPING, P.COMPLETED, P.FAILED, P.ROLLBACK_FAILED],
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
    ev.PlanRollbackStarted: "rollback",
    ev.PlanRolledBack: "finish_rollback",
    ev.PlanRollbackFailed: "fail_rollback",
}
INITIAL_EVENT = ev.PlanApplied
# Nothing more happens to the plan by itself in these states.
SETTLED = frozenset({P.COMPLETED, P.FAILED, P.ROLLED_BACK, P.ROLLBACK_FAILED})


def _declared() -> dict[tuple[PlanState, str], PlanState]:
    table: dict[tuple[PlanState, str], PlanState] = {}
    for row in TRANSITIONS:
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        for src in sources:
            table.setdefault((src, row["trigger"]), src if row["dest"] is None else row["dest"])
    return table


# (state, trigger) -> destination; absent pairs are illegal.
TABLE: dict[tuple[PlanState, str], PlanState] = _declared()
TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys(row["trigger"] for row in TRANSITIONS))
# For replay: (state, event tag) -> destination.
FOLD: dict[tuple[PlanState, str], PlanState] = {
    (state, ev.tag_of(cls)): dest
    for cls, trig in TRIGGER_OF.items()
    for (state, t), dest in TABLE.items()
    if t == trig
}


class _Model:
    """A model pinned to one state: only ever asked ``may_<trigger>()``, never triggered."""

    state: PlanState


_MODELS: dict[PlanState, _Model] = {}
_MACHINE: list[Machine] = []


def _machine() -> Machine:
    """The ``transitions`` Machine of the plan lifecycle, built on first use."""
    if not _MACHINE:
        from transitions import Machine

        machine = Machine(
            model=None, states=PlanState, transitions=TRANSITIONS, initial=P.PENDING,
            auto_transitions=False, ignore_invalid_triggers=False,
        )
        compiled: dict[tuple[PlanState, str], PlanState] = {}
        for trigger, event in machine.events.items():
            for source, transitions in event.transitions.items():
                dest = transitions[0].dest
                compiled[(PlanState[source], trigger)] = (
                    PlanState[source] if dest is None else PlanState[dest])
        if compiled != TABLE or tuple(machine.events) != TRIGGERS:
            raise RuntimeError("the plan Machine and its compiled table disagree")
        for state in PlanState:
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


def check(plan_id: str, state: PlanState, trigger: str) -> PlanState:
    """Ask the live Machine whether ``trigger`` is legal in ``state``; return the destination.

    :raises PlanTransitionError: the transition is not in the table.
    """
    if not _MODELS:
        _machine()
    may = getattr(_MODELS[state], f"may_{trigger}", None)
    if may is None or not may():
        raise PlanTransitionError(plan_id, state.value, trigger)
    return TABLE[(state, trigger)]


def check_event(plan_id: str, state: PlanState, event: ev.Event) -> PlanState:
    """:func:`check` for the trigger that ``event`` names."""
    return check(plan_id, state, TRIGGER_OF[type(event)])


def is_legal(state: PlanState, trigger: str) -> bool:
    return (state, trigger) in TABLE
