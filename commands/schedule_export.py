"""Schedules for the OS schedulers: crontab lines, systemd units, and installing the lines.

The exported lines and units run the task directly (``systemprompt-os action execute``), in the
seed's form: the OS then drives the schedule, and ``sp tick`` must not fire the same schedules
as well (run ``sp tick --no-schedules`` for the queue, or install ``--tick`` instead, which puts
the one ``sp tick`` line in the crontab and lets sp drive every schedule, with every policy).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from sp.commands import schedules
from sp.ledger.errors import SpError, UsageError
from sp.ledger.interface import Ledger
from sp.schedules import cron as cronlib
from sp.schedules import crontab, systemd


def script_path() -> str:
    """The installed ``systemprompt-os`` console script (the seed's name), by its real path."""
    for name in ("systemprompt-os", "sp"):
        beside = Path(sys.executable).parent / name
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
        found = shutil.which(name)
        if found:
            return str(Path(found).resolve())
    return "systemprompt-os"


def _builtin_home() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/systemprompt-os")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "systemprompt-os"


def base_argv(home_root: Path) -> list[str]:
    """The script, plus ``--home`` unless the home is the default one (cron's environment has
    no ``SP_HOME``)."""
    argv = [script_path()]
    root = home_root.resolve()
    if root != _builtin_home().resolve():
        argv += ["--home", str(root)]
    return argv


def task_argv(home_root: Path, row: dict[str, Any]) -> list[str]:
    return [*base_argv(home_root), "action", "execute", "--agent", row["agent"],
            "--task", row["task"]]


def _notes(row: dict[str, Any], for_systemd: bool) -> list[str]:
    notes: list[str] = []
    if not for_systemd and row["jitter_ms"]:
        notes.append(f"jitter {row['jitter_ms'] // 1000}s: cron has no RandomizedDelaySec; "
                     "sp tick or the systemd export applies it")
    policy = schedules.policy_of(row)
    if policy.kind in ("backfill", "catchup"):
        notes.append(f"missed {policy.text()}: "
                     + ("Persistent=true runs one missed slot; only sp tick backfills"
                        if for_systemd else "cron never runs missed slots; use sp tick"))
    elif policy.kind == "run_once" and not for_systemd:
        notes.append("persistent: cron never runs missed slots; sp tick or the systemd "
                     "export (Persistent=true) does")
    if row["overlap"] != "skip":
        notes.append(f"overlap {row['overlap']}: "
                     + ("systemd never starts a second run of an active service"
                        if for_systemd else "cron starts every run, whatever still runs"))
    return notes


def crontab_text(store: Ledger, home_root: Path, tick: bool = False) -> str:
    """The crontab lines of every schedule, or with ``tick`` the one ``sp tick`` line."""
    local = cronlib.local_zone_name()
    if tick:
        argv = [*base_argv(home_root), "tick", "--max-seconds", "55"]
        return ("# sp tick: fires every due schedule (with its policies) and runs queued work\n"
                f"* * * * * {crontab.command(argv)}\n")
    entries = [crontab.Entry(name=row["name"], cron=row["cron"], timezone=row["timezone"],
                             argv=task_argv(home_root, row), enabled=row["enabled"],
                             notes=_notes(row, for_systemd=False))
               for row in schedules.listing(store)]
    return crontab.render(entries, local)


def write_systemd(store: Ledger, home_root: Path, directory: Path) -> list[Path]:
    """Write ``<unit>.service`` and ``<unit>.timer`` per schedule into ``directory``.

    Every schedule is translated before anything is written.

    :raises UsageError: a cron expression OnCalendar cannot express (named), or the directory
        cannot be written.
    """
    from sp.commands import agents

    units: list[tuple[str, str, str]] = []
    for row in schedules.listing(store):
        try:
            calendar = systemd.on_calendar(row["cron"], row["timezone"])
        except UsageError as e:
            raise UsageError(f"schedule {row['name']}: {e}") from None
        notes = _notes(row, for_systemd=True)
        if not row["enabled"]:
            notes.append("disabled in sp: the timer has no [Install] section")
        resources: dict[str, Any] = {}
        try:
            resources = agents.task_spec(agents.get(store, row["agent"]), row["task"]).resources
        except SpError as e:
            notes.append(f"no resource settings: {e}")
        name = systemd.unit_name(row["name"])
        units.append((
            name,
            systemd.service(row["name"], task_argv(home_root, row), resources, notes),
            systemd.timer(row["name"], calendar, persistent=row["missed"] != "skip",
                          jitter_ms=row["jitter_ms"], notes=notes, enabled=row["enabled"]),
        ))
    seen: dict[str, int] = Counter(name for name, _, _ in units)
    clashes = sorted(name for name, n in seen.items() if n > 1)
    if clashes:
        raise UsageError(f"schedules map to the same unit name {clashes[0]} ('/' becomes '-'); "
                         "rename one of them")
    written: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, service, timer in units:
            for suffix, text in ((".service", service), (".timer", timer)):
                path = directory / f"{name}{suffix}"
                path.write_text(text)
                written.append(path)
    except OSError as e:
        raise UsageError(f"{directory}: cannot write units: {e.strerror}") from None
    return written


def install_crontab(store: Ledger, home_root: Path, tick: bool = False) -> bool:
    """Put the lines into the user's crontab (``crontab -l`` / ``crontab -``), replacing this
    home's marked block in place; everything else in the crontab is kept. Returns False when
    the crontab already held exactly these lines (nothing is written then).

    :raises UsageError: ``crontab`` is not installed, or it refused the new table.
    """
    binary = shutil.which("crontab")
    if binary is None:
        raise UsageError("crontab is not installed (no crontab command on PATH); "
                         "print the lines with sp schedule export --crontab instead")
    current = subprocess.run([binary, "-l"], capture_output=True, text=True, check=False)
    existing = current.stdout if current.returncode == 0 else ""
    if current.returncode != 0 and "no crontab" not in current.stderr.lower():
        raise UsageError(f"crontab -l failed: {current.stderr.strip() or current.returncode}")
    body = crontab_text(store, home_root, tick=tick)
    updated = crontab.replace_block(existing, body, str(home_root.resolve()))
    if updated == existing:
        return False
    done = subprocess.run([binary, "-"], input=updated, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise UsageError(f"crontab refused the new table: {done.stderr.strip()}")
    return True
