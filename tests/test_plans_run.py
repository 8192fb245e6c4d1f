"""Plans with real processes: a diamond in parallel, on_failure stop/continue/rollback, rollback
runs (reverse and forward, all-or-nothing and best-effort) with real compensations, dry runs
that write nothing, kill -9 then replay, and projections identical after replay."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from sp.commands import actions, plans
from sp.commands.home import Home
from sp.ledger.store import EventStore
from sp.runner.worker import Worker, WorkerSummary
from tests.conftest import Sp

pytestmark = pytest.mark.timeout(120)


def _plan(tmp_path: Path, body: str, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def _run(store: EventStore, home: Home, concurrency: int = 2) -> WorkerSummary:
    return Worker(store, home, concurrency=concurrency).run(until_idle=True)


def _states(store: EventStore, plan_id: str) -> dict[str, Any]:
    doc = plans.status(store, plan_id)
    return {"plan": doc["state"], **{s["step"]: s["state"] for s in doc["actions"]}}


def _plan_events(store: EventStore, plan_id: str) -> list[str]:
    return [h["event"] for h in plans.status(store, plan_id)["history"]]


def _ledger(home: Home) -> bytes:
    return Path(home.ledger_path).read_bytes()


def _ns(path: Path) -> int:
    return int(path.read_text())


def _timed(step: str, seconds: float, deps: str = "") -> str:
    return (f"  - id: {step}\n    type: shell\n    payload: {{shell: true, command: "
            f"\"date +%s%N > {step}.start; sleep {seconds}; date +%s%N > {step}.end\"}}\n"
            + (f"    depends_on: [{deps}]\n" if deps else ""))


def test_diamond_runs_in_order_with_the_middle_in_parallel(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    path = _plan(tmp_path, "name: diamond\nactions:\n" + _timed("a", 0.05)
                 + _timed("b", 0.8, "a") + _timed("c", 0.8, "a") + _timed("d", 0.05, "b, c"))
    plan_id = plans.apply(store, path)
    assert _states(store, plan_id) == {"plan": "running", "a": "queued", "b": "queued",
                                       "c": "queued", "d": "queued"}
    summary = _run(store, home, concurrency=4)
    assert summary.completed == 4 and summary.peak_running == 2
    t = {f"{s}.{e}": _ns(tmp_path / f"{s}.{e}") for s in "abcd" for e in ("start", "end")}
    assert t["a.end"] <= t["b.start"] and t["a.end"] <= t["c.start"]
    assert t["b.start"] < t["c.end"] and t["c.start"] < t["b.end"]  # b and c overlapped
    assert max(t["b.end"], t["c.end"]) <= t["d.start"]
    assert _states(store, plan_id) == {"plan": "completed", "a": "completed",
                                       "b": "completed", "c": "completed", "d": "completed"}
    assert _plan_events(store, plan_id) == ["plan.applied", "plan.started", "plan.completed"]
    shown = plans.show(store, plan_id)
    assert shown.parallel == [["b", "c"]] and shown.unknown == []
    # the critical path: a, one of b and c, d (about 0.9 s), not the sum of all (1.7 s)
    assert shown.estimated_ms is not None and 850 <= shown.estimated_ms < 1500
    assert shown.critical_path in (["a", "b", "d"], ["a", "c", "d"])


FAILING = """
name: {name}
on_failure: {on_failure}
actions:
  - {{id: a, type: shell, payload: {{command: ["true"]}}}}
  - {{id: bad, type: shell, payload: {{command: "sleep 0.3; exit 4", shell: true}},
     depends_on: [a]}}
  - {{id: slow, type: shell, payload: {{command: "sleep {slow}", shell: true}},
     depends_on: [a]}}
  - {{id: after_bad, type: shell, payload: {{command: [echo]}}, depends_on: [bad]}}
  - {{id: after_slow, type: shell, payload: {{command: [echo]}}, depends_on: [slow]}}
