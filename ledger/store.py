"""EventStore: connection setup, transactions, append, read.

The one write path: ``with store.transaction() as tx`` opens ``BEGIN IMMEDIATE``; the caller
decides against current state read inside it, ``tx.append()`` inserts events (hash-chained,
version-checked) and immediately hands them to every registered projection hook; the block's
end commits everything or nothing.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
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

# Python 3.11's sqlite3 binds None through its adapter lookup, which finds nothing only after
# two attribute probes: about 0.2 µs per NULL parameter, a third of the cost of writing a
# projection row with a dozen NULL columns. A registered adapter is found by one dict lookup
# instead; ``{}.get(None)`` is None, so the value bound is still NULL.
_NO_ADAPTATION: dict[None, None] = {}
sqlite3.register_adapter(type(None), _NO_ADAPTATION.get)


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


def _execute_locked(conn: sqlite3.Connection, sql: str, path: str) -> None:
    """Run ``sql``, retrying while the database is locked (no closure on the first try: this
    is on every transaction's path)."""
    try:
        conn.execute(sql)
    except sqlite3.OperationalError as e:
        if not _is_busy(e):
            raise
        _retry_locked(lambda: conn.execute(sql), path)


def _is_busy(e: sqlite3.Error) -> bool:
    msg = str(e)
    return "locked" in msg or "busy" in msg


class Transaction:
    """One ``BEGIN IMMEDIATE`` transaction. Obtain it from :meth:`EventStore.transaction`."""

    def __init__(self, store: EventStore, conn: sqlite3.Connection) -> None:
        self.store = store
        self._conn = conn
        self._head: tuple[int, str] | None = None
        self._versions: dict[str, int] = {}
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
        known = self._versions.get(stream)
        if known is not None:
            return known
        row = self._conn.execute(
            "SELECT max(version) FROM events WHERE stream = ?", (stream,)
        ).fetchone()
        return int(row[0] or 0)

    def _load_versions(self, streams: Iterable[str]) -> None:
        """Read the versions of several streams at once (a bulk append touches many)."""
        known = self._versions
        todo = [s for s in dict.fromkeys(streams) if s not in known]
        for i in range(0, len(todo), 500):
            chunk = todo[i:i + 500]
            # One index seek per stream (GROUP BY would walk every version of each).
            values = ", ".join("(?)" for _ in chunk)
            for s, version in self._conn.execute(
                f"WITH s(stream) AS (VALUES {values}) SELECT stream,"
                " (SELECT max(version) FROM events e WHERE e.stream = s.stream) FROM s",
                chunk,
            ):
                known[s] = int(version or 0)

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
        """Append to several streams at once (e.g. a bulk submit); same contract as append.

        The batches are appended in order, as if by consecutive :meth:`append` calls: a stream
        may appear more than once, each time with the version its earlier batch left it at.
        All or nothing: when one batch is refused, none of them is written.
        """
        conn = self._conn
        known = self._versions
        if self._head is None:
            first = batches[0][0] if batches else None
            if first is None or first in known:
                row = conn.execute(_HEAD).fetchone()
                self._head = (row[0], row[1]) if row else (0, codec.GENESIS_HASH)
            else:  # the head and the first stream's version in one statement
                seq_, hash_, version_ = conn.execute(_HEAD_AND_VERSION, (first,)).fetchone()
                self._head = (seq_, hash_) if seq_ is not None else (0, codec.GENESIS_HASH)
                known[first] = int(version_ or 0)
        seq, prev = self._head
        now = self.store.clock.now_ms()
        # Stream versions as of this transaction: we hold the write lock (BEGIN IMMEDIATE), so
        # nobody else can move them; only our own appends, tracked here, do.
        versions: dict[str, int] = {}
        if len(batches) > 1:
            self._load_versions([b[0] for b in batches])
        rows: list[tuple[int, str, int, str, int, str, str, str]] = []
        recorded: list[Recorded] = []
        encode, chain_hash, tag_of = codec.encode_bytes, codec.chain_hash_bytes, codec.tag_of
        for stream, events, expected in batches:
            actual = versions.get(stream)
            if actual is None:
                actual = known.get(stream)
                if actual is None:
                    actual = self.stream_version(stream)
            if expected is not None and actual != expected:
                raise ConcurrencyError(stream, expected, actual)
            version = actual
            for event in events:
                seq += 1
                version += 1
                type_ = tag_of(event)
                data = encode(event)
                h = chain_hash(prev, seq, stream, version, type_, now, data)
                text = data.decode()
                rows.append((seq, stream, version, type_, now, text, prev, h))
                recorded.append(Recorded(seq, stream, version, type_, now, event))  # type: ignore[arg-type]
                prev = h
            versions[stream] = version
        try:
            if len(rows) == 1:
                conn.execute(_INSERT_EVENT, rows[0])
            else:
                conn.executemany(_INSERT_EVENT, rows)
        except sqlite3.IntegrityError as e:
            # Some rows of the batch may be in: forget what we knew, read it again next time.
            self._head = None
            known.clear()
            raise LedgerError(f"append refused: {e}") from e
        self._head = (seq, prev)
        known.update(versions)
        for hook in self.store.hooks:
            hook(self, recorded)
        self.recorded.extend(recorded)
        return recorded


_HEAD = "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
_HEAD_AND_VERSION = (
    "SELECT (SELECT seq FROM events ORDER BY seq DESC LIMIT 1),"
    " (SELECT hash FROM events ORDER BY seq DESC LIMIT 1),"
    " (SELECT max(version) FROM events WHERE stream = ?)"
)
_INSERT_EVENT = (
    "INSERT INTO events (seq, stream, version, type, ts, data, prev_hash, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


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
        # socket.gethostname() is uname's nodename; importing socket costs a cron run 3 ms
        self.host = os.uname().nodename
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
            _execute_locked(conn, "BEGIN IMMEDIATE", self.path)
        except sqlite3.Error as e:
            raise LedgerError(f"cannot begin a transaction on {self.path}: {e}") from e
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            _execute_locked(conn, "COMMIT", self.path)
        except LedgerBusyError:
            conn.execute("ROLLBACK")
            raise LedgerBusyError(self.path, time.monotonic() - start) from None

    def transaction(self) -> AbstractContextManager[Transaction]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``; rolls back on any exception.

        :raises LedgerBusyError: the lock was not obtained within the busy timeout.
        """
        return _TransactionScope(self)

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
        row = self.query_one(_HEAD)
        return (int(row[0]), str(row[1])) if row else (0, codec.GENESIS_HASH)


class _TransactionScope:
    """The context manager of :meth:`EventStore.transaction` (a plain class: it runs for every
    append, and a generator-based one costs several microseconds more)."""

    __slots__ = ("start", "store")

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.start = 0.0

    def __enter__(self) -> Transaction:
        store = self.store
        conn = store._conn
        self.start = time.monotonic()
        try:
            _execute_locked(conn, "BEGIN IMMEDIATE", store.path)
        except sqlite3.Error as e:
            raise LedgerError(f"cannot begin a transaction on {store.path}: {e}") from e
        return Transaction(store, conn)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        store = self.store
        conn = store._conn
        if exc is not None:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
                raise LedgerBusyError(store.path, BUSY_TIMEOUT_S) from exc
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(f"ledger {store.path}: {exc}") from exc
            return
        try:
            _execute_locked(conn, "COMMIT", store.path)
        except LedgerBusyError:
            conn.execute("ROLLBACK")
            raise LedgerBusyError(store.path, time.monotonic() - self.start) from None


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
