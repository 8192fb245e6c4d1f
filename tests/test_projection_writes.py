"""The fast write paths of the projections: multi-row inserts, NULL binding, partial indexes.

Each test uses a real ledger file and checks what SQLite stored, or how it plans a query.
"""

from __future__ import annotations

from typing import Any

from sp.ledger import events as ev
from sp.ledger.store import EventStore
from sp.projections import engine, queries


def submitted(i: int, **kw: Any) -> ev.ActionSubmitted:
    return ev.ActionSubmitted(name=f"a{i}", command=["true"], agent=f"agent-{i % 3}",
                              task="scan" if i % 2 else None, max_attempts=2, **kw)


def lifecycle(i: int) -> list[ev.Event]:
    """Submitted .. completed, with a retry, a checkpoint and progress on the way."""
    return [
        submitted(i, group="g" if i % 4 == 0 else None),
        ev.ActionQueued(),
        ev.ActionStarted(attempt=1, owner="w", pid=1, host="h"),
        ev.ActionRetryScheduled(exit_code=1, error="e", duration_ms=5, retry_at_ms=10),
        ev.ActionStarted(attempt=2, owner="w", pid=1, host="h"),
        ev.ActionProgressed(percent=50.0, message="half"),
        ev.ActionCheckpointed(step=1, data={"at": i}),
        ev.ActionCompleted(exit_code=0, duration_ms=7, result={"n": i}),
    ]


def test_one_transaction_of_many_actions_writes_what_a_rebuild_writes(
    store: EventStore,
) -> None:
    # 13 new actions and their whole lives in one append: the live flush inserts 13 rows per
    # table in multi-row statements of 8 + 4 + 1 rows, and upserts a dozen counters at once.
    with store.transaction() as tx:
        tx.append_many([(f"act-{i:02d}", lifecycle(i), 0) for i in range(13)])
    count, difference = engine.check(store)
    assert (count, difference) == (13 * 8, None)
    assert store.query_one("SELECT count(*) FROM actions WHERE state = 'completed'") == (13,)
    assert store.query_one("SELECT count(*) FROM metrics_attempts") == (26,)
    assert store.query_one("SELECT sum(count) FROM checkpoints") == (13,)
    assert queries.counts(store)["completed"] == 13
    assert store.query_one(
        "SELECT n FROM metrics_counts WHERE dim = 'agent' AND key = 'agent-1'"
        " AND state = 'completed'") == (4,)  # 1, 4, 7, 10
    assert store.query("SELECT action_id FROM rollback_plans ORDER BY action_id") == [
        ("act-00",), ("act-04",), ("act-08",), ("act-12",)]


def test_live_counters_and_rows_survive_transactions_of_every_size(store: EventStore) -> None:
    # Sizes that cross each power-of-two chunk boundary of the multi-row inserts.
    n = 0
    for size in (1, 2, 3, 7, 8, 9, 16, 17, 33):
        with store.transaction() as tx:
            tx.append_many([(f"s{n + k}", [submitted(n + k), ev.ActionQueued()], 0)
                            for k in range(size)])
        n += size
    assert store.query_one("SELECT count(*) FROM queue") == (n,)
    assert queries.counts(store)["queued"] == n
    assert engine.check(store)[1] is None


def test_a_none_parameter_is_stored_as_null(store: EventStore) -> None:
    store.append("a1", [submitted(1)], 0)
    types = store.query_one(
        "SELECT typeof(group_id), typeof(compensation), typeof(finished_seq), typeof(owner)"
        " FROM actions WHERE action_id = 'a1'")
    assert types == ("null", "null", "null", "null")
    assert store.query_one("SELECT count(*) FROM actions WHERE group_id IS NULL") == (1,)


def _plan(store: EventStore, sql: str, *params: object) -> str:
    return " | ".join(str(r[-1]) for r in store.query(f"EXPLAIN QUERY PLAN {sql}", params))


def test_status_and_lookups_use_the_partial_indexes(store: EventStore) -> None:
    store.append("a1", [submitted(1, group="g1", key="k1")], 0)
    finished = _plan(store, "SELECT action_id FROM actions WHERE finished_seq IS NOT NULL"
                            " ORDER BY finished_seq DESC LIMIT 10")
    assert "INDEX actions_finished" in finished and "TEMP B-TREE" not in finished
    assert "INDEX actions_group" in _plan(store, "SELECT action_id FROM actions"
                                                 " WHERE group_id = ?", "g1")
    assert "INDEX actions_idem" in _plan(store, "SELECT action_id FROM actions"
                                                " WHERE idem_key = ?", "k1")
    # Only rows with a value have an index entry, so a search for the others cannot use it.
    assert "actions_group" not in _plan(store, "SELECT action_id FROM actions"
                                               " WHERE group_id IS NULL")
    assert "actions_finished" not in _plan(store, "SELECT action_id FROM actions"
                                                  " WHERE finished_seq IS NULL")
