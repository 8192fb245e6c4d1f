"""Adaptive schedules (the seed's ``AdaptiveScheduler``): once a day, inside a window, at the
minute of lowest recorded machine load.

``sp schedule add NAME --window 01:00-05:00 --adaptive`` defines a schedule whose slot on each
day is chosen from the load samples (:mod:`sp.schedules.load_samples`) of the :data:`LEARN_DAYS`
days before that day's window opens: the samples are grouped by their minute of the day (local
time in the schedule's zone), averaged, and the minute with the lowest average 1-minute load
wins (ties: the lower CPU percent, then the earlier minute). Without any sample in the window
the slot is the window's start.

Because a day's choice reads only samples recorded *before* its window opens, it is fixed by
the time it can fire: a tick late in the window sees the same slot as one early in it, so the
schedule fires once a day, exactly once, with the usual missed-run and overlap policies. It is
deterministic given the samples; the choice (and what it rested on) is recorded in
``schedule.fired`` (``adaptive``). Should a sample still arrive late (a clock stepped back), a
day whose window already holds the schedule's last fire keeps that fire as its slot: never a
second run the same day.

:class:`AdaptiveDaily` offers the slots through :class:`sp.schedules.cron.Cron`'s interface, so
that :func:`sp.schedules.slots.plan` and the tick treat it like any schedule.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from typing import Any, NamedTuple

from sp.ledger.errors import UsageError
from sp.schedules.cron import Cron, zone
from sp.schedules.load_samples import Query, samples_between

LEARN_DAYS = 14
DAY_MS = 86_400_000
_HHMM = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


class Window(NamedTuple):
    """A daily window in local time: ``start_min`` minutes after midnight, ``length_min``
    minutes long (the end is exclusive; a window may cross midnight)."""

    start_min: int
    length_min: int

    def text(self) -> str:
        end = (self.start_min + self.length_min) % 1440
        return f"{_hhmm(self.start_min)}-{_hhmm(end)}"

    def daily_cron(self) -> str:
        """The window's start, every day: the fallback slot, and what exports run."""
        return f"{self.start_min % 60} {self.start_min // 60} * * *"

    def offset_of(self, minute_of_day: int) -> int | None:
        """Minutes from the window's start, or None outside the window."""
        off = (minute_of_day - self.start_min) % 1440
        return off if off < self.length_min else None


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def parse_window(text: str, where: str = "--window") -> Window:
    """``HH:MM-HH:MM`` (24-hour local time; ``22:00-02:00`` crosses midnight).

    :raises UsageError: not two times, or an empty window.
    """
    start_text, sep, end_text = text.strip().partition("-")
    a, b = _HHMM.fullmatch(start_text.strip()), _HHMM.fullmatch(end_text.strip())
    if not sep or a is None or b is None:
        raise UsageError(f"{where}: expected HH:MM-HH:MM (e.g. 01:00-05:00), got {text!r}")
    start = int(a.group(1)) * 60 + int(a.group(2))
    end = int(b.group(1)) * 60 + int(b.group(2))
    if start == end:
        raise UsageError(f"{where}: the window {text!r} is empty")
    return Window(start, (end - start) % 1440)


class Choice(NamedTuple):
    """One day's slot, and what it rests on."""

    slot_ms: int
    offset_min: int  # minutes after the window's start
    basis: str  # load_history | window_start
    load1: float | None  # the average 1-minute load at that minute
    cpu_pct: float | None
    samples: int  # samples inside the window in the days learnt from

    def details(self, window: Window, days: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "basis": self.basis, "window": window.text(),
            "minute": _hhmm((window.start_min + self.offset_min) % 1440),
            "samples": self.samples, "days": days,
        }
        if self.load1 is not None:
            out["load1"] = round(self.load1, 3)
        if self.cpu_pct is not None:
            out["cpu_pct"] = round(self.cpu_pct, 1)
        return out


def window_start_ms(window: Window, day: date, tz: Any) -> int:
    """When the window opens on ``day`` (local date in ``tz``), as epoch ms."""
    return _local_ms(day, window.start_min, tz)


def _local_ms(day: date, minutes: int, tz: Any) -> int:
    naive = datetime.combine(day, time()) + timedelta(minutes=minutes)
    # A wall time that a spring change skips is read with the offset before it (zoneinfo's
    # fold=0): it lands just after the change, like classic cron.
    return int(naive.replace(tzinfo=tz).timestamp() * 1000)


