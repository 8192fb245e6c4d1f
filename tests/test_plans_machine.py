"""The plan lifecycle table, exhaustively: every (state, trigger) pair, the live Machine and
the replay fold agree with the declared rows."""

from __future__ import annotations

import pytest
from transitions import MachineError

from sp.ledger import events as ev
from sp.ledger.errors import InvalidTransitionError
from sp.machines import plan as machine
from sp.machines.plan import MACHINE, TRANSITIONS, TRIGGER_OF, PlanState


def _declared() -> dict[tuple[PlanState, str], PlanState]:
    out: dict[tuple[PlanState, str], PlanState] = {}
    for row in TRANSITIONS:
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        for source in sources:
            assert (source, row["trigger"]) not in out
            out[(source, row["trigger"])] = source if row["dest"] is None else row["dest"]
    return out


DECLARED = _declared()
PAIRS = [(s, t) for s in PlanState for t in sorted({r["trigger"] for r in TRANSITIONS})]


class _Throwaway:
    state: PlanState


@pytest.mark.parametrize(("state", "trigger"), PAIRS,
                         ids=[f"{s.value}-{t}" for s, t in PAIRS])
def test_every_pair_is_declared_or_refused(state: PlanState, trigger: str) -> None:
    expected = DECLARED.get((state, trigger))
    model = _Throwaway()
    MACHINE.add_model(model, initial=state)
    try:
        if expected is None:
            with pytest.raises(InvalidTransitionError) as info:
                machine.check("p1", state, trigger)
            assert str(info.value) == f"plan p1 is {state.value}: cannot {trigger} it"
            with pytest.raises(MachineError):
                getattr(model, trigger)()
            assert not machine.is_legal(state, trigger)
        else:
            assert machine.check("p1", state, trigger) is expected
            getattr(model, trigger)()
            assert model.state is expected
    finally:
        MACHINE.remove_model(model)


def test_every_plan_event_names_a_trigger_and_folds_like_the_table() -> None:
    plan_events = {cls for cls in ev.EVENT_TYPES if ev.tag_of(cls).startswith("plan.")}
    assert plan_events == {*TRIGGER_OF, machine.INITIAL_EVENT}
    for (state, tag), dest in machine.FOLD.items():
        cls = next(c for c in TRIGGER_OF if ev.tag_of(c) == tag)
        assert DECLARED[(state, TRIGGER_OF[cls])] is dest


def test_no_auto_transitions() -> None:
    assert not hasattr(_Throwaway(), "to_completed")
    assert "to_completed" not in MACHINE.events
