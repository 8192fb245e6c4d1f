"""DDL of the ledger, as an ordered list of migrations; ``PRAGMA user_version`` = applied count.

Projection tables are not here: they are disposable and owned by ``projections/``. Side
tables (leases, meta, agent memory, load samples, the schedule clock) are, and
:mod:`sp.ledger.side` is the only code that reads or writes them.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the append-only event log with its hash chain, a key/value meta table, and leases.
    """
    CREATE TABLE events (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: a seq is never reused
        stream    TEXT    NOT NULL,
        version   INTEGER NOT NULL,
        type      TEXT    NOT NULL,
        ts        INTEGER NOT NULL,                   -- epoch milliseconds, UTC
        data      TEXT    NOT NULL,                   -- the event as JSON (query with json_extract)
        prev_hash TEXT    NOT NULL,
        hash      TEXT    NOT NULL,
        UNIQUE (stream, version)                      -- optimistic concurrency
    );
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    -- Ephemeral ownership facts (heartbeats): not events, never replayed.
    CREATE TABLE leases (
        name         TEXT PRIMARY KEY,
        owner        TEXT    NOT NULL,
        pid          INTEGER NOT NULL,
        pid_start    INTEGER NOT NULL,  -- /proc start time: a reused pid is not the owner
        host         TEXT    NOT NULL,
        heartbeat_ms INTEGER NOT NULL,
        expires_ms   INTEGER NOT NULL
    );
    """,
    # 2: the running child of a lease, so that recovery can stop an orphaned process group.
    """
    ALTER TABLE leases ADD COLUMN child_pid INTEGER;
    ALTER TABLE leases ADD COLUMN child_start INTEGER;
    """,
    # 3: the side tables that were created on first use by their modules (agent memory and
    # readings, load samples, the schedule clock). IF NOT EXISTS: a ledger that used them
    # before this migration already has them, with this very shape. Reached through
    # sp.ledger.side only.
    """
    CREATE TABLE IF NOT EXISTS agent_memory (
        agent      TEXT    NOT NULL,
        key        TEXT    NOT NULL,
        value      TEXT    NOT NULL,  -- JSON
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (agent, key)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS agent_readings (
        id    INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order readings were recorded in
        agent TEXT    NOT NULL,
        ts_ms INTEGER NOT NULL,
        value TEXT    NOT NULL                    -- JSON
    );
    CREATE INDEX IF NOT EXISTS agent_readings_by_agent ON agent_readings (agent, id);
    CREATE TABLE IF NOT EXISTS load_samples (
        ts_ms   INTEGER PRIMARY KEY,
        load1   REAL NOT NULL,
        cpu_pct REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS schedule_clock (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        wall_ms INTEGER NOT NULL,
        mono_ms INTEGER NOT NULL,
        boot_id TEXT    NOT NULL,
        pid     INTEGER NOT NULL
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
