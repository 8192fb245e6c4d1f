"""Which slots of a schedule fire on this tick, and which are skipped (a pure function).

A slot is **on time** when the tick runs within :data:`ON_TIME_MS` of it (cron ticks every
minute; a tick that runs a little late still fires the slot). Older slots were **missed**: the
device was off, asleep, or nothing ran ``sp tick``. When the tick found evidence that the device
slept or restarted since the previous tick (see :mod:`sp.schedules.clockwatch`), the on-time window
shrinks to the time the device was awake, so a slot that fell in the sleep counts as missed
rather than late. Missed slots follow the schedule's missed-run policy:

========== =============================================================================
skip       none runs; one ``schedule.skipped`` (reason ``missed``) records them all
run_once   the latest missed slot runs (systemd ``Persistent=true``); older ones skipped
backfill   the latest N missed slots run; older ones skipped (``backfill_limit``)
catchup    the missed slots within the window run; older ones skipped (``outside_window``)
========== =============================================================================

The overlap policy (a fire while the previous run still goes) needs the ledger, so it is
applied by :mod:`sp.commands.schedules` to the fires planned here: against the schedule's run that
was still going when the tick started (the fires of one tick are one decision).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import msgspec

from sp.ledger.errors import UsageError
from sp.schedules.cron import Cron

ON_TIME_MS = 5 * 60_000
# Slots looked at per schedule and tick (newest first): bounds the work after a long outage.
MAX_SLOTS = 1000

MISSED_KINDS = ("skip", "run_once", "backfill", "catchup")
OVERLAP_POLICIES = ("skip", "queue", "allow")


class MissedPolicy(msgspec.Struct, frozen=True):
    kind: str = "skip"
    backfill_max: int = 0
    catchup_window_ms: int = 0

    def text(self) -> str:
        """As written on the command line: ``skip``, ``run_once``, ``backfill:3``,
        ``catchup:2h``."""
        if self.kind == "backfill":
            return f"backfill:{self.backfill_max}"
        if self.kind == "catchup":
            return f"catchup:{_compact(self.catchup_window_ms)}"
        return self.kind


def _compact(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def parse_missed(text: str | None, persistent: bool, where: str = "--missed") -> MissedPolicy:
    """``skip | run_once | backfill:N | catchup:WINDOW``; ``persistent`` alone means run_once.

    :raises UsageError: unknown policy, bad N or window, or ``--persistent`` with ``skip``.
    """
    if text is None:
        return MissedPolicy("run_once" if persistent else "skip")
    s = text.strip().lower().replace("-", "_")
    kind, _, arg = s.partition(":")
    if kind == "catchup_window":
        kind = "catchup"
    if kind not in MISSED_KINDS:
        raise UsageError(f"{where}: expected skip, run_once, backfill:N or catchup:WINDOW, "
                         f"got {text!r}")
    if kind == "skip" and persistent:
        raise UsageError(f"{where}: skip contradicts --persistent (which runs a missed slot once)")
    if kind in ("skip", "run_once"):
        if arg:
            raise UsageError(f"{where}: {kind} takes no argument, got {text!r}")
        return MissedPolicy(kind)
    if not arg:
        example = "backfill:3" if kind == "backfill" else "catchup:2h"
        raise UsageError(f"{where}: {kind} needs a limit, e.g. {example}")
    if kind == "backfill":
        if not re.fullmatch(r"\d+", arg) or not 1 <= int(arg) <= MAX_SLOTS:
            raise UsageError(f"{where}: backfill:N needs N between 1 and {MAX_SLOTS}, "
                             f"got {arg!r}")
        return MissedPolicy("backfill", backfill_max=int(arg))
    from sp.agents.durations import parse_duration_ms

    window = parse_duration_ms(arg, f"{where} catchup window")
    if window <= 0:
        raise UsageError(f"{where}: the catch-up window must be positive")
    return MissedPolicy("catchup", catchup_window_ms=window)


def parse_overlap(text: str, where: str = "--overlap") -> str:
    """:raises UsageError: not skip, queue or allow."""
    s = text.strip().lower()
    if s not in OVERLAP_POLICIES:
        raise UsageError(f"{where}: expected skip, queue or allow, got {text!r}")
    return s


class Gap(msgspec.Struct, frozen=True):
    """What happened to the device since the previous tick (:mod:`sp.schedules.clockwatch`)."""

    cause: str = ""  # "" (nothing known) | suspended | restarted
    awake_ms: int | None = None  # at most this long awake since then (None: unknown)
    asleep_ms: int = 0


class Fire(NamedTuple):
    slot_ms: int
    missed: bool
    cause: str


class Skip(NamedTuple):
    slot_ms: int  # the first skipped
    last_slot_ms: int
    slots: int  # how many (a lower bound when ``more``)
    more: bool
    reason: str
    cause: str
    detail: str


_DROP_REASON = {"skip": "missed", "run_once": "missed", "backfill": "backfill_limit",
                "catchup": "outside_window"}


def plan(cron: Cron, cursor_ms: int, now_ms: int, policy: MissedPolicy, gap: Gap, *,
         on_time_ms: int = ON_TIME_MS, limit: int = MAX_SLOTS) -> list[Fire | Skip]:
    """The slots in ``(cursor_ms, now_ms]``, decided: skipped ranges and fires, oldest first."""
    slots, more = cron.slots_back(now_ms, cursor_ms, limit)  # newest first
    if not slots:
        return []
    window = on_time_ms if gap.awake_ms is None else max(0, min(on_time_ms, gap.awake_ms))
    on_time = [s for s in slots if now_ms - s <= window]
    missed = [s for s in slots if now_ms - s > window]
    cause = gap.cause or "no_tick"
    if policy.kind == "run_once":
        keep = missed[:1]
    elif policy.kind == "backfill":
        keep = missed[:policy.backfill_max]
    elif policy.kind == "catchup":
        keep = [s for s in missed if now_ms - s <= policy.catchup_window_ms]
    else:
        keep = []
    dropped = missed[len(keep):]  # always the oldest ones
    out: list[Fire | Skip] = []
    if dropped or more:
        first, last, count = (dropped[-1], dropped[0], len(dropped)) if dropped else (0, 0, 0)
        detail = _detail(policy, len(keep))
        if more:  # older slots than these were not even looked at: count is a lower bound
            found = cron.next_after(cursor_ms)
            first = found if found is not None else slots[-1]
            if not dropped:
                before, _ = cron.slots_back(slots[-1] - 1, cursor_ms, 1)
                last = before[0] if before else first
            count += 1
            detail = (detail + "; " if detail else "") + f"over {limit} slots since the last tick"
        out.append(Skip(first, last, count, more, _DROP_REASON[policy.kind], cause, detail))
    out.extend(Fire(s, True, cause) for s in reversed(keep))
    out.extend(Fire(s, False, "") for s in reversed(on_time))
    return out


def _detail(policy: MissedPolicy, kept: int) -> str:
    if policy.kind == "run_once":
        return "run_once: only the latest missed slot runs" if kept else ""
    if policy.kind == "backfill":
        return f"backfill: at most {policy.backfill_max} missed slots run"
    if policy.kind == "catchup":
        return f"catchup: only missed slots within {policy.text().split(':', 1)[1]} run"
    return ""
