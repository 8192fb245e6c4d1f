"""Side tables: ephemeral facts kept in the ledger file beside the event log, never replayed.

Leases (worker heartbeats and the child each attempt spawned), the ``meta`` key/value table,
agent memory and readings, load samples and the schedule clock are not events: they say what
is true now, not what happened, so ``sp replay`` neither needs nor rebuilds them and
``sp verify`` does not cover them. Their DDL is in :mod:`sp.ledger.schema` like every other
table, and every read or write of them goes through a named function here, so that a second
backend implements this module rather than hunting SQL strings across the packages.

Writers take the caller's :class:`~sp.ledger.interface.LedgerTransaction` (the caller decides
what else commits with them; only the Protocol's ``query``/``execute`` members are used, so any
backend's transaction qualifies); readers take anything with ``query``/``query_one`` (a
:class:`~sp.ledger.interface.Ledger` or a transaction).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sp.ledger.interface import LedgerTransaction
from sp.ledger.store import Row


class Reader(Protocol):
    """What a side-table read needs: ``EventStore`` and ``Transaction`` both qualify."""

    def query(self, sql: str, params: Sequence[Any] = ...) -> list[Row]: ...

    def query_one(self, sql: str, params: Sequence[Any] = ...) -> Row | None: ...


Query = Callable[[str, Sequence[Any]], list[Row]]  # ``store.query`` or ``tx.query``


# -- leases ---------------------------------------------------------------------------------------

LeaseRow = tuple[str, str, int, int, str, int, int]  # name, owner, pid, pid_start, host, hb, exp


def put_leases(tx: LedgerTransaction, rows: Sequence[LeaseRow]) -> None:
    """Take (or take over) the leases ``(name, owner, pid, pid_start, host, heartbeat_ms,
    expires_ms)``."""
    tx.executemany(
        "INSERT OR REPLACE INTO leases (name, owner, pid, pid_start, host, heartbeat_ms,"
        " expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def note_lease_children(tx: LedgerTransaction, owner: str,
                        children: Sequence[tuple[str, int, int]]) -> None:
    """Note ``(name, child_pid, child_start)`` in the leases ``owner`` holds."""
    tx.executemany(
        "UPDATE leases SET child_pid = ?, child_start = ? WHERE name = ? AND owner = ?",
        [(pid, start, name, owner) for name, pid, start in children])


def renew_leases(tx: LedgerTransaction, names: Sequence[str], owner: str, now_ms: int,
                 ttl_ms: int) -> None:
    """Heartbeat: push the expiry of ``owner``'s leases ``ttl_ms`` past ``now_ms``."""
    tx.executemany(
        "UPDATE leases SET heartbeat_ms = ?, expires_ms = ? WHERE name = ? AND owner = ?",
        [(now_ms, now_ms + ttl_ms, name, owner) for name in names])


def drop_leases(tx: LedgerTransaction, held: Sequence[tuple[str, str]]) -> None:
    """Release the leases ``(name, owner)`` (one held by another owner stays)."""
    tx.executemany("DELETE FROM leases WHERE name = ? AND owner = ?", held)


def drop_lease(tx: LedgerTransaction, name: str) -> None:
    """Release the lease ``name`` whoever holds it (recovery, a graceful interrupt)."""
    tx.execute("DELETE FROM leases WHERE name = ?", (name,))


def lease(reader: Reader, name: str) -> Row | None:
    """``(owner, pid, pid_start, host, expires_ms, child_pid, child_start)`` of a lease."""
    return reader.query_one(
        "SELECT owner, pid, pid_start, host, expires_ms, child_pid, child_start FROM leases"
        " WHERE name = ?", (name,))


# -- meta -----------------------------------------------------------------------------------------

def meta_once(tx: LedgerTransaction, key: str, value: str) -> str:
    """Set ``key`` unless it is set already; returns the value that holds (the first writer's:
    concurrent first uses agree)."""
    tx.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
    row = tx.query_one("SELECT value FROM meta WHERE key = ?", (key,))
    assert row is not None
    return str(row[0])


# -- agent memory and readings (runner.memory) ----------------------------------------------------

def memory_get(reader: Reader, agent: str, key: str) -> str | None:
    """The JSON text stored under ``key``, or None."""
    row = reader.query_one(
        "SELECT value FROM agent_memory WHERE agent = ? AND key = ?", (agent, key))
    return None if row is None else str(row[0])


