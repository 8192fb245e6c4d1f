"""Process identity on this host: a pid plus its start time, so a reused pid is not mistaken."""

from __future__ import annotations

import os


def start_time(pid: int) -> int:
    """Start time in clock ticks since boot (``/proc/PID/stat`` field 22); 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])


def alive(pid: int, started: int) -> bool:
    """True if ``pid`` runs and is the same process that started at ``started``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = start_time(pid)
    return now != 0 and (started == 0 or now == started)


def kill_group(pid: int, started: int) -> bool:
    """SIGKILL the process group led by ``pid`` if that very process still runs."""
    import signal

    if not alive(pid, started):
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True
