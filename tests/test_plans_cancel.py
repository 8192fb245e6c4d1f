"""``sp plan cancel`` (with and without ``--rollback``) and the restart of an action of a finished
plan (the plan reopens, the cancelled dependents run again), with real processes; replay gives
the same projections."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from sp.commands import actions, execution, plans
from sp.commands.home import Home
from sp.ledger.store import EventStore
from sp.projections import engine
from sp.runner.worker import Worker
from tests.conftest import Sp

pytestmark = pytest.mark.timeout(120)


def _plan(tmp_path: Path, body: str, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def _run(store: EventStore, home: Home, concurrency: int = 2) -> None:
    Worker(store, home, concurrency=concurrency).run(until_idle=True)


def _states(store: EventStore, plan_id: str) -> dict[str, Any]:
    doc = plans.status(store, plan_id)
    return {"plan": doc["state"], **{s["step"]: s["state"] for s in doc["actions"]}}


def _events(store: EventStore, plan_id: str) -> list[str]:
    return [h["event"] for h in plans.status(store, plan_id)["history"]]


def _ids(store: EventStore, plan_id: str) -> dict[str, str]:
    return {s["step"]: s["action_id"] for s in plans.status(store, plan_id)["actions"]}


def _replay_matches(store: EventStore) -> None:
    _, diff = engine.check(store)
    assert diff is None, diff


def _ledger(home: Home) -> bytes:
    return Path(home.ledger_path).read_bytes()


CHAIN = """
name: chain
on_failure: rollback
actions:
  - id: one
    type: shell
    payload: {command: "echo one > one.txt", shell: true}
    rollback: {command: "rm one.txt", shell: true}
  - id: slow
    type: shell
    payload: {command: "echo $$ > slow.pid; exec sleep 60", shell: true}
    depends_on: [one]
  - {id: last, type: shell, payload: {command: "echo last > last.txt", shell: true},
     depends_on: [slow]}
"""


def test_cancel_stops_the_running_action_and_cancels_the_rest(
        sp: Sp, tmp_path: Path) -> None:
    plan_id = sp.proc("plan", "apply", str(_plan(tmp_path, CHAIN))).stdout.strip()
    worker = sp.popen("worker", "--until-idle")
    pidfile = tmp_path / "slow.pid"
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    p = sp.proc("plan", "cancel", plan_id[:6], "--reason", "wrong target",
                "--format", "json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["state"] == "cancelling" and len(out["cancelled"]) == 2
    assert worker.wait(timeout=30) == 0
    assert time.monotonic() - started < 20  # the sleep was stopped, not waited for
    status = json.loads(sp.proc("plan", "status", plan_id, "--format", "json").stdout)
    assert status["state"] == "cancelled"
    assert status["reason"] == "cancelled: wrong target"
    assert {s["step"]: s["state"] for s in status["actions"]} == {
        "one": "completed", "slow": "cancelled", "last": "cancelled"}
    assert (tmp_path / "one.txt").exists()  # on_failure: rollback does not apply to a cancel
    assert not (tmp_path / "last.txt").exists()
    assert [h["event"] for h in status["history"]] == [
        "plan.applied", "plan.started", "plan.cancel_requested", "plan.cancelled"]
    done = status["history"][-1]["details"]
    assert done["completed"] == ["one"] and done["cancelled"] == ["slow", "last"]
    # a cancelled plan can still be rolled back by hand
    assert sp.proc("rollback", plan_id).returncode == 0
    assert sp.proc("worker", "--until-idle").returncode == 0
    assert not (tmp_path / "one.txt").exists()
    status = json.loads(sp.proc("plan", "status", plan_id, "--format", "json").stdout)
    assert status["state"] == "rolled_back"
    assert sp.proc("replay", "--check").returncode == 0


def test_cancel_with_rollback_undoes_once_nothing_runs(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    plan_id = plans.apply(store, _plan(tmp_path, CHAIN.replace("on_failure: rollback",
                                                               "on_failure: stop")))
    claims = {c.spec.name: c for c in execution.claim_many(store, "test-owner", 1)}
    (tmp_path / "one.txt").write_text("one\n")  # what "one" does, done by its claimant
    execution.finish(store, claims["chain/one"], execution.Outcome(exit_code=0, duration_ms=5))
    (slow,) = execution.claim_many(store, "test-owner", 1)
    state, touched = plans.cancel(store, plan_id, "", then_rollback=True)
    assert state == "cancelling" and touched == [slow.action_id, _ids(store, plan_id)["last"]]
    assert _states(store, plan_id) == {"plan": "cancelling", "one": "completed",
                                       "slow": "executing", "last": "cancelled"}
    # the runner saw the cancel request and stopped it: the rollback run starts
    execution.finish(store, slow, execution.Outcome(exit_code=-15, duration_ms=5))
    assert _states(store, plan_id)["plan"] == "rolling_back"
    _run(store, home)
    assert _states(store, plan_id) == {"plan": "rolled_back", "one": "rolled_back",
                                       "slow": "cancelled", "last": "cancelled"}
    assert not (tmp_path / "one.txt").exists()
    assert _events(store, plan_id) == ["plan.applied", "plan.started", "plan.cancel_requested",
                                       "plan.rollback_started", "plan.rolled_back"]
    assert plans.status(store, plan_id)["history"][3]["details"]["reason"] == "cancel"
    _replay_matches(store)


def test_cancel_of_a_plan_that_is_not_running_is_refused_and_writes_nothing(
        store: EventStore, home: Home, tmp_path: Path, sp: Sp) -> None:
    plan_id = plans.apply(store, _plan(tmp_path, """