def memory_put(tx: LedgerTransaction, agent: str, key: str, value: str, now_ms: int) -> None:
    tx.execute("INSERT OR REPLACE INTO agent_memory (agent, key, value, updated_ms)"
               " VALUES (?, ?, ?, ?)", (agent, key, value, now_ms))


def memory_delete(tx: LedgerTransaction, agent: str, key: str) -> bool:
    """Forget ``key``; False if it was not there."""
    return bool(tx.execute("DELETE FROM agent_memory WHERE agent = ? AND key = ?",
                           (agent, key)))


def memory_keys(reader: Reader, agent: str) -> list[str]:
    return [str(r[0]) for r in reader.query(
        "SELECT key FROM agent_memory WHERE agent = ? ORDER BY key", (agent,))]


def memory_count(reader: Reader, agent: str) -> int:
    row = reader.query_one("SELECT count(*) FROM agent_memory WHERE agent = ?", (agent,))
    return int(row[0]) if row else 0


def reading_add(tx: LedgerTransaction, agent: str, ts_ms: int, value: str, keep: int) -> None:
    """Append a reading and keep only the newest ``keep`` of the agent's."""
    tx.execute("INSERT INTO agent_readings (agent, ts_ms, value) VALUES (?, ?, ?)",
               (agent, ts_ms, value))
    tx.execute(
        "DELETE FROM agent_readings WHERE agent = ? AND id < (SELECT id FROM"
        " agent_readings WHERE agent = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (agent, agent, keep - 1))


def readings_clear(tx: LedgerTransaction, agent: str) -> int:
    """Forget every reading of ``agent``; returns how many."""
    return tx.execute("DELETE FROM agent_readings WHERE agent = ?", (agent,))


def readings_count(reader: Reader, agent: str) -> int:
    row = reader.query_one("SELECT count(*) FROM agent_readings WHERE agent = ?", (agent,))
    return int(row[0]) if row else 0


def reading_at(reader: Reader, agent: str, index: int) -> str | None:
    """The JSON text of the ``index``-th kept reading (oldest first), or None."""
    row = reader.query_one(
        "SELECT value FROM agent_readings WHERE agent = ? ORDER BY id LIMIT 1 OFFSET ?",
        (agent, index))
    return None if row is None else str(row[0])


def readings_all(reader: Reader, agent: str) -> list[str]:
    return [str(r[0]) for r in reader.query(
        "SELECT value FROM agent_readings WHERE agent = ? ORDER BY id", (agent,))]


# -- load samples (schedules' adaptive windows) ---------------------------------------------------

def load_record(tx: LedgerTransaction, ts_ms: int, load1: float, cpu_pct: float,
                forget_before_ms: int) -> None:
    """Store one sample and forget those older than ``forget_before_ms``."""
    tx.execute("INSERT OR REPLACE INTO load_samples (ts_ms, load1, cpu_pct) VALUES (?, ?, ?)",
               (ts_ms, float(load1), float(cpu_pct)))
    tx.execute("DELETE FROM load_samples WHERE ts_ms < ?", (forget_before_ms,))


def load_between(query: Query, start_ms: int, end_ms: int) -> list[tuple[int, float, float]]:
    """``(ts_ms, load1, cpu_pct)`` with ``start_ms <= ts_ms < end_ms``, oldest first."""
    return [(int(r[0]), float(r[1]), float(r[2])) for r in query(
        "SELECT ts_ms, load1, cpu_pct FROM load_samples WHERE ts_ms >= ? AND ts_ms < ?"
        " ORDER BY ts_ms", (start_ms, end_ms))]


# -- the schedule clock (schedules' suspend / reboot detection) -----------------------------------

def clock_swap(tx: LedgerTransaction, wall_ms: int, mono_ms: int, boot: str,
               pid: int) -> tuple[int, int, str] | None:
    """Store this tick's clock readings; returns the previous tick's ``(wall_ms, mono_ms,
    boot_id)``, None on the first tick."""
    prev = tx.query_one("SELECT wall_ms, mono_ms, boot_id FROM schedule_clock WHERE id = 1")
    tx.execute(
        "INSERT OR REPLACE INTO schedule_clock (id, wall_ms, mono_ms, boot_id, pid)"
        " VALUES (1, ?, ?, ?, ?)", (wall_ms, mono_ms, boot, pid))
    return None if prev is None else (int(prev[0]), int(prev[1]), str(prev[2]))
