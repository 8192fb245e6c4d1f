"""A ledger written by the first sp (schema 1) still migrates, verifies, decodes and replays.

``tests/data/ledger_v1.sqlite`` is never regenerated (see ``tests/data/make_golden.py``). If a
change breaks this test, the change breaks every ledger already out there: add an upcaster or
a migration instead of touching the file.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import msgspec
import pytest

from sp.commands.home import Home
from sp.ledger import events as ev
from sp.ledger.schema import SCHEMA_VERSION
from sp.ledger.store import EventStore
from sp.ledger.verify import verify
from sp.projections import engine
from tests.conftest import Sp

GOLDEN = Path(__file__).parent / "data" / "ledger_v1.sqlite"
EVENTS = 53
# Every event type sp knew at version 1. New types are not expected here; these must stay.
TYPES_V1 = {
    "action.submitted", "action.validation_started", "action.queued", "action.rejected",
    "action.started", "action.progressed", "action.checkpointed", "action.completed",
    "action.retry_scheduled", "action.failed", "action.interrupted", "action.cancel_requested",
    "action.cancelled", "action.restarted", "action.rollback_started", "action.rolled_back",
    "action.rollback_failed",
}
STATES = {
    "hello": "rolled_back", "dependent": "completed", "flaky": "completed", "broken": "failed",
    "resumable": "completed", "never": "cancelled", "stopped": "cancelled",
    "second": "rollback_failed", "dangerous": "cancelled", "validated": "failed",
}


@pytest.fixture
def golden(home: Home) -> Path:
    """A copy of the golden file as this test's ledger: the original is never opened."""
    home.ensure()
    shutil.copyfile(GOLDEN, home.ledger_path)
    return home.ledger_path


def test_the_golden_file_is_schema_1() -> None:
    conn = sqlite3.connect(f"file:{GOLDEN}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (EVENTS,)
    finally:
        conn.close()


def test_it_migrates_and_still_verifies(golden: Path) -> None:
    with EventStore(golden) as store:
        assert store.query_one("PRAGMA user_version") == (SCHEMA_VERSION,)
        result = verify(store)
        assert result.ok, result
        assert result.events == EVENTS


def test_every_event_still_decodes(golden: Path) -> None:
    with EventStore(golden) as store:
        recorded = list(store.read_all())
        raw = [row for chunk in store.read_all_raw() for row in chunk]
    assert [r.seq for r in recorded] == list(range(1, EVENTS + 1))
    assert {r.type for r in recorded} == TYPES_V1
    for rec, row in zip(recorded, raw, strict=True):
        assert ev.tag_of(type(rec.event)) == rec.type
        assert isinstance(rec.event, ev.EVENT_TYPES)
        # Nothing lost in decoding: every stored field comes back with its value (fields added
        # since, with defaults, may appear in the re-encoding; none may vanish or change).
        stored = json.loads(row[5])
        again = json.loads(msgspec.json.encode(msgspec.structs.asdict(rec.event)))
        again["type"] = rec.type
        assert {k: again.get(k, "<dropped>") for k in stored} == stored, rec.seq


def test_it_replays_to_the_same_projections(golden: Path) -> None:
    store = Home(golden.parent).open()
    try:
        assert engine.rebuild(store) == EVENTS
        count, diff = engine.check(store)
        assert (count, diff) == (EVENTS, None)
        states: dict[str, str] = dict(store.query("SELECT name, state FROM actions"))
        assert states == STATES
        resumable = store.query_one(
            "SELECT attempts, checkpoint_step FROM actions WHERE name = 'resumable'")
        assert resumable == (2, 1)
        assert verify(store).ok
    finally:
        store.close()


def test_the_cli_accepts_it(sp: Sp, golden: Path) -> None:
    assert sp("verify").stdout == f"ok: {EVENTS} events\n"
    assert sp("replay", "--check").stdout == f"ok: rebuilt {EVENTS} events; projections identical\n"
    # Nothing was executing, so recovery has nothing to do and appends nothing.
    sp("replay")
    assert sp("verify").stdout == f"ok: {EVENTS} events\n"
