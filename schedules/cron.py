"""Cron expressions and time zones: parsing (``croniter``), and the slots of a schedule.

A *slot* is one time a cron expression names, as epoch milliseconds (UTC). Expressions have the
five classic fields (minute hour day-of-month month day-of-week, names allowed) or one of the
macros ``@hourly @daily @midnight @weekly @monthly @yearly @annually``; they are read in the
schedule's time zone (IANA name, via :mod:`zoneinfo`).

Daylight saving time follows classic cron: a time skipped by the spring change runs right after
it, and when autumn repeats an hour, a job at a fixed time runs once (the first time), while a
"wildcard" job (its minute or hour field starts with ``*``) runs in both, as Vixie cron does.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sp.ledger.errors import UsageError

if TYPE_CHECKING:
    from croniter import croniter

FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def zone(name: str, where: str = "--timezone") -> ZoneInfo:
    """The IANA time zone ``name``.

    :raises UsageError: no such zone.
    """
    text = name.strip()
    if not text or text.startswith("/") or ".." in text:
        raise UsageError(f"{where}: {name!r} is not a time zone name (e.g. Europe/Paris, UTC)")
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(
            f"{where}: unknown time zone {name!r} (an IANA name like Europe/Paris or UTC)"
        ) from None


def local_zone_name() -> str:
    """The name of this machine's time zone (what cron reads crontab lines in), else UTC."""
    candidates: list[str] = []
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        candidates.append(tz)
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text().strip())
    try:
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    for name in candidates:
        try:
            ZoneInfo(name)
            return name
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return "UTC"


def expand(expr: str) -> str:
    """The expression with a macro replaced by its five fields."""
    text = " ".join(expr.split())
    return MACROS.get(text.lower(), text)


class Cron:
    """A validated cron expression in a time zone. Build with :func:`parse`."""

    def __init__(self, expr: str, tz: ZoneInfo) -> None:
        self.expr = " ".join(expr.split())
        self.fields = expand(self.expr).split()
        self.tz = tz
        # A fixed-time job runs once when autumn repeats an hour (see the module doc).
        self._once_in_repeated_hour = not (self.fields[0].startswith("*")
                                           or self.fields[1].startswith("*"))

    def _iter(self, ms: int) -> croniter:
        # croniter costs a cron-driven `sp tick` 25-75 ms to import: only when a schedule is due
        from croniter import croniter

        return croniter(" ".join(self.fields), datetime.fromtimestamp(ms / 1000, self.tz))

    def _repeated(self, ms: int) -> bool:
        return self._once_in_repeated_hour and datetime.fromtimestamp(ms / 1000, self.tz).fold == 1

    def next_after(self, ms: int) -> int | None:
        """The first slot strictly after ``ms``, or None if the expression never matches."""
        from croniter import CroniterBadDateError

        it = self._iter(ms)
        for _ in range(62):  # at most a repeated hour's slots to step over
            try:
                slot = int(it.get_next(float) * 1000)
            except CroniterBadDateError:
                return None
            if slot > ms and not self._repeated(slot):
                return slot
        return None

    def slots_back(self, now_ms: int, after_ms: int, limit: int) -> tuple[list[int], bool]:
        """Slots in ``(after_ms, now_ms]``, newest first, at most ``limit`` of them; the flag
        says that older ones were left out."""
        from croniter import CroniterBadDateError

        it = self._iter(now_ms + 1)  # get_prev is strictly before its start: include now_ms
        out: list[int] = []
        while True:
            try:
                slot = int(it.get_prev(float) * 1000)
            except CroniterBadDateError:
                return out, False
            if slot <= after_ms:
                return out, False
            if self._repeated(slot):
                continue
            if len(out) == limit:
                return out, True
            out.append(slot)

    def upcoming(self, after_ms: int, n: int) -> list[int]:
        """The next ``n`` slots after ``after_ms``."""
        out: list[int] = []
        at = after_ms
        while len(out) < n:
            slot = self.next_after(at)
            if slot is None:
                break
            out.append(slot)
            at = slot
        return out

    def local_text(self, ms: int) -> str:
        """A slot as local time in the schedule's zone, e.g. ``2026-01-01 09:00 CET``."""
        return datetime.fromtimestamp(ms / 1000, self.tz).strftime("%Y-%m-%d %H:%M %Z")


def parse(expr: str, tz_name: str, *, now_ms: int | None = None, where: str = "--cron") -> Cron:
    """Validate ``expr`` (five fields or a macro) in the zone ``tz_name``.

    ``now_ms`` also checks that the expression matches some time after it (``0 0 30 2 *``
    never does).

    :raises UsageError: with the reason (field count, the field out of range, never matches,
        unknown zone).
    """
    tz = zone(tz_name)
    text = " ".join(expr.split())
    if text.lower() == "@reboot":
        raise UsageError(f"{where}: @reboot is not a time; schedules need a time expression")
    if text.startswith("@") and text.lower() not in MACROS:
        raise UsageError(f"{where}: unknown macro {text!r} (known: {', '.join(sorted(MACROS))})")
    from croniter import CroniterError, croniter

    fields = expand(text).split()
    if len(fields) != 5:
        raise UsageError(
            f"{where}: {expr!r} has {len(fields)} field(s); expected 5 "
            f"({' '.join(FIELDS)}) or a macro like @daily"
        )
    try:
        croniter(" ".join(fields))
    except CroniterError as e:
        raise UsageError(f"{where}: {expr!r} is not a valid cron expression: {e}") from None
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise UsageError(f"{where}: {expr!r} is not a valid cron expression: {e}") from None
    cron = Cron(text, tz)
    if now_ms is not None and cron.next_after(now_ms) is None:
        raise UsageError(f"{where}: {expr!r} never matches any date")
    return cron
