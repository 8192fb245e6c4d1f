"""The supervisor inside every process that runs work (``sp tick``, ``sp worker``, ``sp daemon``,
``sp action execute``): a recovery sweep first, then every half lease period.

Nothing else has to run after a crash: an action left ``executing`` by a worker that was killed
is found by the next process that runs work — the next cron tick at the latest — and queued
again to resume from its checkpoint (or failed when no attempts are left), see
:mod:`sp.commands.recovery` (the decider) and :mod:`sp.runner.reaper` (the actor). Sweeps of
several processes never race (the home's recovery lock); the attempts the sweeping process
holds itself are never touched.
"""

from __future__ import annotations

from sp.commands import recovery
from sp.commands.execution import LEASE_TTL_MS
from sp.ledger.interface import Ledger
from sp.runner import reaper

# Half a lease: an owner that died is noticed well before a live one's lease could lapse.
SWEEP_EVERY_MS = LEASE_TTL_MS // 2


class Sweeper:
    """Runs :func:`sp.runner.reaper.recover` when due by the store's (injectable) clock."""

    def __init__(self, store: Ledger, by: str, every_ms: int = SWEEP_EVERY_MS) -> None:
        self.store = store
        self.by = by
        self.every_ms = every_ms
        self.recovered = 0  # actions this process's sweeps recovered
        self._next: int | None = None  # monotonic ms of the next sweep; None: at once

    def sweep_if_due(self) -> list[recovery.Recovered]:
        """Sweep if none ran for ``every_ms`` (always the first time).

        :raises SpError: the ledger cannot be written (as any transaction of the worker).
        :raises OSError: the home's recovery lock cannot be taken.
        """
        now = self.store.clock.monotonic_ms()
        if self._next is not None and now < self._next:
            return []
        self._next = now + self.every_ms
        done = reaper.recover(self.store, by=self.by, wait=False, skip_own=True)
        self.recovered += len(done)
        return done
