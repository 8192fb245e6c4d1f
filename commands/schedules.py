"""Time-based schedules: define, remove, enable, disable, and fire the due ones (``sp tick``).

Every change is an event on the stream ``schedule:<name>``, and so is every decision a tick
makes about a slot: ``schedule.fired`` (its action is submitted in the same transaction) or
``schedule.skipped`` (with the reason). A tick holds the write lock while it decides and
appends with the schedule's stream version, and each action carries the idempotency key
``schedule:<name>:<slot_ms>``: two ticks that overlap, or a tick that runs late, fire a slot
exactly once.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from sp.commands import actions
from sp.commands.actions import SubmitSpec
from sp.ledger import events as ev
from sp.ledger.errors import SpError, UsageError
from sp.ledger.interface import Ledger, LedgerTransaction
from sp.machines.states import FINAL, ActionState
from sp.projections.schedules import STREAM_PREFIX, any_enabled
from sp.schedules import clockwatch
from sp.schedules import cron as cronlib
from sp.schedules.adaptive import AdaptiveDaily
from sp.schedules.slots import Fire, Gap, MissedPolicy, Skip, parse_missed, parse_overlap, plan

if TYPE_CHECKING:
    from sp.agents.config import AgentConfig

COLUMNS = ("name", "cron", "timezone", "agent", "task", "jitter_ms", "missed", "backfill_max",
           "catchup_window_ms", "overlap", "run_window", "adaptive", "source", "enabled",
           "cursor_ms", "defined_ms", "updated_ms", "fired", "skipped", "last_slot_ms",
           "last_action_id", "version", "seq")
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM schedules"
MAX_JITTER_MS = 7 * 86_400_000


class ScheduleNotFoundError(UsageError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no schedule {name!r} (sp schedule list shows them)")
        self.name = name


def stream_of(name: str) -> str:
    return STREAM_PREFIX + name


def check_name(name: str, where: str = "schedule name") -> str:
    """A schedule's name is qualified (``research-001/daily_arxiv_scan`` for an agent file's
    schedule): each ``/``-separated part obeys :mod:`sp.agents.names`.

    :raises UsageError: not such a name (one line naming ``where``).
    """
    from sp.agents import names

    return names.check_qualified(name, "schedule name", where)


def _row(values: tuple[Any, ...]) -> dict[str, Any]:
    row = dict(zip(COLUMNS, values, strict=True))
    row["enabled"] = bool(row["enabled"])
    row["adaptive"] = bool(row["adaptive"])
    return row


def slots_of(query: Any, row: dict[str, Any]) -> cronlib.Cron:
    """The schedule's slots: its cron expression, or (adaptive) the quietest minute of its
    window each day, learnt from the load samples ``query`` reads.

    :raises UsageError: the expression, zone or window is no longer valid.
    """
    from sp.schedules.adaptive import slots_of as slots

    return slots(row["cron"], row["timezone"], row["run_window"], row["adaptive"], query,
                 row["last_slot_ms"])


def policy_of(row: dict[str, Any]) -> MissedPolicy:
    return MissedPolicy(row["missed"], row["backfill_max"], row["catchup_window_ms"])


def define(store: Ledger, name: str, cron: str | None, agent: str, task: str, *,
           timezone: str | None = None, jitter_ms: int = 0, persistent: bool = False,
           missed: str | None = None, overlap: str = "skip", enabled: bool = True,
           replace: bool = False, by: str = "", window: str | None = None,
           adaptive: bool = False) -> ev.ScheduleDefined:
    """Add a schedule (or redefine one with ``replace``); everything is checked first.

    A ``cron`` expression names its times; or ``window`` with ``adaptive`` runs it once a
    day inside the window at the minute of lowest recorded load (:mod:`sp.schedules.adaptive`).

    :raises UsageError: a bad name, cron expression, zone, jitter or policy; an unknown agent
        or task; the schedule exists and ``replace`` is not set. Nothing is written.
    """
    from sp.agents import names
    from sp.commands import agents

    check_name(name)
    names.check(agent, "agent id", "--agent")
    names.check(task, "task name", "--task")
    cron, window = _adaptive_cron(cron, window, adaptive)
    zone = timezone if timezone is not None else cronlib.local_zone_name()
    now = store.clock.now_ms()
    cronlib.parse(cron, zone, now_ms=now)
    policy = parse_missed(missed, persistent)
    overlap = parse_overlap(overlap)
    if not 0 <= jitter_ms <= MAX_JITTER_MS:
        raise UsageError("--jitter: must be between 0 and 7d")
    agents.task_spec(agents.get(store, agent), task)  # the agent and its task must exist
    event = ev.ScheduleDefined(
        by=by, name=name, cron=" ".join(cron.split()), agent=agent, task=task, timezone=zone,
        jitter_ms=jitter_ms, missed=policy.kind, backfill_max=policy.backfill_max,
        catchup_window_ms=policy.catchup_window_ms, overlap=overlap, enabled=enabled,
        window=window, adaptive=adaptive,
    )
    with store.transaction() as tx:
        found = tx.query_one("SELECT source FROM schedules WHERE name = ?", (name,))
        if found is not None and not replace:
            raise UsageError(f"schedule {name!r} exists; sp schedule add --replace redefines it")
        tx.append(stream_of(name), [event], tx.stream_version(stream_of(name)))
    return event


def _adaptive_cron(cron: str | None, window: str | None, adaptive: bool) -> tuple[str, str]:
    """(cron, window text): an adaptive schedule's cron is its window's start, daily.

    :raises UsageError: neither or both of a cron expression and an adaptive window.
    """
    if window is None and not adaptive:
        if cron is None:
            raise UsageError("give --cron EXPR, or --window HH:MM-HH:MM --adaptive")
        return cron, ""
    if window is None:
        raise UsageError("--adaptive needs --window HH:MM-HH:MM (where it may run)")
    if not adaptive:
        raise UsageError("--window goes with --adaptive (run at the quietest minute in it)")
    if cron is not None:
        raise UsageError("--adaptive picks the time inside --window itself: leave out --cron")
    from sp.schedules.adaptive import parse_window

    parsed = parse_window(window)
    return parsed.daily_cron(), parsed.text()


def _change(store: Ledger, name: str, make: Callable[[], ev.Event],
            skip_if: str | None = None) -> bool:
    with store.transaction() as tx:
        found = tx.query_one("SELECT enabled, version FROM schedules WHERE name = ?", (name,))
        if found is None:
            raise ScheduleNotFoundError(name)
        enabled, version = bool(found[0]), int(found[1])
        if (skip_if == "enabled" and enabled) or (skip_if == "disabled" and not enabled):
            return False
        tx.append(stream_of(name), [make()], version)
    return True


def remove(store: Ledger, name: str, reason: str = "", by: str = "") -> None:
    """Remove a schedule (its history stays in the log). Its queued runs are left alone.

    :raises ScheduleNotFoundError: no such schedule.
    """
    _change(store, name, lambda: ev.ScheduleRemoved(by=by, reason=reason))


def enable(store: Ledger, name: str, by: str = "") -> bool:
    """Enable; slots count from now on. False if it was enabled already."""
    return _change(store, name, lambda: ev.ScheduleEnabled(by=by), skip_if="enabled")


def disable(store: Ledger, name: str, reason: str = "", by: str = "") -> bool:
    """Disable (ticks pass it by). False if it was disabled already."""
    return _change(store, name, lambda: ev.ScheduleDisabled(by=by, reason=reason),
                   skip_if="disabled")


def get(store: Ledger, name: str) -> dict[str, Any]:
    """:raises ScheduleNotFoundError: no such schedule."""
    found = store.query_one(f"{_SELECT} WHERE name = ?", (name,))
    if found is None:
        raise ScheduleNotFoundError(name)
    return _with_next(_row(found), store)


def listing(store: Ledger) -> list[dict[str, Any]]:
    return [_with_next(_row(r), store) for r in store.query(f"{_SELECT} ORDER BY name")]


def _with_next(row: dict[str, Any], store: Ledger) -> dict[str, Any]:
    """Add ``next_slot_ms`` (the first slot after the cursor: due when already past) and the
    missed policy as written."""
    try:
        cron = slots_of(store.query, row)
        row["next_slot_ms"] = cron.next_after(row["cursor_ms"])
    except UsageError:
        row["next_slot_ms"] = None
    row["missed_policy"] = policy_of(row).text()
    return row


def history(store: Ledger, name: str) -> list[dict[str, Any]]:
    """Every event of the schedule's stream (also after it was removed).

    :raises ScheduleNotFoundError: the schedule never existed.
    """
    from sp.projections.queries import details_of

    recorded = store.read_stream(stream_of(name))
    if not recorded:
        raise ScheduleNotFoundError(name)
    return [{"seq": r.seq, "version": r.version, "ts": r.ts, "event": r.type, "by": r.event.by,
             "details": details_of(r.event)} for r in recorded]


# -- firing ------------------------------------------------------------------------------------


class TickReport(msgspec.Struct):
    """What one tick did with the schedules."""

    fired: list[dict[str, Any]] = []  # {"name", "slot_ms", "action_id", "missed"}
    skipped: list[dict[str, Any]] = []  # {"name", "slot_ms", "count", "reason"}
    gap: Gap | None = None
    errors: list[str] = []


def fire_due(store: Ledger, *, by: str = "", rng: random.Random | None = None,
             boot: str | None = None) -> TickReport:
    """Fire every due slot of every enabled schedule, record every skip; one transaction.

    ``rng`` draws the jitter (injected by tests); ``boot`` is the kernel's boot id (read from
    /proc when not given).
    """
    report = TickReport()
    if not any_enabled(store):
        return report  # nothing to do: not even the clock readings (no fsync every minute)
    draw = rng or random.SystemRandom()
    by = by or actions.who("tick")
    with store.transaction() as tx:
        # Read the clock under the write lock: a tick that waited for another one decides
        # with the time it actually runs at, against what that other one recorded.
        now = store.clock.now_ms()
        gap = clockwatch.observe(tx, now, store.clock.monotonic_ms(),
                                 clockwatch.boot_id() if boot is None else boot, os.getpid())
        report.gap = gap
        configs: dict[str, AgentConfig | SpError] = {}
        for values in tx.query(f"{_SELECT} WHERE enabled = 1 ORDER BY name"):
            _fire_one(store, tx, _row(values), now, gap, draw, by, configs, report)
    if report.fired:
        actions._wake(store)
    return report


def _running(tx: LedgerTransaction, action_id: str | None) -> str | None:
    """The action, if it has not finished yet (queued, executing, retrying, interrupted...)."""
    if action_id is None:
        return None
    found = tx.query_one("SELECT state FROM actions WHERE action_id = ?", (action_id,))
    if found is None or ActionState(found[0]) in FINAL:
        return None
    return action_id


def _spec(store: Ledger, row: dict[str, Any],
          configs: dict[str, AgentConfig | SpError]) -> SubmitSpec:
    """The task's action, as the agent is configured now. :raises SpError: it is not."""
    from sp.commands import agents

    config = configs.get(row["agent"])
    if config is None:
        try:
            config = agents.get(store, row["agent"])
        except SpError as e:
            config = e
        configs[row["agent"]] = config
    if isinstance(config, SpError):
        raise config
    return agents.task_spec(config, row["task"])