def choose(window: Window, day: date, tz: Any,
           samples: list[tuple[int, float, float]]) -> Choice:
    """The slot of ``day`` from ``samples`` ``(ts_ms, load1, cpu_pct)`` (a pure function):
    the window's minute with the lowest average load; the window's start without samples."""
    sums: dict[int, list[float]] = {}
    for ts_ms, load1, cpu in samples:
        local = datetime.fromtimestamp(ts_ms / 1000, tz)
        off = window.offset_of(local.hour * 60 + local.minute)
        if off is None:
            continue
        acc = sums.setdefault(off, [0.0, 0.0, 0.0])
        acc[0] += load1
        acc[1] += cpu
        acc[2] += 1
    if not sums:
        return Choice(window_start_ms(window, day, tz), 0, "window_start", None, None, 0)
    best = min(sums, key=lambda off: (sums[off][0] / sums[off][2], sums[off][1] / sums[off][2],
                                      off))
    load_sum, cpu_sum, n = sums[best]
    return Choice(_local_ms(day, window.start_min + best, tz), best, "load_history",
                  load_sum / n, cpu_sum / n, int(sum(acc[2] for acc in sums.values())))


class AdaptiveDaily(Cron):
    """The slots of an adaptive schedule: one a day, chosen by :func:`choose` from the
    samples of the :data:`LEARN_DAYS` days before the day's window opens."""

    def __init__(self, window: Window, tz_name: str, query: Query,
                 learn_days: int = LEARN_DAYS, last_fired_ms: int | None = None) -> None:
        super().__init__(window.daily_cron(), zone(tz_name))
        self.window = window
        self.learn_days = learn_days
        self.last_fired_ms = last_fired_ms
        self._query = query
        self._choices: dict[date, Choice] = {}

    def slot_of(self, day: date) -> int:
        """The day's slot: its choice, or the schedule's last fire if that fell in the day's
        window (a day runs once, whatever samples arrived since)."""
        fired = self.last_fired_ms
        if fired is not None and window_start_ms(self.window, day, self.tz) <= fired < \
                self._window_end_ms(day):
            return fired
        return self.choice(day).slot_ms

    def _window_end_ms(self, day: date) -> int:
        return _local_ms(day, self.window.start_min + self.window.length_min, self.tz)

    def choice(self, day: date) -> Choice:
        found = self._choices.get(day)
        if found is None:
            opens = window_start_ms(self.window, day, self.tz)
            samples = samples_between(self._query, opens - self.learn_days * DAY_MS, opens)
            found = self._choices[day] = choose(self.window, day, self.tz, samples)
        return found

    def _day_of(self, ms: int) -> date:
        return datetime.fromtimestamp(ms / 1000, self.tz).date()

    def next_after(self, ms: int) -> int | None:
        # The window of the day before may still be open (it may cross midnight).
        day = self._day_of(ms) - timedelta(days=1)
        for i in range(4):
            slot = self.slot_of(day + timedelta(days=i))
            if slot > ms:
                return slot
        return None  # unreachable: every day has a slot

    def slots_back(self, now_ms: int, after_ms: int, limit: int) -> tuple[list[int], bool]:
        out: list[int] = []
        day = self._day_of(now_ms) + timedelta(days=1)
        while True:
            if self._window_end_ms(day) <= after_ms:
                return out, False  # this day's slot, and every earlier one, is not after it
            slot = self.slot_of(day)
            if after_ms < slot <= now_ms and (not out or slot < out[-1]):
                if len(out) == limit:
                    return out, True
                out.append(slot)
            day -= timedelta(days=1)

    def explain(self, slot_ms: int) -> dict[str, Any]:
        """What ``schedule.fired`` records about the choice of ``slot_ms``."""
        for delta in (0, -1, 1):
            day = self._day_of(slot_ms) + timedelta(days=delta)
            found = self.choice(day)
            if found.slot_ms == slot_ms:
                return found.details(self.window, self.learn_days)
        return {"window": self.window.text()}


def slots_of(cron: str, timezone: str, window: str, adaptive: bool, query: Query,
             last_fired_ms: int | None = None) -> Cron:
    """A schedule's slots: its cron expression, or the adaptive choice within its window
    (``last_fired_ms``: the slot of its last fire).

    :raises UsageError: the expression, zone or window is not (or no longer) valid.
    """
    from sp.schedules.cron import parse

    if adaptive:
        return AdaptiveDaily(parse_window(window), timezone, query,
                             last_fired_ms=last_fired_ms)
    return parse(cron, timezone)
