"""The one reader of configuration files: regular files only, and never more than a cap.

Every file sp reads as configuration (agent, plan and sub-plan, trigger and policy files, the
lines of ``sp submit --each``) comes through :func:`read_config`, because ``read_bytes()``
trusts the path: ``/dev/zero`` grows the process until the OOM killer wakes, and a FIFO
blocks for ever. Here the path is opened without side effects (``O_PATH``: a device's open
routine never runs, a FIFO never waits for a writer), the opened file is checked with
``fstat``, and only a regular file is opened for reading, and read up to the cap plus one byte.

Symlinks are followed: a configuration file linked from elsewhere is normal. What is refused is
what the link (or the path) lands on when that is not a regular file.

The cap is :data:`DEFAULT_MAX_BYTES` (8 MiB, far above any real configuration file), or
``$SP_CONFIG_MAX_BYTES``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

from sp.ledger.errors import UsageError

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
ENV_MAX_BYTES = "SP_CONFIG_MAX_BYTES"

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def max_bytes() -> int:
    """The cap on a configuration file's size, in bytes.

    :raises UsageError: ``$SP_CONFIG_MAX_BYTES`` is set but not a whole number of bytes >= 1.
    """
    raw = os.environ.get(ENV_MAX_BYTES)
    if raw is None or raw == "":
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"${ENV_MAX_BYTES}: expected a whole number of bytes (1 or more), "
                         f"got {raw!r}")
    return value


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def read_config(path: str | Path) -> bytes:
    """The bytes of the configuration file at ``path``.

    :raises UsageError: missing or unreadable, not a regular file (a directory, FIFO, device or
        socket: refused before any read), or larger than :func:`max_bytes`; one line naming
        the file and why.
    """
    cap = max_bytes()
    name = str(path)
    try:
        probe = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"{name}: cannot read: {e.strerror}") from None
    try:
        before = os.fstat(probe)
    finally:
        os.close(probe)
    if not stat.S_ISREG(before.st_mode):
        raise UsageError(f"{name}: is {_kind(before.st_mode)}, not a regular file; "
                         "configuration is read from regular files only")
    _check_size(name, before.st_size, cap)
    # Reopened to read (an O_PATH descriptor cannot be read). O_NONBLOCK: should the path have
    # been swapped for a FIFO in between, the open does not wait; the identity check refuses it.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"{name}: cannot read: {e.strerror}") from None
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino) or not stat.S_ISREG(
                now.st_mode):
            raise UsageError(f"{name}: changed while it was being opened; not read")
        data = _read_upto(fd, cap + 1, name)
    finally:
        os.close(fd)
    _check_size(name, len(data), cap)  # it may have grown since fstat (or be a /proc file)
    return data


def _check_size(name: str, size: int, cap: int) -> None:
    if size > cap:
        raise UsageError(f"{name}: larger than {cap} bytes, the limit for a configuration "
                         f"file (${ENV_MAX_BYTES})")


def _read_upto(fd: int, limit: int, name: str) -> bytes:
    """At most ``limit`` bytes from ``fd`` (fewer at end of file)."""
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        try:
            chunk = os.read(fd, min(left, 1 << 20))
        except OSError as e:
            raise UsageError(f"{name}: cannot read: {e.strerror}") from None
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_stream(stream: IO[bytes], name: str) -> bytes:
    """At most :func:`max_bytes` bytes of an already open binary stream (stdin for ``-``).

    :raises UsageError: more than the cap.
    """
    cap = max_bytes()
    data = stream.read(cap + 1)
    _check_size(name, len(data), cap)
    return data
