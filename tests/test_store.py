"""Append semantics of the EventStore on a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sp.ledger import codec
from sp.ledger import events as ev
from sp.ledger.clock import ManualClock
from sp.ledger.errors import ConcurrencyError, LedgerError, SchemaTooNewError
from sp.ledger.schema import MIGRATIONS, SCHEMA_VERSION
from sp.ledger.store import EventStore, Recorded, Transaction


def rejected(n: int) -> ev.ActionRejected:
    return ev.ActionRejected(reason=f"r{n}")


def count(store: EventStore) -> int:
    row = store.query_one("SELECT count(*) FROM events")
    assert row is not None
    return int(row[0])


def raw_rows(path: Path) -> list[tuple[Any, ...]]:
    """Every events row, read with plain sqlite3 (independent of the store under test)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT seq, stream, version, type, ts, data, prev_hash, hash FROM events"
            " ORDER BY seq").fetchall()
    finally:
        conn.close()


# -- expected_version ----------------------------------------------------------------------------


def test_append_to_a_new_stream_at_version_zero(bare_store: EventStore) -> None:
    recs = bare_store.append("a", [rejected(1), rejected(2)], expected_version=0)
    assert [(r.seq, r.stream, r.version) for r in recs] == [(1, "a", 1), (2, "a", 2)]
    recs = bare_store.append("a", [rejected(3)], expected_version=2)
    assert (recs[0].seq, recs[0].version) == (3, 3)
    assert [r.event for r in bare_store.read_stream("a")] == [rejected(1), rejected(2),
                                                             rejected(3)]


@pytest.mark.parametrize("stale", [0, 1, 3, 99])
def test_stale_expected_version_raises_and_writes_nothing(
    bare_store: EventStore, db_path: Path, stale: int
) -> None:
    bare_store.append("a", [rejected(1), rejected(2)], 0)
    before = raw_rows(db_path)
    with pytest.raises(ConcurrencyError) as info:
        bare_store.append("a", [rejected(3)], expected_version=stale)
    assert (info.value.stream, info.value.expected, info.value.actual) == ("a", stale, 2)
    assert "expected version" in str(info.value)
    assert raw_rows(db_path) == before
    # The store is still usable, and the seq it hands out next is the next one.
    assert bare_store.append("a", [rejected(3)], 2)[0].seq == 3


def test_expected_version_none_appends_at_whatever_version(bare_store: EventStore) -> None:
    bare_store.append("a", [rejected(1)], None)
    bare_store.append("a", [rejected(2)], None)
    assert [r.version for r in bare_store.read_stream("a")] == [1, 2]


def test_concurrency_error_is_not_fooled_by_other_streams(bare_store: EventStore) -> None:
    bare_store.append("a", [rejected(1)], 0)
    bare_store.append("b", [rejected(1), rejected(2)], 0)
    with pytest.raises(ConcurrencyError):
        bare_store.append("a", [rejected(2)], 2)
    bare_store.append("a", [rejected(2)], 1)


# -- atomicity -----------------------------------------------------------------------------------


def test_append_many_is_atomic_when_a_later_batch_is_stale(
    bare_store: EventStore, db_path: Path
) -> None:
    bare_store.append("b", [rejected(1)], 0)
    before = raw_rows(db_path)
    with pytest.raises(ConcurrencyError), bare_store.transaction() as tx:
        tx.append_many([("a", [rejected(1), rejected(2)], 0), ("b", [rejected(2)], 0)])
    assert raw_rows(db_path) == before
    assert bare_store.read_stream("a") == []


def test_append_many_is_atomic_when_an_event_in_the_middle_cannot_be_encoded(
    bare_store: EventStore, db_path: Path
) -> None:
    unencodable = ev.ActionCheckpointed(data=object())
    with pytest.raises(TypeError):
        bare_store.append("a", [rejected(1), unencodable, rejected(3)], 0)
    with pytest.raises(TypeError), bare_store.transaction() as tx:
        tx.append_many([("a", [rejected(1)], 0), ("b", [unencodable], 0), ("c", [rejected(1)], 0)])
    assert raw_rows(db_path) == []


def test_an_exception_after_appending_rolls_the_whole_transaction_back(
    bare_store: EventStore, db_path: Path
) -> None:
    bare_store.append("a", [rejected(1)], 0)
    before = raw_rows(db_path)
    with pytest.raises(RuntimeError, match="boom"), bare_store.transaction() as tx:
        tx.append("a", [rejected(2)], 1)
        tx.append("b", [rejected(1)], 0)
        raise RuntimeError("boom")
    assert raw_rows(db_path) == before
    # seq is never handed out twice, and the rolled-back ones are handed out again.
    assert [r.seq for r in bare_store.append("b", [rejected(1)], 0)] == [2]


