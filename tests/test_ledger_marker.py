"""A wiped ledger is not a new ledger: the home remembers it had one (``ledger.id``).

ledger.db truncated to 0 bytes, deleted, or swapped for another ledger is refused by every
command, one line, exit 1, until it is restored or ``sp init --force`` starts a new one (which
the new ledger records). An older copy restored over the ledger is caught by ``sp verify``.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import Sp

LOGS = 200


@pytest.fixture
def worked(sp: Sp) -> Path:
    """A home whose worker ran a few actions, with 200 logs in logs/ (as after months)."""
    for name in ("a", "b", "c"):
        sp("submit", "--name", name, "--", "echo", name)
    sp("worker", "--until-idle")
    for i in range(LOGS - 3):
        (sp.home.logs / f"old{i:04d}.log").write_text("output\n")
    assert len(list(sp.home.logs.glob("*.log"))) == LOGS
    return sp.home.ledger_path


def _wipe(path: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _refused(sp: Sp, *args: str) -> str:
    done = sp.proc(*args, timeout=30)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    return done.stderr


COMMANDS = [("verify",), ("status",), ("submit", "--name", "x", "--", "true"),
            ("worker", "--until-idle"), ("replay",), ("init",)]


@pytest.mark.parametrize("args", COMMANDS)
def test_a_ledger_truncated_to_zero_bytes_is_refused(sp: Sp, worked: Path,
                                                     args: tuple[str, ...]) -> None:
    _wipe(worked)
    worked.write_bytes(b"")  # truncate, as `: > ledger.db` does
    err = _refused(sp, *args)
    assert err.startswith(f"Error: ledger {worked} is empty, 0 bytes (this home's ledger is ")
    assert "sp init --force" in err
    assert worked.stat().st_size == 0  # nothing was re-created


def test_a_deleted_ledger_is_refused(sp: Sp, worked: Path) -> None:
    _wipe(worked)
    worked.unlink()
    err = _refused(sp, "verify")
    assert err.startswith(f"Error: ledger {worked} is missing (this home's ledger is ")
    assert not worked.exists()


def test_another_ledger_in_its_place_is_refused(sp: Sp, worked: Path, tmp_path: Path) -> None:
    other = Sp(type(sp.home)(tmp_path / "other"))
    other("submit", "--name", "z", "--", "true")
    _wipe(worked)
    worked.unlink()
    other_db = other.home.ledger_path
    conn = sqlite3.connect(other_db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    shutil.copy(other_db, worked)
    err = _refused(sp, "status")
    assert "is not this home's ledger: it carries id " in err


def test_a_home_from_an_older_sp_with_logs_but_no_ledger_is_refused(sp: Sp, worked: Path
                                                                     ) -> None:
    """No marker (made before markers existed): the logs are the witness. (A read-only
    command refuses any home without a ledger; a writer would have created an empty one.)"""
    (sp.home.root / "ledger.id").unlink()
    _wipe(worked)
    worked.unlink()
    err = _refused(sp, "submit", "--name", "x", "--", "true")
    assert f"is empty but {sp.home.logs} holds {LOGS} action logs" in err


def test_restoring_the_ledger_makes_the_home_work_again(sp: Sp, worked: Path,
                                                        tmp_path: Path) -> None:
    backup = tmp_path / "backup.db"
    conn = sqlite3.connect(worked)
    conn.execute(f"VACUUM INTO '{backup}'")
    conn.close()
    _wipe(worked)
    worked.write_bytes(b"")
    _refused(sp, "status")
    shutil.copy(backup, worked)
    assert sp("verify").stdout == "ok: 12 events\n"


def test_init_force_starts_a_new_ledger_and_records_why(sp: Sp, worked: Path) -> None:
    old_id = json.loads((sp.home.root / "ledger.id").read_text())["ledger_id"]
    _wipe(worked)
    worked.write_bytes(b"")
    out = sp("init", "--force").stdout
    assert "started a new ledger" in out and "ledger.reinitialised" in out
    assert [p.name for p in sp.home.root.glob("ledger.db.replaced-*")]  # kept, not deleted
    new_id = json.loads((sp.home.root / "ledger.id").read_text())["ledger_id"]
    assert new_id != old_id
    rows = json.loads(sp("sql", "SELECT type, data FROM events", "--format", "json").stdout)
    assert [r["type"] for r in rows] == ["ledger.reinitialised"]
    data = json.loads(rows[0]["data"])
    assert data["previous_id"] == old_id and "is empty, 0 bytes" in data["found"]
    assert sp("verify").stdout == "ok: 1 events\n"
    assert sp("status").exit_code == 0


def test_init_stays_idempotent_on_an_intact_home(sp: Sp, worked: Path) -> None:
    marker = (sp.home.root / "ledger.id").read_bytes()
    for _ in range(2):
        assert sp("init").stdout.endswith("(12 events)\n")
    assert (sp.home.root / "ledger.id").read_bytes() == marker
    assert "intact; nothing to do" in sp("init", "--force").stdout


def test_an_older_copy_restored_over_the_ledger_fails_verify(sp: Sp, tmp_path: Path) -> None:
    sp("submit", "--name", "a", "--", "true")
    backup = tmp_path / "backup.db"
    conn = sqlite3.connect(sp.home.ledger_path)
    conn.execute(f"VACUUM INTO '{backup}'")
    conn.close()
    sp("submit", "--name", "b", "--", "true")
    assert sp("verify").stdout == "ok: 4 events\n"  # remembers the head it saw: seq 4
    _wipe(sp.home.ledger_path)
    shutil.copy(backup, sp.home.ledger_path)  # same ledger id, two events short
    result = sp("verify", ok=False)
    assert result.exit_code == 1
    assert result.stdout.startswith("bad: seq 4: gone: the ledger ends at seq 2, a clean "
                                    "sp verify saw up to seq 4")
    assert "intact; the head sp verify saw is forgotten" in sp("init", "--force").stdout
    assert sp("verify").stdout == "ok: 2 events\n"


def test_the_marker_is_written_durably_at_creation(sp: Sp) -> None:
    sp("init")
    marker = sp.home.root / "ledger.id"
    doc = json.loads(marker.read_text())
    conn = sqlite3.connect(sp.home.ledger_path)
    (found,) = conn.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchone()
    conn.close()
    assert doc["ledger_id"] == found
    assert oct(marker.stat().st_mode & 0o777) == oct(0o600)
    assert not [p for p in sp.home.root.iterdir() if p.name.startswith(".ledger.id.")]
    assert os.path.getsize(sp.home.ledger_path) > 0
