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
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from sp.ledger import codec
from sp.ledger.clock import Clock, default_clock
from sp.ledger.errors import (
    ConcurrencyError,
    LedgerBusyError,
    LedgerDamagedError,
    LedgerError,
    SchemaTooNewError,
    SpError,
    translate,
)
from sp.ledger.events import AnyEvent, Event
from sp.ledger.interface import Row as Row  # defined with the interface; re-exported
from sp.ledger.schema import MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:
    from sp.ledger.interface import Ledger, LedgerTransaction

# Writers wait this long for the lock rather than failing: a cron tick, a worker and a CLI
# command routinely overlap, and one fsync'd commit takes only milliseconds.
BUSY_TIMEOUT_S = 60.0

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


def ledger_error(e: sqlite3.Error, path: str) -> SpError:
    """The one translation of a driver error into a domain error (code above ledger/ never
    sees sqlite3): a damaged file or a full disk is named as such, never "busy" (exit 75
    would make automation retry for ever) nor an internal error."""
    found = translate(e, path)
    if found is not None:
        return found
    if isinstance(e, sqlite3.OperationalError) and _is_busy(e):
        return LedgerBusyError(path, BUSY_TIMEOUT_S)
    return LedgerError(f"ledger {path}: {e}")


_TEXT_COLUMNS = ("stream", "type", "data", "prev_hash", "hash")


