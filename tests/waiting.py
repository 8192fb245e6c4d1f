"""Waiting on a condition instead of sleeping: a test that needs something to have happened
polls for exactly that, so it is as fast as the machine allows and never too early under load."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, what: str = "",
               every: float = 0.01,
               ignoring: tuple[type[BaseException], ...] = ()) -> T:
    """Poll ``predicate`` until it returns something true and return that value.

    The timeout is a bound for a broken run, not a wait: a passing run returns as soon as the
    condition holds, so it is generous (the machine may be loaded by other test runs).
    An exception of a type in ``ignoring`` counts as "not yet" (a reader that meets a file
    another process is still writing, say) and is polled again.

    :raises AssertionError: the condition did not hold within ``timeout`` seconds; the message
        names ``what`` (else the predicate) and the last value seen.
    """
    deadline = time.monotonic() + timeout
    value: T | None = None
    while True:
        try:
            value = predicate()
        except ignoring:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for "
                                 f"{what or getattr(predicate, '__qualname__', predicate)} "
                                 f"(last: {value!r})")
        time.sleep(every)


def asleep_in(pid: int, kernel_wait: str) -> bool:
    """Whether process ``pid`` is asleep in the kernel in a wait whose name contains
    ``kernel_wait`` (``/proc/<pid>/wchan``): ``"poll"`` for a process waiting on its pipes or
    sockets, ``"nanosleep"`` for one in a sleep (SQLite's busy handler waiting for a lock)."""
    proc = Path("/proc") / str(pid)
    try:
        stat = (proc / "stat").read_text()
        wchan = (proc / "wchan").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone already
        return False
    state = stat[stat.rindex(")") + 2]
    return state == "S" and kernel_wait in wchan


def holds_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (one of its ``/proc/<pid>/fd`` links)."""
    target = str(path.resolve())
    fds = Path("/proc") / str(pid) / "fd"
    try:
        names = os.listdir(fds)
    except (FileNotFoundError, ProcessLookupError):
        return False
    for name in names:
        try:
            if os.readlink(fds / name) == target:
                return True
        except OSError:  # closed meanwhile
            continue
    return False
