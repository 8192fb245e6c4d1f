"""Crontab lines for schedules, and the marked block ``sp schedule install`` keeps in a crontab.

The lines have the seed's form::

    0 9 * * * /usr/bin/systemprompt-os action execute --agent research-001 --task daily_arxiv_scan

Cron reads them in the machine's time zone; a schedule in another zone is preceded by a
``CRON_TZ=`` line (cronie honours it; Vixie/Debian cron ignores it, which the line's comment
says). Jitter and the missed-run and overlap policies have no cron equivalent: each schedule
that uses them gets a comment saying so.
"""

from __future__ import annotations

import re
import shlex

import msgspec

from sp.agents.names import hidden, shown
from sp.ledger.errors import UsageError

BEGIN = "# >>> sp schedules"
END = "# <<< sp schedules"


class Entry(msgspec.Struct, frozen=True):
    name: str
    cron: str
    timezone: str
    argv: list[str]
    enabled: bool = True
    notes: list[str] = []


# What a cron time field and a zone name are made of: nothing that ends a line or starts a
# command. Names are checked where they are given (agents.names); this is defence in depth.
_CRON = re.compile(r"[A-Za-z0-9*/,?#@-]+(?: [A-Za-z0-9*/,?#@-]+)*")
_ZONE = re.compile(r"[A-Za-z0-9_+./-]+")


def command(argv: list[str]) -> str:
    """A shell command line for cron: each argument one shell word (``shlex.quote``), with
    ``%`` escaped as ``\\%`` (cron turns a bare one into a newline and feeds the rest to
    stdin).

    :raises UsageError: an argument holds a character no cron line can carry (a newline, a
        carriage return, NUL, another control or a bidi character): cron would split the
        line, or show it differently than it runs.
    """
    for a in argv:
        why = hidden(a)
        if why is not None:
            raise UsageError(f"cannot write {shown(a)} into a crontab line: it {why}")
    return " ".join(shlex.quote(a) for a in argv).replace("%", "\\%")


def comment(text: str) -> str:
    """``text`` for a ``#`` comment line: unprintable characters escaped, so it stays one
    line and a name cannot open a line of its own."""
    return "".join(shown(ch)[1:-1] if hidden(ch) else ch for ch in text)


def _fields(e: Entry) -> str:
    """:raises UsageError: the cron expression or the zone is not plain cron text."""
    if not _CRON.fullmatch(e.cron):
        raise UsageError(f"schedule {comment(e.name)}: cron {shown(e.cron)} cannot be "
                         "written into a crontab line")
    if not _ZONE.fullmatch(e.timezone):
        raise UsageError(f"schedule {comment(e.name)}: zone {shown(e.timezone)} cannot be "
                         "written into a crontab line")
    return e.cron


def render(entries: list[Entry], local_zone: str) -> str:
    """The crontab lines of the schedules (disabled ones commented out), one block each:
    exactly one job line per schedule, whatever its names hold.

    :raises UsageError: a schedule holds text a crontab line cannot carry (see
        :func:`command`).
    """
    out: list[str] = []
    current = local_zone
    for e in entries:
        out.append(comment(f"# sp schedule {e.name}" + ("" if e.enabled else " (disabled)")))
        out.extend(comment(f"# {n}") for n in e.notes)
        if e.timezone != current:
            out.append(f"CRON_TZ={e.timezone}")
            current = e.timezone
        line = f"{_fields(e)} {command(e.argv)}"
        out.append(line if e.enabled else f"# {line}")
    if current != local_zone:
        out.append(f"CRON_TZ={local_zone}")
    return "\n".join(out) + ("\n" if out else "")


def block(body: str, home: str) -> str:
    """``body`` between the markers that name the home (several homes can share a crontab).

    :raises UsageError: the home's path holds a character no crontab line can carry.
    """
    why = hidden(home)
    if why is not None:
        raise UsageError(f"home {shown(home)} cannot be named in a crontab: it {why}")
    return f"{BEGIN} home={home} (managed by sp schedule install; edits here are replaced)\n" \
           f"{body}{END} home={home}\n"


def replace_block(existing: str, body: str, home: str) -> str:
    """The crontab with this home's block replaced in place (or appended; removed when
    ``body`` is empty). Everything else is kept as it was."""
    begin, end = f"{BEGIN} home={home} ", f"{END} home={home}"
    lines = existing.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith(begin)), None)
    stop = None
    if start is not None:
        stop = next((i for i in range(start, len(lines)) if lines[i].rstrip("\n") == end), None)
    new = block(body, home) if body else ""
    if start is None or stop is None:
        text = "".join(lines)
        if not new:
            return text
        if text and not text.endswith("\n"):
            text += "\n"
        return text + new
    return "".join(lines[:start]) + new + "".join(lines[stop + 1:])
