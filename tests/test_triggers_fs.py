"""Filesystem triggers: the debounce logic on a manual clock, then real inotify on tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sp.commands.home import Home
from sp.ledger.clock import ManualClock
from sp.ledger.errors import SpError
from sp.ledger.store import EventStore
from sp.triggers import filesystem
from sp.triggers.filesystem import Debouncer
from tests.triggerkit import (
    apply_agent,
    context,
    doc_of,
    fired,
    payload_of,
    running,
    wait_for,
)

# -- the debounce, on a manual clock (no sleeping) -------------------------------------------


def test_a_burst_fires_once_after_the_window() -> None:
    clock = ManualClock()
    d = Debouncer(500, clock)
    d.add("/in/a.csv", "create")
    for _ in range(3):
        clock.advance(200)
        d.add("/in/a.csv", "modify")
    d.add("/in/a.csv", "close_write")
    assert d.due() == [] and d.next_in_ms() == 500
    clock.advance(499)
    assert d.due() == [] and d.next_in_ms() == 1
    clock.advance(1)
    (burst,) = d.due()
    assert burst.key == "/in/a.csv" and burst.n == 5
    assert burst.events == ["create", "modify", "close_write"] and burst.last == "close_write"
    assert d.due() == [] and d.next_in_ms() is None


def test_files_debounce_separately_and_come_out_oldest_first() -> None:
    clock = ManualClock()
    d = Debouncer(100, clock)
    d.add("b", "create")
    clock.advance(10)
    d.add("a", "create")
    clock.advance(95)
    assert [b.key for b in d.due()] == ["b"]
    clock.advance(5)
    assert [b.key for b in d.due()] == ["a"]


def test_events_after_the_window_are_a_new_burst() -> None:
    clock = ManualClock()
    d = Debouncer(100, clock)
    d.add("a", "close_write")
    clock.advance(100)
    assert len(d.due()) == 1
    d.add("a", "close_write")
    clock.advance(100)
    assert len(d.due()) == 1


def test_a_file_written_for_ever_still_fires_after_max_wait() -> None:
    clock = ManualClock()
    d = Debouncer(100, clock)  # max wait: ten windows
    fires = 0
    for _ in range(25):
        d.add("log", "modify")
        clock.advance(50)
        fires += len(d.due())
    assert fires == 1  # at 1000 ms after the first event, not never


def test_zero_window_fires_every_event_and_flush_empties() -> None:
    clock = ManualClock()
    d = Debouncer(0, clock)
    d.add("a", "create")
    d.add("a", "close_write")
    assert d.next_in_ms() == 0
    assert [b.last for b in d.due()] == ["create", "close_write"]
    d2 = Debouncer(1000, clock)
    d2.add("x", "create")
    assert [b.key for b in d2.flush()] == ["x"] and d2.next_in_ms() is None


# -- real inotify ------------------------------------------------------------------------------


def inotify_watches(path: Path) -> int:
    """How many inotify watches of this process the kernel holds on ``path`` (its inode and
    device, as ``/proc/self/fdinfo`` lists them)."""
    st = path.stat()
    dev = (os.major(st.st_dev) << 20) | os.minor(st.st_dev)  # the kernel's own encoding
    want = f"ino:{st.st_ino:x} sdev:{dev:x} "
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            n += Path(f"/proc/self/fdinfo/{fd}").read_text().count(want)
        except OSError:  # closed meanwhile
            continue
    return n


@pytest.fixture
def watched(store: EventStore, tmp_path: Path) -> Path:
    apply_agent(store, tmp_path)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    return incoming


def test_a_written_file_enqueues_exactly_one_action_with_its_path(
        store: EventStore, home: Home, watched: Path) -> None:
    doc = doc_of({"triggers": {"filesystem": [
        {"path": str(watched), "events": ["create", "modify", "close_write"],
         "glob": "*.csv", "debounce": "200ms", "action": "process_new_file"}]}})
    (source,) = filesystem.build(doc, context(home, doc))
    assert isinstance(source, filesystem.FileSource)
    clock = ManualClock()  # the window passes when the test says, however slow the machine
    with running(source, home, doc, clock=clock) as r:
        wait_for(source.watching.is_set)
        target = watched / "data.csv"
        for i in range(4):  # a burst inside the 200 ms window
            with target.open("a") as f:
                f.write(f"row {i}\n")
        (ignored := watched / "notes.txt").write_text("not a csv\n")
        (last := watched / "zz.csv").write_text("written after the burst\n")
        # inotify reports in order: once the last file's close is seen, all of the burst is.
        wait_for(lambda: [(b.key, b.last) for b in source.pending()] == [
            (str(target), "close_write"), (str(last), "close_write")])
        clock.advance(199)
        assert fired(store) == []  # not before the window has passed
        clock.advance(1)
        ((name, action_id, detail), after) = wait_for(lambda: fired(store)[1:] and fired(store))
        assert after[2].startswith(f"close_write {last}") and source.pending() == [], r.logs
    assert name == f"fs:{watched}"
    assert detail.startswith(f"close_write {target} (")
    assert payload_of(store, action_id) == {
        "path": str(target), "event": "close_write",
        "events": ["create", "modify", "close_write"], "trigger": f"fs:{watched}",
    }
    assert ignored.exists()
    env = store.query_one("SELECT json_extract(data, '$.env') FROM events WHERE stream = ? "
                          "AND type = 'action.submitted'", (action_id,))
    assert env is not None and f'"SP_TRIGGER_PATH":"{target}"' in env[0]


def test_non_matching_glob_and_unwatched_events_fire_nothing(
        store: EventStore, home: Home, watched: Path) -> None:
    doc = doc_of({"triggers": {"filesystem": [
        {"path": str(watched), "events": ["delete"], "glob": "*.csv", "debounce": "50ms",
         "action": "process_new_file"}]}})
    (source,) = filesystem.build(doc, context(home, doc))
    assert isinstance(source, filesystem.FileSource)
    clock = ManualClock()
    with running(source, home, doc, clock=clock):
        wait_for(source.watching.is_set)
        (watched / "a.txt").write_text("x")  # wrong name
        (watched / "b.csv").write_text("x")  # right name, but not a delete
        (watched / "a.txt").unlink()  # a delete, wrong name
        (watched / "b.csv").unlink()  # the one that counts, reported after all the others
        # The first thing the source keeps must be this delete: none of the above came first.
        pending = wait_for(lambda: [(b.key, b.last) for b in source.pending()])
        assert pending == [(str(watched / "b.csv"), "delete")]
        clock.advance(50)
        ((_, action_id, _),) = wait_for(lambda: fired(store))
    assert payload_of(store, action_id)["event"] == "delete"


def test_recursive_watches_new_subdirectories_relative_to_the_file(
        store: EventStore, home: Home, watched: Path, tmp_path: Path) -> None:
    doc = doc_of({"triggers": {"filesystem": [
        {"path": "incoming", "recursive": True, "debounce": "50ms",
         "action": "process_new_file"}]}})
    (source,) = filesystem.build(
        doc, context(home, doc, str(tmp_path / "triggers.yaml")))
    assert isinstance(source, filesystem.FileSource)
    clock = ManualClock()
    with running(source, home, doc, clock=clock):
        wait_for(source.watching.is_set)
        sub = watched / "2026" / "11"
        sub.mkdir(parents=True)
        # pyinotify adds the new directories' watches as it sees them: wait for the kernel's.
        wait_for(lambda: inotify_watches(sub), what=f"a watch on {sub}")
        (sub / "report.pdf").write_bytes(b"%PDF")
        wait_for(lambda: [(b.key, b.last) for b in source.pending()] == [
            (str(sub / "report.pdf"), "close_write")])
        clock.advance(50)
        ((name, action_id, _),) = wait_for(lambda: fired(store))
    assert name == "fs:incoming"
    assert payload_of(store, action_id)["path"] == str(sub / "report.pdf")


def test_a_missing_directory_is_an_error_the_daemon_retries(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    doc = doc_of({"triggers": {"filesystem": [
        {"path": str(tmp_path / "absent"), "action": "process_new_file"}]}})
    (source,) = filesystem.build(doc, context(home, doc))
    with pytest.raises(SpError, match=r"cannot watch .*absent: no such file or directory"), \
            running(source, home, doc) as r:
        r.thread.join(2)
