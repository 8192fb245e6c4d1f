"""The ``sqlite_query`` action type: one SQL statement on a local SQLite database file.

```yaml
- id: seed
  type: sqlite_query
  payload:
    database: data/app.db
    sql: "INSERT INTO users(name) VALUES (?)"
    params: [alice]             # a list for ?, a mapping for :name
```

Runs as ``python -m sp.actions.run sqlite_query apply '<payload JSON>'``, in one transaction
(``BEGIN IMMEDIATE`` for a write, committed when the statement succeeded, rolled back
otherwise). Whether the statement writes is decided before it runs, by preparing it under
SQLite's authorizer (anything but reading, selecting and calling functions counts as a write).

**Undo of a write restores the whole database file.** Before a write, inside its
transaction, the file's exact bytes (in WAL mode, a consistent copy made with SQLite's backup
API, so committed pages still in the ``-wal`` are included) are stored as a before-image
blob under ``$SP_HOME/blobs/`` and recorded in a checkpoint ``{"before": {path, blob,
mode}}`` (``blob`` None when the file did not exist). The compensation puts those exact
bytes back (or removes a database the write created) and removes its ``-wal``, ``-shm`` and
``-journal`` files: every change made to that file after the before-image, by this action
or anything else, is undone too, and nothing may hold the database open meanwhile. A read
records no before-image and its undo does nothing. The result checkpoint is ``{write,
rows_affected, columns, rows (the first 100), rows_truncated, last_row_id}``.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
from pathlib import Path
from typing import Any

import msgspec

from sp.actions import ActionType, Command, Requirement, blobs, register
from sp.actions.run import argv_for
from sp.ledger.errors import UsageError

FIRST_ROWS = 100
_READS = {sqlite3.SQLITE_READ, sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION,
          getattr(sqlite3, "SQLITE_RECURSIVE", 33)}


class SqlitePayload(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    database: str
    sql: str
    params: list[Any] | dict[str, Any] = []


class NoRollback(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Nothing to say: the compensation restores the database's before-image."""


def command(payload: SqlitePayload) -> Command:
    return Command(argv=argv_for("sqlite_query", "apply", payload))


def compensation(payload: SqlitePayload, rollback: NoRollback | None) -> Command:
    return Command(argv=argv_for("sqlite_query", "undo", payload))


def requires(payload: SqlitePayload, rollback: NoRollback | None) -> list[Requirement]:
    return []


def check(payload: SqlitePayload, rollback: NoRollback | None) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if not payload.database.strip():
        found.append(("payload.database", "the path is empty"))
    if not payload.sql.strip():
        found.append(("payload.sql", "no statement"))
    elif not sqlite3.complete_statement(payload.sql.rstrip().rstrip(";") + ";"):
        found.append(("payload.sql", "not a complete SQL statement"))
    return found


def is_write(conn: sqlite3.Connection, sql: str, params: Any) -> bool:
    """Whether ``sql`` would change the database: prepared (``EXPLAIN``, not run) under an
    authorizer that notes every action other than reading."""
    writes: list[int] = []

    def authorizer(action: int, *_: Any) -> int:
        if action not in _READS and action != sqlite3.SQLITE_TRANSACTION:
            writes.append(action)
        return sqlite3.SQLITE_OK

    conn.set_authorizer(authorizer)
    try:
        conn.execute("EXPLAIN " + sql, params).fetchall()
    finally:
        conn.set_authorizer(None)
    return bool(writes)


def _before_image(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    """Taken inside the write's ``BEGIN IMMEDIATE`` (no other writer meanwhile): the file's
    exact bytes, or in WAL mode (committed pages may be in the ``-wal`` file) a consistent
    copy made with SQLite's backup API."""
    mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    if mode != "wal":
        return {"path": str(path), **blobs.image_of(path)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".sp-tmp")
    os.close(fd)
    try:
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # WAL: reads go on
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
            src.close()
        data = Path(tmp).read_bytes()
    finally:
        Path(tmp).unlink(missing_ok=True)
    return {"path": str(path), "blob": blobs.put_blob(data),
            "mode": stat.S_IMODE(path.stat().st_mode)}


def apply(payload: SqlitePayload) -> dict[str, Any]:
    from sp.runner import api

    problems = check(payload, None)
    if problems:
        raise UsageError("; ".join(f"{w}: {m}" for w, m in problems))
    path = blobs.resolve(payload.database)
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: no such directory")
    sql = payload.sql.strip().rstrip(";")
    previous = api.last_checkpoint() if api.current_action() else None
    if isinstance(previous, dict) and "rows_affected" in previous:
        return dict(previous)  # a retry after it was done
    if isinstance(previous, dict) and previous.get("before"):
        # a retry after the before-image: whether the write committed is unknown, so start
        # again from the before-image (the write then happens once)
        _restore(previous["before"])
    existed = path.exists()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        try:
            write = is_write(conn, sql, payload.params)
        except sqlite3.Error as e:
            raise UsageError(f"{path}: {e}") from None
        before: dict[str, Any] | None = None
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            if write:
                if isinstance(previous, dict) and previous.get("before"):
                    before = previous["before"]  # a retry: the original is kept
                elif existed:
                    before = _before_image(conn, path)
                else:  # a new database: the undo removes it
                    before = {"path": str(path), "blob": None, "mode": None}
                blobs.report({"before": before}, step=0)
            cur = conn.execute(sql, payload.params)
            columns = [d[0] for d in cur.description] if cur.description else []
            rows = cur.fetchmany(FIRST_ROWS + 1) if columns else []
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as e:
        raise SystemExit(f"error: {path}: {e}") from None
    finally:
        conn.close()
    done = {"database": str(path), "write": write, "before": before,
            "rows_affected": cur.rowcount if write else 0, "columns": columns,
            "rows": [list(r) for r in rows[:FIRST_ROWS]],
            "rows_truncated": len(rows) > FIRST_ROWS, "last_row_id": cur.lastrowid}
    if not write:
        done.pop("before")
    out: dict[str, Any] = _jsonable(done)
    blobs.report(out, step=1)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def undo(payload: SqlitePayload, original: str | None) -> dict[str, Any]:
    action_id = blobs.compensated_action(original)
    found = blobs.recorded(action_id, "before")
    if found is None or found["before"] is None:
        return {"restored": [], "note": f"{action_id} did not write: nothing done"}
    _restore(found["before"])
    return {"restored": [found["before"]["path"]], "compensates": action_id}


def _restore(image: dict[str, Any]) -> None:
    path = Path(image["path"])
    for suffix in ("-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    blobs.restore(path, image)


TYPE = register(ActionType(
    name="sqlite_query", payload=SqlitePayload, rollback=NoRollback, command=command,
    compensation=compensation, requires=requires, check=check,
))
