"""Who a sandboxed action's program runs as, and which root capabilities it keeps.

A policy may name a ``user:`` (a name or a uid of this machine's user database) and a
``group:`` (a name or a gid; the user's primary group by default) and grant
``linux_capabilities:`` from :data:`sp.security.linux.GRANTABLE_CAPABILITIES`. :func:`resolve`
turns the names into numbers when an action is submitted and again when it is claimed (the
database may have changed in between: an unknown user is refused both times); :func:`apply`
runs in the program's own process inside the exec shim, after everything that needs root
(namespaces, mounts, Landlock) and just before exec:

1. supplementary groups, gid, uid (``setgroups``, ``setresgid``, ``setresuid``; real, effective
   and saved alike, so the program cannot switch back);
2. every capability the plan drops leaves the ambient, inheritable, permitted and effective
   sets (the bounding set was emptied of them by the shim's init, so exec cannot give them
   back); a capability the policy grants to a user other than root is kept through the uid
   change and exec as an ambient one;
3. the result is read back from the kernel: a drop that did not happen fails the shim.

Stdlib + ctypes only (the resolving half uses :mod:`pwd` and :mod:`grp`): this module runs
inside the exec shim.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
from typing import Any, TypedDict

from sp.security import linux

_libc = ctypes.CDLL(None, use_errno=True)
_CAP_VERSION_3 = 0x20080522  # linux/capability.h: two 32-bit words per set
PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4


class RunAs(TypedDict):
    """A resolved identity: what the ``started`` event records and the shim applies."""

    name: str
    uid: int
    gid: int
    groups: list[int]


class UnknownIdentityError(LookupError):
    """A ``user:`` or ``group:`` this machine does not know (the message is one line)."""


def _passwd(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        kind = "uid" if user.isdigit() else "user"
        raise UnknownIdentityError(f"no {kind} {user!r} on this machine") from None


def _gid(group: str) -> int:
    try:
        return (grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)).gr_gid
    except (KeyError, OverflowError):
        kind = "gid" if group.isdigit() else "group"
        raise UnknownIdentityError(f"no {kind} {group!r} on this machine") from None


def resolve(user: str | None, group: str | None = None) -> RunAs | None:
    """The numbers of ``user`` (and ``group``), or None when the policy names no user.

    A uid must have a passwd entry: its name gives the supplementary groups, and a uid that no
    account owns is more likely a typo than a decision.

    :raises UnknownIdentityError: the user or the group does not exist here.
    """
    if user is None:
        return None
    entry = _passwd(user)
    gid = entry.pw_gid if group is None else _gid(group)
    groups = sorted(set(os.getgrouplist(entry.pw_name, gid)))
    return RunAs(name=entry.pw_name, uid=entry.pw_uid, gid=gid, groups=groups)


# -- in the shim ------------------------------------------------------------------------------


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _check(ret: int, what: str) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what)


def capabilities() -> tuple[int, int, int]:
    """This thread's (effective, permitted, inheritable) capability sets as bit masks.

    :raises OSError: capget failed.
    """
    header, data = _Header(_CAP_VERSION_3, 0), (_Data * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "reading capabilities")

    def word(field: str) -> int:
        return int(getattr(data[0], field)) | int(getattr(data[1], field)) << 32

    return word("effective"), word("permitted"), word("inheritable")


def _set_capabilities(effective: int, permitted: int, inheritable: int) -> None:
    header, data = _Header(_CAP_VERSION_3, 0), (_Data * 2)()
    for i in range(2):
        data[i].effective = effective >> (32 * i) & 0xFFFFFFFF
        data[i].permitted = permitted >> (32 * i) & 0xFFFFFFFF
        data[i].inheritable = inheritable >> (32 * i) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), data), "dropping capabilities")


def _prctl(option: int, arg2: int, arg3: int, what: str) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), what)


def _mask(names: list[str]) -> int:
    out = 0
    for name in names:
        number = linux.CAPABILITIES.get(name)
        if number is None:
            raise OSError(22, f"unknown capability {name}", "capabilities")
        out |= 1 << number
    return out


def _switch_user(run_as: RunAs, keep: int) -> None:
    """Groups, then gid, then uid (the uid change ends the right to make the other two)."""
    what = f"user {run_as['name']} (uid {run_as['uid']})"
    try:
        os.setgroups(run_as["groups"])
        os.setresgid(run_as["gid"], run_as["gid"], run_as["gid"])
        if keep:  # granted capabilities survive the uid change, to be made ambient below
            _prctl(PR_SET_KEEPCAPS, 1, 0, what)
        os.setresuid(run_as["uid"], run_as["uid"], run_as["uid"])
    except OSError as e:
        raise OSError(e.errno, e.strerror, what) from None


def apply(cfg: dict[str, Any]) -> None:
    """Become the planned user and drop the planned capabilities (``cfg`` is the shim's
    configuration: ``user``, ``dropped_capabilities``, ``granted_capabilities``); a no-op
    when it plans neither.

    :raises OSError: a step failed or did not take effect (``filename`` says which).
    """
    run_as: RunAs | None = cfg.get("user")
    dropped = cfg.get("dropped_capabilities") or []
    if run_as is None and not dropped:
        return
    drop, keep = _mask(dropped), _mask(cfg.get("granted_capabilities") or [])
    if run_as is not None:
        _switch_user(run_as, keep)
    try:
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, "clearing ambient capabilities")
    except OSError as e:
        if e.errno != 22:  # EINVAL: a kernel before 4.3 has no ambient set to clear
            raise
    effective, permitted, inheritable = capabilities()
    if run_as is not None and run_as["uid"] != 0:
        # A user other than root keeps only what was granted, and only through ambient
        # capabilities (exec recomputes the rest from file capabilities, which it has none of).
        permitted &= keep
        effective, inheritable = permitted, permitted
    _set_capabilities(effective & ~drop, permitted & ~drop, inheritable & ~drop)
    if run_as is not None and run_as["uid"] != 0:
        for number in range(64):
            if keep >> number & 1 and permitted >> number & 1:
                _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, number,
                       "granting an ambient capability")
    _verify(run_as, drop)


def _verify(run_as: RunAs | None, drop: int) -> None:
    """Read back what the kernel now holds: the plan's drops and identity, or fail."""
    held = 0
    for mask in capabilities():
        held |= mask
    if held & drop:
        raise OSError(1, f"still held: mask {held & drop:#x}", "dropping capabilities")
    if run_as is not None and (os.getresuid() != (run_as["uid"],) * 3
                               or os.getresgid() != (run_as["gid"],) * 3):
        raise OSError(1, "the kernel kept another identity", f"user {run_as['name']}")


# -- in the worker ----------------------------------------------------------------------------


def unreachable(path: str, run_as: RunAs) -> str | None:
    """The first folder above ``path`` that ``run_as`` may not search (so cannot reach the
    action's ``TMPDIR`` through it), or None when every one is searchable."""
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            st = os.stat(folder)
        except OSError:
            return folder
        if st.st_uid == run_as["uid"]:
            bit = 0o100
        elif st.st_gid in run_as["groups"] or st.st_gid == run_as["gid"]:
            bit = 0o010
        else:
            bit = 0o001
        if run_as["uid"] != 0 and not st.st_mode & bit:
            return folder
        if folder == "/":
            return None
        folder = os.path.dirname(folder)


def hand_over(folders: list[str], run_as: RunAs) -> None:
    """Make the action's own folders (its ``TMPDIR``, the broker's folder in it) the user's,
    before its program starts. Not the log: the worker opens it and the program writes to it
    through the inherited descriptor, whoever it runs as.

    :raises OSError: a folder cannot be handed over.
    """
    for folder in folders:
        if os.path.isdir(folder):
            os.lchown(folder, run_as["uid"], run_as["gid"])
