"""EventStore: connection setup, transactions, append, read.

The one write path: ``with store.transaction() as tx`` opens ``BEGIN IMMEDIATE``; the caller
decides against current state read inside it, ``tx.append()`` inserts events (hash-chained,
version-checked) and immediately hands them to every registered projection hook; the block's
end commits everything or nothing.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from . import codec
from .clock import Clock, SystemClock
from .errors import (
    ConcurrencyError,
    LedgerBusyError,
    LedgerError,
    SchemaTooNewError,
)
from .events import AnyEvent, Event
from .schema import MIGRATIONS, SCHEMA_VERSION

# Writers wait this long for the lock rather than failing: a cron tick, a worker and a CLI
# command routinely overlap, and one fsync'd commit takes only milliseconds.
BUSY_TIMEOUT_S = 60.0

Row = tuple[Any, ...]


class Recorded(msgspec.Struct, frozen=True, gc=False):
    """An event as stored: its envelope plus the decoded event."""

    seq: int
    stream: str
    version: int
    type: str
    ts: int
    event: AnyEvent


AppendHook = Callable[["Transaction", list[Recorded]], None]


def connect(path: str | Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open the ledger with the settings every writer must share."""
    conn = sqlite3.connect(
        str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    _retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"), str(path))
    conn.execute(f"PRAGMA synchronous={_sync_level(synchronous)}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _sync_level(value: str) -> str:
    level = value.upper()
    if level not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise LedgerError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {value!r}")
    return level


def _retry_locked(fn: Callable[[], Any], path: str) -> Any:
    """Some statements (journal mode changes) report 'locked' without using the busy handler."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.001
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not _is_busy(e) or time.monotonic() > deadline:
                if _is_busy(e):
                    raise LedgerBusyError(path, BUSY_TIMEOUT_S) from e
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def _is_busy(e: sqlite3.Error) -> bool:
    msg = str(e)
    return "locked" in msg or "busy" in msg


class Transaction:
    """One ``BEGIN IMMEDIATE`` transaction. Obtain it from :meth:`EventStore.transaction`."""

    def __init__(self, store: EventStore, conn: sqlite3.Connection) -> None:
        self.store = store
        self._conn = conn
        self._head: tuple[int, str] | None = None
        self.recorded: list[Recorded] = []

    # -- reading and writing projection / side tables ----------------------------------------
    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        return self._conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
        row: Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    def executescript_safe(self, sql: str) -> None:
        """Run several DDL statements inside this transaction (executescript would commit)."""
        for stmt in _split_sql(sql):
            self._conn.execute(stmt)

    # -- the event log -------------------------------------------------------------------------
    def stream_version(self, stream: str) -> int:
        row = self._conn.execute(
            "SELECT max(version) FROM events WHERE stream = ?", (stream,)
        ).fetchone()
        return int(row[0] or 0)

    def read_stream(self, stream: str) -> list[Recorded]:
        return self.store._read_stream(self._conn, stream)

    def append(
        self, stream: str, events: Sequence[Event], expected_version: int | None
    ) -> list[Recorded]:
        """Append ``events`` to ``stream`` and apply them to the projections.

        :param expected_version: the stream's version the decision was based on (0 for a new
            stream); ``None`` appends whatever the version is.
        :raises ConcurrencyError: the stream is not at ``expected_version``.
        """
        return self.append_many([(stream, events, expected_version)])

    def append_many(
        self, batches: Sequence[tuple[str, Sequence[Event], int | None]]
    ) -> list[Recorded]:
        """Append to several streams at once (e.g. a bulk submit); same contract as append."""
        if self._head is None:
            row = self._conn.execute(
                "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            self._head = (row[0], row[1]) if row else (0, codec.GENESIS_HASH)
        seq, prev = self._head
        now = self.store.clock.now_ms()
        rows: list[tuple[int, str, int, str, int, str, str, str]] = []
        recorded: list[Recorded] = []
        for stream, events, expected in batches:
            actual = self.stream_version(stream)
            if expected is not None and actual != expected:
                raise ConcurrencyError(stream, expected, actual)
            version = actual
            for event in events:
                seq += 1
                version += 1
                type_ = event.__struct_config__.tag
                assert isinstance(type_, str)
                data = codec.encode(event)
                h = codec.chain_hash(prev, seq, stream, version, type_, now, data)
                rows.append((seq, stream, version, type_, now, data, prev, h))
                recorded.append(Recorded(seq, stream, version, type_, now, event))  # type: ignore[arg-type]
                prev = h
        try:
            self._conn.executemany(
                "INSERT INTO events (seq, stream, version, type, ts, data, prev_hash, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        except sqlite3.IntegrityError as e:
            raise LedgerError(f"append refused: {e}") from e
        self._head = (seq, prev)
        for hook in self.store.hooks:
            hook(self, recorded)
        self.recorded.extend(recorded)
        return recorded


class EventStore:
    """The ledger file. One instance per process; not shared across threads while writing."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock | None = None,
        synchronous: str | None = None,
        hooks: Sequence[AppendHook] = (),
    ) -> None:
        self.path = str(path)
        self.clock: Clock = clock or SystemClock()
        self.synchronous = synchronous or os.environ.get("SP_SYNCHRONOUS", "FULL")
        self.hooks: list[AppendHook] = list(hooks)
        self.host = socket.gethostname()
        try:
            self._conn = connect(self.path, self.synchronous)
        except sqlite3.Error as e:
            raise LedgerError(f"cannot open ledger {self.path}: {e}") from e
        self._migrate()

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(self.path, version, SCHEMA_VERSION)
        if version == SCHEMA_VERSION:
            return
        with self._begin():
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            for i in range(version, SCHEMA_VERSION):
                for stmt in _split_sql(MIGRATIONS[i]):
                    self._conn.execute(stmt)
                self._conn.execute(f"PRAGMA user_version = {i + 1}")

    @contextmanager
    def _begin(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        start = time.monotonic()
        try:
            _retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"), self.path)
        except sqlite3.Error as e:
            raise LedgerError(f"cannot begin a transaction on {self.path}: {e}") from e
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            _retry_locked(lambda: conn.execute("COMMIT"), self.path)
        except LedgerBusyError:
            conn.execute("ROLLBACK")
            raise LedgerBusyError(self.path, time.monotonic() - start) from None

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``; rolls back on any exception.

        :raises LedgerBusyError: the lock was not obtained within the busy timeout.
        """
        with self._begin() as conn:
            try:
                yield Transaction(self, conn)
            except sqlite3.OperationalError as e:
                if _is_busy(e):
                    raise LedgerBusyError(self.path, BUSY_TIMEOUT_S) from e
                raise LedgerError(f"ledger {self.path}: {e}") from e
            except sqlite3.Error as e:
                raise LedgerError(f"ledger {self.path}: {e}") from e

    # -- convenience ---------------------------------------------------------------------------
    def append(
        self, stream: str, events: Sequence[Event], expected_version: int | None
    ) -> list[Recorded]:
        """Append in a transaction of its own. See :meth:`Transaction.append`."""
        with self.transaction() as tx:
            return tx.append(stream, events, expected_version)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        """Read outside any write transaction (autocommit snapshot)."""
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise LedgerError(f"ledger {self.path}: {e}") from e

    def query_one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def read_stream(self, stream: str) -> list[Recorded]:
        return self._read_stream(self._conn, stream)

    @staticmethod
    def _read_stream(conn: sqlite3.Connection, stream: str) -> list[Recorded]:
        rows = conn.execute(
            "SELECT seq, stream, version, type, ts, data FROM events"
            " WHERE stream = ? ORDER BY version",
            (stream,),
        ).fetchall()
        return [Recorded(r[0], r[1], r[2], r[3], r[4], codec.decode(r[5], r[0])) for r in rows]

    def read_all(self, after_seq: int = 0, batch: int = 5000) -> Iterator[Recorded]:
        """Every event after ``after_seq`` in global order, decoded.

        :raises CorruptEventError: a row does not decode.
        """
        for chunk in self.read_all_raw(after_seq, batch):
            for r in chunk:
                yield Recorded(r[0], r[1], r[2], r[3], r[4], codec.decode(r[5], r[0]))

    def read_all_raw(self, after_seq: int = 0, batch: int = 5000) -> Iterator[list[Row]]:
        """Undecoded rows ``(seq, stream, version, type, ts, data)`` in chunks."""
        cur = self._conn.execute(
            "SELECT seq, stream, version, type, ts, data FROM events WHERE seq > ? ORDER BY seq",
            (after_seq,),
        )
        while True:
            chunk = cur.fetchmany(batch)
            if not chunk:
                return
            yield chunk

    def head(self) -> tuple[int, str]:
        row = self.query_one("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        return (int(row[0]), str(row[1])) if row else (0, codec.GENESIS_HASH)


def _split_sql(script: str) -> list[str]:
    """Split a DDL script into statements, keeping trigger bodies whole."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines():
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
