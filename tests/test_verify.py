"""Tampering with the ledger is caught by ``sp verify``.

Each attack first drops the append-only triggers with plain sqlite3, as an attacker with write
access to the file would, then edits, deletes or reorders rows.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from sp.ledger import codec
from tests.conftest import Sp

# The ledger every test starts from: three actions submitted, the third cancelled.
#   seq 1 a submitted   2 a queued   3 b submitted   4 b queued
#   seq 5 c submitted   6 c queued   7 c cancelled
EVENTS = 7


@pytest.fixture
def ledger(sp: Sp) -> Path:
    for name in ("a", "b", "c"):
        sp("submit", "--name", name, "--", "echo", name)
    (c,) = [r for r in _streams(sp.home.ledger_path) if _name(sp.home.ledger_path, r) == "c"]
    sp("cancel", c)
    assert sp("verify").stdout == f"ok: {EVENTS} events\n"
    return sp.home.ledger_path


def _streams(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT DISTINCT stream FROM events ORDER BY seq")]
    finally:
        conn.close()


def _name(path: Path, stream: str) -> str:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT json_extract(data, '$.name') FROM events WHERE stream = ?"
                           " AND version = 1", (stream,)).fetchone()
        return str(row[0])
    finally:
        conn.close()


def attack(path: Path, *statements: str, drop_triggers: bool = True) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        if drop_triggers:
            conn.execute("DROP TRIGGER events_no_update")
            conn.execute("DROP TRIGGER events_no_delete")
        for sql in statements:
            conn.execute(sql)
    finally:
        conn.close()


def rehash(path: Path, seq: int) -> None:
    """Recompute one row's hash after editing it (a smarter attacker)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        seq_, stream, version, type_, ts, data, prev = conn.execute(
            "SELECT seq, stream, version, type, ts, data, prev_hash FROM events WHERE seq = ?",
            (seq,)).fetchone()
        h = codec.chain_hash(prev, seq_, stream, version, type_, ts, data)
        conn.execute("UPDATE events SET hash = ? WHERE seq = ?", (h, seq))
    finally:
        conn.close()


def assert_bad(sp: Sp, seq: int | None, reason: str) -> None:
    result = sp("verify", ok=False)
    assert result.exit_code == 1, result.output
    where = f"seq {seq}: " if seq is not None else ""
    assert result.stdout.startswith(f"bad: {where}"), result.stdout
    assert reason in result.stdout
    assert result.stdout.count("\n") == 1
    doc = json.loads(sp("verify", "--format", "json", ok=False).stdout)
    assert doc["ok"] is False and doc["bad_seq"] == seq


def test_a_clean_ledger_verifies(sp: Sp, ledger: Path) -> None:
    result = sp("verify")
    assert result.stdout == f"ok: {EVENTS} events\n"
    doc = json.loads(sp("verify", "--format", "json").stdout)
    assert doc["ok"] is True and doc["events"] == EVENTS and doc["bad_seq"] is None


def test_an_empty_ledger_verifies(sp: Sp) -> None:
    sp("init")  # sp verify never creates a home (a mistyped --home is refused)
    assert sp("verify").stdout == "ok: 0 events\n"


def test_edited_data_is_caught(sp: Sp, ledger: Path) -> None:
    attack(ledger, "UPDATE events SET data = replace(data, '\"name\":\"b\"', '\"name\":\"x\"')"
                   " WHERE seq = 3")
    assert_bad(sp, 3, "row edited")


@pytest.mark.parametrize("sql", [
    "UPDATE events SET ts = ts + 1 WHERE seq = 4",
    "UPDATE events SET type = 'action.rejected' WHERE seq = 4",
    "UPDATE events SET stream = 'someone-else' WHERE seq = 4",
], ids=["ts", "type", "stream"])
def test_edited_envelope_columns_are_caught(sp: Sp, ledger: Path, sql: str) -> None:
    attack(ledger, sql)
    result = sp("verify", ok=False)
    assert result.exit_code == 1
    assert result.stdout.startswith("bad: seq 4: ")


def test_an_edited_row_with_a_recomputed_hash_breaks_the_next_link(sp: Sp, ledger: Path) -> None:
    attack(ledger, "UPDATE events SET data = replace(data, '\"name\":\"b\"', '\"name\":\"x\"')"
                   " WHERE seq = 3")
    rehash(ledger, 3)
    assert_bad(sp, 4, "prev_hash does not link")


def test_a_deleted_middle_row_is_caught(sp: Sp, ledger: Path) -> None:
    attack(ledger, "DELETE FROM events WHERE seq = 3")
    assert_bad(sp, 4, "expected seq 3, found 4")


def test_a_deleted_and_renumbered_middle_row_is_caught(sp: Sp, ledger: Path) -> None:
    attack(ledger, "DELETE FROM events WHERE seq = 3",
           *[f"UPDATE events SET seq = {s - 1} WHERE seq = {s}" for s in range(4, EVENTS + 1)])
    assert_bad(sp, 3, "jumps to version 2")


