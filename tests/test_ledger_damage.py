"""A damaged or tampered ledger is named, one line, exit 1: never an internal error (70) nor
"stayed locked; try again" (75, which automation retries for ever); and ``sp replay`` does not
rebuild from, or append to, a log that ``sp verify`` flags unless told ``--force``.

The test is the attacker: it writes the bad bytes itself, with a raw sqlite3 connection (the
guard triggers dropped) or with plain writes into the file at the page it picked.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import Sp
from tests.test_verify import EVENTS, attack, ledger, rehash

__all__ = ["ledger"]  # the fixture, shared with test_verify

GUARD = ("CREATE TRIGGER events_no_update BEFORE UPDATE ON events"
         " BEGIN SELECT RAISE(ABORT, 'events are append-only'); END")


def _break_utf8(path: Path, seq: int) -> None:
    """Replace a row's data with bytes that are not UTF-8, and put the guard back: only the
    row itself is wrong (a byte flip on disk looks the same)."""
    attack(path, f"UPDATE events SET data = CAST(X'7B2274797065223A22FF' AS TEXT)"
                 f" WHERE seq = {seq}", GUARD)


def _one_line_exit_1(result_stderr: str, code: int) -> str:
    assert code == 1, result_stderr
    assert result_stderr.count("\n") == 1, result_stderr
    assert "Traceback" not in result_stderr and "internal error" not in result_stderr
    return result_stderr


def test_invalid_utf8_in_a_row_is_named_by_verify(sp: Sp, ledger: Path) -> None:
    _break_utf8(ledger, 3)
    result = sp("verify", ok=False)
    assert result.exit_code == 1, result.output
    assert result.stdout == "bad: seq 3: column data is not valid UTF-8 (byte 9)\n"
    doc = json.loads(sp("verify", "--format", "json", ok=False).stdout)
    assert doc["ok"] is False and doc["bad_seq"] == 3


@pytest.mark.parametrize("args", [("replay", "--check"), ("replay",), ("audit",)])
def test_invalid_utf8_in_a_row_is_one_line_naming_the_seq(sp: Sp, ledger: Path,
                                                          args: tuple[str, ...]) -> None:
    conn = sqlite3.connect(ledger)
    (stream,) = conn.execute("SELECT stream FROM events WHERE seq = 3").fetchone()
    conn.close()
    _break_utf8(ledger, 3)
    done = sp.proc(*args, *([stream] if args == ("audit",) else []), timeout=30)
    err = _one_line_exit_1(done.stderr, done.returncode)
    assert err == (f"Error: ledger {ledger} is damaged: event seq 3: column data is not "
                   "valid UTF-8 (byte 9); run sp verify\n")


def _flip_index_page(path: Path, index: str) -> None:
    """Overwrite the cell pointers of the index's root page in the file itself."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?",
                               (index,)).fetchone()
    finally:
        conn.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size + 12)
        f.write(b"\xff" * 32)


INDEX = "sqlite_autoindex_events_1"  # UNIQUE (stream, version): every append probes it


def test_a_corrupted_index_page_fails_verify_naming_the_index(sp: Sp, ledger: Path) -> None:
    _flip_index_page(ledger, INDEX)
    result = sp("verify", ok=False)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith("bad: quick_check: ") for line in lines), lines
    assert any(f"index {INDEX}" in line for line in lines), lines
    doc = json.loads(sp("verify", "--full", "--format", "json", ok=False).stdout)
    assert doc["ok"] is False and doc["sqlite_check"] == "integrity_check" and doc["damage"]


@pytest.mark.parametrize("args", [("replay", "--check"), ("replay",)])
def test_replay_refuses_a_corrupted_index_naming_it(sp: Sp, ledger: Path,
                                                    args: tuple[str, ...]) -> None:
    _flip_index_page(ledger, INDEX)
    done = sp.proc(*args, timeout=30)
    err = _one_line_exit_1(done.stderr, done.returncode)
    assert f"is damaged: quick_check: index {INDEX}" in err


def test_writers_on_a_corrupted_index_say_damaged_never_internal(sp: Sp, ledger: Path) -> None:
    """Appends probe the damaged index: one line naming the ledger, exit 1 (never 70/75)."""
    _flip_index_page(ledger, INDEX)
    for args in (("submit", "--name", "d", "--", "true"), ("worker", "--until-idle")):
        done = sp.proc(*args, timeout=30)
        if done.returncode != 0:
            err = _one_line_exit_1(done.stderr, done.returncode)
            assert f"ledger {ledger} is damaged: " in err and "run sp verify" in err


def test_a_ledger_that_is_not_a_database_is_named(sp: Sp, ledger: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    with open(ledger, "r+b") as f:
        f.write(b"this is not sqlite" * 8)
    done = sp.proc("status", timeout=30)
    err = _one_line_exit_1(done.stderr, done.returncode)
    assert f"ledger {ledger} is damaged: file is not a database; run sp verify" in err


# -- replay on a tampered log (item 10) -------------------------------------------------------


def _tamper(path: Path) -> None:
    attack(path, "UPDATE events SET data = replace(data, '\"name\":\"b\"', '\"name\":\"x\"')"
                 " WHERE seq = 3", GUARD)


def _count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def test_replay_refuses_a_tampered_log_and_changes_nothing(sp: Sp, ledger: Path) -> None:
    _tamper(ledger)
    before = sp("status", "--format", "json").stdout
    for args in (("replay",), ("replay", "--check")):
        done = sp.proc(*args, timeout=30)
        err = _one_line_exit_1(done.stderr, done.returncode)
        assert err == (f"Error: ledger {ledger} fails sp verify at seq 3: hash does not match "
                       "the row's contents (row edited); nothing was changed (sp replay "
                       "--force rebuilds from it anyway)\n")
    assert _count(ledger) == EVENTS
    assert sp("status", "--format", "json").stdout == before  # the projections untouched


def test_replay_refuses_a_log_cut_at_the_tail(sp: Sp, ledger: Path) -> None:
    attack(ledger, f"DELETE FROM events WHERE seq = {EVENTS}")
    done = sp.proc("replay", timeout=30)
    err = _one_line_exit_1(done.stderr, done.returncode)
    assert f"fails sp verify at seq {EVENTS}: " in err and "deleted at the tail" in err


def test_replay_force_rebuilds_from_a_tampered_log(sp: Sp, ledger: Path) -> None:
    attack(ledger, "UPDATE events SET data = replace(data, '\"name\":\"b\"', "
                   "'\"name\":\"x\"') WHERE seq = 3")
    rehash(ledger, 3)  # even a re-hashed row breaks the next link
    result = sp("replay", "--force")
    assert result.stdout.startswith(f"rebuilt projections from {EVENTS} events")
    rows = json.loads(sp("sql", "SELECT name FROM actions", "--format", "json").stdout)
    names = {r["name"] for r in rows}
    assert "x" in names  # what the log says now, as asked

