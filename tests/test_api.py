"""The in-action Python API, driven from a real action process against a real ledger."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sp.commands import actions, execution
from sp.commands.home import Home
from sp.ledger import events as ev
from sp.ledger.errors import InvalidTransitionError, UsageError
from sp.ledger.store import EventStore
from sp.projections import queries
from sp.runner import api

REPO = Path(__file__).resolve().parent.parent


def running_action(store: EventStore) -> str:
    [action_id] = actions.submit(store, [actions.SubmitSpec(command=["true"], name="api")])
    execution.claim(store, action_id, "worker:test")
    return action_id


def run_in_action(home: Home, action_id: str, code: str,
                  extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SP_")}
    env.update({"SP_HOME": str(home.root), "SP_ACTION_ID": action_id, "SP_ATTEMPT": "1",
                "SP_CHECKPOINT": "", "SP_RESUME_STEP": ""})
    env.update(extra or {})
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_progress_and_checkpoint_from_inside_an_action(home: Home, store: EventStore) -> None:
    action_id = running_action(store)
    code = ("from sp.runner import api; api.progress(50, 'half'); "
            "print(api.checkpoint({'n': 1}, step=1))")
    done = run_in_action(home, action_id, code)
    assert done.returncode == 0, done.stderr

    events = [r for r in store.read_stream(action_id)
              if isinstance(r.event, ev.ActionProgressed | ev.ActionCheckpointed)]
    progressed, checkpointed = (r.event for r in events)
    assert progressed == ev.ActionProgressed(by=progressed.by, percent=50, message="half")
    assert progressed.by.startswith("action:")
    assert checkpointed == ev.ActionCheckpointed(by=checkpointed.by, step=1, data={"n": 1})
    assert int(done.stdout) == events[1].seq

    row = queries.get_action(store, action_id)
    assert row["progress"] == 50
    assert row["progress_msg"] == "half"
    assert row["checkpoint"] == {"n": 1}
    assert row["checkpoint_step"] == 1


def test_context_carries_the_environment(home: Home, store: EventStore) -> None:
    action_id = running_action(store)
    code = ("from sp.runner import api; c = api.context(); "
            "print(c.action_id, c.attempt, c.resume_step, c.checkpoint_data['cursor']); "
            "c.progress(None, 'still going')")
    done = run_in_action(home, action_id, code,
                         {"SP_CHECKPOINT": '{"cursor": 4180}', "SP_RESUME_STEP": "2"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [action_id, "1", "2", "4180"]
    row = queries.get_action(store, action_id)
    assert row["progress"] is None
    assert row["progress_msg"] == "still going"


def test_finished_action_refuses_a_checkpoint(home: Home, store: EventStore,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    [action_id] = actions.submit(store, [actions.SubmitSpec(command=["true"], name="api")])
    actions.cancel(store, action_id, "not wanted")
    monkeypatch.setenv("SP_HOME", str(home.root))
    monkeypatch.setenv("SP_ACTION_ID", action_id)
    with pytest.raises(InvalidTransitionError):
        api.checkpoint({"late": True})


def test_last_checkpoint_decodes_sp_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SP_CHECKPOINT", '{"cursor": 4180, "done": ["fetch"]}')
    assert api.last_checkpoint() == {"cursor": 4180, "done": ["fetch"]}
    monkeypatch.setenv("SP_CHECKPOINT", "")
    assert api.last_checkpoint() is None
    monkeypatch.delenv("SP_CHECKPOINT")
    assert api.last_checkpoint() is None
    monkeypatch.setenv("SP_CHECKPOINT", "{not json")
    with pytest.raises(UsageError, match="SP_CHECKPOINT is not JSON"):
        api.last_checkpoint()


def test_resume_step_and_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SP_RESUME_STEP", "3")
    monkeypatch.setenv("SP_ATTEMPT", "2")
    assert api.resume_step() == 3
    assert api.attempt() == 2
    monkeypatch.setenv("SP_RESUME_STEP", "")
    assert api.resume_step() is None
    monkeypatch.setenv("SP_RESUME_STEP", "two")
    with pytest.raises(UsageError, match="SP_RESUME_STEP"):
        api.resume_step()


def test_outside_an_action(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SP_ACTION_ID", raising=False)
    for var in ("SP_CHECKPOINT", "SP_RESUME_STEP", "SP_ATTEMPT"):
        monkeypatch.delenv(var, raising=False)
    assert api.current_action() is None
    # Readers see "nothing to resume", so a script also runs by hand.
    assert api.last_checkpoint() is None
    assert api.resume_step() is None
    with pytest.raises(UsageError, match="not inside an sp action"):
        api.checkpoint({"n": 1})
    with pytest.raises(UsageError, match="not inside an sp action"):
        api.progress(10)
    with pytest.raises(UsageError, match="not inside an sp action"):
        api.context()
    # Nothing was created: the ledger is not even opened.
    assert not (tmp_path / "default-home-must-not-be-used").exists()


def test_bad_input_writes_nothing(home: Home, store: EventStore,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    action_id = running_action(store)
    before = len(store.read_stream(action_id))
    monkeypatch.setenv("SP_HOME", str(home.root))
    monkeypatch.setenv("SP_ACTION_ID", action_id)
    with pytest.raises(UsageError, match="between 0 and 100"):
        api.progress(150)
    with pytest.raises(UsageError, match="not JSON-encodable"):
        api.checkpoint({"handle": object()})
    monkeypatch.delenv("SP_HOME")
    with pytest.raises(UsageError, match="SP_HOME is not set"):
        api.progress(10)
    assert len(store.read_stream(action_id)) == before