"""


def test_on_failure_stop_cancels_the_rest(store: EventStore, home: Home,
                                          tmp_path: Path) -> None:
    plan_id = plans.apply(store, _plan(tmp_path, FAILING.format(
        name="stopper", on_failure="stop", slow=30)))
    started = time.monotonic()
    _run(store, home, concurrency=2)
    assert time.monotonic() - started < 20  # slow was stopped, not waited for
    assert _states(store, plan_id) == {
        "plan": "failed", "a": "completed", "bad": "failed", "slow": "cancelled",
        "after_bad": "cancelled", "after_slow": "cancelled"}
    doc = plans.status(store, plan_id)
    assert doc["reason"] == "failed: bad; cancelled: slow, after_bad, after_slow"
    assert _plan_events(store, plan_id) == ["plan.applied", "plan.started",
                                            "plan.stop_requested", "plan.failed"]
    stop = doc["history"][2]["details"]
    assert stop["step"] == "bad" and stop["error"] == "exited with code 4"
    assert stop["then"] == "stop"


def test_on_failure_continue_lets_independent_branches_finish(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    plan_id = plans.apply(store, _plan(tmp_path, FAILING.format(
        name="goon", on_failure="continue", slow=0.6)))
    _run(store, home, concurrency=2)
    assert _states(store, plan_id) == {
        "plan": "failed", "a": "completed", "bad": "failed", "slow": "completed",
        "after_bad": "cancelled", "after_slow": "completed"}
    assert _plan_events(store, plan_id) == ["plan.applied", "plan.started", "plan.failed"]


def _undo(step: str, log: str = "undo.log") -> str:
    return f"{{command: \"rm {step}.txt && echo undo-{step} >> {log}\", shell: true}}"


ROLLBACK = """
name: deploy
on_failure: rollback
rollback: {{order: {order}, strategy: all-or-nothing}}
actions:
  - id: one
    type: shell
    payload: {{command: "echo one > one.txt", shell: true}}
    rollback: {undo_one}
  - id: side
    type: shell
    payload: {{command: "echo side > side.txt", shell: true}}
  - id: two
    type: shell
    payload: {{command: "printf two > two.txt", shell: true}}
    rollback: {undo_two}
    depends_on: [one]
  - id: three
    type: shell
    payload: {{command: [sh, -c, "exit 3"]}}
    depends_on: [two]
  - id: four
    type: shell
    payload: {{command: [echo, four]}}
    depends_on: [three]
"""


@pytest.mark.parametrize(("order", "undone"), [("reverse", ["undo-two", "undo-one"]),
                                               ("forward", ["undo-one", "undo-two"])])
def test_on_failure_rollback_undoes_completed_actions_in_order(
        store: EventStore, home: Home, tmp_path: Path, sp: Sp, order: str,
        undone: list[str]) -> None:
    plan_id = plans.apply(store, _plan(tmp_path, ROLLBACK.format(
        order=order, undo_one=_undo("one"), undo_two=_undo("two"))))
    _run(store, home, concurrency=1)
    assert (tmp_path / "undo.log").read_text().split() == undone
    assert not (tmp_path / "one.txt").exists() and not (tmp_path / "two.txt").exists()
    assert (tmp_path / "side.txt").exists()  # no compensation: left as is
    assert _states(store, plan_id) == {
        "plan": "rolled_back", "one": "rolled_back", "side": "completed",
        "two": "rolled_back", "three": "failed", "four": "cancelled"}
    assert _plan_events(store, plan_id) == [
        "plan.applied", "plan.started", "plan.stop_requested", "plan.rollback_started",
        "plan.rolled_back"]
    doc = plans.status(store, plan_id)
    (run,) = doc["rollback"]
    assert [s["step"] for s in run["steps"]] == (["two", "one"] if order == "reverse"
                                                 else ["one", "two"])
    assert {s["compensation_state"] for s in run["steps"]} == {"completed"}
    # the compensations are actions: audited like any other
    comp = run["steps"][0]["compensation_id"]
    audit = json.loads(sp("audit", comp, "--format", "json").stdout)
    assert [e["event"] for e in audit["events"]] == [
        "action.submitted", "action.queued", "action.started", "action.completed"]
    one = doc["actions"][0]["action_id"]
    events = [e["event"] for e in json.loads(sp("audit", one, "--format", "json").stdout)
              ["events"]]
    assert events[-3:] == ["action.completed", "action.rollback_started", "action.rolled_back"]
    assert sp("replay", "--check").stdout.startswith("ok:")


CHAIN = """
name: chain
rollback: {{strategy: {strategy}}}
actions:
  - {{id: a, type: shell, payload: {{command: "echo a > a.txt", shell: true}},
     rollback: {undo_a}}}
  - {{id: b, type: shell, payload: {{command: "echo b > b.txt", shell: true}},
     rollback: {{command: "echo undo-b-failed >> undo.log; exit 1", shell: true}},
     depends_on: [a]}}
  - {{id: c, type: shell, payload: {{command: "echo c > c.txt", shell: true}},
     rollback: {undo_c}, depends_on: [b]}}