def _fire_one(store: Ledger, tx: LedgerTransaction, row: dict[str, Any], now: int, gap: Gap,
              draw: random.Random, by: str, configs: dict[str, AgentConfig | SpError],
              report: TickReport) -> None:
    name = row["name"]
    try:
        cron = slots_of(tx.query, row)
    except UsageError as e:  # e.g. the zone vanished from an updated tzdata
        report.errors.append(f"schedule {name}: {e}")
        return
    items = plan(cron, row["cursor_ms"], now, policy_of(row), gap)
    if not items:
        return
    events: list[ev.Event] = []
    # The overlap policy looks at the run that was still going when this tick started: the
    # fires of one tick are one decision (a backfill asks for several runs at once).
    running = _running(tx, row["last_action_id"])
    for item in items:
        if isinstance(item, Skip):
            events.append(ev.ScheduleSkipped(
                by=by, slot_ms=item.slot_ms, reason=item.reason,
                last_slot_ms=item.last_slot_ms if item.last_slot_ms != item.slot_ms else None,
                count=item.slots, more=item.more, cause=item.cause, detail=item.detail))
            report.skipped.append({"name": name, "slot_ms": item.slot_ms, "count": item.slots,
                                   "reason": item.reason})
            continue
        fired = _fire(store, tx, row, item, now, running, draw, by, configs)
        if isinstance(fired, ev.ScheduleFired) and isinstance(cron, AdaptiveDaily):
            fired = msgspec.structs.replace(fired, adaptive=cron.explain(item.slot_ms))
        events.append(fired)
        if isinstance(fired, ev.ScheduleFired):
            report.fired.append({"name": name, "slot_ms": item.slot_ms,
                                 "action_id": fired.action_id, "missed": item.missed})
        else:
            report.skipped.append({"name": name, "slot_ms": item.slot_ms, "count": 1,
                                   "reason": fired.reason})
    tx.append(stream_of(name), events, row["version"])


