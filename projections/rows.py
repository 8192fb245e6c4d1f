"""A unit of work over projection tables, shared by live apply and full rebuild.

Projection logic is written once, against this class. Live, rows are loaded lazily from the
database and the dirty ones written back at the end of the append; during a rebuild the cache is
the whole truth (it started empty) and is written out once with ``executemany``. Running the
same code both ways is what makes "incremental apply == rebuild" hold.

Live, a row read from the database remembers its stored values, so that writing it back
updates only the columns that changed (and with them only the indexes that cover them), and a
row known to be absent is inserted rather than replaced. The statements are built once per
table and prefix.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import compress
from operator import is_not, itemgetter
from typing import Any

from sp.ledger.interface import LedgerTransaction

Key = Any  # a scalar for one-column keys, a tuple otherwise
RowDict = dict[str, Any]



_MISSING: Any = object()
_IN_CHUNK = 500  # keys per "WHERE key IN (...)" (well under SQLite's parameter limit)
_MAX_VARIABLES = 512  # parameters per multi-row insert


class Table:
    def __init__(self, name: str, columns: tuple[str, ...], key: tuple[str, ...],
                 counter: str | None = None) -> None:
        self.name = name
        self.columns = columns
        self.key = key
        # A counter table has one numeric column updated by deltas (n = n + delta).
        self.counter = counter
        self.single = len(key) == 1
        self.positions = range(len(columns))
        self._sql: dict[str, _Statements] = {}
        # row dict -> tuple of its values in column order
        self.values: Callable[[RowDict], tuple[Any, ...]] = (
            itemgetter(*columns) if len(columns) > 1 else lambda row: (row[columns[0]],)
        )

    def key_of(self, row: RowDict) -> Key:
        if self.single:
            return row[self.key[0]]
        return tuple(row[k] for k in self.key)

    def key_params(self, key: Key) -> tuple[Any, ...]:
        return (key,) if self.single else tuple(key)

    def sql(self, prefix: str = "") -> _Statements:
        found = self._sql.get(prefix)
        if found is None:
            found = self._sql[prefix] = _Statements(self, prefix + self.name)
        return found


class _Statements:
    """The SQL of one table (under one name), built once."""

    def __init__(self, spec: Table, target: str) -> None:
        cols = ", ".join(spec.columns)
        marks = ", ".join("?" for _ in spec.columns)
        where = " AND ".join(f"{k} = ?" for k in spec.key)
        self.spec = spec
        self.target = target
        self.select = f"SELECT {cols} FROM {target} WHERE {where}"
        self.select_in = f"SELECT {cols} FROM {target} WHERE {spec.key[0]} IN "
        self.insert = f"INSERT INTO {target} ({cols}) VALUES ({marks})"
        self.replace = f"INSERT OR REPLACE INTO {target} ({cols}) VALUES ({marks})"
        self.delete = f"DELETE FROM {target} WHERE {where}"
        self.where = where
        if spec.counter:
            keycols = ", ".join(spec.key)
            self.upsert = (
                f"{self.insert} ON CONFLICT ({keycols}) DO UPDATE"
                f" SET {spec.counter} = {spec.counter} + excluded.{spec.counter}"
            )
        self._updates: dict[tuple[int, ...], str] = {}
        self._finds: dict[str, str] = {}
        # (statement, rows) -> the statement inserting that many rows at once
        self._multi: dict[tuple[str, int], str] = {}
        # rows per multi-row statement: a power of two, at most _MAX_VARIABLES parameters
        self.chunk = 1
        while self.chunk * 2 * len(spec.columns) <= _MAX_VARIABLES and self.chunk < 64:
            self.chunk *= 2

    def multi(self, sql: str, n: int) -> str:
        """``sql`` (an insert of one row, perhaps with an upsert clause) for ``n`` rows."""
        found = self._multi.get((sql, n))
        if found is None:
            marks = "(" + ", ".join("?" for _ in self.spec.columns) + ")"
            head, sep, tail = sql.partition(marks)
            assert sep, sql
            found = self._multi[(sql, n)] = head + ", ".join([marks] * n) + tail
        return found

    def update(self, changed: tuple[int, ...]) -> str:
        sql = self._updates.get(changed)
        if sql is None:
            sets = ", ".join(f"{self.spec.columns[i]} = ?" for i in changed)
            sql = self._updates[changed] = f"UPDATE {self.target} SET {sets} WHERE {self.where}"
        return sql

    def find(self, column: str) -> str:
        sql = self._finds.get(column)
        if sql is None:
            sql = self._finds[column] = (
                f"SELECT {', '.join(self.spec.key)} FROM {self.target} WHERE {column} = ?"
            )
        return sql


class Rows:
    """Cached rows of projection tables within one transaction (live) or one rebuild (full)."""

    def __init__(self, tx: LedgerTransaction, tables: dict[str, Table], *, full: bool,
                 prefix: str = "") -> None:
        self.tx = tx
        self.tables = tables
        self.full = full
        self.prefix = prefix
        # Per table, created on first use (a live append touches two or three tables of seven).
        self.cache: defaultdict[str, dict[Key, RowDict | None]] = defaultdict(dict)
        self.dirty: defaultdict[str, set[Key]] = defaultdict(set)
        # Live only: the values as stored (a tuple in column order), or None when known absent.
        self.origin: defaultdict[str, dict[Key, tuple[Any, ...] | None]] = defaultdict(dict)
        self.deltas: defaultdict[str, defaultdict[Key, int]] = defaultdict(_counter)
        # find() indexes, full mode only: (table, column) -> value -> keys
        self._index: dict[tuple[str, str], defaultdict[Any, set[Key]]] = {}
        # the same, by table: table -> [(column, value -> keys)]
        self._indexed: dict[str, list[tuple[str, defaultdict[Any, set[Key]]]]] = {}

    # -- reads ---------------------------------------------------------------------------------
    def get(self, table: str, key: Key) -> RowDict | None:
        cache = self.cache[table]
        row = cache.get(key, _MISSING)
        if row is not _MISSING:
            return row  # type: ignore[no-any-return]
        if self.full:
            return None
        spec = self.tables[table]
        found = self.tx.query_one(spec.sql().select, spec.key_params(key))
        self.origin[table][key] = found
        row = cache[key] = dict(zip(spec.columns, found, strict=True)) if found else None
        return row  # type: ignore[no-any-return]

    def prefetch(self, table: str, keys: Iterable[Key]) -> None:
        """Load the rows of ``keys`` (one-column key tables) in a few queries, not one each."""
        if self.full:
            return
        spec = self.tables[table]
        cache = self.cache[table]
        todo = [k for k in dict.fromkeys(keys) if k not in cache]
        if not todo:
            return
        if len(todo) == 1 or not spec.single:
            for k in todo:
                self.get(table, k)
            return
        origin = self.origin[table]
        sql = spec.sql()
        columns = spec.columns
        at = columns.index(spec.key[0])
        for i in range(0, len(todo), _IN_CHUNK):
            chunk = todo[i:i + _IN_CHUNK]
            for found in self.tx.query(
                f"{sql.select_in}({', '.join('?' * len(chunk))})", chunk
            ):
                k = found[at]
                origin[k] = found
                cache[k] = dict(zip(columns, found, strict=True))
        for k in todo:
            if k not in cache:
                origin[k] = None
                cache[k] = None

    def absent(self, table: str, key: Key) -> None:
        """Declare that the database holds no row for ``key`` (e.g. of a brand-new stream)."""
        cache = self.cache[table]
        if key not in cache:
            cache[key] = None
            if not self.full:
                self.origin[table][key] = None

    def find(self, table: str, column: str, value: Any) -> list[Key]:
        """Keys of the rows whose ``column`` equals ``value`` (as of this unit of work)."""
        spec = self.tables[table]
        cache = self.cache[table]
        if self.full:
            indexed = self._index_for(table, column).get(value)
            return sorted(indexed) if indexed else []
        keys: set[Key] = set()
        for found in self.tx.query(spec.sql().find(column), (value,)):
            key = found[0] if spec.single else tuple(found)
            if key not in cache:
                keys.add(key)
        for key, row in cache.items():
            if row is not None and row[column] == value:
                keys.add(key)
        return sorted(keys)

    def _index_for(self, table: str, column: str) -> defaultdict[Any, set[Key]]:
        idx = self._index.get((table, column))
        if idx is None:
            idx = defaultdict(set)
            for key, row in self.cache[table].items():
                if row is not None:
                    idx[row[column]].add(key)
            self._index[(table, column)] = idx
            self._indexed.setdefault(table, []).append((column, idx))
        return idx

    # -- writes --------------------------------------------------------------------------------
    def put(self, table: str, row: RowDict) -> None:
        spec = self.tables[table]
        key = row[spec.key[0]] if spec.single else spec.key_of(row)
        cache = self.cache[table]
        indexes = self._indexed.get(table)
        if indexes:
            self._unindex(cache.get(key), key, indexes)
            for col, idx in indexes:
                idx[row[col]].add(key)
        cache[key] = row
        if not self.full:  # a rebuild writes every cached row anyway
            self.dirty[table].add(key)

    def touch(self, table: str, key: Key) -> None:
        """Mark a row returned by :meth:`get` and changed in place as dirty."""
        self.dirty[table].add(key)

    def delete(self, table: str, key: Key) -> None:
        cache = self.cache[table]
        indexes = self._indexed.get(table)
        if indexes:
            self._unindex(cache.get(key), key, indexes)
        cache[key] = None
        self.dirty[table].add(key)

    @staticmethod
    def _unindex(old: RowDict | None, key: Key,
                 indexes: list[tuple[str, defaultdict[Any, set[Key]]]]) -> None:
        if old is not None:
            for col, idx in indexes:
                idx[old[col]].discard(key)

    def add(self, table: str, key: Key, delta: int) -> None:
        """Add ``delta`` to a counter row (created at 0 when missing)."""
        self.deltas[table][key] += delta

    # -- flush ---------------------------------------------------------------------------------
    def flush(self) -> None:
        if self.full:
            self._flush_full()
        else:
            self._flush_live()

    def _flush_full(self) -> None:
        """Write the whole cache out: every table starts empty, so plain inserts, in key order
        (appending to a B-tree is much cheaper than inserting all over it)."""
        executemany = self.tx.executemany
        for name, spec in self.tables.items():
            sql = spec.sql(self.prefix)
            if spec.counter:
                deltas = self.deltas[name]
                if deltas:
                    executemany(sql.insert, [(*spec.key_params(k), d)
                                             for k, d in _sorted_items(deltas)])
                    deltas.clear()
                continue
            cache = self.cache[name]
            if cache:
                values = spec.values
                executemany(sql.insert, (values(row) for _, row in _sorted_items(cache)
                                         if row is not None))
            self.dirty[name].clear()

    def _flush_live(self) -> None:
        tx = self.tx
        for name, deltas in self.deltas.items():
            if deltas:
                spec = self.tables[name]
                sql = spec.sql(self.prefix)
                _insert(tx, sql, sql.upsert,
                        [(*spec.key_params(k), d) for k, d in sorted(deltas.items())])
                deltas.clear()
        for name, dirty in list(self.dirty.items()):
            if not dirty:
                continue
            spec = self.tables[name]
            sql = spec.sql(self.prefix)
            cache = self.cache[name]
            origin = self.origin[name]
            inserts: list[tuple[Any, ...]] = []
            replaces: list[tuple[Any, ...]] = []
            deletes: list[tuple[Any, ...]] = []
            updates: dict[tuple[int, ...], list[tuple[Any, ...]]] = {}
            for key in sorted(dirty):
                row = cache[key]
                stored = origin.get(key, _MISSING)
                if row is None:
                    if stored is not None:  # stored, or not known: delete it
                        deletes.append(spec.key_params(key))
                        origin[key] = None
                    continue
                values = spec.values(row)
                origin[key] = values
                if stored is _MISSING:
                    replaces.append(values)
                elif stored is None:
                    inserts.append(values)
                else:
                    # Columns left alone hold the very objects that were read: compare
                    # identities in C first, values (and types) only for the others.
                    changed = tuple([
                        i for i in compress(spec.positions, map(is_not, values, stored))
                        if values[i] != stored[i] or type(values[i]) is not type(stored[i])
                    ])
                    if changed:
                        updates.setdefault(changed, []).append(
                            (*[values[i] for i in changed], *spec.key_params(key))
                        )
            if deletes:
                _run(tx, sql.delete, deletes)
            if inserts:
                _insert(tx, sql, sql.insert, inserts)
            if replaces:
                _insert(tx, sql, sql.replace, replaces)
            for changed, params in updates.items():
                _run(tx, sql.update(changed), params)
            dirty.clear()


def _run(tx: LedgerTransaction, sql: str, params: list[tuple[Any, ...]]) -> None:
    if len(params) == 1:
        tx.execute(sql, params[0])
    else:
        tx.executemany(sql, params)


def _insert(tx: LedgerTransaction, sql: _Statements, one: str,
            rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` with multi-row ``VALUES`` statements: for the handful of rows of one
    append, one statement of n rows costs a half to a third of ``executemany`` (whose per-row
    reset and step dominate). Not for a rebuild's bulk load: there, flattening the parameters
    in Python costs more than it saves. Chunks are powers of two, so each table needs only a
    few statement texts."""
    n = len(rows)
    if n == 1:
        tx.execute(one, rows[0])
        return
    at = 0
    size = sql.chunk
    while at < n:
        while size > n - at:
            size //= 2
        if size == 1:
            tx.execute(one, rows[at])
        else:
            tx.execute(sql.multi(one, size), [v for row in rows[at:at + size] for v in row])
        at += size


def _counter() -> defaultdict[Key, int]:
    return defaultdict(int)


def _sorted_items(d: dict[Key, Any]) -> list[tuple[Key, Any]]:
    try:
        return sorted(d.items(), key=_first)
    except TypeError:  # keys of mixed types (None in a composite key): any order will do
        return list(d.items())


def _first(item: tuple[Key, Any]) -> Any:
    return item[0]
