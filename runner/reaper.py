"""The actor of crash recovery: what :func:`sp.commands.recovery.sweep` decided, done after
its commits — stop the orphaned process groups and stray processes, empty and remove the
attempts' cgroups, remove the denials files that are now on the record.

Split from the decider so that nothing but the ledger happens inside a write transaction, and
so that the commands layer never kills: a kill inside the transaction would hold the write
lock across signals and waits, and a kill before the commit could stop a process whose
attempt then stays ``executing`` on the record.
"""

from __future__ import annotations

import contextlib
import os
import signal

from sp.commands.recovery import Cleanup, Recovered, sweep
from sp.host import proc
from sp.ledger.interface import Ledger


def recover(store: Ledger, by: str = "replay", *, wait: bool = True,
            skip_own: bool = False) -> list[Recovered]:
    """Record an event for every executing action whose owner is gone (see
    :func:`sp.commands.recovery.sweep` for ``wait`` and ``skip_own``), then clean up after it.

    :raises OSError: the home's recovery lock cannot be taken.
    """
    done, cleanup = sweep(store, by, wait=wait, skip_own=skip_own)
    clean_up(cleanup)
    return done


def clean_up(cleanup: Cleanup) -> None:
    """Stop process groups whose owner died, so a resumed attempt does not run beside its
    orphaned predecessor; remove what was recorded. Only after the sweep's commits."""
    for pid, started_at in cleanup.groups:
        proc.kill_group(pid, started_at)
    proc.kill_attempt(cleanup.strays)
    for path in cleanup.files:  # recorded: the evidence is in the ledger now
        with contextlib.suppress(OSError):
            os.unlink(path)
    if cleanup.cgroups:
        # Processes that left the process group are still in the attempt's cgroups.
        from sp.host import limits

        for enforced in cleanup.cgroups:
            prepared = limits.from_enforced(enforced)
            if prepared is not None:
                limits.kill_all(prepared, signal.SIGKILL)
                limits.cleanup(prepared)
