"""The condition expressions of a trigger file (``disk_usage > 90%``, ``not internet_connected``),
parsed strictly so that ``sp trigger apply`` refuses a bad one before anything is recorded.
Measuring and evaluating them is the daemon's (:mod:`sp.triggers.conditions`)."""

from __future__ import annotations

import re
from typing import NamedTuple

from sp.agents.trigger_file import Condition
from sp.ledger.errors import UsageError

_EXPR = re.compile(
    r"\s*(?:(?P<not>not)\s+)?(?P<measure>[a-z_][a-z0-9_]*)"
    r"(?:\((?P<arg>[^()]*)\))?"
    r"\s*(?:(?P<op>>=|<=|>|<)\s*(?P<num>-?\d+(?:\.\d+)?)\s*(?P<unit>%|°C|C)?)?\s*"
)


class _Measure(NamedTuple):
    unit: str | None  # None: a boolean measure
    arg: str  # "" none, "path", "host:port"


MEASURES: dict[str, _Measure] = {
    "disk_usage": _Measure("%", "path"),
    "memory_usage": _Measure("%", ""),
    "cpu_temp": _Measure("C", ""),
    "load": _Measure("", ""),
    "internet_connected": _Measure(None, "host:port"),
    "command_succeeds": _Measure(None, ""),
    "command_fails": _Measure(None, ""),
}
_UNIT_WORDS = {"%": 'a percentage like "90%"', "C": 'degrees Celsius like "80C"',
               "": 'a plain number like "2.5"'}


class Expression(NamedTuple):
    """A parsed condition expression."""

    measure: str
    arg: str | None
    op: str | None
    threshold: float | None
    negate: bool
    unit: str


def parse_condition(cond: Condition, where: str) -> Expression:
    """Parse ``cond.trigger`` strictly; ``where`` names the condition in errors.

    :raises UsageError: unknown measure, a comparison missing or where none belongs, a wrong
        unit, a bad argument, or ``command:`` missing or where none belongs.
    """
    text = cond.trigger
    m = _EXPR.fullmatch(text)
    if m is None:
        raise UsageError(f"{where}.trigger: cannot parse {text!r} (e.g. \"disk_usage > 90%\", "
                         "\"cpu_temp > 80C\", internet_connected)")
    name = m["measure"]
    spec = MEASURES.get(name)
    if spec is None:
        raise UsageError(f"{where}.trigger: unknown measure {name!r} in {text!r} (known: "
                         f"{', '.join(MEASURES)})")
    arg = m["arg"].strip() if m["arg"] is not None else None
    if arg is not None and not spec.arg:
        raise UsageError(f"{where}.trigger: {name} takes no argument, got {text!r}")
    if arg is not None:
        _check_arg(name, arg, f"{where}.trigger")
    threshold: float | None = None
    unit = ""
    if spec.unit is None:
        if m["op"] is not None:
            raise UsageError(f"{where}.trigger: {name} is true or false; it takes no comparison "
                             f"(write {name} or not {name}), got {text!r}")
    else:
        if m["not"]:
            raise UsageError(f"{where}.trigger: not goes with a true-or-false measure, and "
                             f"{name} is a number: compare it instead")
        if m["op"] is None:
            raise UsageError(f"{where}.trigger: {name} needs a comparison, e.g. "
                             f"\"{name} > {_example(spec.unit)}\", got {text!r}")
        unit = (m["unit"] or "").replace("°", "")
        if unit != spec.unit:
            raise UsageError(f"{where}.trigger: {name} is compared with "
                             f"{_UNIT_WORDS[spec.unit]}, got {text!r}")
        threshold = float(m["num"])
        if unit == "%" and not 0 <= threshold <= 100:
            raise UsageError(f"{where}.trigger: a percentage is between 0% and 100%, "
                             f"got {text!r}")
        if unit == "" and threshold < 0:
            raise UsageError(f"{where}.trigger: {name} is never negative, got {text!r}")
    is_command = name in ("command_succeeds", "command_fails")
    if is_command and not cond.command:
        raise UsageError(f"{where}.command: {name} needs the command to run, e.g. "
                         "command: [mountpoint, -q, /mnt/backup]")
    if not is_command and cond.command is not None:
        raise UsageError(f"{where}.command: only command_succeeds and command_fails run a "
                         f"command (the trigger is {text!r})")
    if cond.interval <= 0:
        raise UsageError(f"{where}.interval: must be positive")
    return Expression(name, arg, m["op"], threshold, bool(m["not"]), unit)


def _example(unit: str) -> str:
    return {"%": "90%", "C": "80C"}.get(unit, "2.5")


def _check_arg(name: str, arg: str, where: str) -> None:
    if name == "disk_usage":
        if not arg.startswith("/"):
            raise UsageError(f"{where}: disk_usage(PATH) needs an absolute path, got {arg!r}")
        return
    parse_host(arg, where)


def parse_host(text: str, where: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``. :raises UsageError: malformed."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", text)
    if m is None:
        raise UsageError(f"{where}: expected HOST:PORT (e.g. 1.1.1.1:53), got {text!r}")
    host, port = (m[1], m[2]) if m[1] else (m[3], m[4])
    if not 1 <= int(port) <= 65535:
        raise UsageError(f"{where}: port {port} is out of range")
    return host, int(port)
