"""Firing schedules on a manual clock: due, late, missed (each policy), overlap, sleep and
restart evidence, jitter, agent files, and replay of it all."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sp.commands import actions, agents, schedules
from sp.commands.home import Home
from sp.ledger import events as ev
from sp.ledger.clock import ManualClock
from sp.ledger.errors import UsageError
from sp.ledger.store import EventStore
from sp.projections import engine

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
START = 1_767_225_600_000  # ManualClock's start: 2026-01-01T00:00:00Z

AGENT = """\
id: a1
actions:
  t:
    command: ["true"]
  other:
    command: ["true"]
"""


@pytest.fixture
def agent(store: EventStore, tmp_path: Path) -> Path:
    path = tmp_path / "a1.yaml"
    path.write_text(AGENT)
    agents.apply(store, path)
    return path


def define(store: EventStore, name: str = "s", cron: str = "0 9 * * *", **kw: Any) -> None:
    kw.setdefault("timezone", "UTC")
    schedules.define(store, name, cron, "a1", "t", **kw)


def history(store: EventStore, name: str = "s") -> list[ev.Event]:
    return [r.event for r in store.read_stream(schedules.stream_of(name))]


def fired(store: EventStore, name: str = "s") -> list[ev.ScheduleFired]:
    return [e for e in history(store, name) if isinstance(e, ev.ScheduleFired)]


def skipped(store: EventStore, name: str = "s") -> list[ev.ScheduleSkipped]:
    return [e for e in history(store, name) if isinstance(e, ev.ScheduleSkipped)]


def scheduled_actions(store: EventStore) -> list[tuple[str, str, str]]:
    return [(str(r[0]), str(r[1]), str(r[2])) for r in store.query(
        "SELECT action_id, idem_key, state FROM actions WHERE idem_key LIKE 'schedule:%'"
        " ORDER BY submitted_seq")]


def finish(store: EventStore) -> None:
    """End every scheduled run (cancelled is final), so the next one does not overlap."""
    for action_id, _, state in scheduled_actions(store):
        if state == "queued":
            actions.cancel(store, action_id)


def at(hhmm: str, day: int = 1) -> int:
    h, m = hhmm.split(":")
    return START + (day - 1) * DAY + int(h) * HOUR + int(m) * MIN


# -- due, late, exactly once ---------------------------------------------------------------------


def test_due_slot_fires_once_and_submits_its_action(store: EventStore, clock: ManualClock,
                                                    agent: Path) -> None:
    define(store)
    clock.advance(9 * HOUR)
    report = schedules.fire_due(store)
    assert [f["slot_ms"] for f in report.fired] == [at("09:00")]
    (f,) = fired(store)
    assert f.slot_ms == at("09:00") and f.late_ms == 0 and not f.missed
    rows = scheduled_actions(store)
    assert rows == [(f.action_id, f"schedule:s:{at('09:00')}", "queued")]
    submitted = store.read_stream(f.action_id)[0].event
    assert isinstance(submitted, ev.ActionSubmitted)
    assert submitted.by == "schedule:s" and submitted.task == "t" and submitted.agent == "a1"
    assert submitted.env["SP_SCHEDULE_SLOT_MS"] == str(at("09:00"))
    # again, at once and a minute later: nothing new
    assert schedules.fire_due(store).fired == []
    clock.advance(MIN)
    assert schedules.fire_due(store).fired == []
    assert len(fired(store)) == 1 and len(scheduled_actions(store)) == 1


def test_a_second_ledger_connection_sees_the_slot_taken(store: EventStore, clock: ManualClock,
                                                        agent: Path, home: Home) -> None:
    """Two ticks (two connections, as two processes have) decide under the write lock: the
    second sees the first's cursor."""
    define(store)
    clock.advance(9 * HOUR)
    other = home.open(clock=clock)
    try:
        assert len(schedules.fire_due(store).fired) == 1
        assert schedules.fire_due(other).fired == []
    finally:
        other.close()
    assert len(fired(store)) == 1 and len(scheduled_actions(store)) == 1


def test_a_late_tick_fires_once(store: EventStore, clock: ManualClock, agent: Path) -> None:
    define(store)
    clock.advance(9 * HOUR + 3 * MIN + 20_000)
    assert len(schedules.fire_due(store).fired) == 1
    (f,) = fired(store)
    assert f.slot_ms == at("09:00") and f.late_ms == 3 * MIN + 20_000 and not f.missed
    clock.advance(MIN)
    assert schedules.fire_due(store).fired == []


