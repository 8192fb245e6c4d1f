"""The action lifecycle table, exhaustively: every (state, trigger) pair, three ways.

The expectation is computed from the declared ``TRANSITIONS`` rows themselves, then compared
with :func:`sp.machines.action.check` (the live path), with a throwaway model triggered on the
``transitions`` Machine, and with the compiled ``TABLE``/``FOLD`` that replay uses.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from transitions import MachineError

from sp.ledger import events as ev
from sp.ledger.errors import InvalidTransitionError
from sp.machines import action as machine
from sp.machines.action import MACHINE, TRANSITIONS, TRIGGER_OF, ActionState


def _declared() -> dict[tuple[ActionState, str], ActionState]:
    """(state, trigger) -> destination, read straight from the TRANSITIONS rows."""
    out: dict[tuple[ActionState, str], ActionState] = {}
    for row in TRANSITIONS:
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        for source in sources:
            key = (source, row["trigger"])
            assert key not in out, f"{key} is declared twice"
            out[key] = source if row["dest"] is None else row["dest"]
    return out


DECLARED = _declared()
TRIGGERS = sorted({row["trigger"] for row in TRANSITIONS})
PAIRS = [(state, trigger) for state in ActionState for trigger in TRIGGERS]


def _pair_id(pair: Any) -> str:
    if isinstance(pair, ActionState):
        return pair.value
    return str(pair)


class _Throwaway:
    state: ActionState


@pytest.mark.parametrize(("state", "trigger"), PAIRS, ids=_pair_id)
def test_check_returns_declared_destination_or_refuses(state: ActionState, trigger: str) -> None:
    expected = DECLARED.get((state, trigger))
    if expected is None:
        with pytest.raises(InvalidTransitionError) as info:
            machine.check("a1", state, trigger)
        assert (info.value.action_id, info.value.state, info.value.trigger) == (
            "a1", state.value, trigger)
        assert str(info.value) == f"action a1 is {state.value}: cannot {trigger} it"
        assert not machine.is_legal(state, trigger)
    else:
        assert machine.check("a1", state, trigger) is expected
        assert machine.is_legal(state, trigger)


@pytest.mark.parametrize(("state", "trigger"), PAIRS, ids=_pair_id)
def test_compiled_table_agrees_with_the_transitions_machine(
    state: ActionState, trigger: str
) -> None:
    model = _Throwaway()
    MACHINE.add_model(model, initial=state)
    try:
        try:
            model.trigger(trigger)  # type: ignore[attr-defined]
        except MachineError:
            assert (state, trigger) not in machine.TABLE
        else:
            assert machine.TABLE[(state, trigger)] is model.state
            assert model.state is DECLARED[(state, trigger)]
    finally:
        MACHINE.remove_model(model)


@pytest.mark.parametrize(("state", "trigger"), PAIRS, ids=_pair_id)
def test_fold_agrees_with_table_for_the_event_naming_the_trigger(
    state: ActionState, trigger: str
) -> None:
    (cls,) = [c for c, t in TRIGGER_OF.items() if t == trigger]
    assert machine.FOLD.get((state, ev.tag_of(cls))) is machine.TABLE.get((state, trigger))


def test_table_has_exactly_the_declared_pairs() -> None:
    assert machine.TABLE == DECLARED
    assert set(machine.TRIGGERS) == set(TRIGGERS)


def test_every_event_type_but_submitted_names_a_trigger_and_every_trigger_an_event() -> None:
    action_events = {c for c in ev.EVENT_TYPES if ev.tag_of(c).startswith("action.")}
    assert set(TRIGGER_OF) == action_events - {ev.ActionSubmitted}
    assert machine.INITIAL_EVENT is ev.ActionSubmitted
    # One event per trigger, and no trigger without an event: replay can fold every trigger.
    assert sorted(TRIGGER_OF.values()) == TRIGGERS


def _class_name(cls: Any) -> str:
    return str(cls.__name__)


@pytest.mark.parametrize("cls", sorted(TRIGGER_OF, key=_class_name), ids=_class_name)
def test_check_event_uses_the_events_trigger(cls: type[ev.Event]) -> None:
    trigger = TRIGGER_OF[cls]
    sample = _instance(cls)
    for state in ActionState:
        if (state, trigger) in DECLARED:
            assert machine.check_event("a1", state, sample) is DECLARED[(state, trigger)]
        else:
            with pytest.raises(InvalidTransitionError):
                machine.check_event("a1", state, sample)


def _instance(cls: type[ev.Event]) -> ev.Event:
    required: dict[str, Any] = {"reason": "r", "attempt": 1, "owner": "o", "pid": 1,
                                "channel": "url", "ok": True, "sha256": "0" * 64}
    fields = {f for f in cls.__struct_fields__}
    return cls(**{k: v for k, v in required.items() if k in fields})


def test_unknown_trigger_is_refused() -> None:
    with pytest.raises(InvalidTransitionError):
        machine.check("a1", ActionState.QUEUED, "explode")


def test_no_auto_transitions_can_skip_the_rules() -> None:
    model = _Throwaway()
    MACHINE.add_model(model, initial=ActionState.QUEUED)
    try:
        assert not any(hasattr(model, f"to_{s.name}") for s in ActionState)
        assert not any(hasattr(model, f"to_{s.value}") for s in ActionState)
        with pytest.raises(MachineError):
            model.trigger("succeed")  # type: ignore[attr-defined]
        assert model.state is ActionState.QUEUED
    finally:
        MACHINE.remove_model(model)


def test_check_never_moves_the_machine() -> None:
    """Asking is not doing: a legal check leaves every later answer unchanged."""
    assert machine.check("a1", ActionState.QUEUED, "start") is ActionState.EXECUTING
    assert machine.check("a1", ActionState.QUEUED, "start") is ActionState.EXECUTING
    with pytest.raises(InvalidTransitionError):
        machine.check("a1", ActionState.QUEUED, "succeed")


def test_seed_states_exist_and_every_state_is_reachable_from_pending() -> None:
    seed = {"pending", "validating", "queued", "executing", "retrying", "completed", "failed",
            "cancelled", "rolling_back", "rolled_back"}
    assert seed <= {s.value for s in ActionState}
    seen = {ActionState.PENDING}
    todo = deque(seen)
    while todo:
        state = todo.popleft()
        for (src, _), dest in machine.TABLE.items():
            if src is state and dest not in seen:
                seen.add(dest)
                todo.append(dest)
    assert seen == set(ActionState)


def test_final_states_only_leave_by_restart_or_rollback() -> None:
    for (src, trigger), dest in machine.TABLE.items():
        if src in machine.FINAL and dest is not src:
            assert trigger in {"restart", "rollback"}, (src, trigger, dest)
