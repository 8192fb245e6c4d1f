"""A unit of work over projection tables, shared by live apply and full rebuild.

Projection logic is written once, against this class. Live, rows are loaded lazily from the
database and the dirty ones written back at the end of the append; during a rebuild the cache is
the whole truth (it started empty) and is written out once with ``executemany``. Running the
same code both ways is what makes "incremental apply == rebuild" hold.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ledger.store import Transaction

Key = Any  # a scalar for one-column keys, a tuple otherwise
RowDict = dict[str, Any]


class Table:
    def __init__(self, name: str, columns: tuple[str, ...], key: tuple[str, ...],
                 counter: str | None = None) -> None:
        self.name = name
        self.columns = columns
        self.key = key
        # A counter table has one numeric column updated by deltas (n = n + delta).
        self.counter = counter

    def key_of(self, row: RowDict) -> Key:
        if len(self.key) == 1:
            return row[self.key[0]]
        return tuple(row[k] for k in self.key)

    def key_params(self, key: Key) -> tuple[Any, ...]:
        return (key,) if len(self.key) == 1 else tuple(key)


class Rows:
    """Cached rows of projection tables within one transaction (live) or one rebuild (full)."""

    def __init__(self, tx: Transaction, tables: dict[str, Table], *, full: bool,
                 prefix: str = "") -> None:
        self.tx = tx
        self.tables = tables
        self.full = full
        self.prefix = prefix
        self.cache: dict[str, dict[Key, RowDict | None]] = {t: {} for t in tables}
        self.dirty: dict[str, set[Key]] = {t: set() for t in tables}
        self.deltas: dict[str, defaultdict[Key, int]] = {
            t: defaultdict(int) for t, spec in tables.items() if spec.counter
        }
        # find() indexes, full mode only: (table, column) -> value -> keys
        self._index: dict[tuple[str, str], defaultdict[Any, set[Key]]] = {}

    # -- reads ---------------------------------------------------------------------------------
    def get(self, table: str, key: Key) -> RowDict | None:
        cache = self.cache[table]
        if key in cache:
            return cache[key]
        if self.full:
            return None
        spec = self.tables[table]
        where = " AND ".join(f"{k} = ?" for k in spec.key)
        found = self.tx.query_one(
            f"SELECT {', '.join(spec.columns)} FROM {table} WHERE {where}", spec.key_params(key)
        )
        row = dict(zip(spec.columns, found, strict=True)) if found else None
        cache[key] = row
        return row

    def find(self, table: str, column: str, value: Any) -> list[Key]:
        """Keys of the rows whose ``column`` equals ``value`` (as of this unit of work)."""
        spec = self.tables[table]
        cache = self.cache[table]
        if self.full:
            return sorted(self._index_for(table, column).get(value, ()))
        keys: set[Key] = set()
        for found in self.tx.query(
            f"SELECT {', '.join(spec.key)} FROM {table} WHERE {column} = ?", (value,)
        ):
            key = found[0] if len(spec.key) == 1 else tuple(found)
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
        return idx

    # -- writes --------------------------------------------------------------------------------
    def put(self, table: str, row: RowDict) -> None:
        spec = self.tables[table]
        key = spec.key_of(row)
        if self._index:
            self._unindex(table, key)
        self.cache[table][key] = row
        self.dirty[table].add(key)
        for (t, col), idx in self._index.items():
            if t == table:
                idx[row[col]].add(key)

    def touch(self, table: str, key: Key) -> None:
        """Mark a row returned by :meth:`get` and changed in place as dirty."""
        self.dirty[table].add(key)

    def delete(self, table: str, key: Key) -> None:
        if self._index:
            self._unindex(table, key)
        self.cache[table][key] = None
        self.dirty[table].add(key)

    def _unindex(self, table: str, key: Key) -> None:
        old = self.cache[table].get(key)
        if old is None:
            return
        for (t, col), idx in self._index.items():
            if t == table:
                idx[old[col]].discard(key)

    def add(self, table: str, key: Key, delta: int) -> None:
        """Add ``delta`` to a counter row (created at 0 when missing)."""
        self.deltas[table][key] += delta

    # -- flush ---------------------------------------------------------------------------------
    def flush(self) -> None:
        for name, spec in self.tables.items():
            target = self.prefix + name
            cols = ", ".join(spec.columns)
            marks = ", ".join("?" for _ in spec.columns)
            if spec.counter:
                deltas = self.deltas[name]
                if deltas:
                    keycols = ", ".join(spec.key)
                    upsert = "" if self.full else (
                        f" ON CONFLICT ({keycols}) DO UPDATE"
                        f" SET {spec.counter} = {spec.counter} + excluded.{spec.counter}"
                    )
                    self.tx.executemany(
                        f"INSERT INTO {target} ({cols}) VALUES ({marks}){upsert}",
                        [(*spec.key_params(k), d) for k, d in sorted(deltas.items())],
                    )
                    deltas.clear()
                continue
            dirty = self.dirty[name]
            if not dirty:
                continue
            cache = self.cache[name]
            upserts = []
            deletes = []
            for key in sorted(dirty) if not self.full else dirty:
                row = cache[key]
                if row is None:
                    if not self.full:
                        deletes.append(spec.key_params(key))
                else:
                    upserts.append(tuple(row[c] for c in spec.columns))
            if deletes:
                where = " AND ".join(f"{k} = ?" for k in spec.key)
                self.tx.executemany(f"DELETE FROM {target} WHERE {where}", deletes)
            if upserts:
                verb = "INSERT" if self.full else "INSERT OR REPLACE"
                self.tx.executemany(f"{verb} INTO {target} ({cols}) VALUES ({marks})", upserts)
            dirty.clear()
