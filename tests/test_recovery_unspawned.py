"""Recovery of an attempt that was claimed but may never have been spawned (a worker keeps a
pool of claimed-ahead attempts): it must not use up the action's last attempt."""

from __future__ import annotations

import os
import signal
import subprocess

from commands import actions, execution, recovery
from ledger.clock import ManualClock
from ledger.store import EventStore


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
    (done,) = recovery.recover(store)
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
    (done,) = recovery.recover(store)
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
        (done,) = recovery.recover(store)
        assert done.outcome == "failed"  # it did run: the last attempt is used up
        assert orphan.wait(timeout=10) == -signal.SIGKILL  # and it does not run on beside
    finally:
        if orphan.poll() is None:
            orphan.kill()
