"""Custom action types: an ``@action_type`` function and the ``sp.action_types`` entry point
group, run by a real worker (the function's module imported in the action's process) and
rolled back through the function's ``undo``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sp import actions
from sp.actions import custom
from sp.commands import plans
from sp.commands.home import Home
from sp.ledger.store import EventStore
from sp.plans import action_types
from sp.runner.worker import Worker

pytestmark = pytest.mark.timeout(120)

PLUGIN = '''
from pathlib import Path

import msgspec

from sp.actions import ActionType, Command
from sp.actions.custom import action_type


class Stamp(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    text: str = "stamped"


def unstamp(payload: Stamp, rollback: None) -> dict[str, str]:
    Path(payload.path).unlink()
    return {"removed": payload.path}


@action_type("stamp", payload=Stamp, undo=unstamp)
def stamp(payload: Stamp) -> dict[str, object]:
    Path(payload.path).write_text(payload.text)
    return {"wrote": payload.path, "bytes": len(payload.text)}


class Echo(msgspec.Struct):
    word: str


ECHO = ActionType(
    name="echo_word", payload=Echo, rollback=None,
    command=lambda p: Command(argv=["echo", p.word]), compensation=lambda p, r: None,
    requires=lambda p, r: [], check=lambda p, r: [],
)
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A module and a distribution declaring entry points, importable here and in actions."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "sp_plug_demo.py").write_text(PLUGIN)
    dist = lib / "sp_plug_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sp-plug-demo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[sp.action_types]\nstamp = sp_plug_demo\necho_word = sp_plug_demo:ECHO\n"
        "broken = sp_plug_no_such_module\n")
    actions.known()  # the built-ins, before the registry is copied
    monkeypatch.syspath_prepend(str(lib))
    monkeypatch.setenv("PYTHONPATH", str(lib))
    monkeypatch.setattr(action_types, "_TYPES", dict(action_types._TYPES))
    monkeypatch.setattr(custom, "_FUNCTIONS", dict(custom._FUNCTIONS))
    monkeypatch.setattr(action_types, "_LOADED", False)
    monkeypatch.delitem(sys.modules, "sp_plug_demo", raising=False)
    yield lib
    sys.modules.pop("sp_plug_demo", None)


def test_entry_points_add_types_and_a_broken_one_is_skipped(
        plugin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert {"stamp", "echo_word"} <= set(actions.known())
    assert "broken" not in actions.known()
    assert "entry point broken (sp_plug_no_such_module) failed to load" in capsys.readouterr().err


def test_decorated_type_runs_and_rolls_back_in_a_plan(
        plugin: Path, store: EventStore, home: Home, tmp_path: Path) -> None:
    target = tmp_path / "stamp.txt"
    path = tmp_path / "plan.yaml"
    path.write_text(
        "name: custom\non_failure: rollback\nactions:\n"
        f"  - {{id: a, type: stamp, payload: {{path: {target}, text: hi}}}}\n"
        "  - {id: w, type: echo_word, payload: {word: hello}, depends_on: [a]}\n"
        "  - {id: b, type: shell, payload: {command: 'exit 3', shell: true},"
        " depends_on: [w]}\n")
    plan_id = plans.apply(store, path)
    Worker(store, home, concurrency=1).run(until_idle=True)
    doc = plans.status(store, plan_id)
    states = {s["step"]: s["state"] for s in doc["actions"]}
    assert states == {"a": "rolled_back", "w": "completed", "b": "failed"}
    assert doc["state"] == "rolled_back"
    assert not target.exists()  # created by stamp, removed by its undo
    a_id = next(s["action_id"] for s in doc["actions"] if s["step"] == "a")
    row = store.query_one("SELECT data FROM checkpoints WHERE action_id = ?", (a_id,))
    assert row is not None and json.loads(row[0]) == {"wrote": str(target), "bytes": 2}


def test_a_failing_function_fails_the_action(
        plugin: Path, store: EventStore, home: Home, tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    missing = tmp_path / "no" / "such" / "dir" / "f.txt"
    path.write_text(f"name: c\nactions:\n  - {{id: a, type: stamp, "
                    f"payload: {{path: {missing}}}}}\n")
    plan_id = plans.apply(store, path)
    Worker(store, home, concurrency=1).run(until_idle=True)
    (action,) = plans.status(store, plan_id)["actions"]
    assert action["state"] == "failed" and action["exit_code"] == 1
    log = (Path(home.root) / "logs" / f"{action['action_id']}.log").read_text()
    assert "FileNotFoundError" in log


def test_a_function_in_main_is_refused() -> None:
    import msgspec

    class P(msgspec.Struct):
        x: int

    def f(p: P) -> None:
        pass

    f.__module__ = "__main__"
    with pytest.raises(ValueError, match="defined in __main__"):
        custom.action_type("nope", payload=P)(f)