"""


def _rollback_json(sp: Sp, plan_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(sp("rollback", plan_id, "--dry-run", "--format",
                                        "json").stdout)
    return doc


@pytest.mark.parametrize("strategy", ["all-or-nothing", "best-effort"])
def test_rollback_strategies_with_a_failing_compensation(
        store: EventStore, home: Home, tmp_path: Path, sp: Sp, strategy: str) -> None:
    plan_id = plans.apply(store, _plan(tmp_path, CHAIN.format(
        strategy=strategy, undo_a=_undo("a"), undo_c=_undo("c"))))
    _run(store, home)
    assert _states(store, plan_id)["plan"] == "completed"

    before = _ledger(home)
    dry = sp("rollback", plan_id, "--dry-run")
    assert _ledger(home) == before  # a dry run writes nothing
    lines = dry.stdout.splitlines()
    assert lines[0] == (f"rollback of plan {plan_id} (chain, completed): reverse, {strategy}"
                        " (dry run: nothing written)")
    assert [ln.split()[:2] for ln in lines[2:]] == [["1", "c"], ["2", "b"], ["3", "a"]]
    assert lines[2].endswith("/bin/sh -c 'rm c.txt && echo undo-c >> undo.log'")
    planned = _rollback_json(sp, plan_id)

    ids = sp("rollback", plan_id[:6]).stdout.split()
    assert len(ids) == 3
    states = _states(store, plan_id)
    assert states["plan"] == "rolling_back" and states["c"] == "rolling_back"
    assert states["b"] == states["a"] == "completed"  # not their turn yet
    _run(store, home, concurrency=3)
    log = (tmp_path / "undo.log").read_text().split()
    states = _states(store, plan_id)
    failed = plans.status(store, plan_id)["history"][-1]
    assert failed["event"] == "plan.rollback_failed"
    a_id = plans.status(store, plan_id)["actions"][0]["action_id"]
    b_id = plans.status(store, plan_id)["actions"][1]["action_id"]
    if strategy == "all-or-nothing":
        assert log == ["undo-c", "undo-b-failed"]
        assert (tmp_path / "a.txt").exists() and (tmp_path / "b.txt").exists()
        assert states == {"plan": "rollback_failed", "a": "completed",
                          "b": "rollback_failed", "c": "rolled_back"}
        assert failed["details"]["failed"] == [b_id]
        assert failed["details"]["not_attempted"] == [a_id]
        # what is still completed can be rolled back again
        again = sp("rollback", plan_id).stdout.split()
        assert len(again) == 1
        _run(store, home)
        assert not (tmp_path / "a.txt").exists()
        assert _states(store, plan_id) == {"plan": "rolled_back", "a": "rolled_back",
                                           "b": "rollback_failed", "c": "rolled_back"}
    else:
        assert log == ["undo-c", "undo-b-failed", "undo-a"]
        assert not (tmp_path / "a.txt").exists() and (tmp_path / "b.txt").exists()
        assert states == {"plan": "rollback_failed", "a": "rolled_back",
                          "b": "rollback_failed", "c": "rolled_back"}
        assert failed["details"]["failed"] == [b_id]
        assert "not_attempted" not in failed["details"]
        comp_b = plans.status(store, plan_id)["rollback"][0]["steps"][1]
        assert comp_b["compensation_state"] == "skipped"
    assert [s["action_id"] for s in planned["steps"]][::-1] == [
        s["action_id"] for s in plans.status(store, plan_id)["actions"]]

    # derived from events only: identical after a rebuild, and the rebuild is identical
    snapshot = _rollback_json(sp, plan_id)
    status = plans.status(store, plan_id)
    assert sp("replay").exit_code == 0
    assert _rollback_json(sp, plan_id) == snapshot
    assert plans.status(store, plan_id) == status
    assert sp("replay", "--check").stdout.startswith("ok:")
    assert sp("verify").stdout.startswith("ok:")


def test_rollback_of_a_running_plan_is_refused_and_writes_nothing(
        store: EventStore, home: Home, tmp_path: Path, sp: Sp) -> None:
    plan_id = plans.apply(store, _plan(tmp_path, CHAIN.format(
        strategy="best-effort", undo_a=_undo("a"), undo_c=_undo("c"))))
    before = _ledger(home)
    result = sp("rollback", plan_id, ok=False)
    assert result.exit_code == 2
    assert result.stderr == f"Error: plan {plan_id} is running: cannot rollback it\n"
    assert _ledger(home) == before
    assert sp("rollback", "nope", ok=False).stderr == "Error: no plan 'nope'\n"


def test_cancel_of_a_plan_action_settles_the_plan(store: EventStore, home: Home,
                                                  tmp_path: Path) -> None:
    plan_id = plans.apply(store, _plan(tmp_path, """
actions:
  - {id: only, type: shell, payload: {command: ["true"]}}
  - {id: then, type: shell, payload: {command: ["true"]}, depends_on: [only]}
