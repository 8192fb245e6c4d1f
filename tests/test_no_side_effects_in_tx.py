"""Nothing but the ledger inside the write transaction (issue 12, item 4).

Each test wraps one host side effect — the sandbox's namespace probe (a fork), the recovery's
kills, a claim's cgroup creation — so that it records whether the store had a transaction open
when it ran, and drives the command that causes it. A fork or a kill under ``BEGIN IMMEDIATE``
holds every other writer's lock for as long as it takes.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

from sp.commands import actions, execution, policies
from sp.host import limits, proc
from sp.ledger.clock import ManualClock
from sp.ledger.store import EventStore
from sp.runner import reaper
from sp.security import policy as pol
from sp.security import sandbox


def _recording(store: EventStore, seen: list[bool], fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        seen.append(store.in_transaction)
        return fn(*args, **kwargs)
    return wrapper


def test_the_namespace_probe_runs_before_the_claims_transaction(
        store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    monkeypatch.setattr(sandbox, "_probe_namespaces",
                        _recording(store, seen, sandbox._probe_namespaces))
    sandbox.probe.cache_clear()  # this process may have probed already (another test)
    try:
        policies.set_policy(store, "confined", pol.decode(
            {"allowed": [{"execute": ["true"]}]}))
        actions.submit(store, [actions.SubmitSpec(command=["true"])])
        assert execution.claim_next(store, "w") is not None
        assert seen == [False]  # it ran, once, and not under the write lock
        execution.claim_next(store, "w")
        assert seen == [False]  # once per process
    finally:
        sandbox.probe.cache_clear()


def test_recovery_kills_only_after_its_commit(
        store: EventStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    monkeypatch.setattr(proc, "kill_group", _recording(store, seen, proc.kill_group))
    monkeypatch.setattr(proc, "kill_attempt", _recording(store, seen, proc.kill_attempt))
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=["sleep", "60"])])
    execution.claim(store, aid, "worker-that-died")
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True,
                              env={**os.environ, "SP_ACTION_ID": aid, "SP_ATTEMPT": "1"})
    try:
        execution.record_children(store, "worker-that-died",
                                  [(aid, orphan.pid, proc.start_time(orphan.pid))])
        clock.advance(execution.LEASE_TTL_MS + 1_000)
        (done,) = reaper.recover(store)
        assert done.action_id == aid
        assert seen and not any(seen)
        assert orphan.wait(timeout=10) != 0  # stopped, after the commit
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def test_a_claims_cgroups_are_created_outside_its_transaction(
        store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    monkeypatch.setattr(limits, "prepare", _recording(store, seen, limits.prepare))
    actions.submit(store, [actions.SubmitSpec(command=["true"], resources={"nice": 5})])
    claim = execution.claim_next(store, "w")
    assert claim is not None
    assert claim.limits.get("nice") == 5 or claim.limits.get("missing")
    try:
        assert seen == [False]  # made before BEGIN, taken over by the claim
    finally:
        if claim.prepared is not None:
            limits.cleanup(claim.prepared)


def test_a_foreground_runs_cgroups_are_created_outside_its_transaction(
        store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    monkeypatch.setattr(limits, "prepare", _recording(store, seen, limits.prepare))
    claim = execution.submit_and_claim(
        store, actions.SubmitSpec(command=["true"], resources={"nice": 5}), "fg", "test")
    try:
        assert seen == [False]
        assert claim.prepared is not None and claim.prepared.name == f"{claim.action_id}-1"
    finally:
        if claim.prepared is not None:
            limits.cleanup(claim.prepared)
