"""Recovery of an attempt that was claimed but may never have been spawned (a worker keeps a
pool of claimed-ahead attempts): it must not use up the action's last attempt."""

from __future__ import annotations

import os
import signal
import subprocess

from sp.commands import actions, execution, recovery
from sp.commands.home import Home
from sp.ledger.clock import ManualClock
from sp.ledger.store import EventStore
from sp.runner import reaper


def _expire(clock: ManualClock) -> None:
    clock.advance(execution.LEASE_TTL_MS + 1_000)


def _state(store: EventStore, aid: str) -> tuple[str, str | None]:
    row = store.query_one("SELECT state, error_kind FROM actions WHERE action_id = ?", (aid,))
    assert row is not None
    return row[0], row[1]


def test_a_claimed_attempt_with_no_process_is_queued_again_not_failed(
        store: EventStore, clock: ManualClock) -> None:
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=["true"])])  # one attempt
    execution.claim(store, aid, "worker-that-died")
    _expire(clock)
    (done,) = reaper.recover(store)
    assert done.outcome == "interrupted"
    assert "may never have run" in done.reason
    assert _state(store, aid)[0] == "interrupted"
    # it runs again; its end is judged as usual
    claim = execution.claim(store, aid, "w2")
    assert claim.attempt == 2
    execution.finish(store, claim, execution.Outcome(exit_code=0, duration_ms=1))
    assert _state(store, aid)[0] == "completed"


def test_a_spawned_attempt_with_no_attempts_left_still_fails(
        store: EventStore, clock: ManualClock) -> None:
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=["true"])])
    execution.claim(store, aid, "worker-that-died")
    execution.record_children(store, "worker-that-died", [(aid, os.getpid(), 1)])
    _expire(clock)
    (done,) = reaper.recover(store)
    assert done.outcome == "failed"
    assert _state(store, aid) == ("failed", "heartbeat_missing")


def test_a_spawned_attempt_its_worker_never_noted_is_found_by_its_environment_and_stopped(
        store: EventStore, clock: ManualClock) -> None:
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=["sleep", "60"])])
    execution.claim(store, aid, "worker-that-died")  # the lease names no child
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True,
                              env={**os.environ, "SP_ACTION_ID": aid, "SP_ATTEMPT": "1"})
    try:
        _expire(clock)
        (done,) = reaper.recover(store)
        assert done.outcome == "failed"  # it did run: the last attempt is used up
        assert orphan.wait(timeout=10) == -signal.SIGKILL  # and it does not run on beside
    finally:
        if orphan.poll() is None:
            orphan.kill()


def test_an_attempt_without_evidence_is_given_back_once_never_more(
        store: EventStore, clock: ManualClock, home: Home) -> None:
    """A poison action that kills its worker before anything is noted: at most
    max_attempts + 1 runs, whatever the evidence."""
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=["true"])])  # one attempt
    home.log_path(aid).write_text(f"--- sp: attempt 0 of {aid}\nan older attempt's output\n")
    execution.claim(store, aid, "worker-that-died")
    with home.log_path(aid).open("a") as log:  # the worker's own notes are no evidence
        log.write(f"--- sp: attempt 1 of {aid}\n--- sp: step 0 fetch\n")
    _expire(clock)
    assert reaper.recover(store)[0].outcome == "interrupted"  # may never have run
    execution.claim(store, aid, "worker-that-died-too")  # attempt 2 of 1
    _expire(clock)
    (done,) = reaper.recover(store)
    assert done.outcome == "failed"
    state, _ = _state(store, aid)
    row = store.query_one("SELECT attempts, max_attempts, error FROM actions"
                          " WHERE action_id = ?", (aid,))
    assert state == "failed" and row is not None and row[:2] == (2, 1)
    assert "one unproven attempt is given back, not more" in row[2]


def test_output_in_the_attempts_log_counts_the_attempt(
        store: EventStore, clock: ManualClock, home: Home) -> None:
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=["true"])])
    execution.claim(store, aid, "worker-that-died")
    # What the worker and its child left: the attempt's header, then the child's output.
    home.log_path(aid).write_text(f"--- sp: attempt 1 of {aid}\nfetched 3 papers\n")
    _expire(clock)
    (done,) = reaper.recover(store)
    assert done.outcome == "failed"
    assert _state(store, aid)[0] == "failed"


def test_a_checkpoint_of_the_attempt_counts_it(store: EventStore, clock: ManualClock) -> None:
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=["true"])])
    execution.claim(store, aid, "worker-that-died")
    actions.checkpoint(store, aid, {"cursor": 3}, step=0)
    _expire(clock)
    assert reaper.recover(store)[0].outcome == "failed"


def test_a_sweep_leaves_a_lease_renewed_meanwhile_alone(
        store: EventStore, clock: ManualClock) -> None:
    """The evidence is gathered outside the write transaction; a live owner that heartbeats
    before the decision keeps its attempt."""
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=["true"], retries=1)])
    execution.claim(store, aid, "slow-worker")
    _expire(clock)
    now = clock.now_ms()
    suspects = recovery._suspects(store, now, skip_own=False)
    assert [s.action_id for s in suspects] == [aid]
    execution.heartbeat(store, [aid], "slow-worker")  # it was alive after all
    effects = recovery.Cleanup()
    assert recovery._recover_one(store, suspects[0], "test", now, effects) is None
    assert _state(store, aid)[0] == "executing"


def test_a_sweep_skips_what_another_sweep_is_doing(
        store: EventStore, clock: ManualClock, home: Home) -> None:
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=["true"], retries=1)])
    execution.claim(store, aid, "worker-that-died")
    _expire(clock)
    with recovery.sweep_lock(str(home.root)) as held:
        assert held
        assert reaper.recover(store, wait=False) == []  # another sweep holds the lock
    assert reaper.recover(store, wait=False)[0].outcome == "interrupted"
