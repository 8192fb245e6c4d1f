"""Starting one step's process: ``posix_spawn`` (a vfork-style clone, no Python in the child)
where nothing needs more, ``subprocess.Popen`` otherwise.

Both give the child the same start: stdin ``/dev/null``, stdout and stderr the attempt's log,
a new session (its own process group), SIGPIPE and SIGXFSZ at their defaults, only fds 0-2
(``Popen``'s ``close_fds``; for ``posix_spawn`` every other fd of the worker is marked
close-on-exec just before), and the program looked up in the child's ``PATH``.
(One difference: glibc's ``posix_spawn`` leaves its two internal signals, 32 and 33,
ignored in the child; glibc programs install their own handlers for them when they need
them, and no portable program can use them: SIGRTMIN is 34.)
``posix_spawn`` takes 0.10 ms of the worker's time per spawn against ``Popen``'s 0.17 ms (the
child's exec aside). Python 3.11's ``posix_spawn`` cannot change the directory: a step with a
``cwd`` goes through ``Popen``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Any

_posix_spawn = getattr(os, "posix_spawn", None)
_DEFAULT_SIGNALS = tuple(getattr(signal, s) for s in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, s))
_CLOSE_RANGE_CLOEXEC = 4  # linux/close_range.h
_close_range: Any = None  # libc's close_range, False where there is none (or it fails)
# Where a name was found on a PATH, for WHICH_TTL_S: the lookup is up to one access() per PATH
# folder (0.05 ms for `true` here, the eighth folder); within a second the same program runs.
WHICH_TTL_S = 1.0
_found: dict[tuple[bytes | None, str], tuple[str, float]] = {}


def spawn(argv: list[str], env: dict[bytes, bytes], out_fd: int,
          cwd: str | None) -> tuple[int, subprocess.Popen[bytes] | None]:
    """Start ``argv``; returns its pid, and the ``Popen`` when that was used (keep it: a
    dropped ``Popen`` of a running child is reaped behind the caller's back).

    :raises OSError: the program cannot be run (as ``Popen`` raises it).
    :raises ValueError: a NUL byte in argv, env or cwd.
    """
    if cwd is not None or _posix_spawn is None or not argv or out_fd <= 2:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_fd,
                             stderr=subprocess.STDOUT, cwd=cwd, env=env,
                             start_new_session=True)
        return p.pid, p
    _seal_fds()
    path = _which(argv[0], env)
    pid: int = _posix_spawn(
        path, argv, env,
        file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                      (os.POSIX_SPAWN_DUP2, out_fd, 1), (os.POSIX_SPAWN_DUP2, out_fd, 2)],
        setsid=True, setsigdef=_DEFAULT_SIGNALS)
    return pid, None


def _which(name: str, env: dict[bytes, bytes]) -> str:
    """``name`` as ``Popen`` (execvpe) finds it: as given when it has a slash, else the first
    executable file on the child's ``PATH``; FileNotFoundError, or PermissionError when only
    non-executable candidates exist."""
    if "\0" in name:
        raise ValueError("embedded null byte")
    if os.path.dirname(name):
        return name
    key = (env.get(b"PATH"), name)
    hit = _found.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[1] < WHICH_TTL_S:
        return hit[0]
    path = _search(name, env)
    if len(_found) > 256:
        _found.clear()
    _found[key] = (path, now)
    return path


def _search(name: str, env: dict[bytes, bytes]) -> str:
    denied = False
    for folder in os.get_exec_path(env):  # type: ignore[arg-type]  # bytes keys work too
        d = os.fsdecode(folder)
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK):
            if not os.path.isdir(candidate):
                return candidate
            denied = True  # execve of a folder: EACCES
            continue
        if os.path.exists(candidate):
            denied = True
    err = PermissionError if denied else FileNotFoundError
    code = 13 if denied else 2
    raise err(code, os.strerror(code), name)


def _seal_fds() -> None:
    """Mark every open fd above 2 close-on-exec before each spawn: what ``close_fds`` does for
    ``Popen``. One ``close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`` (Linux 5.11+, 1 us); else each
    fd listed in /proc/self/fd (17 us with ten fds open)."""
    global _close_range
    if _close_range is None:
        _close_range = _load_close_range()
    if _close_range is not False and _close_range(3, 0xFFFFFFFF, _CLOSE_RANGE_CLOEXEC) == 0:
        return
    _close_range = False
    fds: list[str] = []
    with contextlib.suppress(OSError):
        fds = os.listdir("/proc/self/fd")
    for name in fds:
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # closed meanwhile (the listing's own fd)
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)


def _load_close_range() -> Any:
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).close_range
    except (OSError, AttributeError):  # no libc symbol (glibc < 2.34)
        return False
    fn.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn
