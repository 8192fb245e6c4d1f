"""Thin ctypes bindings for the Linux calls Python 3.11 lacks (stdlib + ctypes only).

Used by the exec shim (:mod:`sp.security.enter`) and by :func:`sp.security.sandbox.probe`;
every call raises :class:`OSError` with the kernel's errno, like the :mod:`os` functions do.
"""

from __future__ import annotations

import ctypes
import os
import platform

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
raw_syscall = _libc.syscall  # for hot loops; returns -1 and sets errno on failure

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

NAMESPACE_FLAGS = {
    "pid": CLONE_NEWPID, "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS, "mnt": CLONE_NEWNS,
    "net": CLONE_NEWNET,
}

MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REC = 16384
MS_PRIVATE = 1 << 18

PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
# Linux capability numbers (linux/capability.h) removed from a root program's bounding set.
DROPPED_CAPABILITIES = {
    "CAP_LINUX_IMMUTABLE": 9, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17, "CAP_SYS_PTRACE": 19, "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27,
    "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35, "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40,
}
# The capabilities that step around the kernel's permission checks (file modes and owners, other
# users' processes and IPC, rlimits, niceness): dropped from a sandboxed program too, unless its
# policy grants them (``linux_capabilities:``). Without DAC_OVERRIDE and DAC_READ_SEARCH (which
# also gates open_by_handle_at), root reads only what file modes let it; without SETUID/SETGID
# it cannot become the owner of a file it may not read. What stays: NET_BIND_SERVICE and
# NET_BROADCAST (Landlock's port rules and the network namespace still apply).
GRANTABLE_CAPABILITIES = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
    "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
    "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15, "CAP_SYS_CHROOT": 18, "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24, "CAP_LEASE": 28, "CAP_SETFCAP": 31,
}
CAPABILITIES = {**DROPPED_CAPABILITIES, **GRANTABLE_CAPABILITIES}
PR_SET_PDEATHSIG = 1

# Landlock is the same syscall number on every architecture that has it except alpha/mips/...;
# sp runs on x86_64 and aarch64 (generic table), where these are the numbers.
_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = _SYSCALLS.get(
    platform.machine(), (-1, -1, -1))


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what)
    return ret


def syscall(number: int, *args: object, what: str = "syscall") -> int:
    """Call a raw syscall; ``ENOSYS`` when this architecture has no number for it."""
    if number < 0:
        raise OSError(38, f"{what}: not supported on {platform.machine()}")
    return _check(_libc.syscall(number, *args), what)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None), f"mount {target}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def prctl(option: int, arg2: int = 0) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl")


def write_id_maps(uid: int, gid: int) -> None:
    """Map our own uid/gid into a fresh user namespace (the unprivileged path)."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def loopback_up() -> None:
    """Bring ``lo`` up in a fresh network namespace (it starts down)."""
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), siocgifflags, req))[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))
