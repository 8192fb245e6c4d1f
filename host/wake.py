"""Waking idle workers at once when work arrives: a named pipe in the home (the seed's
dispatcher pipe). Polling stays as the fallback, so a lost wake-up only costs latency."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

FIFO_NAME = "wake.fifo"


def fifo_path(home_root: Path) -> Path:
    return home_root / FIFO_NAME


def signal_workers(home_root: Path) -> None:
    """Write one byte to the pipe if any worker listens; never block, never fail."""
    try:
        fd = os.open(fifo_path(home_root), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # no pipe yet, or no reader (ENXIO): nobody idle to wake
    try:
        os.write(fd, b"\x01")
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EPIPE):
            raise
    finally:
        os.close(fd)


class Waker:
    """The reading end, for ``select``. Holds its own writer so the pipe never reads EOF."""

    def __init__(self, home_root: Path) -> None:
        path = fifo_path(home_root)
        with contextlib.suppress(FileExistsError):
            os.mkfifo(path, 0o600)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self._keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK)

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> int:
        n = 0
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except BlockingIOError:
                return n
            if not chunk:
                return n
            n += len(chunk)

    def close(self) -> None:
        for fd in (self.fd, self._keep):
            with contextlib.suppress(OSError):
                os.close(fd)
