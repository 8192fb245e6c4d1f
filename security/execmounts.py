"""Executable only what the policy lists: noexec mounts in the sandbox's private mount namespace.

Landlock's execute right is checked when a file is ``execve``\\ d, not when it is mapped
``PROT_EXEC``, and it cannot tell the kernel loading a program's ``PT_INTERP`` from a direct
exec of the loader: with the loader allowed (every dynamic program needs it),
``ld-linux-x86-64.so.2 /usr/bin/id`` runs ``id``. A ``noexec`` mount refuses both ``execve``
and ``mmap(PROT_EXEC)`` of the files under it, and a bind mount of one file carries its own
flags. So, when the policy has an execute allow-list, the shim's *init* (in the sandbox's own
mount namespace, propagation private, so nothing reaches the host) applies :func:`apply`:

1. every **program folder** (:data:`PROGRAM_DIRS`) and every folder the action may **write**
   (its ``TMPDIR``, ``/tmp``, ``/var/tmp``, ``/dev/shm`` and the policy's write paths — all of
   ``/`` when writing is not restricted) is bind-mounted onto itself and made ``noexec``,
   recursively (``mount_setattr(AT_RECURSIVE)``, which keeps each mount's other flags);
2. what must stay executable — the **allowed programs**, their **loaders**, and the
   **library folders** shared objects are mapped from (:data:`LIBRARY_DIRS`, and
   ``<prefix>/lib`` of each allowed program ``<prefix>/bin/x``) — is bound onto itself again
   with ``noexec`` cleared, and read-only when it lies in a writable folder: a mount is
   writable or executable, never both, so nothing written during the action can be mapped
   executable.

What this still allows (README, security section): an ELF file inside a library folder (e.g.
``/usr/lib/git-core/git``) can be started through the loader, and an allowed interpreter
(``python3``) can do in-process whatever the programs it may not run would do.

Stdlib + ctypes only: this module runs inside the exec shim.
"""

from __future__ import annotations

import ctypes
import os

from sp.security import linux

PROGRAM_DIRS = ("/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin",
                "/usr/libexec", "/usr/local/libexec", "/usr/games", "/usr/local/games",
                "/snap/bin")
LIBRARY_DIRS = ("/lib", "/lib32", "/lib64", "/libx32", "/usr/lib", "/usr/lib32", "/usr/lib64",
                "/usr/libx32", "/usr/local/lib", "/usr/local/lib64")
ALWAYS_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")

MS_BIND = 4096
MS_REC = linux.MS_REC
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOEXEC = 0x8
AT_RECURSIVE = 0x8000
AT_FDCWD = -100
_SYS_MOUNT_SETATTR = 442  # same number on x86_64 and aarch64 (generic table)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _within(path: str, root: str) -> bool:
    return path == root or root == "/" or path.startswith(root.rstrip("/") + "/")


def _outermost(paths: list[str]) -> list[str]:
    """The paths not inside another one of them (a recursive mount covers those)."""
    out: list[str] = []
    for p in sorted(set(paths), key=len):
        if not any(_within(p, q) for q in out):
            out.append(p)
    return out


def _setattr(path: str, set_: int, clear: int) -> None:
    attr = _MountAttr(set_, clear, 0, 0)
    linux.syscall(_SYS_MOUNT_SETATTR, ctypes.c_int(AT_FDCWD), path.encode(),
                  ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr),
                  ctypes.c_size_t(ctypes.sizeof(attr)), what=f"mount_setattr {path}")


def _bind(path: str) -> None:
    if path != "/":  # "/" is a mount already; a bind onto it would hide nothing new
        linux.mount(path, path, None, MS_BIND | MS_REC)


def existing(paths: list[str]) -> list[str]:
    """``paths`` resolved through symlinks, those that exist, each once, in order."""
    out: list[str] = []
    for p in paths:
        r = os.path.realpath(p)
        if os.path.exists(r) and r not in out:
            out.append(r)
    return out


def executable_dirs(programs: list[str]) -> list[str]:
    """The library folders the allowed ``programs`` (resolved paths) map code from."""
    dirs = list(LIBRARY_DIRS)
    for prog in programs:
        parent = os.path.dirname(prog)
        if os.path.basename(parent) in ("bin", "sbin"):
            prefix = os.path.dirname(parent)
            dirs += [os.path.join(prefix, "lib"), os.path.join(prefix, "lib64")]
    return dirs


def plan(noexec: list[str], executable: list[str],
         writable: list[str]) -> list[tuple[str, int, int]]:
    """The mount operations, in order: (path, attributes to set, attributes to clear).

    Existing paths only, resolved. Each operation binds its path onto itself and changes the
    attributes of every mount beneath it, so they run shallowest first and a deeper one wins:
    an allowed program inside a noexec folder stays executable, a writable folder inside a
    library folder does not. Only what lies under a noexec folder needs keeping executable.
    """
    real = existing
    dark, writable = _outermost(real(noexec)), real(writable)
    ops: list[tuple[str, int, int]] = [(d, MOUNT_ATTR_NOEXEC, 0) for d in dark]
    kept = [p for p in _outermost(real(executable)) if any(_within(p, d) for d in dark)]
    for path in kept:
        read_only = any(_within(path, w) for w in writable)
        ops.append((path, MOUNT_ATTR_RDONLY if read_only else 0, MOUNT_ATTR_NOEXEC))
    for d in real(noexec):  # noexec again where a kept folder's bind covered it
        if d not in dark and any(_within(d, k) and k != d for k in kept):
            ops.append((d, MOUNT_ATTR_NOEXEC, 0))

    def depth(op: tuple[str, int, int]) -> tuple[int, int]:
        return (0 if op[0] == "/" else op[0].count("/"), 0 if op[1] & MOUNT_ATTR_NOEXEC else 1)

    return sorted(ops, key=depth)


def apply(noexec: list[str], executable: list[str], writable: list[str]) -> None:
    """Make ``noexec`` folders non-executable except ``executable`` (see the module doc).

    :raises OSError: a mount failed (the shim then refuses to run the program).
    """
    for path, set_, clear in plan(noexec, executable, writable):
        _bind(path)
        _setattr(path, set_, clear)
