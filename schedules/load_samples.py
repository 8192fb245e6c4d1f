"""Machine load samples: what adaptive schedules learn the quiet minutes from.

The daemon's ``load`` source records, every :data:`SAMPLE_EVERY_MS`, the 1-minute load average
and the CPU use since the previous sample into the side table ``load_samples`` (through
:mod:`sp.ledger.side`). Samples are ephemeral facts (like heartbeats): not events, not
replayed, kept for :data:`RETENTION_MS`; losing them only makes adaptive schedules fall back
to their window's start. One row a minute
is one small commit a minute, well within what the ledger's fsync budget allows.

The daemon's source (:mod:`sp.triggers.load_source`) is built for every trigger file unless it
says ``load_samples: false``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sp.ledger import side

if TYPE_CHECKING:
    from sp.ledger.interface import LedgerTransaction

SAMPLE_EVERY_MS = 60_000
RETENTION_MS = 30 * 86_400_000

Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


def record(tx: LedgerTransaction, ts_ms: int, load1: float, cpu_pct: float,
           retention_ms: int = RETENTION_MS) -> None:
    """Store one sample and forget those older than the retention."""
    side.load_record(tx, ts_ms, load1, cpu_pct, ts_ms - retention_ms)


def samples_between(query: Query, start_ms: int, end_ms: int) -> list[tuple[int, float, float]]:
    """``(ts_ms, load1, cpu_pct)`` with ``start_ms <= ts_ms < end_ms``, oldest first; none when
    no sample was ever recorded. ``query`` is ``store.query`` or ``tx.query``."""
    return side.load_between(query, start_ms, end_ms)


def measure() -> tuple[float, float]:
    """This machine's 1-minute load average and CPU percent since the previous call (the
    first call primes psutil's counter and reads 0)."""
    import psutil

    return os.getloadavg()[0], float(psutil.cpu_percent(interval=None))
