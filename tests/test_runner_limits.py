"""Resource limits through the worker, on the real kernel; crash evidence and on_interrupt."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sp.agents.config import Resources
from sp.agents.units import Size
from sp.commands import actions, agents, execution
from sp.commands.home import Home
from sp.host import limits
from sp.ledger import events as ev
from sp.ledger.clock import ManualClock
from sp.ledger.store import EventStore
from sp.projections import queries
from sp.runner import reaper
from sp.runner.worker import Worker
from tests.conftest import Sp

pytestmark = pytest.mark.timeout(60)

HOG = "x = bytearray(200 * 1024 * 1024); print('allocated')"


def _memory_cgroup_works() -> str | None:
    try:
        p = limits.prepare(Resources(memory_limit=Size(64 << 20)), "probe",
                           required=True)
    except limits.LimitsUnavailableError as e:
        return str(e)
    limits.cleanup(p)
    return None


def _agent(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_memory_limit_hit_is_resource_exhaustion(store: EventStore, home: Home,
                                                 tmp_path: Path) -> None:
    why = _memory_cgroup_works()
    if why:
        pytest.skip(f"no writable memory cgroup here: {why}")
    agents.apply(store, _agent(tmp_path, f"""
id: iot
limits: required
actions:
  hog:
    command: [{sys.executable}, -c, "{HOG}"]
    resources: {{memory_limit: 64M, tasks_max: 50, nice: 5}}
"""))
    (aid,) = actions.submit(store, [agents.task_spec(agents.get(store, "iot"), "hog")])
    Worker(store, home).run(until_idle=True)
    row = queries.get_action(store, aid)
    assert row["state"] == "failed" and row["error_kind"] == "resource_exhaustion"
    assert "memory limit 64.0 MiB" in row["error"]
    started = [r.event for r in store.read_stream(aid) if isinstance(r.event, ev.ActionStarted)]
    enforced = started[0].limits
    assert enforced["memory_limit_bytes"] == 64 << 20 and enforced["pids_max"] == 50
    assert enforced["nice"] == 5 and "io_weight" not in enforced
    failed = store.read_stream(aid)[-1].event
    assert failed.usage["peak_rss_bytes"] > 32 << 20  # type: ignore[union-attr]
    attempts = store.query("SELECT peak_rss_bytes, cpu_user_ms FROM metrics_attempts "
                           "WHERE action_id = ?", (aid,))
    assert attempts[0][0] == failed.usage["peak_rss_bytes"]  # type: ignore[union-attr]
    assert not any(Path(d).exists() for d in enforced["cgroups"].values())  # cleaned up


def test_required_limits_that_cannot_be_enforced_refuse_to_run(store: EventStore, home: Home,
                                                               tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    agents.apply(store, _agent(tmp_path, f"""
id: strict
limits: required
actions:
  weighted:
    command: [touch, {marker}]
    resources: {{io_weight: 50}}
"""))
    (aid,) = actions.submit(store, [agents.task_spec(agents.get(store, "strict"), "weighted")])
    Worker(store, home).run(until_idle=True)
    row = queries.get_action(store, aid)
    if row["state"] == "completed":
        pytest.skip("io_weight is enforceable on this machine (a bfq disk)")
    assert row["state"] == "failed" and row["error_kind"] == "limits_unavailable"
    assert "io_weight" in row["error"]
    assert not marker.exists()  # refused, never run unbounded


def test_bad_limit_values_are_refused_at_apply(sp: Sp, tmp_path: Path) -> None:
    path = _agent(tmp_path, "id: x\nactions:\n  t:\n    command: [\"true\"]\n"
                            "    resources: {nice: 40}\n")
    result = sp("agent", "apply", str(path), ok=False)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {path}: $.actions.t.resources: ")
    assert "nice" in result.stderr


def test_heartbeat_missing_is_detected(store: EventStore, clock: ManualClock) -> None:
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=["true"], retries=1)])
    execution.claim(store, aid, "worker:stuck")  # our own pid: the owner looks alive
    assert reaper.recover(store) == []
    clock.advance(execution.LEASE_TTL_MS + 60_000)  # no heartbeat for 90 s
    (r,) = reaper.recover(store)
    assert r.outcome == "interrupted" and r.reason.startswith("heartbeat_missing")
    row = queries.get_action(store, aid)
    assert row["state"] == "interrupted" and row["error"].startswith("heartbeat_missing")


@pytest.mark.parametrize(("then", "state", "claimable"), [
    ("resume", "interrupted", True), ("rerun", "interrupted", True), ("hold", "interrupted", False)
])
def test_on_interrupt_policies(store: EventStore, tmp_path: Path, then: str, state: str,
                               claimable: bool) -> None:
    spec = actions.SubmitSpec(command=["true"], retries=2, on_interrupt=then)
    (aid,) = actions.submit(store, [spec])
    execution.claim(store, aid, "worker:gone")
    actions.checkpoint(store, aid, {"cursor": 7}, step=0)
    with store.transaction() as tx:
        tx.execute("DELETE FROM leases")  # the owner vanished without a trace
    (r,) = reaper.recover(store)
    assert r.outcome == ("held" if then == "hold" else "interrupted")
    row = queries.get_action(store, aid)
    assert row["state"] == state and row["held"] == (then == "hold")
    c = execution.claim_next(store, "w2")
    if not claimable:
        assert c is None
        actions.restart(store, aid)  # a person releases it
        c = execution.claim_next(store, "w2")
    assert c is not None and c.action_id == aid
    if then == "rerun":
        assert c.checkpoint is None and c.resume_step is None
    elif then == "resume":
        assert json.loads(c.checkpoint or "null") == {"cursor": 7} and c.resume_step == 1
