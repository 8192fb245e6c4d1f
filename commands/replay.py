"""``sp replay``: rebuild the projections from the log, then recover orphaned actions; or,
with ``--check``, prove that the live projections equal a rebuild.

Neither trusts a log that ``sp verify`` flags: the hash chain is walked in the same scan that
folds the rows (a bad row rolls the rebuild back, nothing appended), and SQLite's quick_check
runs first, so a damaged index is named here rather than by the next writer. ``force`` skips
both, for a user who has decided to rebuild from a damaged log anyway.
"""

from __future__ import annotations

from sp.commands.recovery import Swept, sweep
from sp.ledger.integrity import damage_error

# EventStore, not the Ledger Protocol: replay runs SQLite's quick_check (sp.ledger.integrity) and
# the projection engine's rebuild, both specific to the SQLite store (see projections/engine.py).
from sp.ledger.store import EventStore
from sp.projections import engine


def refuse_damaged(store: EventStore) -> None:
    """:raises LedgerDamagedError: SQLite's quick_check finds the file damaged."""
    error = damage_error(store)
    if error is not None:
        raise error


def replay(store: EventStore, force: bool = False) -> tuple[int, Swept]:
    """Rebuild every projection, then record a recovery event for each orphaned action.
    Returns the event count and what was recovered, with what to clean up after it (the
    caller hands that to :func:`sp.runner.reaper.clean_up`: commands never kill).

    :raises LedgerTamperedError: the log fails the chain walk (not with ``force``).
    :raises LedgerDamagedError: SQLite finds the file damaged (not with ``force``).
    """
    if not force:
        refuse_damaged(store)
    count = engine.rebuild(store, verify=not force)
    return count, sweep(store)


def check(store: EventStore, force: bool = False) -> tuple[int, engine.Difference | None]:
    """Rebuild into scratch tables and compare (:func:`sp.projections.engine.check`), after the
    same checks as :func:`replay`. Changes nothing.

    :raises LedgerTamperedError: the log fails the chain walk (not with ``force``).
    :raises LedgerDamagedError: SQLite finds the file damaged (not with ``force``).
    """
    if not force:
        refuse_damaged(store)
    return engine.check(store, verify=not force)
