"""Build ``tests/data/ledger_v1.sqlite``: a small ledger written by an old sp, kept forever.

``tests/test_golden.py`` checks that today's code still migrates, verifies, decodes and
replays it. Regenerating the file with new code defeats that purpose: run this only to create
a *new* golden file (``ledger_v2.sqlite`` ...) next to the old ones, never to refresh one.

The checked-in v1 file was built by the foundation commit (schema version 1), with this
script as it was then (commit caa8b91, which imported the packages by their bare names, as
every checkout did before sp became one import package)::

    git archive 807b7e1 | tar -x -C /tmp/sp-v1
    git show caa8b91:tests/data/make_golden.py > /tmp/make_golden_v1.py
    PYTHONPATH=/tmp/sp-v1 python /tmp/make_golden_v1.py tests/data/ledger_v1.sqlite

This copy imports ``sp.*``: ``PYTHONPATH`` names a checkout that has ``sp/``.

Every event type of that version appears at least once; every action ends in a final state.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

# Appended, not prepended: PYTHONPATH (an older checkout) wins over this repo.
sys.path.append(str(Path(__file__).resolve().parents[2]))

from sp.commands import actions, execution
from sp.commands.actions import SubmitSpec, state_of
from sp.commands.home import Home
from sp.ledger import events as ev
from sp.ledger.clock import ManualClock
from sp.ledger.store import EventStore
from sp.machines import action as machine

BY = "golden"


def append_legal(store: EventStore, action_id: str, event: ev.Event) -> None:
    """Append an event no command issues yet, still asking the lifecycle machine first."""
    with store.transaction() as tx:
        state, version = state_of(tx, action_id)
        machine.check_event(action_id, state, event)
        tx.append(action_id, [event], version)


def build(store: EventStore, clock: ManualClock) -> None:
    ok = execution.Outcome(exit_code=0, duration_ms=1500, result={"lines": 3})
    exit3 = execution.Outcome(exit_code=3, duration_ms=400, error_kind="exit_code",
                              error="exit code 3")
    ids = actions.submit(store, [
        SubmitSpec(command=["echo", "hello"], name="hello", agent="research-001",
                   task="daily_scan", group="deploy", compensation=["echo", "undo hello"]),
        SubmitSpec(command=["sh", "-c", "exit 3"], name="flaky", retries=2, backoff="linear"),
        SubmitSpec(command=["sh", "-c", "exit 3"], name="broken", agent="research-001"),
        SubmitSpec(command=["sleep", "60"], name="resumable", timeout_ms=120_000, priority=5,
                   env={"MODE": "golden"}, payload={"steps": [1, 2, 3]}),
        SubmitSpec(command=["echo", "later"], name="never", delay_ms=3_600_000),
        SubmitSpec(command=["sleep", "600"], name="stopped"),
        SubmitSpec(command=["echo", "two"], name="second", group="deploy",
                   compensation=["false"], key="second-key"),
    ], by=BY)
    hello, flaky, broken, resumable, never, stopped, second = ids
    dependent = actions.submit(
        store, [SubmitSpec(command=["echo", "after"], name="dependent", depends_on=[hello])],
        by=BY)[0]
    clock.advance(1000)

    execution.finish(store, execution.claim(store, hello, "w1"), ok)
    clock.advance(1000)
    execution.finish(store, execution.claim(store, dependent, "w1"), ok)

    # flaky: fails, waits out its backoff, fails again, then succeeds
    execution.finish(store, execution.claim(store, flaky, "w1"), exit3)
    clock.advance(10_000)
    execution.finish(store, execution.claim(store, flaky, "w1"), exit3)
    clock.advance(10_000)
    execution.finish(store, execution.claim(store, flaky, "w2"), ok)

    execution.finish(store, execution.claim(store, broken, "w1"), exit3)
    actions.restart(store, broken, by=BY)
    execution.finish(store, execution.claim(store, broken, "w1"), exit3)

    # resumable: checkpoints, is interrupted (graceful shutdown), resumes from step 2
    first = execution.claim(store, resumable, "w1")
    actions.progress(store, resumable, 33.5, "step 1 of 3", by="w1")
    actions.checkpoint(store, resumable, {"cursor": 10, "done": ["a"]}, step=1, by="w1")
    clock.advance(2000)
    execution.interrupt(store, first, "worker shutting down", 2000)
    again = execution.claim(store, resumable, "w2")
    assert again.resume_step == 2
    execution.finish(store, again, ok)

    actions.cancel(store, never, reason="not needed", by=BY)

    running = execution.claim(store, stopped, "w1")
    actions.cancel(store, stopped, reason="stop it", by=BY)  # requested: it is running
    execution.finish(store, running, exit3)  # the runner records the cancel

    execution.finish(store, execution.claim(store, second, "w1"), ok)

    # validation and rejection, and compensation: no command issues these yet
    dangerous = actions.submit(
        store, [SubmitSpec(command=["rm", "-rf", "/tmp/x"], name="dangerous")], by=BY)[0]
    actions.cancel(store, dangerous, reason="dangerous", by=BY)
    # submit queues at once; an action appended by hand shows the validating path
    with store.transaction() as tx:
        pending = "golden-pending"
        tx.append(pending, [ev.ActionSubmitted(by=BY, name="validated", command=["true"])], 0)
    append_legal(store, pending, ev.ActionValidationStarted(by=BY, checks=["policy"]))
    append_legal(store, pending, ev.ActionRejected(by=BY, reason="policy forbids it"))

    append_legal(store, second, ev.ActionRollbackStarted(by=BY, compensation=["false"]))
    append_legal(store, second, ev.ActionRollbackFailed(by=BY, error="exit code 1",
                                                        exit_code=1))
    append_legal(store, hello, ev.ActionRollbackStarted(by=BY, compensation=["echo", "undo"]))
    append_legal(store, hello, ev.ActionRolledBack(by=BY, exit_code=0))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: make_golden.py OUTPUT.sqlite", file=sys.stderr)
        return 2
    out = Path(argv[0])
    if out.exists():
        print(f"{out} exists; golden files are never regenerated", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        clock = ManualClock()
        store = Home(tmp).open(clock=clock)
        store.host = "golden-host"
        try:
            build(store, clock)
            seq, _ = store.head()
        finally:
            store.close()  # checkpoints the WAL: ledger.db alone holds everything
        shutil.copyfile(Path(tmp) / "ledger.db", out)
    print(f"{out}: {seq} events")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