def test_append_many_writes_every_batch_in_one_transaction(bare_store: EventStore) -> None:
    with bare_store.transaction() as tx:
        recs = tx.append_many([
            ("a", [rejected(1), rejected(2)], 0),
            ("b", [rejected(1)], 0),
            ("c", [rejected(1)], None),
        ])
        # Several appends in one transaction keep the chain and seq going.
        recs += tx.append("a", [rejected(3)], 2)
        assert tx.recorded == recs
    assert [(r.seq, r.stream, r.version) for r in recs] == [
        (1, "a", 1), (2, "a", 2), (3, "b", 1), (4, "c", 1), (5, "a", 3)]


def test_append_many_with_the_same_stream_twice_continues_its_versions(
    bare_store: EventStore,
) -> None:
    with bare_store.transaction() as tx:
        tx.append_many([("a", [rejected(1)], 0), ("b", [rejected(1)], 0), ("a", [rejected(2)], 1),
                        ("a", [rejected(3)], None)])
        assert tx.stream_version("a") == 3
    assert [r.version for r in bare_store.read_stream("a")] == [1, 2, 3]
    assert [r.seq for r in bare_store.read_stream("a")] == [1, 3, 4]


def test_append_many_refuses_a_batch_stale_against_an_earlier_batch(
    bare_store: EventStore, db_path: Path
) -> None:
    """Two batches deciding on the same version: the second is stale; neither is written."""
    with pytest.raises(ConcurrencyError) as info, bare_store.transaction() as tx:
        tx.append_many([("a", [rejected(1)], 0), ("a", [rejected(2)], 0)])
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert raw_rows(db_path) == []


# -- seq, versions, hash chain -------------------------------------------------------------------


def test_seq_contiguous_versions_per_stream_and_hash_chain_links(
    bare_store: EventStore, db_path: Path, clock: ManualClock
) -> None:
    plan = ["a", "b", "a", "c", "b", "a", "a", "c"]
    for i, stream in enumerate(plan):
        clock.advance(1000)
        bare_store.append(stream, [rejected(i)], None)
    with bare_store.transaction() as tx:
        tx.append_many([("b", [rejected(90), rejected(91)], 2), ("d", [rejected(92)], 0)])
    rows = raw_rows(db_path)
    assert [r[0] for r in rows] == list(range(1, len(plan) + 4))
    versions: dict[str, list[int]] = {}
    for _, stream, version, *_ in rows:
        versions.setdefault(stream, []).append(version)
    assert versions == {"a": [1, 2, 3, 4], "b": [1, 2, 3, 4], "c": [1, 2], "d": [1]}

    prev = codec.GENESIS_HASH
    for seq, stream, version, type_, ts, data, prev_hash, h in rows:
        assert prev_hash == prev
        assert h == codec.chain_hash(prev, seq, stream, version, type_, ts, data)
        assert len(h) == 64 and h != prev
        prev = h
    assert bare_store.head() == (len(rows), prev)
    # Timestamps come from the injected clock, not the wall.
    assert rows[0][4] == 1_767_225_601_000
    assert rows[-1][4] == clock.now_ms()


def test_read_all_after_seq(bare_store: EventStore) -> None:
    for i in range(5):
        bare_store.append(f"s{i % 2}", [rejected(i)], None)
    assert [r.seq for r in bare_store.read_all()] == [1, 2, 3, 4, 5]
    assert [r.seq for r in bare_store.read_all(after_seq=3)] == [4, 5]
    assert [r.seq for r in bare_store.read_all(after_seq=1, batch=2)] == [2, 3, 4, 5]
    assert list(bare_store.read_all(after_seq=5)) == []


def test_empty_ledger_head_is_genesis(bare_store: EventStore) -> None:
    assert bare_store.head() == (0, codec.GENESIS_HASH)


# -- append-only triggers ------------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "UPDATE events SET data = '{}' WHERE seq = 1",
    "UPDATE events SET seq = 10 WHERE seq = 1",
    "DELETE FROM events WHERE seq = 1",
    "DELETE FROM events",
])
def test_update_and_delete_are_refused_by_triggers(
    bare_store: EventStore, db_path: Path, sql: str
) -> None:
    bare_store.append("a", [rejected(1), rejected(2)], 0)
    before = raw_rows(db_path)
    conn = sqlite3.connect(db_path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="events are append-only"):
            conn.execute(sql)
        conn.rollback()
    finally:
        conn.close()
    # Through the store's own transaction it is refused as a LedgerError, and rolled back.
    with pytest.raises(LedgerError, match="append-only"), bare_store.transaction() as tx:
        tx.append("a", [rejected(3)], 2)
        tx.execute(sql)
    assert raw_rows(db_path) == before


# -- schema and migrations -----------------------------------------------------------------------


def test_user_version_is_the_number_of_migrations(bare_store: EventStore, db_path: Path) -> None:
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 1
    assert bare_store.query_one("PRAGMA user_version") == (len(MIGRATIONS),)
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        triggers = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='trigger'")}
    finally:
        conn.close()
    assert {"events", "meta", "leases"} <= tables
    assert {"events_no_update", "events_no_delete"} <= triggers


