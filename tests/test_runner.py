"""The runner with real processes: steps and resume, retries on an injected clock, recovery
strategies, failure detection, concurrency, and racing workers."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from sp.commands import actions, agents, execution
from sp.commands.home import Home
from sp.host.wake import fifo_path
from sp.ledger.clock import ManualClock
from sp.ledger.store import EventStore
from sp.ledger.verify import verify
from sp.projections import queries
from sp.runner.worker import Worker
from tests.conftest import Sp
from tests.waiting import asleep_in, holds_open, wait_until

pytestmark = pytest.mark.timeout(120)


def _agent(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(body)
    return path


def _events(store: EventStore, action_id: str) -> list[str]:
    return [r.type for r in store.read_stream(action_id)]


def _state(store: EventStore, action_id: str) -> dict[str, Any]:
    return queries.get_action(store, action_id)


STEPS = """
id: research-001
actions:
  daily_arxiv_scan:
    command: [sh, -c, 'echo "$1" >> {out}; [ "$1" != "{fail_at}" ] || [ -e {ok} ]', step]
    steps: [fetch_new_papers, extract_abstracts, classify_relevance, summarize_findings]
    retry: {{max_attempts: 3, backoff: linear, jitter: false}}
"""


def test_steps_resume_from_checkpoint_without_redoing_finished_steps(
        store: EventStore, home: Home, tmp_path: Path, clock: ManualClock) -> None:
    out, ok = tmp_path / "ran.txt", tmp_path / "ok"
    agents.apply(store, _agent(tmp_path, STEPS.format(out=out, ok=ok,
                                                      fail_at="classify_relevance")))
    spec = agents.task_spec(agents.get(store, "research-001"), "daily_arxiv_scan",
                            checkpoint_enabled=True)
    (aid,) = actions.submit(store, [spec])
    Worker(store, home).run(until_idle=True, wait_retries=False)
    row = _state(store, aid)
    assert row["state"] == "retrying" and row["checkpoint_step"] == 1
    assert row["retry_at_ms"] == clock.now_ms() + 5000  # linear: 5 s x attempt 1
    assert execution.claim_next(store, "someone") is None  # no worker sleeps on it
    ok.touch()
    clock.advance(5000)
    Worker(store, home).run(until_idle=True, wait_retries=False)
    assert _state(store, aid)["state"] == "completed"
    assert out.read_text().split() == [
        "fetch_new_papers", "extract_abstracts", "classify_relevance",  # attempt 1
        "classify_relevance", "summarize_findings"]  # attempt 2 resumed at step 2
    types = _events(store, aid)
    assert types.count("action.completed") == 1 and types.count("action.checkpointed") == 4
    assert verify(store).ok


def test_exponential_backoff_on_the_injected_clock(store: EventStore, home: Home,
                                                   clock: ManualClock) -> None:
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=["false"], retries=3)])
    waits = []
    for _ in range(3):
        before = clock.now_ms()
        Worker(store, home).run(until_idle=True, wait_retries=False)
        row = _state(store, aid)
        assert row["state"] == "retrying"
        waits.append(row["retry_at_ms"] - before)
        clock.advance(waits[-1] - 1)
        assert execution.ready_count(store) == 0  # not a millisecond early
        clock.advance(1)
    assert waits == [2000, 4000, 8000]  # 2**attempt seconds
    Worker(store, home).run(until_idle=True, wait_retries=False)
    row = _state(store, aid)
    assert row["state"] == "failed" and row["attempts"] == 4


def test_backoff_cap_and_jitter() -> None:
    assert execution.backoff_ms("exponential", 20) == 300_000  # the seed's 5-minute cap
    assert execution.backoff_ms("exponential", 3, jitter=1.0) == 10_000
    assert execution.backoff_ms("linear", 2, cap_ms=7000) == 7000


def test_non_retryable_exit_code_skips_retries(store: EventStore, home: Home) -> None:
    spec = actions.SubmitSpec(command=["sh", "-c", "exit 2"], retries=5,
                              non_retryable_exit_codes=[2])
    (aid,) = actions.submit(store, [spec])
    Worker(store, home).run(until_idle=True, wait_retries=False)
    row = _state(store, aid)
    assert row["state"] == "failed" and row["attempts"] == 1


FALLBACK = """
id: a1
actions:
  primary:
    command: [sh, -c, 'exit 7']
    recovery: {{strategy: fallback, fallback: plan_b}}
  plan_b:
    command: [sh, -c, 'echo plan b > {out}']
  optional:
    command: [sh, -c, 'exit 1']
    recovery: {{strategy: skip}}
  critical:
    command: [sh, -c, 'exit 1']
    retry: {{max_attempts: 5}}
    recovery: {{strategy: abort}}
