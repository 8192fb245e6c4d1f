"""Evidence, between two ticks, that the device slept or restarted.

Each tick that looks at schedules stores its wall-clock and monotonic readings and the kernel's
boot id in a side table. These are ephemeral facts (like leases): not events, not replayed, and
losing them only loses evidence. On the next tick:

* the boot id changed, or the monotonic clock went backwards: the device **restarted**; it has
  been up for at most the monotonic reading (Linux's ``CLOCK_MONOTONIC`` counts from boot);
* the wall clock advanced more than :data:`SUSPEND_MIN_MS` beyond the monotonic clock (which
  stops while the device is suspended): the device was **suspended** for the difference, and
  awake for at most the monotonic difference.

:func:`sp.schedules.slots.plan` then treats the slots that fell while the device was away as missed
runs (their policy decides), not as a burst of late ones.
"""

from __future__ import annotations

from pathlib import Path

from sp.ledger import side
from sp.ledger.interface import LedgerTransaction
from sp.schedules.slots import Gap

SUSPEND_MIN_MS = 60_000  # NTP slews by far less; a suspend of under a minute changes nothing


def boot_id() -> str:
    """The kernel's id of this boot ('' where there is none)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def observe(tx: LedgerTransaction, wall_ms: int, mono_ms: int, boot: str, pid: int) -> Gap:
    """Compare these readings with the previous tick's, store them, and say what happened."""
    prev = side.clock_swap(tx, wall_ms, mono_ms, boot, pid)
    if prev is None:
        return Gap()
    prev_wall, prev_mono, prev_boot = prev
    return classify(prev_wall, prev_mono, prev_boot, wall_ms, mono_ms, boot)


def classify(prev_wall: int, prev_mono: int, prev_boot: str, wall_ms: int, mono_ms: int,
             boot: str) -> Gap:
    """The :class:`Gap` between two readings (see the module doc)."""
    if (prev_boot and boot and prev_boot != boot) or mono_ms < prev_mono:
        return Gap("restarted", awake_ms=max(0, mono_ms),
                   asleep_ms=max(0, wall_ms - prev_wall - max(0, mono_ms)))
    wall_delta = wall_ms - prev_wall
    mono_delta = mono_ms - prev_mono
    if wall_delta - mono_delta > SUSPEND_MIN_MS:
        return Gap("suspended", awake_ms=mono_delta, asleep_ms=wall_delta - mono_delta)
    return Gap()