actions:
  - {id: only, type: shell, payload: {command: ["true"]}}
"""))
    state, touched = plans.cancel(store, plan_id)  # nothing runs yet: settled at once
    assert state == "cancelled" and len(touched) == 1
    before = _ledger(home)
    result = sp("plan", "cancel", plan_id, ok=False)
    assert result.exit_code == 2
    assert result.stderr == f"Error: plan {plan_id} is cancelled: cannot cancel it\n"
    assert sp("plan", "cancel", "nope", ok=False).stderr == "Error: no plan 'nope'\n"
    assert _ledger(home) == before


FLAKY = """
name: flaky
on_failure: {on_failure}
actions:
  - {{id: a, type: shell, payload: {{command: ["true"]}}}}
  - {{id: bad, type: shell, payload: {{command: [test, -f, ok.flag]}}, depends_on: [a]}}
  - {{id: side, type: shell, payload: {{command: "sleep 0.5; echo side >> side.txt",
     shell: true}}, depends_on: [a]}}
  - {{id: after_bad, type: shell, payload: {{command: "echo x >> after.txt", shell: true}},
     depends_on: [bad]}}
  - {{id: last, type: shell, payload: {{command: ["true"]}}, depends_on: [after_bad, side]}}
"""


def test_restart_of_the_failed_action_reopens_the_plan_until_it_completes(
        store: EventStore, home: Home, tmp_path: Path, sp: Sp) -> None:
    plan_id = plans.apply(store, _plan(tmp_path, FLAKY.format(on_failure="stop")))
    _run(store, home)
    assert _states(store, plan_id) == {"plan": "failed", "a": "completed", "bad": "failed",
                                       "side": "cancelled", "after_bad": "cancelled",
                                       "last": "cancelled"}
    ids = _ids(store, plan_id)
    (tmp_path / "ok.flag").write_text("")
    result = sp("restart", ids["bad"][:8])
    assert result.stderr.splitlines() == [f"{ids['bad']}: queued"] + [
        f"{ids[s]}: queued (waited on {ids['bad']})" for s in ("side", "after_bad", "last")]
    assert _states(store, plan_id) == {"plan": "running", "a": "completed", "bad": "queued",
                                       "side": "queued", "after_bad": "queued",
                                       "last": "queued"}
    reopened = plans.status(store, plan_id)["history"][-1]
    assert reopened["event"] == "plan.reopened"
    assert reopened["details"]["step"] == "bad"
    assert sorted(reopened["details"]["requeued"]) == sorted(
        ids[s] for s in ("side", "after_bad", "last"))
    _run(store, home)
    assert set(_states(store, plan_id).values()) == {"completed"}
    assert (tmp_path / "after.txt").read_text() == "x\n"
    assert _events(store, plan_id) == ["plan.applied", "plan.started", "plan.stop_requested",
                                       "plan.failed", "plan.reopened", "plan.completed"]
    _replay_matches(store)
    before = {k: store.query(f"SELECT * FROM {k} ORDER BY 1, 2")
              for k in ("plans", "plan_steps")}
    engine.rebuild(store)
    assert {k: store.query(f"SELECT * FROM {k} ORDER BY 1, 2")
            for k in ("plans", "plan_steps")} == before


def test_restart_in_a_continuing_plan_requeues_only_its_dependents(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    plan_id = plans.apply(store, _plan(tmp_path, FLAKY.format(on_failure="continue")))
    _run(store, home)
    assert _states(store, plan_id) == {"plan": "failed", "a": "completed", "bad": "failed",
                                       "side": "completed", "after_bad": "cancelled",
                                       "last": "cancelled"}
    ids = _ids(store, plan_id)
    (tmp_path / "ok.flag").write_text("")
    state, requeued = actions.restart_with(store, ids["bad"])
    assert state.value == "queued"
    assert requeued == [ids["after_bad"], ids["last"]]
    _run(store, home)
    assert set(_states(store, plan_id).values()) == {"completed"}
    assert (tmp_path / "side.txt").read_text() == "side\n"  # it ran once, not again
    _replay_matches(store)


def test_restarts_that_cannot_run_are_refused_and_write_nothing(
        store: EventStore, home: Home, tmp_path: Path, sp: Sp) -> None:
    plan_id = plans.apply(store, _plan(tmp_path, FLAKY.format(on_failure="rollback")))
    _run(store, home)
    ids = _ids(store, plan_id)
    assert _states(store, plan_id)["plan"] == "rolled_back"
    before = _ledger(home)
    result = sp("restart", ids["bad"], ok=False)
    assert result.exit_code == 2
    assert result.stderr == f"Error: plan {plan_id} is rolled_back: cannot reopen it\n"
    assert _ledger(home) == before

    other = plans.apply(store, _plan(tmp_path, FLAKY.format(on_failure="continue"), "b.yaml"))
    _run(store, home)
    ids = _ids(store, other)
    before = _ledger(home)
    result = sp("restart", ids["after_bad"], ok=False)
    assert result.exit_code == 2
    assert result.stderr == (f"Error: cannot restart {ids['after_bad']}: it depends on "
                             f"{ids['bad']}, which is failed; restart that first\n")
    assert _ledger(home) == before


def test_restart_in_a_cancelled_plan_reopens_it(store: EventStore, home: Home,
                                                tmp_path: Path) -> None:
    plan_id = plans.apply(store, _plan(tmp_path, """
name: two
actions:
  - {id: first, type: shell, payload: {command: ["true"]}}
  - {id: second, type: shell, payload: {command: ["true"]}, depends_on: [first]}
  - {id: alone, type: shell, payload: {command: ["true"]}}
"""))
    assert plans.cancel(store, plan_id, "not now")[0] == "cancelled"
    ids = _ids(store, plan_id)
    _, requeued = actions.restart_with(store, ids["first"])
    assert requeued == [ids["second"]]  # "alone" stays cancelled: the person cancelled it
    assert _states(store, plan_id)["plan"] == "running"
    _run(store, home)
    assert _states(store, plan_id) == {"plan": "failed", "first": "completed",
                                       "second": "completed", "alone": "cancelled"}
    actions.restart(store, ids["alone"])
    _run(store, home)
    assert _states(store, plan_id)["plan"] == "completed"
    assert _events(store, plan_id) == [
        "plan.applied", "plan.started", "plan.cancel_requested", "plan.cancelled",
        "plan.reopened", "plan.failed", "plan.reopened", "plan.completed"]
    _replay_matches(store)
