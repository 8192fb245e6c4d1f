"""Values in the seed's units: durations ("2h"), sizes ("2G"), percentages ("50%")."""

from __future__ import annotations

import re
from typing import Any

_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
                "w": 604_800_000}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)", re.IGNORECASE)
_SIZE_MULT = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class Duration(int):
    """Milliseconds, written as "90" (seconds), "30s", "10m", "2h", "1h30m", "500ms", "7d"."""


class Size(int):
    """Bytes, written as 1048576, "512K", "2G", "1.5GB", "10GiB"."""


class Percent(float):
    """A percentage, written as "50%" or 50."""


def parse_duration_ms(value: Any) -> int:
    """:raises ValueError: not a duration."""
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "30s", "10m" or "2h", got {value!r}')
    if isinstance(value, int | float) and value >= 0:
        return int(value * 1000)
    s = str(value).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return int(float(s) * 1000)
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_MS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f'expected a duration like "30s", "10m" or "2h", got {value!r}')
    return int(total)


def parse_size(value: Any) -> int:
    """:raises ValueError: not a size."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    m = _SIZE.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f'expected a size like "512M" or "2G", got {value!r}')
    return int(float(m.group(1)) * _SIZE_MULT[m.group(2).lower()])


def parse_percent(value: Any) -> float:
    """:raises ValueError: not a percentage."""
    if isinstance(value, bool):
        raise ValueError(f'expected a percentage like "50%", got {value!r}')
    text = str(value).strip()
    try:
        number = float(text[:-1] if text.endswith("%") else text)
    except ValueError:
        raise ValueError(f'expected a percentage like "50%", got {value!r}') from None
    if not number > 0 or number == float("inf"):  # NaN fails the first test
        raise ValueError(f"expected a positive percentage, got {value!r}")
    return number


# The ledger stores integers as SQLite INTEGERs (signed 64 bits): larger ones cannot be kept.
MAX_INT = 2**63 - 1


def _fits(n: int, obj: Any) -> int:
    if n > MAX_INT:
        raise ValueError(f"{obj!r} is too large (at most {MAX_INT})")
    return n


def dec_hook(tp: type, obj: Any) -> Any:
    """msgspec decode hook for the unit types; its ValueErrors carry the field's path."""
    try:
        if tp is Duration:
            return Duration(_fits(parse_duration_ms(obj), obj))
        if tp is Size:
            return Size(_fits(parse_size(obj), obj))
    except OverflowError:  # int(float("inf")): "1e999", "9999...9h"
        raise ValueError(f"{obj!r} is too large (at most {MAX_INT})") from None
    if tp is Percent:
        return Percent(parse_percent(obj))
    raise NotImplementedError(tp)


def enc_hook(obj: Any) -> Any:
    if isinstance(obj, Duration | Size):
        return int(obj)
    if isinstance(obj, Percent):
        return float(obj)
    raise NotImplementedError(type(obj))
