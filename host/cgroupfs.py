"""The cgroup filesystem, v1 or v2: which hierarchies this process sits in, and reading,
writing, creating and removing cgroup directories. host/limits.py builds on it."""

from __future__ import annotations

import contextlib
import functools
import os
import re
from dataclasses import dataclass

_V1 = {"memory": "memory", "pids": "pids", "cpu": "cpu", "cpuacct": "cpuacct", "blkio": "blkio"}
_V2 = {"memory": "memory", "pids": "pids", "cpu": "cpu", "cpuacct": "", "blkio": "io"}
_ROLES = tuple(_V1)
_PARENT = "sp"  # per-attempt cgroups live in <own cgroup>/sp/<name>


@dataclass(frozen=True)
class _Hierarchy:
    version: int  # 1 or 2
    mount: str  # where it is mounted, e.g. /sys/fs/cgroup/memory
    own: str  # our own cgroup, relative to the mount ("" for its root)

    @property
    def parent(self) -> str:
        return f"{self.mount}{self.own}/{_PARENT}"


@functools.cache
def _hierarchies() -> dict[str, _Hierarchy]:
    """Role -> the hierarchy that holds its controller, for the cgroups this process is in.

    Read from /proc/self/mountinfo and /proc/self/cgroup once per process: mounts and our own
    cgroup do not change under a running worker.
    """
    try:
        with open("/proc/self/cgroup") as f:
            own_lines = f.read().splitlines()
        with open("/proc/self/mountinfo") as f:
            mount_lines = f.read().splitlines()
    except OSError:
        return {}
    own_v1: dict[str, str] = {}  # controller -> our path
    own_v2: str | None = None
    for line in own_lines:
        hid, ctrls, path = line.split(":", 2)
        if hid == "0" and ctrls == "":
            own_v2 = path
        for c in ctrls.split(","):
            if c:
                own_v1[c] = path
    found: dict[str, _Hierarchy] = {}
    v2: _Hierarchy | None = None
    for line in mount_lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, mount, fstype, options = fields[3], _unescape(fields[4]), rfields[0], rfields[2]
        if fstype == "cgroup":
            for c in options.split(","):
                if c in own_v1 and c in _V1.values() and c not in found:
                    rel = _relative(own_v1[c], root)
                    if rel is not None:
                        found[c] = _Hierarchy(1, mount, rel)
        elif fstype == "cgroup2" and v2 is None and own_v2 is not None:
            rel = _relative(own_v2, root)
            if rel is not None:
                v2 = _Hierarchy(2, mount, rel)
    roles: dict[str, _Hierarchy] = {}
    v2_ctrls: set[str] = set()
    if v2 is not None:
        with contextlib.suppress(OSError):
            v2_ctrls = set(_read(f"{v2.mount}{v2.own}/cgroup.controllers").split())
    for role in _ROLES:
        if _V1[role] in found:
            roles[role] = found[_V1[role]]
        elif v2 is not None and (_V2[role] == "" or _V2[role] in v2_ctrls):
            roles[role] = v2
    return roles


def _relative(path: str, root: str) -> str | None:
    """Our cgroup path as seen under a mount whose root is ``root``; None if not under it."""
    if root == "/":
        return "" if path == "/" else path
    if path == root or path.startswith(root + "/"):
        return path[len(root) :]
    return None


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


# -- small file helpers -------------------------------------------------------------------------


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value: str) -> None:
    """One write(2) with no O_CREAT/O_TRUNC: the kernel's answer to exactly this value."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _int(text: str) -> int | None:
    """An integer file value; None for "max" (no limit)."""
    text = text.split()[-1] if text else text
    return None if text == "max" else int(text)


def _keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.oom_control, pids.events, cpu.stat, memory.events)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _make_dir(h: _Hierarchy, name: str) -> str:
    os.makedirs(h.parent, exist_ok=True)
    d = f"{h.parent}/{name}"
    try:
        os.mkdir(d)
    except FileExistsError:
        # Left by an earlier run under the same name. An empty one is replaced so that its
        # counters start at zero; one that still holds processes is not ours to take over.
        try:
            os.rmdir(d)
        except OSError as e:
            raise OSError(e.errno, "it already exists and still holds processes") from None
        os.mkdir(d)
    return d


def _enable_v2(h: _Hierarchy, controller: str) -> None:
    """cgroup v2 only passes a controller down where every ancestor's subtree_control has it."""
    for parent in (f"{h.mount}{h.own}", h.parent):
        current = _read(f"{parent}/cgroup.subtree_control").split()
        if controller not in current:
            _write(f"{parent}/cgroup.subtree_control", f"+{controller}")


def _schedulers() -> dict[str, str]:
    """Active I/O scheduler of each real block device (loop, ram and zram devices left out)."""
    out: dict[str, str] = {}
    try:
        names = sorted(os.listdir("/sys/block"))
    except OSError:
        return out
    for dev in names:
        if dev.startswith(("loop", "ram", "zram")):
            continue
        with contextlib.suppress(OSError):
            m = re.search(r"\[([^\]]+)\]", _read(f"/sys/block/{dev}/queue/scheduler"))
            out[dev] = m.group(1) if m else "none"
    return out


def _io_bytes(version: int, d: str) -> tuple[int, int]:
    read = write = 0
    if version == 1:
        for line in _read(f"{d}/blkio.throttle.io_service_bytes").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] == "Read":
                read += int(parts[2])
            elif len(parts) == 3 and parts[1] == "Write":
                write += int(parts[2])
    else:
        for line in _read(f"{d}/io.stat").splitlines():
            for kv in line.split()[1:]:
                k, _, v = kv.partition("=")
                if k == "rbytes":
                    read += int(v)
                elif k == "wbytes":
                    write += int(v)
    return read, write


def _pids(d: str) -> set[int]:
    """Every process in ``d`` and in any cgroup below it (an action may nest its own sp)."""
    found: set[int] = set()
    for root, _dirs, files in os.walk(d):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(x) for x in _read(f"{root}/cgroup.procs").split())
    return found


def _rmtree(d: str) -> bool:
    """rmdir ``d`` and any cgroups below it, deepest first; True once it is gone."""
    if not os.path.isdir(d):
        return True
    for root, dirs, _files in os.walk(d, topdown=False):
        for sub in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, sub))
    try:
        os.rmdir(d)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
