"""Read-only SQL over the ledger, for ``sp sql``: the database cannot be changed through it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sp.ledger.errors import ReadOnlyQueryError
from sp.ledger.store import BUSY_TIMEOUT_S

_ALLOWED = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}
_SCHEMA_PRAGMAS = {
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list",
}
_BARE_PRAGMAS = {"database_list", "user_version"}


def _authorize(action: int, arg1: str | None, arg2: str | None, db: str | None,
               source: str | None) -> int:
    if action in _ALLOWED:
        return sqlite3.SQLITE_OK
    # Harmless read-only pragmas (table_info and friends) are fine; anything else is denied.
    # The schema pragmas take a table or index name as their argument (arg2); the others are
    # only read without one (``PRAGMA user_version = 5`` would write).
    if action == sqlite3.SQLITE_PRAGMA and (
        arg1 in _SCHEMA_PRAGMAS or (arg2 is None and arg1 in _BARE_PRAGMAS)
    ):
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def run_readonly(path: str | Path, sql: str, params: tuple[Any, ...] = ()) -> tuple[
    list[str], list[tuple[Any, ...]]
]:
    """Run one SELECT-like statement; return ``(column names, rows)``.

    Two independent locks: the file is opened ``mode=ro`` and an authorizer denies every
    action but reading.

    :raises ReadOnlyQueryError: the statement writes, is not one statement, or is invalid.
    """
    uri = f"file:{Path(path).resolve()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.set_authorizer(_authorize)
        try:
            cur = conn.execute(sql, params)
            rows = cur.fetchall()
        except sqlite3.DatabaseError as e:
            msg = str(e)
            if "not authorized" in msg or "readonly" in msg or "read-only" in msg:
                raise ReadOnlyQueryError(f"sp sql is read-only: {msg}") from None
            raise ReadOnlyQueryError(f"sql: {msg}") from None
        except sqlite3.ProgrammingError as e:
            raise ReadOnlyQueryError(f"sql: {e}") from None
        cols = [d[0] for d in cur.description or ()]
        return cols, rows
    finally:
        conn.close()