def test_a_slot_before_the_schedule_existed_never_fires(store: EventStore, clock: ManualClock,
                                                        agent: Path) -> None:
    clock.advance(9 * HOUR + MIN)
    define(store, persistent=True)
    clock.advance(MIN)
    assert schedules.fire_due(store).fired == [] and history(store)[1:] == []


def test_every_minute_over_many_ticks(store: EventStore, clock: ManualClock,
                                      agent: Path) -> None:
    define(store, cron="* * * * *")
    for _ in range(10):
        clock.advance(MIN)
        assert len(schedules.fire_due(store).fired) == 1
        finish(store)
    assert [f.slot_ms for f in fired(store)] == [START + i * MIN for i in range(1, 11)]
    assert skipped(store) == []


# -- missed runs ---------------------------------------------------------------------------------


def test_not_persistent_power_off_skips_and_records_it(store: EventStore, clock: ManualClock,
                                                       agent: Path) -> None:
    define(store)
    clock.advance(8 * HOUR)
    schedules.fire_due(store)  # the last tick before the power went off
    clock.advance(4 * HOUR)  # off from 08:00 to 12:00
    report = schedules.fire_due(store)
    assert report.fired == []
    (s,) = skipped(store)
    assert (s.slot_ms, s.reason, s.cause, s.count) == (at("09:00"), "missed", "no_tick", 1)
    assert scheduled_actions(store) == []
    clock.advance(DAY - 3 * HOUR)  # the next day's 09:00 is on time again
    assert len(schedules.fire_due(store).fired) == 1


def test_persistent_power_off_fires_once_on_the_next_tick(store: EventStore,
                                                          clock: ManualClock,
                                                          agent: Path) -> None:
    define(store, persistent=True)
    clock.advance(3 * DAY + 12 * HOUR)  # off for three and a half days: four 09:00 slots
    schedules.fire_due(store)
    (f,) = fired(store)
    assert f.slot_ms == at("09:00", day=4) and f.missed and f.cause == "no_tick"
    (s,) = skipped(store)
    assert (s.slot_ms, s.last_slot_ms, s.count, s.reason) == (
        at("09:00", day=1), at("09:00", day=3), 3, "missed")
    assert len(scheduled_actions(store)) == 1
    clock.advance(MIN)
    assert schedules.fire_due(store).fired == []


@pytest.mark.parametrize(("missed", "fired_days", "skip"), [
    ("skip", [], ("missed", 1, 4)),
    ("run_once", [4], ("missed", 1, 3)),
    ("backfill:2", [3, 4], ("backfill_limit", 1, 2)),
    ("backfill:9", [1, 2, 3, 4], None),
    ("catchup:30h", [3, 4], ("outside_window", 1, 2)),
])
def test_missed_run_policies(store: EventStore, clock: ManualClock, agent: Path, missed: str,
                             fired_days: list[int], skip: tuple[str, int, int] | None) -> None:
    define(store, missed=missed)
    clock.advance(3 * DAY + 12 * HOUR)
    schedules.fire_due(store)
    assert [f.slot_ms for f in fired(store)] == [at("09:00", d) for d in fired_days]
    assert all(f.missed for f in fired(store))
    if skip is None:
        assert skipped(store) == []
    else:
        (s,) = skipped(store)
        reason, first_day, count = skip
        assert (s.reason, s.slot_ms, s.count) == (reason, at("09:00", first_day), count)
    assert len(scheduled_actions(store)) == len(fired_days)


def test_disabled_slots_are_not_missed(store: EventStore, clock: ManualClock,
                                       agent: Path) -> None:
    define(store, persistent=True)
    assert schedules.disable(store, "s") is True and schedules.disable(store, "s") is False
    clock.advance(12 * HOUR)
    assert schedules.fire_due(store).fired == []
    assert schedules.enable(store, "s") is True
    clock.advance(MIN)
    schedules.fire_due(store)
    assert fired(store) == [] and skipped(store) == []
    clock.advance(DAY - 3 * HOUR - MIN)  # the next day at 09:00
    assert len(schedules.fire_due(store).fired) == 1


# -- overlap -------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", ["skip", "queue", "allow"])
def test_overlap_policies(store: EventStore, clock: ManualClock, agent: Path,
                          overlap: str) -> None:
    define(store, cron="*/10 * * * *", overlap=overlap)
    clock.advance(10 * MIN)
    schedules.fire_due(store)
    (first,) = fired(store)
    clock.advance(10 * MIN)  # the first run is still queued
    schedules.fire_due(store)
    if overlap == "skip":
        (s,) = skipped(store)
        assert (s.reason, s.running, s.slot_ms) == ("overlap", first.action_id, START + 20 * MIN)
        assert len(scheduled_actions(store)) == 1
    else:
        second = fired(store)[1]
        assert second.running == first.action_id and skipped(store) == []
        assert len(scheduled_actions(store)) == 2
    finish(store)
    clock.advance(10 * MIN)  # nothing runs any more: the next slot fires whatever the policy
    schedules.fire_due(store)
    assert fired(store)[-1].slot_ms == START + 30 * MIN and fired(store)[-1].running is None