"""


def test_fallback_skip_and_abort(store: EventStore, home: Home, tmp_path: Path) -> None:
    out = tmp_path / "b.txt"
    agents.apply(store, _agent(tmp_path, FALLBACK.format(out=out)))
    cfg = agents.get(store, "a1")
    primary, optional, critical = actions.submit(
        store, [agents.task_spec(cfg, t) for t in ("primary", "optional", "critical")])
    after_primary, after_optional, after_critical = actions.submit(store, [
        actions.SubmitSpec(command=["true"], depends_on=[primary]),
        actions.SubmitSpec(command=["true"], depends_on=[optional]),
        actions.SubmitSpec(command=["true"], depends_on=[critical]),
    ])
    Worker(store, home, concurrency=2).run(until_idle=True)
    p = _state(store, primary)
    assert p["state"] == "failed"
    failed = store.read_stream(primary)[-1].event
    fb = failed.fallback  # type: ignore[union-attr]
    assert fb and _state(store, fb)["state"] == "completed" and out.read_text() == "plan b\n"
    assert _state(store, after_primary)["state"] == "completed"  # it waited for plan_b
    assert _state(store, optional)["state"] == "skipped"
    assert _state(store, after_optional)["state"] == "completed"
    c = _state(store, critical)
    assert c["state"] == "failed" and c["attempts"] == 1  # abort: no retries
    assert _state(store, after_critical)["state"] == "cancelled"


def test_output_pattern_failure(store: EventStore, home: Home) -> None:
    spec = actions.SubmitSpec(command=["sh", "-c", "echo starting; echo 'FATAL: disk gone'; "
                                       "sleep 30"], failure_patterns=["^FATAL"])
    (aid,) = actions.submit(store, [spec])
    started = time.monotonic()
    Worker(store, home).run(until_idle=True)
    assert time.monotonic() - started < 20  # stopped at the match, not after 30 s
    row = _state(store, aid)
    assert row["state"] == "failed" and row["error_kind"] == "output_pattern"
    assert "FATAL: disk gone" in row["error"]


def test_concurrency_n_is_respected_and_used(store: EventStore, home: Home,
                                             tmp_path: Path) -> None:
    log = tmp_path / "spans.txt"
    cmd = f'echo "start $(date +%s%N)" >> {log}; sleep 0.4; echo "end $(date +%s%N)" >> {log}'
    actions.submit(store, [actions.SubmitSpec(command=[cmd], shell=True) for _ in range(6)])
    summary = Worker(store, home, concurrency=3).run(until_idle=True)
    assert summary.completed == 6 and summary.peak_running == 3
    events = sorted((int(ts), kind) for kind, ts in
                    (line.split() for line in log.read_text().splitlines()))
    running = peak = 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 3


@pytest.mark.slow
def test_two_workers_racing_never_run_one_action_twice(sp: Sp, tmp_path: Path) -> None:
    out = tmp_path / "ran.txt"
    # Each takes a moment, so that both workers are still claiming when the other starts.
    lines = "".join(f"sleep 0.05; echo {i} >> {out}\n" for i in range(60))
    ids = sp("submit", "--each", "-", input=lines).stdout.split()
    workers = [sp.popen("worker", "--until-idle", "-c", "2") for _ in range(2)]
    for w in workers:
        assert w.wait(60) == 0
    ran = out.read_text().split()
    assert sorted(ran, key=int) == [str(i) for i in range(60)]  # each exactly once
    store = Home(sp.home.root).open()
    try:
        for aid in ids:
            types = _events(store, aid)
            assert types.count("action.started") == 1 and types[-1] == "action.completed"
        owners = {store.read_stream(a)[2].event.owner for a in ids}  # type: ignore[union-attr]
        assert len(owners) == 2  # both workers took part
        assert verify(store).ok
    finally:
        store.close()


@pytest.mark.slow
def test_a_submit_wakes_an_idle_worker_at_once(sp: Sp) -> None:
    worker = sp.popen("worker")
    try:
        # Idle: past its first turn, asleep on the wake-up pipe (submitted earlier, the action
        # would be claimed by that first turn and the pipe would prove nothing).
        wait_until(lambda: holds_open(worker.pid, fifo_path(sp.home.root))
                   and asleep_in(worker.pid, "poll"), what="the worker to wait idle")
        a = sp.proc("submit", "--", "true").stdout.strip()
        p = sp.proc("wait", a, "--timeout", "10s")
        assert p.returncode == 0, p.stderr
        doc = json.loads(sp.proc("audit", a, "--format", "json").stdout)["events"]
        queued = next(e for e in doc if e["event"] == "action.queued")["ts"]
        started = next(e for e in doc if e["event"] == "action.started")["ts"]
        assert started - queued < 500  # the idle poll is 1 s: only the pipe explains this
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


def test_pause_and_resume_by_agent(store: EventStore, home: Home) -> None:
    from sp.commands import control

    a, b = actions.submit(store, [actions.SubmitSpec(command=["true"], agent="x"),
                                  actions.SubmitSpec(command=["true"], agent="y")],
                          agent_create=True)
    assert control.pause(store, "x") is True and control.pause(store, "x") is False
    Worker(store, home).run(until_idle=True)
    assert _state(store, a)["state"] == "queued" and _state(store, b)["state"] == "completed"
    assert control.resume(store, "x") is True
    Worker(store, home).run(until_idle=True)
    assert _state(store, a)["state"] == "completed"
    assert control.pause(store) is True
    (c,) = actions.submit(store, [actions.SubmitSpec(command=["true"])])
    Worker(store, home).run(until_idle=True)
    assert _state(store, c)["state"] == "queued"


def test_action_execute_foreground_exit_codes(sp: Sp, tmp_path: Path) -> None:
    path = _agent(tmp_path, """