def first_invalid_text(conn: sqlite3.Connection, after_seq: int) -> tuple[int, str] | None:
    """The first event after ``after_seq`` with a text column that is not valid UTF-8, and
    that column: the driver's decode error names neither (read as bytes here instead)."""
    cols = ", ".join(f"CAST({c} AS BLOB)" for c in _TEXT_COLUMNS)
    cur = conn.execute(f"SELECT seq, {cols} FROM events WHERE seq > ? ORDER BY seq", (after_seq,))
    try:
        for seq, *values in cur:
            for name, value in zip(_TEXT_COLUMNS, values, strict=True):
                try:
                    value.decode()
                except UnicodeDecodeError as e:
                    return int(seq), f"column {name} is not valid UTF-8 (byte {e.start})"
                except AttributeError:  # NULL: the NOT NULL constraint says it cannot be
                    return int(seq), f"column {name} is NULL"
    finally:
        cur.close()
    return None


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
        self.clock: Clock = clock or default_clock()
        self.synchronous = synchronous or os.environ.get("SP_SYNCHRONOUS", "FULL")
        self.hooks: list[AppendHook] = list(hooks)
        # socket.gethostname() is uname's nodename; importing socket costs a cron run 3 ms
        self.host = os.uname().nodename
        try:
            self._conn = connect(self.path, self.synchronous)
        except sqlite3.Error as e:
            found = translate(e, self.path)
            raise found or LedgerError(f"cannot open ledger {self.path}: {e}") from e
        try:
            self._migrate()
        except sqlite3.Error as e:  # a damaged header or schema shows up here first
            self._conn.close()
            raise ledger_error(e, self.path) from e
        except BaseException:
            self._conn.close()
            raise

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
        # The same transaction manager as every append: one place takes the write lock and
        # translates what the driver says (busy, damaged, disk full).
        with self.transaction() as tx:
            # Re-read under the write lock: another process may have migrated meanwhile.
            row = tx.query_one("PRAGMA user_version")
            for i in range(int(row[0]) if row else 0, SCHEMA_VERSION):
                tx.executescript_safe(MIGRATIONS[i])
                tx.execute(f"PRAGMA user_version = {i + 1}")

    def transaction(self) -> AbstractContextManager[Transaction]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``; rolls back on any exception.

        :raises LedgerBusyError: the lock was not obtained within the busy timeout.
        """
        return _TransactionScope(self)

    @property
    def in_transaction(self) -> bool:
        """Whether a write transaction is open on this store's connection (tests check that
        no side effect runs inside one: nothing but the ledger belongs there)."""
        return self._conn.in_transaction

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
            raise ledger_error(e, self.path) from e

    def query_one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def read_stream(self, stream: str) -> list[Recorded]:
        return self._read_stream(self._conn, stream)

    def _read_stream(self, conn: sqlite3.Connection, stream: str) -> list[Recorded]:
        try:
            rows = conn.execute(
                "SELECT seq, stream, version, type, ts, data FROM events"
                " WHERE stream = ? ORDER BY version",
                (stream,),
            ).fetchall()
        except sqlite3.Error as e:
            raise self._read_error(e, 0) from e
        # The read goes through the (stream, version) index: a damaged index page returns
        # another stream's rows, or skips some, without any error from SQLite.
        for i, r in enumerate(rows, 1):
            if r[1] != stream or r[2] != i:
                raise LedgerDamagedError(
                    self.path, f"stream {stream} reads as seq {r[0]} ({r[1]} version {r[2]}) "
                    f"where its version {i} belongs: the index of events is damaged")
        return [Recorded(r[0], r[1], r[2], r[3], r[4], codec.decode(r[5], r[0])) for r in rows]

    def _read_error(self, e: sqlite3.Error, after_seq: int) -> SpError:
        """:func:`ledger_error`, naming the row when a text column is not UTF-8."""
        found = ledger_error(e, self.path)
        if isinstance(found, LedgerDamagedError) and "UTF-8" in found.what:
            try:
                bad = first_invalid_text(self._conn, after_seq)
            except sqlite3.Error:
                bad = None
            if bad is not None:
                return LedgerDamagedError(self.path, bad[1], bad[0])
        return found

    def read_all(self, after_seq: int = 0, batch: int = 5000) -> Iterator[Recorded]:
        """Every event after ``after_seq`` in global order, decoded.

        :raises CorruptEventError: a row does not decode.
        """
        for chunk in self.read_all_raw(after_seq, batch):
            for r in chunk:
                yield Recorded(r[0], r[1], r[2], r[3], r[4], codec.decode(r[5], r[0]))

    def read_all_raw(self, after_seq: int = 0, batch: int = 5000) -> Iterator[list[Row]]:
        """Undecoded rows ``(seq, stream, version, type, ts, data)`` in chunks.

        :raises LedgerDamagedError: a row cannot be read (its seq named when known).
        """
        return self._scan(
            "SELECT seq, stream, version, type, ts, data FROM events WHERE seq > ? ORDER BY seq",
            after_seq, batch)

    def read_chain_raw(self, batch: int = 10000) -> Iterator[list[Row]]:
        """Every row with its hashes, ``(seq, stream, version, type, ts, data, prev_hash,
        hash)``, in chunks: what ``sp verify`` walks. Raises as :meth:`read_all_raw`."""
        return self._scan(
            "SELECT seq, stream, version, type, ts, data, prev_hash, hash FROM events"
            " WHERE seq > ? ORDER BY seq", 0, batch)

    def _scan(self, sql: str, after_seq: int, batch: int) -> Iterator[list[Row]]:
        try:
            cur = self._conn.execute(sql, (after_seq,))
        except sqlite3.Error as e:
            raise self._read_error(e, after_seq) from e
        last = after_seq
        try:
            while True:
                try:
                    chunk = cur.fetchmany(batch)
                except sqlite3.Error as e:
                    raise self._read_error(e, last) from e
                if not chunk:
                    return
                last = chunk[-1][0]
                yield chunk
        finally:
            # An open statement would keep its tables locked: a caller that stops on a bad
            # row and then drops a scratch table would see "database table is locked". (A
            # generator collected after its store closed has nothing left to close.)
            with suppress(sqlite3.ProgrammingError):
                cur.close()

    def head(self) -> tuple[int, str]:
        row = self.query_one(_HEAD)
        return (int(row[0]), str(row[1])) if row else (0, codec.GENESIS_HASH)


class _TransactionScope:
    """The transaction manager, the only place that opens ``BEGIN IMMEDIATE`` on the ledger
    (appends, side-table writes and migrations alike) and the only place that turns what the
    driver raised inside it into a domain error (:func:`ledger_error`: busy, damaged, disk
    full; a stale expected version is refused by ``append`` as ``ConcurrencyError`` before any
    row is written). A plain class, not ``@contextmanager``: it runs for every append, and a
    generator-based one costs several microseconds more."""

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
            raise _begin_error(e, store.path) from e
        return Transaction(store, conn)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        store = self.store
        conn = store._conn
        if exc is not None:
            _rollback(conn)
            if isinstance(exc, sqlite3.Error):
                raise ledger_error(exc, store.path) from exc
            return
        try:
            _execute_locked(conn, "COMMIT", store.path)
        except LedgerBusyError:
            _rollback(conn)
            raise LedgerBusyError(store.path, time.monotonic() - self.start) from None
        except sqlite3.Error as e:  # a full disk shows up at COMMIT, when the WAL grows
            _rollback(conn)
            raise ledger_error(e, store.path) from e


def _begin_error(e: sqlite3.Error, path: str) -> SpError:
    found = translate(e, path)
    return found or LedgerError(f"cannot begin a transaction on {path}: {e}")


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open; a rollback that fails (damaged file, no space for
    the journal) must not hide the error that caused it."""
    if conn.in_transaction:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


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


if TYPE_CHECKING:
    # mypy --strict proves, structurally (no base class, no registration, no isinstance), that
    # the SQLite store implements the interface code above ledger/ is written against.
    def _implements(store: EventStore, tx: Transaction) -> None:
        ledger: Ledger = store
        transaction: LedgerTransaction = tx
        del ledger, transaction
