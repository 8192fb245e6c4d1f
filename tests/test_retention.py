"""``sp gc`` deletes exactly what its rules say: ages from the terminal event on the injected
clock, per-agent cleanup, flags over both, nothing of unfinished actions, rollback artefacts
kept while a rollback may need them, recorded before removal, idempotent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sp.commands import agents
from sp.commands.home import Home
from sp.commands.retention import gc
from sp.ledger import events as ev
from sp.ledger.clock import ManualClock
from sp.ledger.store import EventStore
from sp.projections import engine
from tests.conftest import Sp
from tests.retentionkit import DAY, HOUR, action, blob, files_of, set_mtime


def gc_events(store: EventStore) -> list[dict[str, object]]:
    return [json.loads(r[0]) for r in store.query(
        "SELECT data FROM events WHERE type = 'maintenance.gc_completed' ORDER BY seq")]


def present(paths: list[Path]) -> list[bool]:
    return [p.exists() for p in paths]


def test_gc_removes_exactly_what_the_rules_say(store: EventStore, home: Home,
                                               clock: ManualClock) -> None:
    root = home.root
    done = action(store, "completed")
    failed = action(store, "failed")
    cancelled = action(store, "cancelled")
    running = action(store, "executing")
    queued = action(store, "queued")
    files = {a: files_of(root, a) for a in (done, failed, cancelled, running, queued)}
    # Ages count from the terminal event, never the mtime: ancient mtimes change nothing.
    for paths in files.values():
        for p in paths:
            set_mtime(p, 0)

    clock.advance(23 * HOUR)
    assert gc(store, home).files == 0
    assert gc_events(store) == []

    clock.advance(2 * HOUR)  # 25h: every finished action's temporary folder, no log yet
    report = gc(store, home)
    assert sorted(r.path for r in report.removed) == sorted(
        f"tmp/{a}" for a in (done, failed, cancelled))
    for a in (done, failed, cancelled):
        assert present(files[a]) == [True, False]
    for a in (running, queued):
        assert present(files[a]) == [True, True]
    (event,) = gc_events(store)
    assert sorted(event["tmp"]) == sorted([done, failed, cancelled])  # type: ignore[arg-type]
    assert event["files"] == 3 and event["bytes_freed"] == 3000
    assert "logs" not in event  # empty: omitted

    clock.advance(6 * DAY)  # 7d 1h: the completed action's log
    report = gc(store, home)
    assert [r.path for r in report.removed] == [f"logs/{done}.log"]
    assert present(files[done]) == [False, False]
    assert present(files[failed])[0] and present(files[cancelled])[0]

    clock.advance(23 * DAY)  # 30d 1h: failed and cancelled logs too
    report = gc(store, home)
    assert sorted(r.path for r in report.removed) == sorted(
        [f"logs/{failed}.log", f"logs/{cancelled}.log"])
    clock.advance(365 * DAY)  # unfinished actions are never touched
    assert gc(store, home).files == 0
    for a in (running, queued):
        assert present(files[a]) == [True, True]
    assert len(gc_events(store)) == 3


def test_unknown_entries_go_by_their_mtime(store: EventStore, home: Home,
                                           clock: ManualClock) -> None:
    now = clock.now_ms()
    old_tmp = home.root / "tmp" / "left-by-a-crash"
    new_tmp = home.root / "tmp" / "just-made"
    for d in (old_tmp, new_tmp):
        d.mkdir(parents=True)
    set_mtime(old_tmp, now - 25 * HOUR)
    set_mtime(new_tmp, now - 1 * HOUR)
    old_log = home.root / "logs" / "archived0000000.log"
    new_log = home.root / "logs" / "archived0000001.log"
    for p, age in ((old_log, 31 * DAY), (new_log, 29 * DAY)):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
        set_mtime(p, now - age)
    report = gc(store, home)
    assert sorted(r.path for r in report.removed) == [
        "logs/archived0000000.log", "tmp/left-by-a-crash"]
    assert all(r.action_id is None for r in report.removed)
    assert present([old_tmp, new_tmp, old_log, new_log]) == [False, True, False, True]


def _agent(tmp_path: Path, store: EventStore, agent_id: str, cleanup: str) -> None:
    path = tmp_path / f"{agent_id}.yaml"
    path.write_text(f"id: {agent_id}\nstorage:\n  cleanup: {cleanup}\n"
                    "actions:\n  t: {command: [\"true\"]}\n")
    agents.apply(store, path)


def test_an_agents_cleanup_overrides_the_defaults_and_flags_override_both(
        tmp_path: Path, store: EventStore, home: Home, clock: ManualClock) -> None:
    _agent(tmp_path, store, "brief", "{completed_actions: 1d, temp_files: 2h}")
    _agent(tmp_path, store, "patient", "{completed_actions: 60d}")
    short = action(store, "completed", agent="brief")
    long = action(store, "completed", agent="patient")
    plain = action(store, "completed")
    files = {a: files_of(home.root, a) for a in (short, long, plain)}

    clock.advance(3 * HOUR)  # brief's temp_files is 2h
    assert [r.path for r in gc(store, home).removed] == [f"tmp/{short}"]

    clock.advance(DAY)  # brief's completed_actions is 1d; the default 24h temp for the others
    assert sorted(r.path for r in gc(store, home).removed) == sorted(
        [f"logs/{short}.log", f"tmp/{long}", f"tmp/{plain}"])

    clock.advance(7 * DAY)  # 8d: the default 7d takes plain's log; patient keeps 60d
    assert [r.path for r in gc(store, home).removed] == [f"logs/{plain}.log"]
    assert present(files[long]) == [True, False]

    # A flag overrides the agent too; --dry-run shows it and changes nothing.
    preview = gc(store, home, completed="2d", dry_run=True)
    assert [r.path for r in preview.removed] == [f"logs/{long}.log"]
    assert preview.seq is None and present(files[long])[0]
    assert [r.path for r in gc(store, home, completed="2d").removed] == [f"logs/{long}.log"]
    assert not files[long][0].exists()


def test_dry_run_lists_the_same_and_writes_nothing(sp: Sp, store: EventStore, home: Home,
                                                    clock: ManualClock) -> None:
    done = action(store, "completed")
    paths = files_of(home.root, done)
    clock.advance(8 * DAY)
    head = store.head()
    planned = gc(store, home, dry_run=True)
    assert [r.path for r in planned.removed] == [f"logs/{done}.log", f"tmp/{done}"]
    assert present(paths) == [True, True] and store.head() == head
    real = gc(store, home)
    assert [r.path for r in real.removed] == [r.path for r in planned.removed]
    assert present(paths) == [False, False]
    assert store.head()[0] == head[0] + 1
    # Nothing left: a second run records nothing (idempotent).
    again = gc(store, home)
    assert again.files == 0 and again.seq is None and store.head()[0] == head[0] + 1


def test_rollback_artefacts_wait_for_the_whole_group_and_live_compensations(
        store: EventStore, home: Home, clock: ManualClock) -> None:
    t0 = clock.now_ms()
    a = action(store, "completed", group="release",
               checkpoint={"before": [{"path": "/etc/x", "blob": "a" * 64, "mode": 420}]})
    shared = action(store, "completed", checkpoint={"before": {"blob": "b" * 64}})
    blobs = [blob(home.root, "a" * 64, t0), blob(home.root, "b" * 64, t0)]
    clock.advance(6 * DAY)
    action(store, "completed", group="release")  # a later member of the same group
    fresh = action(store, "completed", checkpoint={"before": {"blob": "b" * 64}})
    clock.advance(1 * DAY + HOUR)  # a and shared expired; the group and fresh have not
    assert [r.path for r in gc(store, home).removed if r.kind == "blob"] == []
    assert present(blobs) == [True, True]
    clock.advance(6 * DAY)  # the whole group and fresh expired
    removed = [r for r in gc(store, home).removed if r.kind == "blob"]
    assert sorted(r.path for r in removed) == [f"blobs/{'a' * 64}", f"blobs/{'b' * 64}"]
    assert {x for r in removed for x in (r.action_id, *r.shared_with)} == {a, shared, fresh}
    assert present(blobs) == [False, False]


def test_a_blob_an_unfinished_compensation_needs_stays(store: EventStore, home: Home,
                                                       clock: ManualClock) -> None:
    original = action(store, "completed", checkpoint={"before": {"blob": "c" * 64}})
    b = blob(home.root, "c" * 64, clock.now_ms())
    clock.advance(8 * DAY)
    undo = action(store, "queued", payload={"compensates": original})
    assert gc(store, home).files == 0 and b.exists()
    store.append(undo, [ev.ActionCancelled()], 2)
    assert [r.path for r in gc(store, home).removed] == [f"blobs/{'c' * 64}"]


def test_orphan_and_fresh_blobs(store: EventStore, home: Home, clock: ManualClock) -> None:
    now = clock.now_ms()
    orphan = blob(home.root, "d" * 64, now - 23 * DAY)  # 31d at gc
    young_orphan = blob(home.root, "e" * 64, now - 20 * DAY)  # 28d at gc
    action(store, "completed", checkpoint={"before": {"blob": "f" * 64}})
    clock.advance(8 * DAY)
    reused = blob(home.root, "f" * 64, clock.now_ms() - HOUR)  # put_blob touched it an hour ago
    assert [r.path for r in gc(store, home).removed] == [f"blobs/{'d' * 64}"]
    assert present([orphan, young_orphan, reused]) == [False, True, True]


def _preview(home: Path, versions: int, current: int) -> list[Path]:
    site = home / "previews" / "site"
    dirs = []
    for n in range(1, versions + 1):
        d = site / f"v{n}"
        d.mkdir(parents=True)
        (d / "index.html").write_text(f"v{n}")
        meta = home / "deploy" / "site" / f"v{n}.json"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"previous": f"v{n - 1}" if n > 1 else None}))
        dirs.append(d)
    os.symlink(f"v{current}", site / "current")
    return dirs


def _deploy(store: EventStore, version: int, **kw: object) -> str:
    return action(store, "completed", action_type="deploy",
                  payload={"build_dir": "dist", "name": "site"},
                  checkpoint={"name": "site", "version": version,
                              "previous": f"v{version - 1}" if version > 1 else None,
                              "path": f"previews/site/v{version}"}, **kw)  # type: ignore[arg-type]


def test_superseded_previews_go_once_no_undo_can_serve_them(
        store: EventStore, home: Home, clock: ManualClock) -> None:
    v1, v2, v3 = _preview(home.root, 3, current=3)
    d1 = _deploy(store, 1)
    _deploy(store, 2)
    clock.advance(6 * DAY)
    _deploy(store, 3)  # its undo would serve v2 again
    clock.advance(1 * DAY + HOUR)
    removed = [r for r in gc(store, home).removed if r.kind == "preview"]
    assert [(r.path, r.action_id) for r in removed] == [("previews/site/v1", d1)]
    assert present([v1, v2, v3]) == [False, True, True]
    assert not (home.root / "deploy" / "site" / "v1.json").exists()
    assert (home.root / "deploy" / "site" / "v2.json").exists()
    # A deploy of the site still running: nothing of that preview is touched.
    clock.advance(7 * DAY)
    running = action(store, "executing", action_type="deploy",
                     payload={"build_dir": "dist", "name": "site"})
    assert [r for r in gc(store, home).removed if r.kind == "preview"] == []
    store.append(running, [ev.ActionCompleted()], 4)
    removed = [r for r in gc(store, home).removed if r.kind == "preview"]
    assert [r.path for r in removed] == ["previews/site/v2"]
    assert present([v1, v2, v3]) == [False, False, True]  # current stays


def test_logs_and_status_say_the_log_was_collected(sp: Sp, store: EventStore, home: Home,
                                                   clock: ManualClock) -> None:
    done = action(store, "completed")
    files_of(home.root, done)
    assert "output of" in sp("logs", done).stdout
    clock.advance(8 * DAY)
    report = gc(store, home)
    logs = sp("logs", done)
    assert logs.stdout == ""
    assert f"{done}: the log was collected by sp gc" in logs.stderr
    assert f"seq {report.seq}" in logs.stderr
    status = sp("status", done).stdout
    assert "collected by sp gc" in status
    # The gc run is visible to SQL and the projections still rebuild identically.
    out = json.loads(sp("sql", "SELECT json_extract(data, '$.files') AS n FROM events WHERE "
                               "type = 'maintenance.gc_completed'", "--format", "json").stdout)
    assert out == [{"n": 2}]
    assert engine.check(store)[1] is None


def test_the_cli_runs_gc_and_rejects_bad_durations(sp: Sp, home: Home) -> None:
    bad = sp("gc", "--temp", "soon", ok=False)
    assert bad.exit_code == 2
    assert bad.stderr.count("\n") == 1 and "--temp" in bad.stderr
    assert "Traceback" not in bad.output
    # An old unknown temp folder goes; the JSON document lists it.
    d = home.root / "tmp" / "stale"
    d.mkdir(parents=True)
    set_mtime(d, 0)
    dry = json.loads(sp("gc", "--dry-run", "--format", "json").stdout)
    assert dry["dry_run"] is True and [r["path"] for r in dry["removed"]] == ["tmp/stale"]
    assert d.exists()
    done = json.loads(sp("gc", "--format", "json").stdout)
    assert done["files"] == 1 and isinstance(done["seq"], int) and not d.exists()
    assert "removed 0 file(s)" in sp("gc").stderr


@pytest.mark.slow
def test_gc_as_a_real_process(sp: Sp, home: Home) -> None:
    d = home.root / "tmp" / "stale"
    d.mkdir(parents=True)
    set_mtime(d, 0)
    out = sp.proc("gc")
    assert out.returncode == 0, out.stderr
    assert "removed 1 file(s)" in out.stderr and not d.exists()
