"""What every lifecycle shares: a ``transitions`` table declared once as data, compiled for
replay, and a live Machine (built on first use) that checks commands.

A lifecycle module declares its state Enum, its TRANSITIONS rows and which event names which
trigger, then builds one :class:`Lifecycle` from them.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any, Generic, TypeVar

from sp.ledger import events as ev

S = TypeVar("S", bound=Enum)


class _Model:
    """A model pinned to one state: only ever asked ``may_<trigger>()``, never triggered."""

    state: Any


class Lifecycle(Generic[S]):
    def __init__(self, name: str, states: type[S], transitions: list[dict[str, Any]],
                 initial: S, trigger_of: dict[type[ev.Event], str],
                 refuse: Callable[[str, S, str], Exception]) -> None:
        self.name = name
        self.states = states
        self.transitions = transitions
        self.initial = initial
        self.trigger_of = trigger_of
        self._refuse = refuse
        # (state, trigger) -> destination; absent pairs are illegal.
        self.table: dict[tuple[S, str], S] = {}
        for row in transitions:
            sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
            for src in sources:
                self.table.setdefault((src, row["trigger"]),
                                      src if row["dest"] is None else row["dest"])
        self.triggers: tuple[str, ...] = tuple(dict.fromkeys(r["trigger"] for r in transitions))
        # For replay: (state, event tag) -> destination, skipping even the trigger lookup.
        self.fold: dict[tuple[S, str], S] = {
            (state, ev.tag_of(cls)): dest
            for cls, trig in trigger_of.items()
            for (state, t), dest in self.table.items()
            if t == trig
        }
        self._models: dict[S, _Model] = {}
        self._machine: Any = None

    @property
    def machine(self) -> Any:
        """The ``transitions`` Machine, built on first use (it costs ~10 ms to import)."""
        if self._machine is None:
            from transitions import Machine

            machine = Machine(model=None, states=self.states, transitions=self.transitions,
                              initial=self.initial, auto_transitions=False,
                              ignore_invalid_triggers=False)
            if self._compile(machine) != self.table or tuple(machine.events) != self.triggers:
                raise RuntimeError(f"the {self.name} Machine and its compiled table disagree")
            for state in self.states:
                self._models[state] = _Model()
                machine.add_model(self._models[state], initial=state)
            self._machine = machine
        return self._machine

    def _compile(self, machine: Any) -> dict[tuple[S, str], S]:
        table: dict[tuple[S, str], S] = {}
        for trigger, event in machine.events.items():
            for source, transitions in event.transitions.items():
                src = self.states[source]
                dest = transitions[0].dest
                table[(src, trigger)] = src if dest is None else self.states[dest]
        return table

    def check(self, stream_id: str, state: S, trigger: str) -> S:
        """Ask the live Machine whether ``trigger`` is legal in ``state``; return the destination.

        :raises InvalidTransitionError: (or the lifecycle's subclass) when it is not.
        """
        if not self._models:
            self.machine  # noqa: B018 - builds the models
        may = getattr(self._models[state], f"may_{trigger}", None)
        if may is None or not may():
            raise self._refuse(stream_id, state, trigger)
        return self.table[(state, trigger)]

    def check_event(self, stream_id: str, state: S, event: ev.Event) -> S:
        """:meth:`check` for the trigger that ``event`` names."""
        return self.check(stream_id, state, self.trigger_of[type(event)])

    def is_legal(self, state: S, trigger: str) -> bool:
        return (state, trigger) in self.table