def _fire(store: Ledger, tx: LedgerTransaction, row: dict[str, Any], item: Fire, now: int,
          running: str | None, draw: random.Random, by: str,
          configs: dict[str, AgentConfig | SpError]) -> ev.ScheduleFired | ev.ScheduleSkipped:
    name, slot = row["name"], item.slot_ms
    if running is not None and row["overlap"] == "skip":
        return ev.ScheduleSkipped(by=by, slot_ms=slot, reason="overlap", cause=item.cause,
                                  running=running,
                                  detail=f"the previous run {running} has not finished")
    key = f"schedule:{name}:{slot}"
    try:
        spec = _spec(store, row, configs)
    except SpError as e:
        return ev.ScheduleSkipped(by=by, slot_ms=slot, reason="error", cause=item.cause,
                                  detail=str(e))
    jitter = draw.randint(0, row["jitter_ms"]) if row["jitter_ms"] > 0 else 0
    delay = max(0, slot + jitter - now)  # RandomizedDelaySec counts from the slot
    spec = msgspec.structs.replace(
        spec, key=key, delay_ms=delay or None,
        env={**spec.env, "SP_SCHEDULE": name, "SP_SCHEDULE_SLOT_MS": str(slot)},
        payload={**spec.payload, "schedule": name, "slot_ms": slot},
    )
    (action_id,) = actions.submit_in(tx, [spec], f"schedule:{name}", [f"schedule {name}"], now)
    return ev.ScheduleFired(by=by, slot_ms=slot, action_id=action_id, late_ms=max(0, now - slot),
                            jitter_ms=jitter, missed=item.missed, cause=item.cause,
                            running=running)


