"""Which streams ``sp archive --before DATE`` may move out of the log: conservatively, whole
finished units only.

A stream is *eligible* when its last event is before DATE and it is finished for good:

* an action in a final state (completed, failed, cancelled, skipped, rolled back, rollback
  failed);
* a plan (``plan:<id>``) that completed, failed, rolled back or failed to roll back.

Nothing else moves: schedules, triggers, agents, policies, alerts and sp's own ``ledger`` and
``maintenance`` streams live on (their projections would otherwise forget what is still in
force). Streams that the projections tie together move together or not at all, so that a
rebuild without them computes the same rows for everything that stays:

* the actions of one group (a plan's actions share its id; its compensations are
  ``rollback:<plan id>``) and the plan's own stream;
* an action and the actions that depend on it (a dependent left behind would wait forever for
  a dependency the rebuild no longer knows).

A unit with any stream that is not eligible stays whole; those are counted as ``held``.
"""

from __future__ import annotations

import msgspec

from sp.ledger.interface import Ledger
from sp.machines.states import FINAL

_FINAL_ACTIONS = frozenset(s.value for s in FINAL)
_FINAL_PLANS = frozenset({"completed", "failed", "rolled_back", "rollback_failed"})
_ROLLBACK_GROUP = "rollback:"  # commands.rollback.ROLLBACK_GROUP
_PLAN = "plan:"  # projections.plans.STREAM_PREFIX


class Selection(msgspec.Struct, frozen=True, kw_only=True):
    streams: list[str]  # to move
    actions: int
    plans: int
    held: int  # eligible, but tied to a stream that is not


class _Sets:
    """Union-find over stream names (and group names)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


def select(store: Ledger, before_ms: int) -> Selection:
    """The streams to archive for ``--before before_ms``. Reads only."""
    eligible: dict[str, bool] = {}
    sets = _Sets()
    for action_id, state, updated_ms, group in store.query(
            "SELECT action_id, state, updated_ms, group_id FROM actions"):
        eligible[action_id] = state in _FINAL_ACTIONS and updated_ms < before_ms
        if group is not None:
            unit = group[len(_ROLLBACK_GROUP):] if group.startswith(_ROLLBACK_GROUP) else group
            sets.union(action_id, "group\x00" + unit)
            sets.union(action_id, "group\x00" + _PLAN + unit)
    for action_id, dep in store.query(
            "SELECT a.action_id, j.value FROM actions a, json_each(a.depends_on) j"):
        sets.union(action_id, str(dep))
    for plan_id, state, updated_ms in store.query(
            "SELECT plan_id, state, updated_ms FROM plans"):
        stream = _PLAN + plan_id
        eligible[stream] = state in _FINAL_PLANS and updated_ms < before_ms
        sets.union(stream, "group\x00" + stream)
    for plan_id, action_id in store.query(
            "SELECT plan_id, action_id FROM plan_steps WHERE action_id IS NOT NULL UNION"
            " SELECT plan_id, action_id FROM plan_rollback_steps UNION"
            " SELECT plan_id, compensation_id FROM plan_rollback_steps"):
        sets.union(_PLAN + plan_id, str(action_id))
    blocked = {sets.find(s) for s, ok in eligible.items() if not ok}
    streams = sorted(s for s, ok in eligible.items() if ok and sets.find(s) not in blocked)
    held = sum(1 for s, ok in eligible.items() if ok) - len(streams)
    plans = sum(1 for s in streams if s.startswith(_PLAN))
    return Selection(streams=streams, actions=len(streams) - plans, plans=plans, held=held)
