"""Durations as people write them: ``90``, ``30s``, ``10m``, ``2h``, ``1h30m``, ``7d``."""

from __future__ import annotations

from sp.agents import units
from sp.ledger.errors import UsageError


def parse_duration_ms(text: str, where: str = "duration") -> int:
    """Milliseconds in ``text``; a bare number means seconds (the agents' own parser).

    :raises UsageError: not a duration, naming ``where``.
    """
    try:
        ms = units.parse_duration_ms(text)
    except ValueError as e:
        raise UsageError(f"{where}: {e}") from None
    except OverflowError:  # "1e999": infinity has no milliseconds
        ms = units.MAX_INT + 1
    if ms > units.MAX_INT:
        raise UsageError(f"{where}: {text!r} is too long (at most {units.MAX_INT}ms)")
    return ms


def format_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"
