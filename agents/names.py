"""The one grammar for names that reach a file, a unit, a cron line, a path or a log.

Agents, tasks, steps, schedules, triggers, plans and plan steps, actions' ``--name`` and custom
action types all obey it: ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``, and never ``..``. That excludes
what could break out of where a name is written: NUL and control characters (a newline in an
agent id once added a job to the crontab and an ``ExecStartPre=`` line to a unit), the bidi
overrides that make a line read differently than it runs, ``/`` and ``..`` (paths), spaces,
quotes and shell metacharacters, ``%`` (a systemd specifier, a newline in a crontab line) and a
leading ``-`` or ``.`` (an option, a hidden file). Every seed name (``research-001``,
``daily_arxiv_scan``, ``deploy-site``, ``fetch_new_papers``) fits.

Some names are *qualified*: a schedule ``research-001/daily_arxiv_scan`` (agent/task), a
sub-plan step ``publish/copy``, a trigger action ``agent/task``. Each ``/``-separated part
obeys the grammar, so a ``/`` there is a separator and never a way into another folder.

This module sits with the agent files, the lowest layer that reads names; it imports only the
ledger's error type.
"""

from __future__ import annotations

import re
import unicodedata

from sp.ledger.errors import UsageError

MAX = 64
GRAMMAR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RULE = "use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64"
# The Unicode bidirectional controls: embeddings, overrides, isolates and marks.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def shown(value: str) -> str:
    """``value`` quoted for a one-line message: control, bidi and other unprintable
    characters are written as escapes, so the message stays one line and reads as stored."""
    return repr(value)


def hidden(value: str) -> str | None:
    """Why ``value`` cannot be shown on one line as it is (NUL, a control, format or bidi
    character, a line separator), or None. Names sp derives (``plan/step:rollback``) are
    checked with this at submit, whatever the entry point."""
    for ch in value:
        if ch == "\x00":
            return "contains a NUL character"
        if ch in _BIDI:
            return f"contains the bidi control U+{ord(ch):04X}"
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            return f"contains the control character U+{ord(ch):04X}"
    return None


def problem(value: str) -> str | None:
    """Why ``value`` is not a name, or None when it is one."""
    found = hidden(value)
    if found is not None:
        return found
    if not value:
        return "is empty"
    if "/" in value:
        return "contains '/'"
    if ".." in value:
        return "contains '..'"
    if len(value) > MAX:
        return f"is {len(value)} characters long"
    if not GRAMMAR.fullmatch(value):
        bad = next((ch for ch in value if not (ch.isascii() and (ch.isalnum() or ch in "._-"))),
                   None)
        if bad is not None:
            return f"contains {bad!r}"
        return f"starts with {value[0]!r}"
    return None


def check(value: object, what: str, where: str) -> str:
    """``value`` if it is a name; ``what`` says which (``agent id``), ``where`` where it was
    given (``agent.yaml: $.id``, ``--agent``).

    :raises UsageError: one line: where, what, the value (escaped) and why.
    """
    if not isinstance(value, str):
        raise UsageError(f"{where}: {what} must be text, got {type(value).__name__}")
    why = problem(value)
    if why is not None:
        raise UsageError(f"{where}: {what} {shown(value)} {why}; {RULE}")
    return value


def check_qualified(value: object, what: str, where: str) -> str:
    """``value`` if each of its ``/``-separated parts is a name (``agent/task``).

    :raises UsageError: as :func:`check`, naming the part that is wrong.
    """
    if not isinstance(value, str):
        raise UsageError(f"{where}: {what} must be text, got {type(value).__name__}")
    for part in value.split("/"):
        why = problem(part)
        if why is not None:
            detail = why if part == value else f"has a part {shown(part)} that {why}"
            raise UsageError(f"{where}: {what} {shown(value)} {detail}; {RULE} "
                             "(parts joined by '/')")
    return value


def check_optional(value: str | None, what: str, where: str) -> str | None:
    """:func:`check` for a value that may be absent.

    :raises UsageError: as :func:`check`.
    """
    return None if value is None else check(value, what, where)
