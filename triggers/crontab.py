"""Crontab lines for schedules, and the marked block ``sp schedule install`` keeps in a crontab.

The lines have the seed's form::

    0 9 * * * /usr/bin/systemprompt-os action execute --agent research-001 --task daily_arxiv_scan

Cron reads them in the machine's time zone; a schedule in another zone is preceded by a
``CRON_TZ=`` line (cronie honours it; Vixie/Debian cron ignores it, which the line's comment
says). Jitter and the missed-run and overlap policies have no cron equivalent: each schedule
that uses them gets a comment saying so.
"""

from __future__ import annotations

import shlex

import msgspec

BEGIN = "# >>> sp schedules"
END = "# <<< sp schedules"


class Entry(msgspec.Struct, frozen=True):
    name: str
    cron: str
    timezone: str
    argv: list[str]
    enabled: bool = True
    notes: list[str] = []


def command(argv: list[str]) -> str:
    """A shell command line for cron: quoted, with ``%`` escaped (cron turns it into a
    newline)."""
    return " ".join(shlex.quote(a) for a in argv).replace("%", "\\%")


def render(entries: list[Entry], local_zone: str) -> str:
    """The crontab lines of the schedules (disabled ones commented out), one block each."""
    out: list[str] = []
    current = local_zone
    for e in entries:
        out.append(f"# sp schedule {e.name}" + ("" if e.enabled else " (disabled)"))
        out.extend(f"# {n}" for n in e.notes)
        if e.timezone != current:
            out.append(f"CRON_TZ={e.timezone}")
            current = e.timezone
        line = f"{e.cron} {command(e.argv)}"
        out.append(line if e.enabled else f"# {line}")
    if current != local_zone:
        out.append(f"CRON_TZ={local_zone}")
    return "\n".join(out) + ("\n" if out else "")


def block(body: str, home: str) -> str:
    """``body`` between the markers that name the home (several homes can share a crontab)."""
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