@pytest.mark.parametrize("n", [1, 2])
def test_deleted_last_rows_are_caught(sp: Sp, ledger: Path, n: int) -> None:
    attack(ledger, f"DELETE FROM events WHERE seq > {EVENTS - n}")
    assert_bad(sp, EVENTS - n + 1, "deleted at the tail")


def test_deleted_last_rows_with_a_reset_sequence_are_caught(sp: Sp, ledger: Path) -> None:
    """The attacker also rewinds sqlite_sequence: the projections' position still witnesses."""
    attack(ledger, f"DELETE FROM events WHERE seq > {EVENTS - 2}",
           f"UPDATE sqlite_sequence SET seq = {EVENTS - 2} WHERE name = 'events'")
    assert_bad(sp, EVENTS - 1, f"seen events up to seq {EVENTS}")


def test_swapped_data_of_two_rows_is_caught(sp: Sp, ledger: Path) -> None:
    """b's and c's submissions trade places (same type, both at version 1)."""
    conn = sqlite3.connect(ledger, isolation_level=None)
    try:
        (b,), (c,) = conn.execute("SELECT data FROM events WHERE seq IN (3, 5) ORDER BY seq")
    finally:
        conn.close()
    attack(ledger, f"UPDATE events SET data = '{c}' WHERE seq = 3",
           f"UPDATE events SET data = '{b}' WHERE seq = 5")
    assert_bad(sp, 3, "row edited")


def test_reordered_rows_are_caught(sp: Sp, ledger: Path) -> None:
    """Swap two whole rows (every column moves with its seq) so that b's rows come first."""
    attack(ledger,
           "UPDATE events SET seq = -1 WHERE seq = 1",
           "UPDATE events SET seq = 1 WHERE seq = 3",
           "UPDATE events SET seq = 3 WHERE seq = -1")
    assert_bad(sp, 1, "prev_hash does not link")


def test_reordered_rows_within_one_stream_are_caught(sp: Sp, ledger: Path) -> None:
    """Swap a's two rows, hashes and all."""
    attack(ledger,
           "UPDATE events SET seq = -1 WHERE seq = 1",
           "UPDATE events SET seq = 1 WHERE seq = 2",
           "UPDATE events SET seq = 2 WHERE seq = -1")
    assert_bad(sp, 1, "jumps to version 2")


def test_dropping_the_triggers_alone_is_reported(sp: Sp, ledger: Path) -> None:
    attack(ledger)
    result = sp("verify", ok=False)
    assert result.exit_code == 1
    assert result.stdout == ("bad: append-only guard triggers are missing: "
                             "events_no_delete, events_no_update\n")


def test_a_forged_undecodable_row_with_a_valid_hash_is_caught(sp: Sp, ledger: Path) -> None:
    """INSERT is allowed by the triggers: a well-chained row must still decode."""
    conn = sqlite3.connect(ledger, isolation_level=None)
    try:
        prev = conn.execute("SELECT hash FROM events WHERE seq = ?", (EVENTS,)).fetchone()[0]
        seq, data = EVENTS + 1, '{"type":"action.exploded"}'
        h = codec.chain_hash(prev, seq, "zzz", 1, "action.exploded", 0, data)
        conn.execute("INSERT INTO events VALUES (?, 'zzz', 1, 'action.exploded', 0, ?, ?, ?)",
                     (seq, data, prev, h))
    finally:
        conn.close()
    assert_bad(sp, EVENTS + 1, f"event seq {EVENTS + 1} does not decode")


def test_a_type_column_that_lies_about_the_data_is_caught(sp: Sp, ledger: Path) -> None:
    attack(ledger, "UPDATE events SET type = 'action.failed' WHERE seq = 2")
    rehash(ledger, 2)
    # Relink the rest so that only the type/data disagreement remains.
    for seq in range(3, EVENTS + 1):
        conn = sqlite3.connect(ledger, isolation_level=None)
        conn.execute("UPDATE events SET prev_hash = (SELECT hash FROM events WHERE seq = ?)"
                     " WHERE seq = ?", (seq - 1, seq))
        conn.close()
        rehash(ledger, seq)
    assert_bad(sp, 2, "differs from the event's own type")


@pytest.mark.slow
def test_verify_as_a_real_process(sp: Sp, ledger: Path) -> None:
    clean = sp.proc("verify")
    assert (clean.returncode, clean.stdout, clean.stderr) == (0, f"ok: {EVENTS} events\n", "")
    attack(ledger, "DELETE FROM events WHERE seq = 5")
    bad = sp.proc("verify")
    assert bad.returncode == 1
    assert bad.stdout.startswith("bad: seq 6: ")
    assert "Traceback" not in bad.stderr
