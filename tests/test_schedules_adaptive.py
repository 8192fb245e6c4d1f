"""Adaptive schedules on a manual clock with synthetic load samples: the quiet minute is
picked, the schedule fires once a day, falls back to the window's start without history; and
the load source that records the samples."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from sp.agents.trigger_file import TriggerFile, decode_triggers
from sp.commands import actions, agents, schedules
from sp.commands.home import Home
from sp.ledger import events as ev
from sp.ledger.clock import ManualClock
from sp.ledger.errors import UsageError
from sp.ledger.store import EventStore
from sp.schedules import adaptive
from sp.schedules import load_samples as load
from sp.schedules.adaptive import AdaptiveDaily, Window, choose, parse_window
from sp.triggers import load_source
from sp.triggers.sources import SourceContext
from tests.conftest import Sp
from tests.triggerkit import running, wait_for

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
START = 1_767_225_600_000  # ManualClock's start: 2026-01-01T00:00:00Z
UTC = ZoneInfo("UTC")

AGENT = """\
id: db-001
actions:
  reindex:
    command: ["true"]
"""


def at(hhmm: str, day: int = 1) -> int:
    h, m = hhmm.split(":")
    return START + (day - 1) * DAY + int(h) * HOUR + int(m) * MIN


@pytest.fixture
def agent(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "db.yaml"
    path.write_text(AGENT)
    agents.apply(store, path)


def add_samples(store: EventStore, day: int, loads: dict[str, float],
                default: float = 1.0, window: tuple[str, str] = ("01:00", "05:00")) -> None:
    """A sample every minute of the window on ``day`` (relative to 2026-01-01 = 1): ``default``
    load except at the minutes named in ``loads``."""
    start, end = at(window[0], day), at(window[1], day)
    with store.transaction() as tx:
        for ts in range(start, end, MIN):
            minute = f"{(ts - START) % DAY // HOUR:02d}:{(ts - START) % HOUR // MIN:02d}"
            load.record(tx, ts, loads.get(minute, default), 10.0)


def move_to(clock: ManualClock, ms: int) -> None:
    assert ms >= clock.now_ms()
    clock.advance(ms - clock.now_ms())


def tick(store: EventStore) -> list[int]:
    return [f["slot_ms"] for f in schedules.fire_due(store, boot="boot").fired]


def cancel_runs(store: EventStore) -> None:
    for (action_id,) in store.query("SELECT action_id FROM actions WHERE state = 'queued'"):
        actions.cancel(store, action_id)


def fires(store: EventStore, name: str = "quiet") -> list[ev.ScheduleFired]:
    return [r.event for r in store.read_stream(schedules.stream_of(name))
            if isinstance(r.event, ev.ScheduleFired)]


# -- pure parts --------------------------------------------------------------------------------


def test_windows_parse() -> None:
    assert parse_window("01:00-05:00") == Window(60, 240)
    assert parse_window(" 22:30-02:00 ") == Window(1350, 210)
    assert parse_window("1:00-5:00").text() == "01:00-05:00"
    assert Window(60, 240).daily_cron() == "0 1 * * *"
    for bad in ("25:00-01:00", "01:00", "01:00-01:00", "1-5", "01:60-02:00"):
        with pytest.raises(UsageError, match="--window"):
            parse_window(bad)


def test_choose_the_quietest_minute_deterministically() -> None:
    window = parse_window("01:00-05:00")
    day = date(2026, 1, 1)
    samples = [(ts, 0.2 if (ts - START) % DAY == 3 * HOUR + 17 * MIN else 1.5, 5.0)
               for ts in range(at("00:00", -2), at("00:00", 1), MIN)]
    choice = choose(window, day, UTC, samples)
    assert choice.slot_ms == at("03:17") and choice.basis == "load_history"
    assert choice.load1 == pytest.approx(0.2) and choice.samples == 3 * 240
    assert choose(window, day, UTC, list(reversed(samples))) == choice  # order does not matter
    # A tie on load goes to the lower CPU, then to the earlier minute.
    flat = [(at("02:00", 0), 1.0, 9.0), (at("03:00", 0), 1.0, 4.0), (at("04:00", 0), 1.0, 4.0)]
    assert choose(window, day, UTC, flat).slot_ms == at("03:00")
    # Samples outside the window do not count; without any the window's start is the slot.
    none = choose(window, day, UTC, [(at("06:00", 0), 0.0, 0.0)])
    assert (none.slot_ms, none.basis, none.samples) == (at("01:00"), "window_start", 0)


def test_a_window_across_midnight() -> None:
    window = parse_window("23:00-02:00")
    samples = [(at("23:30", 0), 3.0, 1.0), (at("01:45", 1), 0.5, 1.0)]
    choice = choose(window, date(2026, 1, 1), UTC, samples)
    assert choice.slot_ms == at("01:45", 2)  # the window opening on Jan 1 ends on Jan 2


def test_local_time_in_the_schedules_zone() -> None:
    paris = ZoneInfo("Europe/Paris")  # UTC+1 in January
    window = parse_window("01:00-05:00")
    samples = [(at("02:30", 0), 0.1, 1.0)]  # 03:30 in Paris
    assert choose(window, date(2026, 1, 1), paris, samples).slot_ms == at("02:30")


# -- firing ------------------------------------------------------------------------------------


def test_it_fires_once_a_day_at_the_quietest_minute(store: EventStore, clock: ManualClock,
                                                    agent: None) -> None:
    for day in (-2, -1, 0):  # three days of history: 03:17 is the quiet minute
        add_samples(store, day, {"03:17": 0.1})
    schedules.define(store, "quiet", None, "db-001", "reindex", timezone="UTC",
                     window="01:00-05:00", adaptive=True)
    assert schedules.get(store, "quiet")["next_slot_ms"] == at("03:17")
    for hhmm in ("01:00", "02:00", "03:16"):
        move_to(clock, at(hhmm))
        assert tick(store) == []
    move_to(clock, at("03:17"))
    assert tick(store) == [at("03:17")]
    for hhmm in ("03:18", "04:59", "23:59"):
        move_to(clock, at(hhmm))
        assert tick(store) == []
    (fired,) = fires(store)
    assert fired.slot_ms == at("03:17") and fired.late_ms == 0
    assert fired.adaptive == {"basis": "load_history", "window": "01:00-05:00",
                              "minute": "03:17", "load1": 0.1, "cpu_pct": 10.0,
                              "samples": 3 * 240, "days": adaptive.LEARN_DAYS}

    # Day 1 was busy at 03:17 and idle at 02:05: day 2 learns it (4 days: 02:05 averages 0.75,
    # 03:17 2.575, the rest 1.0). Day 1's own choice does not move: it read only earlier days.
    add_samples(store, 1, {"03:17": 10.0, "02:05": 0.0})
    cancel_runs(store)  # day 1's run finished (else day 2's would be an overlap, skipped)
    cron = schedules.slots_of(store.query, schedules.get(store, "quiet"))
    assert isinstance(cron, AdaptiveDaily)
    assert cron.choice(date(2026, 1, 1)).slot_ms == at("03:17")
    assert cron.choice(date(2026, 1, 2)).slot_ms == at("02:05", 2)
    for hhmm in ("01:00", "02:04", "02:05", "02:06", "03:17", "04:59"):
        move_to(clock, at(hhmm, 2))
        tick(store)
    assert [f.slot_ms for f in fires(store)] == [at("03:17"), at("02:05", 2)]
    assert fires(store)[1].adaptive["minute"] == "02:05"
    keys = store.query("SELECT idem_key FROM actions ORDER BY submitted_seq")
    assert keys == [(f"schedule:quiet:{at('03:17')}",), (f"schedule:quiet:{at('02:05', 2)}",)]


def test_without_history_it_runs_at_the_windows_start(store: EventStore, clock: ManualClock,
                                                      agent: None) -> None:
    schedules.define(store, "quiet", None, "db-001", "reindex", timezone="UTC",
                     window="01:00-05:00", adaptive=True)
    move_to(clock, at("01:00"))
    assert tick(store) == [at("01:00")]
    (fired,) = fires(store)
    assert fired.adaptive == {"basis": "window_start", "window": "01:00-05:00",
                              "minute": "01:00", "samples": 0, "days": adaptive.LEARN_DAYS}


def test_samples_arriving_late_never_fire_a_day_twice(store: EventStore, clock: ManualClock,
                                                     agent: None) -> None:
    schedules.define(store, "quiet", None, "db-001", "reindex", timezone="UTC",
                     window="01:00-05:00", adaptive=True)
    move_to(clock, at("01:00"))
    assert tick(store) == [at("01:00")]  # no history: the window's start
    cancel_runs(store)
    add_samples(store, 0, {"03:00": 0.0})  # yesterday's samples, recorded only now
    for hhmm in ("02:59", "03:00", "03:01", "04:59"):
        move_to(clock, at(hhmm))
        assert tick(store) == []
    move_to(clock, at("03:00", 2))
    assert tick(store) == [at("03:00", 2)]  # the next day learns from them


def test_a_day_missed_follows_the_missed_run_policy(store: EventStore, clock: ManualClock,
                                                    agent: None) -> None:
    schedules.define(store, "quiet", None, "db-001", "reindex", timezone="UTC",
                     window="01:00-05:00", adaptive=True)
    move_to(clock, at("12:00", 3))  # nothing ticked for two days
    assert tick(store) == []
    skipped = [r.event for r in store.read_stream(schedules.stream_of("quiet"))
               if isinstance(r.event, ev.ScheduleSkipped)]
    assert [(s.slot_ms, s.last_slot_ms, s.count, s.reason) for s in skipped] == [
        (at("01:00"), at("01:00", 3), 3, "missed")]
    move_to(clock, at("01:00", 4))
    assert tick(store) == [at("01:00", 4)]


def test_redefining_as_cron_and_the_listing(store: EventStore, clock: ManualClock,
                                            agent: None) -> None:
    schedules.define(store, "quiet", None, "db-001", "reindex", timezone="UTC",
                     window="22:00-02:00", adaptive=True)
    row = schedules.get(store, "quiet")
    assert (row["cron"], row["run_window"], row["adaptive"]) == ("0 22 * * *", "22:00-02:00",
                                                                  True)
    schedules.define(store, "quiet", "0 3 * * *", "db-001", "reindex", timezone="UTC",
                     replace=True)
    row = schedules.get(store, "quiet")
    assert (row["cron"], row["run_window"], row["adaptive"]) == ("0 3 * * *", "", False)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"window": "01:00-05:00"}, "--window goes with --adaptive"),
    ({"adaptive": True}, "--adaptive needs --window"),
    ({"cron": "0 1 * * *", "window": "01:00-05:00", "adaptive": True}, "leave out --cron"),
    ({}, "give --cron EXPR, or --window HH:MM-HH:MM --adaptive"),
    ({"window": "01:00-01:00", "adaptive": True}, "is empty"),
])
def test_bad_adaptive_definitions_write_nothing(store: EventStore, agent: None,
                                                kwargs: dict[str, object], message: str) -> None:
    before = store.head()
    cron = kwargs.pop("cron", None)
    with pytest.raises(UsageError, match=message):
        schedules.define(store, "quiet", cron, "db-001", "reindex", **kwargs)  # type: ignore[arg-type]
    assert store.head() == before


def test_the_cli(sp: Sp, tmp_path: Path) -> None:
    path = tmp_path / "db.yaml"
    path.write_text(AGENT)
    sp("agent", "apply", str(path))
    result = sp("schedule", "add", "quiet", "--window", "01:00-05:00", "--adaptive",
                "--agent", "db-001", "--task", "reindex", "--timezone", "UTC")
    assert result.stdout == "quiet\n"
    assert result.stderr == "schedule quiet: adaptive in 01:00-05:00 (UTC) runs db-001/reindex\n"
    listing = sp("schedule", "list").stdout
    assert "adaptive 01:00-05:00" in listing
    shown = sp("schedule", "show", "quiet").stdout
    assert "run_window:      01:00-05:00" in shown and "adaptive:        True" in shown
    bad = sp("schedule", "add", "x", "--window", "01:00-05:00", "--agent", "db-001", "--task",
             "reindex", ok=False)
    assert bad.exit_code == 2
    assert bad.stderr == ("Error: --window goes with --adaptive (run at the quietest minute "
                          "in it)\n")


# -- the load source ---------------------------------------------------------------------------


@pytest.fixture
def ctx(home: Home, clock: ManualClock) -> Iterator[SourceContext]:
    context = SourceContext(home, TriggerFile(), clock)
    yield context
    context.close()


def test_samples_are_recorded_and_kept_for_30_days(store: EventStore, clock: ManualClock,
                                                   ctx: SourceContext) -> None:
    assert load.samples_between(store.query, 0, 2 * START) == []  # no table yet: no samples
    source = load_source.LoadSource()
    source.sample(ctx, reading=(0.5, 12.0))
    clock.advance(29 * DAY)
    source.sample(ctx, reading=(1.5, 50.0))
    assert load.samples_between(store.query, 0, 2 * START) == [
        (START, 0.5, 12.0), (START + 29 * DAY, 1.5, 50.0)]
    clock.advance(2 * DAY)
    source.sample(ctx)  # a real reading of this machine
    rows = load.samples_between(store.query, 0, 2 * START)
    assert [r[0] for r in rows] == [START + 29 * DAY, START + 31 * DAY]
    assert rows[1][1] >= 0 and 0 <= rows[1][2] <= 100


def test_the_load_source_runs_unless_disabled(store: EventStore, home: Home) -> None:
    assert [s.name for s in load_source.build(decode_triggers({}, "t"), SourceContext(home,
                                       TriggerFile()))] == ["load"]
    assert load_source.build(decode_triggers({"load_samples": False}, "t"),
                      SourceContext(home, TriggerFile())) == []
    source = load_source.LoadSource(every_ms=20)
    with running(source, home, TriggerFile()):
        wait_for(lambda: source.recorded >= 3)
    assert len(load.samples_between(store.query, 0, 1 << 62)) >= 3
