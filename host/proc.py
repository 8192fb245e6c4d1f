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


def of_attempt(action_id: str, attempt: int) -> list[tuple[int, int]]:
    """``(pid, start time)`` of the live processes started for this attempt: the worker gives
    each spawned step ``SP_ACTION_ID`` and ``SP_ATTEMPT``, so ``/proc/PID/environ`` names the
    attempt exactly (needs the same user, or root). Evidence for recovery that the attempt was
    spawned, and the processes to stop, even when its worker died before noting the child in
    its lease. Group leaders first."""
    want = {f"SP_ACTION_ID={action_id}".encode(), f"SP_ATTEMPT={attempt}".encode()}
    found: list[tuple[int, int, bool]] = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = set(f.read().split(b"\0"))
        except OSError:
            continue
        if want <= env:
            pid = int(name)
            try:
                leader = os.getpgid(pid) == pid
            except OSError:
                continue
            found.append((pid, start_time(pid), leader))
    found.sort(key=lambda t: not t[2])
    return [(pid, started) for pid, started, _ in found]


def kill_attempt(processes: list[tuple[int, int]]) -> None:
    """SIGKILL each process (its whole group when it leads one) if it is still that process."""
    import signal

    for pid, started in processes:
        if not alive(pid, started):
            continue
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
