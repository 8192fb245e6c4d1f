"""systemd timer and service units for schedules, with cron translated to ``OnCalendar``.

The translation reads croniter's expansion of each field (so names, ranges, lists and steps are
understood exactly as the schedule itself understands them) and writes each field back in
systemd's calendar syntax: ``*``, ``a..b``, ``a/step`` (repeating to the field's end),
``a..b/step`` and comma lists; weekdays as ``Mon..Fri``; the zone as a suffix
(``*-*-* 09:00:00 Europe/Paris``). What ``OnCalendar`` cannot say is refused with the reason:
cron's "day-of-month *or* day-of-week" when both are restricted (systemd needs both to
match), and croniter's extensions ``L``, ``W``, ``#`` and ``?``.

One difference cannot be translated away: on the day the clocks spring forward, cron (and
``sp tick``) runs a time inside the skipped hour right after the change, while systemd does not
run it that day.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Any

from croniter import croniter

from sp.ledger.errors import UsageError
from sp.schedules.cron import expand

_DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12))  # minute, hour, day of month, month


def on_calendar(expr: str, zone: str) -> str:
    """The ``OnCalendar=`` value that elapses at the same times as cron ``expr`` in ``zone``.

    :raises UsageError: the expression cannot be written as a calendar event (with why).
    """
    fields = expand(expr).split()
    raw = " ".join(fields)
    dom_text, dow_text = fields[2].upper(), fields[4].upper()
    for found, what in (("L" in dom_text or "L" in dow_text, "L (last day)"),
                        ("W" in dom_text, "W (nearest weekday)"),
                        ("#" in dow_text, "# (nth weekday of the month)"),
                        ("?" in raw, "?")):
        if found:
            raise UsageError(f"cron {expr!r} uses {what}, which OnCalendar cannot express")
    expanded = croniter(raw).expanded
    minute, hour, dom, month, dow = expanded[:5]
    if dom != ["*"] and dow != ["*"]:
        raise UsageError(
            f"cron {expr!r} restricts both day-of-month and day-of-week: cron runs when "
            "either matches, OnCalendar only when both do, so it cannot be translated; "
            "split it into two schedules"
        )
    parts = [_ints(v, lo, hi) for v, (lo, hi) in zip((minute, hour, dom, month), _RANGES,
                                                     strict=True)]
    weekdays = "" if dow == ["*"] else _weekdays(dow) + " "
    return f"{weekdays}*-{parts[3]}-{parts[2]} {parts[1]}:{parts[0]}:00 {zone}"


def _ints(values: list[Any], lo: int, hi: int) -> str:
    if values == ["*"]:
        return "*"
    nums = sorted({int(v) for v in values})
    if nums == list(range(lo, hi + 1)):
        return "*"
    if len(nums) >= 3:
        step = nums[1] - nums[0]
        if step > 1 and all(b - a == step for a, b in pairwise(nums)):
            if nums[-1] + step > hi:  # runs to the field's end: a/step says exactly that
                return f"{nums[0]:02d}/{step}"
            return f"{nums[0]:02d}..{nums[-1]:02d}/{step}"
    return ",".join(_runs(nums, lambda n: f"{n:02d}"))


def _runs(nums: list[int], name: Any) -> list[str]:
    """Consecutive runs of three or more as ``a..b``, the rest one by one."""
    out: list[str] = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        if j - i >= 2:
            out.append(f"{name(nums[i])}..{name(nums[j])}")
        else:
            out.extend(name(n) for n in nums[i:j + 1])
        i = j + 1
    return out


def _weekdays(values: list[Any]) -> str:
    # systemd's week runs Mon..Sun; cron's 0 and 7 are both Sunday.
    days = sorted({int(v) % 7 for v in values}, key=lambda d: (d - 1) % 7)
    order = [(d - 1) % 7 for d in days]  # Mon = 0 ... Sun = 6
    return ",".join(_runs(order, lambda i: _DAYS[(i + 1) % 7]))


def unit_name(name: str) -> str:
    """``systemprompt-schedule-<name>``: ``/`` becomes ``-`` (``research-001/scan`` gives
    ``systemprompt-schedule-research-001-scan``, in the seed's style); every other character
    but letters, digits, ``_``, ``.`` and ``-`` is escaped as ``\\xNN`` per UTF-8 byte, as
    ``systemd-escape`` does (``@``, which names template instances, becomes ``\\x40``), so
    the unit's file name never holds a separator, a control character or a quote."""
    out = []
    for ch in name.replace("/", "-"):
        if ch.isascii() and (ch.isalnum() or ch in "_.-"):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
    return "systemprompt-schedule-" + "".join(out)


def _text(value: str) -> str:
    """``value`` for a comment or ``Description=``: one line whatever it holds (unprintable
    characters and backslashes escaped, so no line continues into the next), ``%`` doubled
    (``Description=`` expands specifiers)."""
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif not ch.isprintable():
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out).replace("%", "%%")