# -- agent files: a task's ``schedule:`` -------------------------------------------------------


def sync_agent_in(tx: LedgerTransaction, agent: AgentConfig, by: str, where: str) -> list[str]:
    """Make the schedules ``<agent>/<task>`` match the tasks' ``schedule:`` fields, inside the
    agent's apply transaction: new ones are defined, changed ones redefined (their zone and
    policies kept), ones gone from the file removed. A schedule of that name that a person
    defined is left alone. Returns the names changed.

    :raises UsageError: a task's schedule is not a valid cron expression.
    """
    source = f"agent:{agent.id}"
    wanted: dict[str, tuple[str, str]] = {}
    for task_name, task in agent.all_tasks().items():
        if task.schedule is None:
            continue
        section = "actions" if task_name in agent.actions else "tasks"
        cronlib.parse(task.schedule, "UTC", now_ms=tx.store.clock.now_ms(),
                      where=f"{where}: $.{section}.{task_name}.schedule")
        wanted[f"{agent.id}/{task_name}"] = (" ".join(task.schedule.split()), task_name)
    cols = ("name, source, cron, task, timezone, jitter_ms, missed, backfill_max,"
            " catchup_window_ms, overlap, enabled")
    existing = {str(r[0]): r for r in tx.query(
        f"SELECT {cols} FROM schedules WHERE source = ?", (source,))}
    for name in wanted:
        if name not in existing:
            other = tx.query_one(f"SELECT {cols} FROM schedules WHERE name = ?", (name,))
            if other is not None:
                existing[name] = other
    changed: list[str] = []
    for name, (cron, task_name) in sorted(wanted.items()):
        found = existing.get(name)
        if found is not None and found[1] != source:
            continue  # a person's schedule of that name
        if found is not None and (found[2], found[3]) == (cron, task_name):
            continue
        if found is None:
            event = ev.ScheduleDefined(by=by, name=name, cron=cron, agent=agent.id,
                                       task=task_name, timezone=cronlib.local_zone_name(),
                                       source=source)
        else:
            event = ev.ScheduleDefined(
                by=by, name=name, cron=cron, agent=agent.id, task=task_name, timezone=found[4],
                jitter_ms=found[5], missed=found[6], backfill_max=found[7],
                catchup_window_ms=found[8], overlap=found[9], source=source,
                enabled=bool(found[10]))
        tx.append(stream_of(name), [event], tx.stream_version(stream_of(name)))
        changed.append(name)
    for name, found in sorted(existing.items()):
        if found[1] == source and name not in wanted:
            tx.append(stream_of(name), [ev.ScheduleRemoved(
                by=by, reason=f"no longer in the file of agent {agent.id}")],
                tx.stream_version(stream_of(name)))
            changed.append(name)
    return changed