id: monitor-001
actions:
  health_check: {command: [sh, -c, 'echo healthy']}
  broken: {command: [sh, -c, 'exit 5']}
""")
    assert sp.proc("agent", "apply", str(path)).returncode == 0
    p = sp.proc("action", "execute", "--agent", "monitor-001", "--task", "health_check",
                "--notify-on-completion")
    assert p.returncode == 0, p.stderr
    aid = p.stdout.strip()
    assert "monitor-001/health_check completed" in p.stderr
    assert json.loads(sp.proc("status", aid, "--format", "json").stdout)["state"] == "completed"
    p = sp.proc("action", "run", "--agent", "monitor-001", "--task", "broken")
    assert p.returncode == 1
    p = sp.proc("action", "execute", "--agent", "monitor-001", "--task", "health_check",
                "--detach")
    assert p.returncode == 0
    detached = p.stdout.strip()
    assert json.loads(sp.proc("status", detached, "--format", "json").stdout)["state"] == \
        "queued"
    p = sp.proc("action", "execute", "--agent", "monitor-001", "--task", "nope")
    assert p.returncode == 2
    assert p.stderr == ("Error: agent monitor-001 has no task 'nope' "
                        "(tasks: broken, health_check)\n")


def test_agent_file_errors_name_the_path_and_write_nothing(sp: Sp, tmp_path: Path) -> None:
    path = _agent(tmp_path, "id: r\nactions:\n  daily_arxiv_scan:\n    timeout: 7\n"
                            "    command: x\n")
    sp("agent", "apply", str(path))  # a bare number is seconds: valid
    before = sp.home.ledger_path.read_bytes()
    path.write_text("id: r\nactions:\n  daily_arxiv_scan:\n    timeout: 7x\n    command: x\n")
    result = sp("agent", "apply", str(path), ok=False)
    assert result.exit_code == 2
    assert result.stderr == (f'Error: {path}: $.actions.daily_arxiv_scan.timeout: expected a '
                             'duration like "30s", "10m" or "2h", got \'7x\'\n')
    path.write_text("id: r\nactions: [\n")
    result = sp("agent", "apply", str(path), ok=False)
    assert result.exit_code == 2 and result.stderr.startswith(f"Error: {path}: not valid YAML")
    toml = tmp_path / "agent.toml"
    toml.write_text('id = "t"\n[actions.scan]\ncommand = ["true"]\n'
                    'retry = { max_attempts = "x" }\n')
    result = sp("agent", "apply", str(toml), ok=False)
    assert result.exit_code == 2
    assert result.stderr == (f"Error: {toml}: $.actions.scan.retry.max_attempts: "
                             "Expected `int`, got `str`\n")
    assert sp.home.ledger_path.read_bytes() == before


def test_wait_and_restart_all_failed(sp: Sp) -> None:
    a = sp("submit", "--", "sh", "-c", "exit 1").stdout.strip()
    b = sp("submit", "--", "true").stdout.strip()
    sp("worker", "--until-idle")
    r = sp("wait", a, b, ok=False)
    assert r.exit_code == 1 and f"{a}  failed  exit 1" in r.stdout
    assert sp("wait", b).exit_code == 0
    sp("restart", "--all-failed")
    assert json.loads(sp("status", a, "--format", "json").stdout)["state"] == "queued"
    r = sp("wait", a, "--timeout", "0.2s", ok=False)
    assert r.exit_code == 75 and r.stderr == f"Error: still running after 0.2s: {a}\n"


def test_sigterm_grace_lets_short_actions_finish(sp: Sp, tmp_path: Path) -> None:
    marker = tmp_path / "done"
    a = sp.proc("submit", "--shell", "--", f"sleep 0.5; touch {marker}").stdout.strip()
    worker = sp.popen("worker", "--grace", "10s")
    wait_until(lambda: json.loads(sp.proc("status", a, "--format", "json").stdout)["state"]
               == "executing", what=f"{a} to execute")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert marker.exists()
    assert json.loads(sp.proc("status", a, "--format", "json").stdout)["state"] == "completed"


def test_tick_runs_for_at_most_max_seconds(sp: Sp) -> None:
    a = sp.proc("submit", "--", "sleep", "30").stdout.strip()
    b = sp.proc("submit", "--", "true").stdout.strip()
    started = time.monotonic()
    p = sp.proc("tick", "--max-seconds", "1")
    assert p.returncode == 0
    assert time.monotonic() - started < 15
    row = json.loads(sp.proc("status", a, "--format", "json").stdout)
    assert row["state"] == "interrupted" and "max-seconds" in row["error"]
    assert json.loads(sp.proc("status", b, "--format", "json").stdout)["state"] == "queued"


def test_notification_command_runs_after_the_outcome_and_is_recorded(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    got = tmp_path / "notified.json"
    spec = actions.SubmitSpec(command=["sh", "-c", "echo done"], name="nightly",
                              notify={"on": ["completion"],
                                      "command": ["sh", "-c", f"cat > {got}"]})
    (aid,) = actions.submit(store, [spec])
    Worker(store, home).run(until_idle=True)
    body = json.loads(got.read_text())
    assert body["action_id"] == aid and body["state"] == "completed"
    assert body["result"]["tail"] == ["done"]
    last = store.read_stream(aid)[-1]
    assert last.type == "action.notified"
    assert last.event.ok is True and last.event.channel == "command"  # type: ignore[union-attr]
    assert queries.get_action(store, aid)["state"] == "completed"


def test_restart_from_step(store: EventStore, home: Home, tmp_path: Path,
                           clock: ManualClock) -> None:
    out = tmp_path / "ran.txt"
    spec = actions.SubmitSpec(command=["(steps)"], checkpoint_enabled=True, steps=[
        {"name": n, "command": ["sh", "-c", f"echo {n} >> {out}"]} for n in ("a", "b", "c")])
    (aid,) = actions.submit(store, [spec])
    Worker(store, home).run(until_idle=True)
    assert out.read_text().split() == ["a", "b", "c"]
    actions.restart(store, aid, from_step=1)
    Worker(store, home).run(until_idle=True)
    assert out.read_text().split() == ["a", "b", "c", "b", "c"]
    row = queries.get_action(store, aid)
    assert row["state"] == "completed" and row["attempts"] == 2


def test_logs_follow_streams_until_the_action_ends(sp: Sp) -> None:
    a = sp.proc("submit", "--shell", "--",
                "for i in 1 2 3; do echo line $i; sleep 0.2; done").stdout.strip()
    worker = sp.popen("worker", "--until-idle")
    follow = sp.proc("logs", a, "-f", timeout=30)
    assert worker.wait(30) == 0
    assert follow.returncode == 0
    assert [ln for ln in follow.stdout.splitlines() if ln.startswith("line")] == [
        "line 1", "line 2", "line 3"]