def test_reopening_does_not_migrate_again(db_path: Path) -> None:
    with EventStore(db_path) as s:
        s.append("a", [rejected(1)], 0)
    with EventStore(db_path) as s:
        assert s.query_one("PRAGMA user_version") == (len(MIGRATIONS),)
        assert [r.event for r in s.read_stream("a")] == [rejected(1)]


def test_a_newer_schema_is_refused_and_left_alone(db_path: Path) -> None:
    with EventStore(db_path) as s:
        s.append("a", [rejected(1)], 0)
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    before = db_path.read_bytes()
    with pytest.raises(SchemaTooNewError) as info:
        EventStore(db_path)
    assert f"schema version {len(MIGRATIONS) + 1}" in str(info.value)
    assert f"knows up to {len(MIGRATIONS)}" in str(info.value)
    assert db_path.read_bytes() == before


def test_a_migration_applies_atomically(db_path: Path) -> None:
    """A half-applied migration never leaves user_version pointing past what exists."""
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE events (x)")  # collides with migration 1
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="already exists"):  # translated at the boundary
        EventStore(db_path)
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (0,)
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert "meta" not in names and "events_no_update" not in names


# -- connection settings -------------------------------------------------------------------------

SYNC_LEVEL = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def test_wal_and_full_sync_by_default(bare_store: EventStore, db_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SP_SYNCHRONOUS", raising=False)
    assert bare_store.query_one("PRAGMA journal_mode") == ("wal",)
    with EventStore(db_path) as s:
        (level,) = s.query_one("PRAGMA synchronous") or (None,)
        assert SYNC_LEVEL[level] == "FULL"
        assert s.query_one("PRAGMA foreign_keys") == (1,)
        # A busy timeout, so that concurrent writers wait instead of failing.
        assert (s.query_one("PRAGMA busy_timeout") or (0,))[0] >= 5000
    # WAL is a property of the file: a plain connection sees it too.
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


def test_sp_synchronous_normal_relaxes_it(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SP_SYNCHRONOUS", "normal")
    with EventStore(db_path) as s:
        assert SYNC_LEVEL[(s.query_one("PRAGMA synchronous") or (None,))[0]] == "NORMAL"
    with EventStore(db_path, synchronous="FULL") as s:  # an explicit argument wins
        assert SYNC_LEVEL[(s.query_one("PRAGMA synchronous") or (None,))[0]] == "FULL"


def test_a_bad_synchronous_setting_is_refused(db_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SP_SYNCHRONOUS", "sometimes")
    with pytest.raises(LedgerError, match="synchronous must be"):
        EventStore(db_path)


# -- hooks ---------------------------------------------------------------------------------------


def test_hooks_see_the_recorded_events_inside_the_transaction(db_path: Path,
                                                              clock: ManualClock) -> None:
    seen: list[tuple[int, list[Recorded]]] = []

    def hook(tx: Transaction, recorded: list[Recorded]) -> None:
        # Inside the append transaction: the rows are already visible to it.
        row = tx.query_one("SELECT count(*) FROM events")
        assert row is not None
        seen.append((int(row[0]), recorded))
        tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last', ?)",
                   (str(recorded[-1].seq),))

    with EventStore(db_path, clock=clock, hooks=[hook]) as s:
        s.append("a", [rejected(1), rejected(2)], 0)
        s.append("b", [rejected(3)], 0)
        assert s.query_one("SELECT value FROM meta WHERE key = 'last'") == ("3",)
    assert [n for n, _ in seen] == [2, 3]
    assert [[(r.seq, r.stream, r.version, r.type, r.ts) for r in recs] for _, recs in seen] == [
        [(1, "a", 1, "action.rejected", clock.now_ms()), (2, "a", 2, "action.rejected",
                                                           clock.now_ms())],
        [(3, "b", 1, "action.rejected", clock.now_ms())],
    ]


def test_a_failed_hook_rolls_back_the_events_too(db_path: Path) -> None:
    calls: list[int] = []

    def hook(tx: Transaction, recorded: list[Recorded]) -> None:
        tx.execute("INSERT INTO meta (key, value) VALUES (?, 'x')", (f"k{recorded[0].seq}",))
        calls.append(recorded[0].seq)
        if any(isinstance(r.event, ev.ActionFailed) for r in recorded):
            raise ValueError("projection refused the event")

    with EventStore(db_path, hooks=[hook]) as s:
        s.append("a", [rejected(1)], 0)
        before = raw_rows(db_path)
        with pytest.raises(ValueError, match="projection refused"):
            s.append("a", [rejected(2), ev.ActionFailed()], 1)
        assert raw_rows(db_path) == before
        assert s.query("SELECT key FROM meta ORDER BY key") == [("k1",)]
        # Nothing is half-remembered: the next append takes the very seq that was refused.
        assert s.append("a", [rejected(2)], 1)[0].seq == 2
    assert calls == [1, 2, 2]