"""))
    first = plans.status(store, plan_id)["actions"][0]["action_id"]
    actions.cancel(store, first, "not today")
    assert _states(store, plan_id) == {"plan": "failed", "only": "cancelled",
                                       "then": "cancelled"}


def test_a_fallback_takes_the_failed_actions_place(store: EventStore, home: Home,
                                                   tmp_path: Path) -> None:
    plan_id = plans.apply(store, _plan(tmp_path, """
on_failure: rollback
actions:
  - id: main
    type: shell
    payload: {command: [sh, -c, "exit 1"]}
    recovery: fallback
    fallback: {type: shell, payload: {command: "echo fb > fb.txt", shell: true}}
  - {id: next, type: shell, payload: {command: [cat, fb.txt]}, depends_on: [main]}
"""))
    _run(store, home)
    doc = plans.status(store, plan_id)
    assert _states(store, plan_id) == {"plan": "completed", "main": "failed",
                                       "next": "completed"}
    assert [o["state"] for o in doc["other_actions"]] == ["completed"]


@pytest.mark.slow
def test_kill_9_mid_plan_then_replay_rolls_back(sp: Sp, tmp_path: Path) -> None:
    path = _plan(tmp_path, f"""
name: crashy
on_failure: rollback
actions:
  - id: one
    type: shell
    payload: {{command: "echo one > one.txt", shell: true}}
    rollback: {_undo("one")}
  - id: slow
    type: shell
    payload: {{command: "echo $$ > slow.pid; exec sleep 60", shell: true}}
    depends_on: [one]
""")
    plan_id = sp.proc("plan", "apply", str(path)).stdout.strip()
    worker = sp.popen("worker", "--until-idle")
    pidfile = tmp_path / "slow.pid"
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    status = json.loads(sp.proc("plan", "status", plan_id, "--format", "json").stdout)
    assert status["state"] == "running"

    replay = sp.proc("replay")
    assert replay.returncode == 0, replay.stderr
    status = json.loads(sp.proc("plan", "status", plan_id, "--format", "json").stdout)
    assert status["state"] == "rolling_back"
    assert [s["state"] for s in status["actions"]] == ["rolling_back", "failed"]
    dry = json.loads(sp.proc("rollback", plan_id, "--dry-run", "--format", "json").stdout)
    assert [s["state"] for s in dry["steps"]] == ["rolling_back"]

    p = sp.proc("worker", "--until-idle")
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "one.txt").exists()
    status = json.loads(sp.proc("plan", "status", plan_id, "--format", "json").stdout)
    assert status["state"] == "rolled_back"
    assert [h["event"] for h in status["history"]] == [
        "plan.applied", "plan.started", "plan.stop_requested", "plan.rollback_started",
        "plan.rolled_back"]
    assert sp.proc("replay", "--check").returncode == 0


def test_a_stopping_plan_waits_for_its_running_actions(store: EventStore, home: Home,
                                                       tmp_path: Path, sp: Sp) -> None:
    from sp.commands import execution

    plan_id = plans.apply(store, _plan(tmp_path, """
on_failure: rollback
actions:
  - {id: a, type: shell, payload: {command: ["true"]}, rollback: [echo, undo]}
  - {id: b, type: shell, payload: {command: ["true"]}}
"""))
    claims = {c.spec.name: c for c in execution.claim_many(store, "test-owner", 2)}
    failed = execution.Outcome(exit_code=1, duration_ms=5, error_kind="exit_code",
                               error="exited with code 1", retryable=False)
    execution.finish(store, claims["plan/b"], failed)
    assert _states(store, plan_id) == {"plan": "stopping", "a": "executing", "b": "failed"}
    assert plans.status(store, plan_id)["history"][-1]["details"]["cancelled"] == [
        claims["plan/a"].action_id]
    before = _ledger(home)
    result = sp("rollback", plan_id, ok=False)
    assert result.exit_code == 2
    assert result.stderr == (f"Error: plan {plan_id} is stopping: 1 of its actions have not "
                             f"finished; wait for them (sp plan status {plan_id})\n")
    assert _ledger(home) == before
    # a finishes (its runner saw the cancel request): nothing completed, so nothing to undo
    execution.finish(store, claims["plan/a"], execution.Outcome(exit_code=0, duration_ms=5))
    assert _states(store, plan_id) == {"plan": "rolled_back", "a": "cancelled", "b": "failed"}
    # the reactor is idempotent: asking again decides nothing new
    from sp.commands import reactor

    n = len(store.read_stream(f"plan:{plan_id}"))
    with store.transaction() as tx:
        reactor.settle(tx, plan_id, "test")
    assert len(store.read_stream(f"plan:{plan_id}")) == n
