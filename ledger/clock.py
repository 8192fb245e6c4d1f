"""Injectable time. Everything that needs 'now' takes a Clock, so tests never sleep."""

from __future__ import annotations

import time
from typing import Protocol


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
