"""Moving whole streams out of the event log into an archive file: the only path that removes
rows from ``events``.

The archive is an SQLite file with the ledger's own schema (``events`` with its append-only
triggers, ``meta``) plus a ``staged_events`` table, in rollback-journal mode so that the file
alone is the whole archive. ``meta.sp_archive_of`` names the chain it belongs to: the hash of
the chain's first row (:func:`chain_id`).

Three commits, in this order, each fsync'd (``synchronous=FULL``)::

    1. archive: copy the rows into staged_events under a new batch id
    2. ledger:  BEGIN IMMEDIATE; check the streams did not move since the copy; the caller
                appends ledger.archived (batch, runs, sha256) (record); delete the rows; let
                the caller fix the projections (after_move); COMMIT
    3. archive: move the batch from staged_events into events

A crash (kill -9, power loss) at any point loses nothing and duplicates nothing:

* before 2 commits, the rows are still in the ledger and the batch is not recorded there: the
  next ``sp archive`` discards the staged copy (:func:`recover`), and readers ignore it;
* after 2 commits and before 3, the rows are only in ``staged_events``, under a batch the
  ledger records: the next ``sp archive`` finishes step 3, and ``sp verify`` / ``sp audit``
  read staged rows of recorded batches meanwhile.

An exclusive ``flock`` on ``FILE.lock`` keeps two archivers of one file apart, so that one
never discards a batch the other is about to record; the kernel drops it when a process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from sp.ledger import codec
from sp.ledger import events as ev
from sp.ledger.errors import LedgerError, UsageError
from sp.ledger.interface import Ledger
from sp.ledger.schema import MIGRATIONS, SCHEMA_VERSION
from sp.ledger.store import BUSY_TIMEOUT_S, EventStore, Recorded, Transaction, _split_sql

STREAM = "ledger"
ARCHIVED = ev.tag_of(ev.LedgerArchived)
ArchiveRow = tuple[int, str, int, str, int, str, str, str]  # the events table's columns
_COLS = "seq, stream, version, type, ts, data, prev_hash, hash"

_STAGED_DDL = """
CREATE TABLE IF NOT EXISTS staged_events (
    batch     TEXT    NOT NULL,  -- the sp archive run that copied the row
    seq       INTEGER PRIMARY KEY,
    stream    TEXT    NOT NULL,
    version   INTEGER NOT NULL,
    type      TEXT    NOT NULL,
    ts        INTEGER NOT NULL,
    data      TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
)
"""


class ArchiveChangedError(LedgerError):
    """The streams moved between the copy and the move (e.g. a restart): nothing was moved."""

    exit_code = 75


def chain_id(store: EventStore) -> str | None:
    """The hash of the chain's first row (from the first ``ledger.archived`` once it moved)."""
    row = store.query_one("SELECT hash FROM events WHERE seq = 1")
    if row is not None:
        return str(row[0])
    first = store.query_one(
        f"SELECT json_extract(data, '$.chain_id') FROM events WHERE type = '{ARCHIVED}'"
        " ORDER BY seq LIMIT 1")
    return None if first is None or first[0] is None else str(first[0])


def claims(store: EventStore) -> list[tuple[int, ev.LedgerArchived]]:
    """Every ``ledger.archived`` event of the log, with its seq, in order."""
    out = []
    for seq, data in store.query(
            f"SELECT seq, data FROM events WHERE type = '{ARCHIVED}' ORDER BY seq"):
        event = codec.decode(data, seq)
        if isinstance(event, ev.LedgerArchived):
            out.append((int(seq), event))
    return out


