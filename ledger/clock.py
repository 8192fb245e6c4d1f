"""Injectable time. Everything that needs 'now' takes a Clock, so tests never sleep."""

from __future__ import annotations

import os
import time
from typing import Protocol

# A file holding milliseconds to add to the system clock, re-read at every call: tests move the
# time of real sp processes (a lease expires, a recovery sweep falls due) without sleeping.
OFFSET_FILE_ENV = "SP_CLOCK_OFFSET_FILE"


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time, integer milliseconds since the Unix epoch (UTC)."""
        ...

    def monotonic_ms(self) -> int:
        """A clock that never jumps; for measuring durations."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to: for tests of backoff, leases and schedules."""

    def __init__(self, start_ms: int = 1_767_225_600_000) -> None:
        self._now = start_ms
        self._mono = 0

    def now_ms(self) -> int:
        return self._now

    def monotonic_ms(self) -> int:
        return self._mono

    def advance(self, ms: int) -> None:
        self._now += ms
        self._mono += ms

    def jump(self, ms: int) -> None:
        """Move the wall clock only, as a suspend (the monotonic clock stops) or a clock step."""
        self._now += ms


class OffsetClock(SystemClock):
    """The system clock plus an offset in milliseconds read from a file at every call (both
    clocks move by it, as after ``ManualClock.advance``). A missing, empty or unreadable file
    is an offset of 0. Chosen by :func:`default_clock` when ``SP_CLOCK_OFFSET_FILE`` is set."""

    def __init__(self, path: str) -> None:
        self.path = path

    def offset_ms(self) -> int:
        try:
            with open(self.path, encoding="ascii") as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def now_ms(self) -> int:
        return super().now_ms() + self.offset_ms()

    def monotonic_ms(self) -> int:
        return super().monotonic_ms() + self.offset_ms()


def default_clock() -> Clock:
    """The clock of a store opened without one: the system's, or an :class:`OffsetClock`
    when ``SP_CLOCK_OFFSET_FILE`` names a file (tests of real processes)."""
    path = os.environ.get(OFFSET_FILE_ENV)
    return OffsetClock(path) if path else SystemClock()