def test_a_backfill_is_not_an_overlap_of_itself(store: EventStore, clock: ManualClock,
                                                agent: Path) -> None:
    define(store, missed="backfill:3")
    clock.advance(3 * DAY)
    schedules.fire_due(store)
    assert len(fired(store)) == 3 and all(f.running is None for f in fired(store))


# -- sleep and restart evidence ------------------------------------------------------------------


def test_suspend_is_treated_as_missed_runs_not_a_burst(store: EventStore, clock: ManualClock,
                                                       agent: Path) -> None:
    define(store, cron="*/10 * * * *", overlap="allow")
    clock.advance(MIN)
    schedules.fire_due(store)  # a tick records the clocks
    clock.advance(30_000)
    clock.jump(8 * HOUR)  # suspended overnight: the monotonic clock stood still
    clock.advance(30_000)
    report = schedules.fire_due(store)
    assert report.gap is not None and report.gap.cause == "suspended"
    assert report.gap.asleep_ms == 8 * HOUR
    assert report.fired == []
    (s,) = skipped(store)
    assert (s.reason, s.cause, s.count) == ("missed", "suspended", 48)


def test_a_short_suspend_turns_an_on_time_slot_into_a_missed_one(store: EventStore,
                                                                 clock: ManualClock,
                                                                 agent: Path) -> None:
    define(store, cron="*/10 * * * *", persistent=True)
    clock.advance(9 * MIN)
    schedules.fire_due(store)
    clock.advance(30_000)
    clock.jump(3 * MIN)
    clock.advance(30_000)  # 00:13: the 00:10 slot is 3 min old but fell in the sleep
    schedules.fire_due(store)
    (f,) = fired(store)
    assert f.slot_ms == START + 10 * MIN and f.missed and f.cause == "suspended"


def test_awake_the_same_slot_is_just_late(store: EventStore, clock: ManualClock,
                                          agent: Path) -> None:
    define(store, cron="*/10 * * * *", persistent=True)
    clock.advance(9 * MIN)
    schedules.fire_due(store)
    clock.advance(4 * MIN)
    schedules.fire_due(store)
    (f,) = fired(store)
    assert not f.missed and f.cause == "" and f.late_ms == 3 * MIN


def test_a_restart_is_detected_and_its_downtime_missed(store: EventStore, clock: ManualClock,
                                                      agent: Path) -> None:
    define(store, cron="*/10 * * * *")
    clock.advance(9 * MIN)
    schedules.fire_due(store, boot="boot-1")
    clock.advance(2 * MIN)  # 00:11, with a reboot at 00:10:30: the 00:10 slot fell while off
    clock._mono = 30_000  # the monotonic clock starts again at boot
    report = schedules.fire_due(store, boot="boot-2")
    assert report.gap is not None and report.gap.cause == "restarted"
    assert report.gap.awake_ms == 30_000
    (s,) = skipped(store)
    assert (s.slot_ms, s.reason, s.cause) == (START + 10 * MIN, "missed", "restarted")


# -- jitter --------------------------------------------------------------------------------------


def test_jitter_is_drawn_within_bounds_recorded_and_applied(store: EventStore,
                                                            clock: ManualClock,
                                                            agent: Path) -> None:
    define(store, cron="* * * * *", jitter_ms=5 * MIN, overlap="allow")
    rng = random.Random(7)
    for _ in range(40):
        clock.advance(MIN)
        schedules.fire_due(store, rng=rng)
    draws = [f.jitter_ms for f in fired(store)]
    assert len(draws) == 40 and all(0 <= d <= 5 * MIN for d in draws)
    assert len(set(draws)) > 30  # drawn, not constant
    again = random.Random(7)
    assert draws == [again.randint(0, 5 * MIN) for _ in range(40)]
    for f in fired(store):
        row = store.query_one("SELECT not_before_ms FROM actions WHERE action_id = ?",
                              (f.action_id,))
        assert row is not None
        assert row[0] == (f.slot_ms + f.jitter_ms if f.jitter_ms else None)


