"""The ledger's interface, written down: what code above ``ledger/`` may ask of the event log.

:class:`~sp.ledger.store.EventStore` (SQLite) implements it today; a PostgreSQL backend (several
hosts sharing one ledger, see SCALEOUT.md) implements the same two Protocols next. So the
signatures name no driver type: SQL goes in as text with positional (or named) parameters and
rows come back as plain tuples; every driver error leaves as a :mod:`sp.ledger.errors` domain
error (busy, damaged, disk full, concurrency), translated in one place, the transaction
manager.

The two halves:

- :class:`Ledger` — the log as a whole: open a write transaction, read outside one, close.
- :class:`LedgerTransaction` — one all-or-nothing write: read current state, append events
  (version-checked, hash-chained, applied to every projection before the commit) and touch
  projection and side tables (leases, readings, memory) in the same commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from sp.ledger.clock import Clock
from sp.ledger.events import Event

if TYPE_CHECKING:  # store.py implements these Protocols; only its record type is named here
    from sp.ledger.store import Recorded

Row = tuple[Any, ...]
# Positional ("?") or named (":name") parameters of one statement.
Params = Sequence[Any] | dict[str, Any]
# (stream, events, expected version or None) -- one batch of LedgerTransaction.append_many.
Batch = tuple[str, Sequence[Event], int | None]


class LedgerTransaction(Protocol):
    """One write transaction, held from ``BEGIN`` to ``COMMIT``: nobody else writes meanwhile,
    so state read here is the state the appended events are decided against."""

    @property
    def store(self) -> Ledger:
        """The ledger this transaction writes to (its clock, its path)."""
        ...

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        """Every row of a read, inside the transaction (sees its own writes)."""
        ...

    def query_one(self, sql: str, params: Params = ()) -> Row | None:
        """The first row of a read, or None."""
        ...

    def execute(self, sql: str, params: Params = ()) -> int:
        """Write a projection or side table (never ``events``); the rows it changed."""
        ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement for many parameter rows (bulk projection or side-table writes)."""
        ...

    def stream_version(self, stream: str) -> int:
        """The stream's current version (0 when it has no events)."""
        ...

    def read_stream(self, stream: str) -> list[Recorded]:
        """Every event of ``stream`` in version order, decoded."""
        ...

    def append(self, stream: str, events: Sequence[Event],
               expected_version: int | None) -> list[Recorded]:
        """Append to one stream and apply to every projection.

        :raises ConcurrencyError: the stream is not at ``expected_version``.
        """
        ...

    def append_many(self, batches: Sequence[Batch]) -> list[Recorded]:
        """Append to several streams, in order, all or nothing (same contract as append)."""
        ...


class Ledger(Protocol):
    """The append-only event log and the tables that project it."""

    clock: Clock
    path: str  # where it lives (the home is its directory); a DSN for a server backend
    host: str  # the machine this process runs on (recorded in action.started, leases)

    def transaction(self) -> AbstractContextManager[LedgerTransaction]:
        """The one write path: ``with ledger.transaction() as tx``; commits at the end of the
        block, rolls back on any exception.

        :raises LedgerBusyError: the write lock was not obtained in time.
        :raises LedgerDamagedError: the ledger is corrupt.
        :raises DiskFullError: no space left for the write.
        """
        ...

    def append(self, stream: str, events: Sequence[Event],
               expected_version: int | None) -> list[Recorded]:
        """Append in a transaction of its own (see :meth:`LedgerTransaction.append`)."""
        ...

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        """A read outside any write transaction (one consistent snapshot)."""
        ...

    def query_one(self, sql: str, params: Params = ()) -> Row | None:
        """The first row of :meth:`query`, or None."""
        ...

    def read_stream(self, stream: str) -> list[Recorded]:
        """Every event of ``stream`` in version order, decoded."""
        ...

    def read_all(self, after_seq: int = 0, batch: int = 5000) -> Iterator[Recorded]:
        """Every event after ``after_seq`` in global (``seq``) order, decoded.

        :raises CorruptEventError: a row does not decode.
        """
        ...

    def head(self) -> tuple[int, str]:
        """The last event's ``(seq, hash)``; ``(0, GENESIS_HASH)`` for an empty log."""
        ...

    def close(self) -> None:
        """Release the connection; the ledger is not used afterwards."""
        ...