# -- the archive file ---------------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def open_archive(path: Path, chain: str, *, create: bool) -> sqlite3.Connection:
    """Open (or create) the archive of ``chain`` at ``path``.

    :raises UsageError: the file is not an sp archive, or the archive of another ledger.
    """
    existed = path.exists()
    if not existed and not create:
        raise UsageError(f"archive {path}: no such file")
    try:
        conn = _connect(path)
        kind = _meta(conn, "sp_archive_of") if existed else None
    except sqlite3.DatabaseError as e:
        raise UsageError(f"archive {path}: not an sp archive ({e})") from None
    if existed and kind is None:
        conn.close()
        raise UsageError(f"archive {path}: not an sp archive (no sp_archive_of in meta)")
    if kind is not None and kind != chain:
        conn.close()
        raise UsageError(f"archive {path} belongs to another ledger (chain {kind[:12]}, "
                         f"this one is {chain[:12]})")
    try:
        _migrate(conn, chain)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise UsageError(f"archive {path}: {e}") from None
    if not existed:
        _fsync_dir(path.parent)
    return conn


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    has = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    if has is None:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _migrate(conn: sqlite3.Connection, chain: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for i in range(version, SCHEMA_VERSION):
            for stmt in _split_sql(MIGRATIONS[i]):
                conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute(_STAGED_DDL)
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('sp_archive_of', ?)",
                     (chain,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One archiver per archive file at a time (released by the kernel if we die)."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _recorded_batches(store: EventStore) -> dict[str, int]:
    return {str(b): int(s) for s, b in store.query(
        f"SELECT seq, json_extract(data, '$.batch') FROM events WHERE type = '{ARCHIVED}'")}


def recover(store: EventStore, conn: sqlite3.Connection) -> tuple[int, int]:
    """Finish what a crashed archiver left in ``staged_events``: promote the batches the
    ledger records, discard the others. Returns ``(promoted rows, discarded rows)``."""
    batches = [str(r[0]) for r in conn.execute("SELECT DISTINCT batch FROM staged_events")]
    if not batches:
        return 0, 0
    recorded = _recorded_batches(store)
    promoted = discarded = 0
    for batch in batches:
        if batch in recorded:
            promoted += _promote(conn, batch)
        else:
            conn.execute("BEGIN IMMEDIATE")
            discarded += conn.execute(
                "DELETE FROM staged_events WHERE batch = ?", (batch,)).rowcount
            conn.execute("COMMIT")
    return promoted, discarded


def _promote(conn: sqlite3.Connection, batch: str) -> int:
    conn.execute("BEGIN IMMEDIATE")
    try:
        n = conn.execute(
            f"INSERT INTO events ({_COLS}) SELECT {_COLS} FROM staged_events WHERE batch = ?"
            " ORDER BY seq", (batch,)).rowcount
        conn.execute("DELETE FROM staged_events WHERE batch = ?", (batch,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return int(n)


# -- moving -------------------------------------------------------------------------------------


def digest(hashes: Sequence[str]) -> str:
    """The ``sha256`` of ``ledger.archived``: over the moved rows' hashes, one per line."""
    return hashlib.sha256("".join(f"{h}\n" for h in hashes).encode()).hexdigest()


def runs_of(rows: Sequence[ArchiveRow]) -> list[ev.ArchivedRun]:
    """Maximal runs of consecutive seqs among ``rows`` (sorted by seq)."""
    runs: list[ev.ArchivedRun] = []
    start: ArchiveRow | None = None
    last: ArchiveRow | None = None
    for row in rows:
        if last is not None and row[0] != last[0] + 1:
            assert start is not None
            runs.append(ev.ArchivedRun(first_seq=start[0], last_seq=last[0],
                                       prev_hash=start[6], last_hash=last[7]))
            start = None
        if start is None:
            start = row
        last = row
    if start is not None and last is not None:
        runs.append(ev.ArchivedRun(first_seq=start[0], last_seq=last[0], prev_hash=start[6],
                                   last_hash=last[7]))
    return runs


def _rows_of(query: Callable[..., list[Any]], streams: Sequence[str]) -> list[ArchiveRow]:
    """Every row of ``streams``, in seq order, read in one statement (one snapshot)."""
    return [tuple(r) for r in query(  # type: ignore[misc]
        f"SELECT {_COLS} FROM events WHERE stream IN (SELECT value FROM json_each(?))"
        " ORDER BY seq", (msgspec.json.encode(list(streams)).decode(),))]


def move(store: EventStore, path: str | Path, streams: Sequence[str], before_ms: int, *,
         record: Callable[[Transaction, ev.LedgerArchived], None],
         after_move: Callable[[Transaction], None], by: str = "") -> ev.LedgerArchived | None:
    """Move every row of ``streams`` into the archive at ``path`` (see the module docstring).

    Inside the ledger transaction, ``record(tx, event)`` appends ``event``, the
    ``ledger.archived`` fact computed from the rows to move, before they go (the caller is a
    command: the ledger appends no event of its own; the event must come before the delete,
    whose gap would otherwise be taken for the chain's head); ``after_move(tx)`` runs once the
    rows are gone, so that the projections change with the log, all or nothing. Returns the
    recorded event, or None when ``streams`` hold no rows.

    :raises UsageError: ``path`` is not an archive of this ledger.
    :raises ArchiveChangedError: a stream gained or lost events during the copy.
    """
    target = Path(path).resolve()
    chain = chain_id(store)
    if chain is None:
        return None
    with _exclusive(target):
        conn = open_archive(target, chain, create=True)
        try:
            recover(store, conn)
            rows = _rows_of(store.query, streams) if streams else []
            if not rows:
                return None
            batch = uuid.uuid4().hex
            _stage(conn, batch, rows)
            try:
                event = _commit_move(store, target, streams, rows, batch, chain, before_ms,
                                     record, after_move, by)
            except BaseException:
                conn.execute("DELETE FROM staged_events WHERE batch = ?", (batch,))
                raise
            _promote(conn, batch)
            return event
        finally:
            conn.close()


def _stage(conn: sqlite3.Connection, batch: str, rows: Sequence[ArchiveRow]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            f"INSERT INTO staged_events (batch, {_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(batch, *r) for r in rows])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _commit_move(store: EventStore, target: Path, streams: Sequence[str],
                 rows: Sequence[ArchiveRow], batch: str, chain: str, before_ms: int,
                 record: Callable[[Transaction, ev.LedgerArchived], None],
                 after_move: Callable[[Transaction], None], by: str) -> ev.LedgerArchived:
    with store.transaction() as tx:
        now = _rows_of(tx.query, streams)
        if [r[0] for r in now] != [r[0] for r in rows]:
            raise ArchiveChangedError(
                "the streams to archive changed while they were copied; nothing was moved, "
                "run sp archive again")
        event = ev.LedgerArchived(
            by=by, file=str(target), batch=batch, chain_id=chain, before_ms=before_ms,
            streams=sorted({r[1] for r in rows}), runs=runs_of(rows), count=len(rows),
            sha256=digest([r[7] for r in rows]))
        record(tx, event)
        guard = tx.query_one(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'events_no_delete'")
        if guard is None:
            raise LedgerError("the events_no_delete trigger is missing: run sp verify")
        tx.execute("DROP TRIGGER events_no_delete")
        tx.execute("DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?))",
                   (msgspec.json.encode([r[0] for r in rows]).decode(),))
        tx.execute(str(guard[0]))
        after_move(tx)
    return event


# -- reading an archive -------------------------------------------------------------------------


class ArchiveReader:
    """Read-only view of an archive file: its events, plus staged rows of batches the ledger
    records (moved, but not promoted yet when the archiver died)."""

    def __init__(self, path: Path, recorded_batches: set[str]) -> None:
        self.path = path
        uri = f"file:{path}?mode=ro"
        try:
            self._conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
            self.chain = _meta(self._conn, "sp_archive_of")
        except sqlite3.DatabaseError as e:
            raise UsageError(f"archive {path}: not an sp archive ({e})") from None
        if self.chain is None:
            self._conn.close()
            raise UsageError(f"archive {path}: not an sp archive (no sp_archive_of in meta)")
        self._batches = sorted(recorded_batches)

    def close(self) -> None:
        self._conn.close()

    def _select(self, where: str, params: tuple[Any, ...]) -> list[ArchiveRow]:
        marks = ", ".join("?" for _ in self._batches) or "NULL"
        sql = (f"SELECT {_COLS} FROM events WHERE {where} UNION ALL "
               f"SELECT {_COLS} FROM staged_events WHERE batch IN ({marks}) AND {where}"
               " ORDER BY seq")
        try:
            return [tuple(r) for r in self._conn.execute(  # type: ignore[misc]
                sql, (*params, *self._batches, *params))]
        except sqlite3.DatabaseError as e:
            raise UsageError(f"archive {self.path}: {e}") from None

    def rows(self, first_seq: int, last_seq: int) -> list[ArchiveRow]:
        return self._select("seq BETWEEN ? AND ?", (first_seq, last_seq))

    def stream(self, stream: str) -> list[Recorded]:
        return [Recorded(r[0], r[1], r[2], r[3], r[4], codec.decode(r[5], r[0]))
                for r in self._select("stream = ?", (stream,))]


def reader(store: EventStore, path: str | Path) -> ArchiveReader:
    """Open the archive at ``path`` for reading.

    :raises UsageError: missing, not an archive, or the archive of another ledger.
    """
    p = Path(path).resolve()
    if not p.is_file():
        raise UsageError(f"archive {p}: no such file")
    r = ArchiveReader(p, set(_recorded_batches(store)))
    chain = chain_id(store)
    if chain is not None and r.chain != chain:
        r.close()
        raise UsageError(f"archive {p} belongs to another ledger (chain {str(r.chain)[:12]}, "
                         f"this one is {chain[:12]})")
    return r


def where_archived(store: Ledger, ref: str) -> list[tuple[str, int, str]]:
    """The archived streams whose name is ``ref`` or starts with it:
    ``(stream, seq of ledger.archived, file)``, at most 6."""
    rows = store.query(
        f"SELECT j.value, e.seq, json_extract(e.data, '$.file') FROM events e,"
        f" json_each(e.data, '$.streams') j WHERE e.type = '{ARCHIVED}'"
        " AND j.value >= ? AND j.value < ? ORDER BY j.value LIMIT 6",
        (ref, ref + "\U0010ffff"))
    return [(str(s), int(q), str(f)) for s, q, f in rows]
