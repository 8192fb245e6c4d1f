"""Cron maths, time zones, missed-run planning, clock evidence and the OnCalendar translator:
pure functions, no ledger."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from sp.ledger.errors import UsageError
from sp.schedules import clockwatch, cron, systemd
from sp.schedules.slots import Fire, Gap, MissedPolicy, Skip, parse_missed, parse_overlap, plan

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR


def ms(text: str, tz: str = "UTC") -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp() * 1000)


def iso(value: int, tz: str = "UTC") -> str:
    return datetime.fromtimestamp(value / 1000, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M%z")


# -- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "message"), [
    ("61 * * * *", "--cron: '61 * * * *' is not a valid cron expression: "),
    ("* * *", "--cron: '* * *' has 3 field(s); expected 5"),
    ("0 9 * * * *", "--cron: '0 9 * * * *' has 6 field(s); expected 5"),
    ("0 0 30 2 *", "--cron: '0 0 30 2 *' never matches any date"),
    ("@reboot", "--cron: @reboot is not a time"),
    ("@sometimes", "--cron: unknown macro '@sometimes'"),
    ("0 9 * foo *", "--cron: '0 9 * foo *' is not a valid cron expression: "),
])
def test_bad_expressions_are_refused_with_the_reason(expr: str, message: str) -> None:
    with pytest.raises(UsageError) as e:
        cron.parse(expr, "UTC", now_ms=ms("2026-01-01T00:00"))
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "/etc/localtime"])
def test_bad_zones_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="--timezone"):
        cron.parse("0 9 * * *", name)


def test_local_zone_is_a_real_zone() -> None:
    assert ZoneInfo(cron.local_zone_name())


def test_next_and_back_in_utc() -> None:
    c = cron.parse("*/15 8-9 * * mon-fri", "UTC")
    # 2026-01-02 is a Friday, 2026-01-03 a Saturday
    assert [iso(s) for s in c.upcoming(ms("2026-01-02T09:40"), 3)] == [
        "2026-01-02 09:45+0000", "2026-01-05 08:00+0000", "2026-01-05 08:15+0000"]
    back, more = c.slots_back(ms("2026-01-02T09:00"), ms("2026-01-02T08:20"), 100)
    assert [iso(s) for s in back] == ["2026-01-02 09:00+0000", "2026-01-02 08:45+0000",
                                      "2026-01-02 08:30+0000"]  # (after, now]: now included
    assert more is False
    limited, more = c.slots_back(ms("2026-01-02T09:00"), ms("2026-01-01T00:00"), 2)
    assert len(limited) == 2 and more is True


def test_macros() -> None:
    c = cron.parse("@daily", "UTC")
    assert iso(c.next_after(ms("2026-01-01T00:00")) or 0) == "2026-01-02 00:00+0000"
    assert cron.parse("@hourly", "UTC").fields == ["0", "*", "*", "*", "*"]


def test_time_zone_is_honoured() -> None:
    c = cron.parse("0 9 * * *", "Europe/Paris")
    assert iso(c.next_after(ms("2026-01-01T00:00")) or 0) == "2026-01-01 08:00+0000"
    assert iso(c.next_after(ms("2026-07-01T00:00")) or 0) == "2026-07-01 07:00+0000"


def test_dst_autumn_fixed_time_runs_once_wildcard_runs_twice() -> None:
    paris = "Europe/Paris"
    fixed = cron.parse("30 2 * * *", paris)
    back, _ = fixed.slots_back(ms("2026-10-25T12:00", paris), ms("2026-10-24T12:00", paris), 10)
    assert [iso(s, paris) for s in back] == ["2026-10-25 02:30+0200"]
    assert fixed.upcoming(ms("2026-10-25T00:00", paris), 2) == [
        ms("2026-10-25T02:30", paris), ms("2026-10-26T02:30", paris)]
    wild = cron.parse("30 * * * *", paris)
    back, _ = wild.slots_back(ms("2026-10-25T03:59", paris), ms("2026-10-25T01:59", paris), 10)
    assert [iso(s, paris) for s in reversed(back)] == [
        "2026-10-25 02:30+0200", "2026-10-25 02:30+0100", "2026-10-25 03:30+0100"]


def test_dst_spring_skipped_time_runs_right_after() -> None:
    paris = "Europe/Paris"
    c = cron.parse("30 2 * * *", paris)
    assert iso(c.next_after(ms("2026-03-29T00:00", paris)) or 0, paris) == "2026-03-29 03:00+0200"


# -- policies ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "persistent", "policy"), [
    (None, False, MissedPolicy("skip")),
    (None, True, MissedPolicy("run_once")),
    ("run_once", True, MissedPolicy("run_once")),
    ("backfill:3", False, MissedPolicy("backfill", backfill_max=3)),
    ("catchup:2h", True, MissedPolicy("catchup", catchup_window_ms=2 * HOUR)),
    ("catchup_window:30m", False, MissedPolicy("catchup", catchup_window_ms=30 * MIN)),
])
def test_missed_policies_parse(text: str | None, persistent: bool, policy: MissedPolicy) -> None:
    assert parse_missed(text, persistent) == policy
    assert parse_missed(policy.text(), persistent) == policy


@pytest.mark.parametrize(("text", "persistent", "message"), [
    ("sometimes", False, "expected skip, run_once, backfill:N or catchup:WINDOW"),
    ("skip", True, "skip contradicts --persistent"),
    ("backfill", False, "backfill needs a limit"),
    ("backfill:0", False, "backfill:N needs N between 1 and 1000"),
    ("catchup:soon", False, "catchup window"),
    ("run_once:3", False, "run_once takes no argument"),
])
def test_bad_missed_policies(text: str, persistent: bool, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_missed(text, persistent)


def test_overlap_policies() -> None:
    assert [parse_overlap(p) for p in ("skip", "Queue", "allow")] == ["skip", "queue", "allow"]
    with pytest.raises(UsageError, match="expected skip, queue or allow"):
        parse_overlap("maybe")


# -- planning ------------------------------------------------------------------------------------

DAILY = cron.parse("0 9 * * *", "UTC")
START = ms("2026-01-01T00:00")


def test_on_time_and_late_slots_fire() -> None:
    assert plan(DAILY, START, ms("2026-01-01T09:00"), MissedPolicy(), Gap()) == [
        Fire(ms("2026-01-01T09:00"), False, "")]
    assert plan(DAILY, START, ms("2026-01-01T09:04"), MissedPolicy(), Gap()) == [
        Fire(ms("2026-01-01T09:00"), False, "")]
    assert plan(DAILY, ms("2026-01-01T09:00"), ms("2026-01-01T09:04"), MissedPolicy(),
                Gap()) == []  # the cursor is past it


def test_missed_slots_follow_the_policy() -> None:
    now = ms("2026-01-04T12:00")  # four 09:00 slots missed: Jan 1..4
    slots = [ms(f"2026-01-0{d}T09:00") for d in (1, 2, 3, 4)]
    assert plan(DAILY, START, now, MissedPolicy("skip"), Gap()) == [
        Skip(slots[0], slots[3], 4, False, "missed", "no_tick", "")]
    assert plan(DAILY, START, now, MissedPolicy("run_once"), Gap()) == [
        Skip(slots[0], slots[2], 3, False, "missed", "no_tick",
             "run_once: only the latest missed slot runs"),
        Fire(slots[3], True, "no_tick")]
    assert plan(DAILY, START, now, MissedPolicy("backfill", backfill_max=2), Gap()) == [
        Skip(slots[0], slots[1], 2, False, "backfill_limit", "no_tick",
             "backfill: at most 2 missed slots run"),
        Fire(slots[2], True, "no_tick"), Fire(slots[3], True, "no_tick")]
    assert plan(DAILY, START, now, MissedPolicy("catchup", catchup_window_ms=30 * HOUR),
                Gap()) == [
        Skip(slots[0], slots[1], 2, False, "outside_window", "no_tick",
             "catchup: only missed slots within 30h run"),
        Fire(slots[2], True, "no_tick"), Fire(slots[3], True, "no_tick")]
    everything = plan(DAILY, START, now, MissedPolicy("backfill", backfill_max=10), Gap())
    assert everything == [Fire(s, True, "no_tick") for s in slots]


def test_a_huge_outage_is_bounded_and_counted_as_a_lower_bound() -> None:
    minutely = cron.parse("* * * * *", "UTC")
    out = plan(minutely, START, START + 30 * DAY, MissedPolicy("run_once"), Gap(), limit=50)
    skip, fire, *on_time = out
    # 50 slots looked at: 6 on time (now and the 5 minutes before), 1 run, 43 skipped, and
    # at least one older that was never looked at
    assert isinstance(skip, Skip) and skip.more and skip.slots == 44
    assert skip.slot_ms == START + MIN  # the first slot after the cursor
    assert skip.last_slot_ms == START + 30 * DAY - 7 * MIN
    assert fire == Fire(START + 30 * DAY - 6 * MIN, True, "no_tick")
    assert on_time == [Fire(START + 30 * DAY - m * MIN, False, "") for m in range(5, -1, -1)]
    assert len(plan(minutely, START, START + 30 * DAY, MissedPolicy(), Gap(), limit=50)) == 7


def test_sleep_evidence_turns_late_slots_into_missed_ones() -> None:
    every10 = cron.parse("*/10 * * * *", "UTC")
    now = ms("2026-01-01T00:13")
    slot = ms("2026-01-01T00:10")
    assert plan(every10, START + 9 * MIN, now, MissedPolicy(), Gap()) == [Fire(slot, False, "")]
    asleep = Gap("suspended", awake_ms=MIN, asleep_ms=3 * MIN)
    assert plan(every10, START + 9 * MIN, now, MissedPolicy(), asleep) == [
        Skip(slot, slot, 1, False, "missed", "suspended", "")]
    assert plan(every10, START + 9 * MIN, now, MissedPolicy("run_once"), asleep) == [
        Fire(slot, True, "suspended")]


# -- clock evidence ------------------------------------------------------------------------------


def test_classify_gaps() -> None:
    assert clockwatch.classify(0, 0, "b", 60_000, 60_000, "b") == Gap()
    assert clockwatch.classify(0, 0, "b", 120_000, 70_000, "b") == Gap()  # under a minute
    assert clockwatch.classify(0, 0, "b", 4 * HOUR, MIN, "b") == Gap(
        "suspended", awake_ms=MIN, asleep_ms=4 * HOUR - MIN)
    assert clockwatch.classify(0, 5 * HOUR, "b", 6 * HOUR, 30_000, "b").cause == "restarted"
    restarted = clockwatch.classify(0, 100, "b", 6 * HOUR, 40_000, "c")
    assert restarted == Gap("restarted", awake_ms=40_000, asleep_ms=6 * HOUR - 40_000)


# -- OnCalendar ----------------------------------------------------------------------------------

TRANSLATIONS = [
    ("0 9 * * *", "*-*-* 09:00:00 UTC"),
    ("*/5 * * * *", "*-*-* *:00/5:00 UTC"),
    ("*/15 8-18 * * mon-fri", "Mon..Fri *-*-* 08..18:00/15:00 UTC"),
    ("0 0 * * 0", "Sun *-*-* 00:00:00 UTC"),
    ("0 0 * * 7", "Sun *-*-* 00:00:00 UTC"),
    ("0 2 * * sat,sun", "Sat,Sun *-*-* 02:00:00 UTC"),
    ("0 2 * * 1,3,5", "Mon,Wed,Fri *-*-* 02:00:00 UTC"),
    ("5-50/15 * * * *", "*-*-* *:05/15:00 UTC"),
    ("0-30/10 * * * *", "*-*-* *:00..30/10:00 UTC"),
    ("0 1,2,3,7 1,15 jan,mar-may *", "*-01,03..05-01,15 01..03,07:00:00 UTC"),
    ("30 4 1 * *", "*-*-01 04:30:00 UTC"),
    ("@weekly", "Sun *-*-* 00:00:00 UTC"),
    ("@yearly", "*-01-01 00:00:00 UTC"),
    ("0 */2 * * *", "*-*-* 00/2:00:00 UTC"),
    ("0 9 * * *", "*-*-* 09:00:00 UTC"),
]


@pytest.mark.parametrize(("expr", "expected"), TRANSLATIONS)
def test_on_calendar_translation(expr: str, expected: str) -> None:
    assert systemd.on_calendar(expr, "UTC") == expected


def test_on_calendar_carries_the_zone() -> None:
    assert systemd.on_calendar("0 9 * * *", "Europe/Paris") == "*-*-* 09:00:00 Europe/Paris"


@pytest.mark.parametrize(("expr", "reason"), [
    ("0 0 1 * mon", "restricts both day-of-month and day-of-week"),
    ("0 0 L * *", "uses L (last day)"),
    ("0 0 15W * *", "uses W (nearest weekday)"),
    ("0 0 * * 5#2", "uses # (nth weekday of the month)"),
])
def test_on_calendar_refuses_what_it_cannot_say(expr: str, reason: str) -> None:
    with pytest.raises(UsageError, match=re.escape(reason)):
        systemd.on_calendar(expr, "UTC")


def _systemd_elapses(calendar: str, base: int, n: int) -> list[int]:
    out = subprocess.run(
        ["systemd-analyze", "calendar", f"--iterations={n}", f"--base-time=@{base // 1000}",
         calendar],
        capture_output=True, text=True, check=True, env={"TZ": "UTC", "LC_ALL": "C"},
    ).stdout
    elapses = [line.split(": ", 1)[1].strip() for line in out.splitlines()
               if "Next elapse:" in line or "Iter. #" in line]
    return [int(datetime.strptime(e, "%a %Y-%m-%d %H:%M:%S %Z").replace(tzinfo=UTC).timestamp()
                * 1000) for e in elapses]


needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="no systemd-analyze")


@needs_systemd
@pytest.mark.parametrize(("expr", "tz"), [
    *[(e, "UTC") for e, _ in TRANSLATIONS], ("0 9 * * mon-fri", "Europe/Paris"),
    ("30 2 * * *", "America/New_York"), ("*/20 1-3 * * *", "Europe/Paris"),
])
def test_systemd_agrees_with_croniter(expr: str, tz: str) -> None:
    """systemd's own calendar maths gives the same next elapses as the schedule's."""
    base = ms("2026-03-10T00:00")
    n = 8
    assert _systemd_elapses(systemd.on_calendar(expr, tz), base, n) == \
        cron.parse(expr, tz).upcoming(base, n)


@needs_systemd
def test_systemd_skips_a_time_the_spring_change_skips_where_cron_runs_it_after() -> None:
    """The one known difference (documented): cron runs 02:30 at 03:00 on the day the clocks
    spring forward; systemd does not run it that day."""
    tz = "America/New_York"
    base = ms("2026-03-07T12:00")
    ours = cron.parse("30 2 * * *", tz).upcoming(base, 2)
    theirs = _systemd_elapses(systemd.on_calendar("30 2 * * *", tz), base, 1)
    assert iso(ours[0], tz) == "2026-03-08 03:00-0400"
    assert theirs == [ours[1]]