def test_replay_rebuilds_the_same_schedules_from_the_recorded_draws(store: EventStore,
                                                                    clock: ManualClock,
                                                                    agent: Path) -> None:
    define(store, cron="*/5 * * * *", jitter_ms=MIN, missed="backfill:2", overlap="queue")
    define(store, name="s2", cron="0 * * * *", persistent=True)
    for step in (7 * MIN, 3 * HOUR, 30_000, 9 * MIN):
        clock.advance(step)
        schedules.fire_due(store)
    schedules.disable(store, "s2")
    before = store.query("SELECT * FROM schedules ORDER BY name")
    runs = store.query("SELECT * FROM schedule_runs ORDER BY seq")
    _, diff = engine.check(store)
    assert diff is None
    engine.rebuild(store)
    assert store.query("SELECT * FROM schedules ORDER BY name") == before
    assert store.query("SELECT * FROM schedule_runs ORDER BY seq") == runs


# -- definitions ---------------------------------------------------------------------------------


def test_bad_definitions_write_nothing(store: EventStore, agent: Path) -> None:
    seq = store.head()[0]
    for kw, message in [
        ({"cron": "0 25 * * *"}, "is not a valid cron expression"),
        ({"timezone": "Nowhere/Land"}, "unknown time zone"),
        ({"task": "nope"}, "agent a1 has no task 'nope'"),
        ({"agent": "ghost"}, "no agent 'ghost'"),
        ({"missed": "always"}, "expected skip, run_once"),
        ({"overlap": "sometimes"}, "expected skip, queue or allow"),
        ({"name": "bad name"}, "schedule name 'bad name'"),
        ({"jitter_ms": -1}, "--jitter"),
    ]:
        args: dict[str, Any] = {"name": "s", "cron": "0 9 * * *", "agent": "a1", "task": "t",
                                "timezone": "UTC", **kw}
        with pytest.raises(UsageError, match=message):
            schedules.define(store, args.pop("name"), args.pop("cron"), args.pop("agent"),
                             args.pop("task"), **args)
    assert store.head()[0] == seq


def test_add_twice_needs_replace_and_rm_keeps_history(store: EventStore, clock: ManualClock,
                                                      agent: Path) -> None:
    define(store)
    with pytest.raises(UsageError, match="exists"):
        define(store)
    define(store, cron="0 10 * * *", replace=True)
    assert schedules.get(store, "s")["cron"] == "0 10 * * *"
    schedules.remove(store, "s", reason="done")
    with pytest.raises(schedules.ScheduleNotFoundError):
        schedules.get(store, "s")
    assert [h["event"] for h in schedules.history(store, "s")] == [
        "schedule.defined", "schedule.defined", "schedule.removed"]
    define(store)  # the name can be used again; its stream goes on
    assert schedules.get(store, "s")["version"] == 4
    with pytest.raises(schedules.ScheduleNotFoundError):
        schedules.remove(store, "ghost")


def test_a_task_gone_from_the_agent_is_recorded_as_an_error(store: EventStore,
                                                            clock: ManualClock, agent: Path,
                                                            tmp_path: Path) -> None:
    define(store)
    agent.write_text(AGENT.replace("  t:\n", "  renamed:\n"))
    agents.apply(store, agent)
    clock.advance(9 * HOUR)
    schedules.fire_due(store)
    (s,) = skipped(store)
    assert s.reason == "error" and "has no task 't'" in s.detail


# -- agent files ---------------------------------------------------------------------------------


def test_agent_file_schedules_are_kept_in_step(store: EventStore, clock: ManualClock,
                                               tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(AGENT.replace("  t:\n", '  t:\n    schedule: "0 9 * * *"\n'))
    agents.apply(store, path)
    row = schedules.get(store, "a1/t")
    assert (row["cron"], row["source"], row["task"]) == ("0 9 * * *", "agent:a1", "t")
    schedules.disable(store, "a1/t")
    path.write_text(AGENT.replace("  t:\n", '  t:\n    schedule: "@hourly"\n'))
    agents.apply(store, path)
    row = schedules.get(store, "a1/t")
    assert row["cron"] == "@hourly" and row["enabled"] is False  # settings kept
    path.write_text(AGENT)
    agents.apply(store, path)
    with pytest.raises(schedules.ScheduleNotFoundError):
        schedules.get(store, "a1/t")
    path.write_text(AGENT.replace("  t:\n", '  t:\n    schedule: "0 99 * * *"\n'))
    seq = store.head()[0]
    with pytest.raises(UsageError, match=r"\$\.actions\.t\.schedule: '0 99 \* \* \*' is not"):
        agents.apply(store, path)
    assert store.head()[0] == seq


def test_events_round_trip() -> None:
    event = ev.ScheduleSkipped(slot_ms=1, reason="overlap", running="abc")
    data = msgspec.json.encode(event)
    assert msgspec.json.decode(data, type=ev.AnyEvent) == event
    assert b'"type":"schedule.skipped"' in data