def timer(name: str, calendar: str, *, persistent: bool, jitter_ms: int, notes: list[str],
          enabled: bool) -> str:
    """The ``.timer`` unit of a schedule."""
    lines = ["# Written by sp schedule export --systemd; " + f"schedule {_text(name)}."]
    lines += [f"# {_text(n)}" for n in notes]
    lines += ["[Unit]", f"Description=sp schedule {_text(name)}", "",
              "[Timer]", f"OnCalendar={_line(calendar)}",
              f"Persistent={'true' if persistent else 'false'}"]
    if jitter_ms:
        lines.append(f"RandomizedDelaySec={max(1, jitter_ms // 1000)}")
    lines += ["AccuracySec=1s", f"Unit={unit_name(name)}.service", ""]
    if enabled:
        lines += ["[Install]", "WantedBy=timers.target", ""]
    return "\n".join(lines)


def service(name: str, argv: list[str], resources: dict[str, Any], notes: list[str]) -> str:
    """The ``.service`` unit: one run of the task, with the seed's resource settings."""
    lines = ["# Written by sp schedule export --systemd; " + f"schedule {_text(name)}."]
    lines += [f"# {_text(n)}" for n in notes]
    lines += ["[Unit]", f"Description=sp schedule {_text(name)}", "",
              "[Service]", "Type=oneshot", f"ExecStart={_exec(argv)}"]
    lines += resource_settings(resources)
    lines.append("")
    return "\n".join(lines)


def resource_settings(resources: dict[str, Any]) -> list[str]:
    """The seed's ``[Service]`` limits from a task's resources (in sp's stored units)."""
    out: list[str] = []
    if resources.get("cpu_quota") is not None:
        out.append(f"CPUQuota={_number(resources['cpu_quota'])}%")
    if resources.get("memory_limit") is not None:
        # MemoryMax= is the current name; the seed's MemoryLimit= is its deprecated cgroup v1
        # spelling, which systemd maps to MemoryMax= anyway.
        out.append(f"MemoryMax={int(resources['memory_limit'])}")
    if resources.get("tasks_max") is not None:
        out.append(f"TasksMax={int(resources['tasks_max'])}")
    if resources.get("io_weight") is not None:
        out.append(f"IOWeight={int(resources['io_weight'])}")
    if resources.get("nice") is not None:
        out.append(f"Nice={int(resources['nice'])}")
    return out


def _number(value: Any) -> str:
    f = float(value)
    return str(int(f)) if f == int(f) else f"{f:g}"


def _line(value: str) -> str:
    """:raises UsageError: ``value`` (a calendar, from the cron translation) holds a
    character that would end or continue the line."""
    if not value.isprintable() or "\\" in value:
        raise UsageError(f"cannot write {value!r} into a unit file")
    return value


# C escapes systemd undoes inside a quoted ExecStart= word (systemd.syntax(7), "Quoting").
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


_BARE = re.compile(r"[A-Za-z0-9_./:@+=,-]+")


def exec_word(arg: str) -> str:
    """One argument of ``ExecStart=`` as one systemd word, per systemd.service(5) and
    systemd.syntax(7): a plain word as it is, any other wholly in double quotes (systemd
    allows quotes only around a whole word, so ``shlex.quote``'s ``'a'"'"'b'`` would not
    do), ``\\`` and ``"`` escaped,
    every unprintable character (newline, NUL, bidi controls) as a C escape (so nothing ever
    ends the line), ``%`` doubled (specifiers) and ``$`` doubled (variable expansion).

    :raises UsageError: the argument holds NUL (no program can be given one).
    """
    if "\x00" in arg:
        raise UsageError(f"cannot pass {arg!r} to a program: it contains a NUL character")
    if _BARE.fullmatch(arg):  # nothing systemd would read specially: left as it is
        return arg
    out = []
    for ch in arg:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif not ch.isprintable():
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x80 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return '"' + "".join(out).replace("%", "%%").replace("$", "$$") + '"'


def _exec(argv: list[str]) -> str:
    return " ".join(exec_word(a) for a in argv)
