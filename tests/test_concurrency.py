"""Several real OS processes append to one ledger file at once: nothing lost, nothing doubled.

Children are started with ``multiprocessing`` (spawn: a fresh interpreter, as cron would start
one), wait on a barrier so that they really overlap, and mix single appends, optimistic
retries on one shared stream, and ``sp submit`` run as a further subprocess.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import queue
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

from sp.commands import execution
from sp.commands.home import Home
from sp.ledger import events as ev
from sp.ledger.errors import ConcurrencyError
from sp.ledger.store import EventStore
from sp.ledger.verify import verify
from sp.projections import engine

REPO = Path(__file__).resolve().parent.parent
SPAWN = multiprocessing.get_context("spawn")
WRITERS = 4
ACTIONS_EACH = 25  # two single-event appends each
SHARED_EACH = 8  # optimistic appends to the one shared stream
SUBMITS_EACH = 2  # `sp submit` as a real subprocess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def _shared_version(store: EventStore) -> int:
    row = store.query_one("SELECT max(version) FROM events WHERE stream = 'shared'")
    return int(row[0]) if row else 0


def _writer(root: str, index: int, barrier: Any, results: Any) -> None:
    """One writer process: report what it appended, or the traceback that stopped it."""
    try:
        store = Home(root).open()
        appended: list[str] = []
        progressed: list[str] = []
        submitted: list[str] = []
        retries = 0
        barrier.wait(timeout=30)
        for i in range(ACTIONS_EACH):
            aid = f"w{index}-{i}"
            store.append(aid, [ev.ActionSubmitted(name=aid, command=["true"])], 0)
            store.append(aid, [ev.ActionQueued(checks=[f"writer {index}"])], 1)
            appended.append(aid)
            if i % 3 == 0 and len(progressed) < SHARED_EACH:
                message = f"w{index}-p{len(progressed)}"
                while True:  # decide on what we read, retry when another writer won
                    try:
                        store.append("shared", [ev.ActionProgressed(message=message)],
                                     _shared_version(store))
                        break
                    except ConcurrencyError:
                        retries += 1
                progressed.append(message)
            if i % 10 == 5:
                proc = subprocess.run(
                    [sys.executable, "-m", "sp.cli", "--home", root, "submit", "--name",
                     f"w{index}-sub{i}", "--", "true"],
                    capture_output=True, text=True, cwd=REPO, timeout=60,
                )
                if proc.returncode != 0 or proc.stderr:
                    raise RuntimeError(f"sp submit exited {proc.returncode}: {proc.stderr}")
                submitted.append(proc.stdout.strip())
        store.close()
        results.put((index, appended, progressed, submitted, retries, None))
    except BaseException:
        results.put((index, [], [], [], 0, traceback.format_exc()))
        raise SystemExit(1) from None


def _collect(procs: list[Any], results: Any, n: int) -> list[tuple[Any, ...]]:
    out = []
    for _ in range(n):
        try:
            out.append(results.get(timeout=60))
        except queue.Empty:
            break
    for p in procs:
        p.join(timeout=30)
    return out


def test_concurrent_writers_lose_nothing_and_double_nothing(tmp_path: Path) -> None:
    root = tmp_path / "home"
    store = Home(root).open()
    # The shared stream: one running action that every writer reports progress on.
    store.append("shared", [ev.ActionSubmitted(name="shared", command=["true"]),
                            ev.ActionQueued()], 0)
    claim = execution.claim(store, "shared", "parent")

    barrier = SPAWN.Barrier(WRITERS)
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=_writer, args=(str(root), i, barrier, results))
             for i in range(WRITERS)]
    for p in procs:
        p.start()
    reports = _collect(procs, results, WRITERS)

    errors = [r[5] for r in reports if r[5]]
    assert not errors, "\n".join(errors)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    assert len(reports) == WRITERS

    execution.finish(store, claim, execution.Outcome(exit_code=0, duration_ms=1))
    appended = [a for r in reports for a in r[1]]
    progressed = [m for r in reports for m in r[2]]
    submitted = [s for r in reports for s in r[3]]
    assert len(appended) == WRITERS * ACTIONS_EACH
    assert len(progressed) == WRITERS * SHARED_EACH
    assert len(submitted) == WRITERS * SUBMITS_EACH

    # Every event present exactly once.
    expected_total = 2 * len(appended) + 2 * len(submitted) + 2 + 1 + len(progressed) + 1
    assert store.query_one("SELECT count(*) FROM events") == (expected_total,)
    for aid in appended + submitted:
        assert [(r.version, r.type) for r in store.read_stream(aid)] == [
            (1, "action.submitted"), (2, "action.queued")], aid
    shared = store.read_stream("shared")
    messages = [r.event.message for r in shared if isinstance(r.event, ev.ActionProgressed)]
    assert sorted(messages) == sorted(progressed)

    # Per-stream versions contiguous, global seq contiguous, chain valid.
    gaps = store.query(
        "SELECT stream FROM events GROUP BY stream"
        " HAVING min(version) != 1 OR max(version) != count(*)")
    assert gaps == []
    assert store.query_one("SELECT min(seq), max(seq), count(*) FROM events") == (
        1, expected_total, expected_total)
    result = verify(store)
    assert (result.ok, result.events) == (True, expected_total), result
    # They really ran at the same time: the writers' events interleave in the log (one
    # writer after another would switch exactly WRITERS - 1 times).
    writers = [r[0][:2] for r in store.query(
        "SELECT stream FROM events WHERE stream LIKE 'w%-%' ORDER BY seq")]
    switches = sum(a != b for a, b in itertools.pairwise(writers))
    assert switches >= WRITERS, writers
    # The projections, updated by four processes, equal a rebuild from the log.
    assert engine.check(store) == (expected_total, None)
    store.close()


def _racer(path: str, rounds: int, barrier: Any, results: Any) -> None:
    try:
        store = EventStore(path)
        outcomes = []
        for _ in range(rounds):
            barrier.wait(timeout=30)  # the previous round is over
            version = store.query_one(
                "SELECT count(*) FROM events WHERE stream = 'race'")[0]  # type: ignore[index]
            barrier.wait(timeout=30)  # everyone has decided on the same version
            try:
                store.append("race", [ev.ActionRejected(reason=str(os.getpid()))], version)
                outcomes.append("won")
            except ConcurrencyError as e:
                assert (e.expected, e.actual) == (version, version + 1)
                outcomes.append("lost")
        store.close()
        results.put((outcomes, None))
    except BaseException:
        results.put(([], traceback.format_exc()))
        raise SystemExit(1) from None


def test_racing_on_one_stream_exactly_one_writer_wins(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    EventStore(path).close()
    racers, rounds = 4, 5
    barrier = SPAWN.Barrier(racers)
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=_racer, args=(str(path), rounds, barrier, results))
             for _ in range(racers)]
    for p in procs:
        p.start()
    reports = _collect(procs, results, racers)
    errors = [r[1] for r in reports if r[1]]
    assert not errors, "\n".join(errors)
    assert [p.exitcode for p in procs] == [0] * racers
    for round_ in range(rounds):
        outcomes = sorted(r[0][round_] for r in reports)
        assert outcomes == ["lost"] * (racers - 1) + ["won"], round_
    with EventStore(path) as store:
        assert [r.version for r in store.read_stream("race")] == list(range(1, rounds + 1))
        assert verify(store).ok
