"""The built-in file types with real processes: ``modify_files``, ``configure_tooling`` and
``clone_template`` apply, and their compensations restore byte for byte (modes too) — also in
a plan whose third action fails, and after ``kill -9`` of the worker and ``sp replay``."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from sp.actions import blobs, tooling
from sp.actions import run as actions_run
from sp.commands import plans
from sp.commands.home import Home
from sp.ledger.store import EventStore
from sp.runner.worker import Worker
from tests.conftest import Sp

pytestmark = pytest.mark.timeout(120)

Snapshot = dict[str, tuple[bytes | None, int]]


def _snapshot(root: Path) -> Snapshot:
    """Every path below ``root``: bytes (None for a directory) and mode."""
    out: Snapshot = {}
    for p in sorted(root.rglob("*")):
        mode = stat.S_IMODE(p.lstat().st_mode)
        out[str(p.relative_to(root))] = (None if p.is_dir() else p.read_bytes(), mode)
    return out


def _project(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    keep = proj / "keep.txt"
    keep.write_bytes(b"original\r\nno newline at the end \xff\xfe")
    keep.chmod(0o640)
    gone = proj / "gone.sh"
    gone.write_bytes(b"#!/bin/sh\necho bye\n")
    gone.chmod(0o755)
    (proj / "pyproject.toml").write_text(
        '# keep this comment\n[project]\nname = "demo"  # and this one\n\n'
        '[tool.ruff]\nline-length = 80\n')
    (proj / "package.json").write_text('{"name": "demo",   "scripts": {"test": "jest"}}')
    (proj / "config.yaml").write_text("# yaml comment\nserver:\n  port: 80\n")
    (proj / "setup.cfg").write_text("[flake8]\nmax-line-length = 80\n")
    (proj / "pyproject.toml").chmod(0o600)
    return proj


def _git_template(tmp_path: Path) -> Path:
    tpl = tmp_path / "tpl"
    (tpl / "src").mkdir(parents=True)
    (tpl / "README.md").write_text("# {{name}}\nport {{ port }}\n")
    (tpl / "src" / "{{name}}.py").write_text("NAME = '{{name}}'\n")
    (tpl / "run.sh").write_text("#!/bin/sh\necho {{name}}\n")
    (tpl / "run.sh").chmod(0o755)
    (tpl / "logo.bin").write_bytes(b"\x89PNG{{name}}\xff")
    (tpl / "features" / "docker").mkdir(parents=True)
    (tpl / "features" / "docker" / "Dockerfile").write_text("FROM python\nLABEL {{name}}\n")
    (tpl / "features" / "ci").mkdir(parents=True)
    (tpl / "features" / "ci" / "ci.yml").write_text("ci: true\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tpl)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "template"], check=True)
    (tpl / "uncommitted.txt").write_text("not in the clone\n")
    return tpl


def _step(step: str, type_: str, payload: dict[str, Any], deps: list[str] | None = None,
          ) -> dict[str, Any]:
    return {"id": step, "type": type_, "payload": payload, "depends_on": deps or []}


def _files_step(deps: list[str] | None = None) -> dict[str, Any]:
    return _step("files", "modify_files", {"changes": [
        {"path": "proj/keep.txt", "content": "changed\n", "operation": "modify"},
        {"path": "proj/gone.sh", "operation": "delete"},
        {"path": "proj/new/deep.txt", "content": "new\n", "operation": "create",
         "mode": "600"},
    ]}, deps)


def _template_step(tpl: Path, deps: list[str] | None = None) -> dict[str, Any]:
    return _step("scaffold", "clone_template", {
        "source": str(tpl), "path": "proj/app", "variables": {"name": "demo", "port": 8080},
        "features": ["docker"]}, deps)


def _plan(tmp_path: Path, steps: list[dict[str, Any]], on_failure: str = "rollback") -> Path:
    path = tmp_path / "plan.yaml"  # JSON is YAML
    path.write_text(json.dumps({"name": "files", "on_failure": on_failure, "actions": steps}))
    return path


def _run(store: EventStore, home: Home, concurrency: int = 2) -> None:
    Worker(store, home, concurrency=concurrency).run(until_idle=True)


def _states(store: EventStore, plan_id: str) -> dict[str, str]:
    doc = plans.status(store, plan_id)
    return {"plan": doc["state"], **{s["step"]: s["state"] for s in doc["actions"]}}


def _check_applied(proj: Path) -> None:
    assert (proj / "keep.txt").read_bytes() == b"changed\n"
    assert stat.S_IMODE((proj / "keep.txt").stat().st_mode) == 0o640  # mode kept
    assert not (proj / "gone.sh").exists()
    assert (proj / "new" / "deep.txt").read_text() == "new\n"
    assert stat.S_IMODE((proj / "new" / "deep.txt").stat().st_mode) == 0o600


def test_each_type_applies_and_its_rollback_restores_byte_for_byte(
        store: EventStore, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = _project(tmp_path)
    tpl = _git_template(tmp_path)
    before = _snapshot(proj)
    path = _plan(tmp_path, [
        _files_step(),
        _template_step(tpl),
        _step("toml", "configure_tooling", {"path": "proj/pyproject.toml", "set": {
            "tool.ruff.line-length": 100, "tool.mypy.strict": True}}),
        _step("json", "configure_tooling", {"path": "proj/package.json",
                                            "set": {"scripts.lint": "eslint ."}}),
        _step("yaml", "configure_tooling", {"path": "proj/config.yaml",
                                            "set": {"server.port": 8080}}),
        _step("ini", "configure_tooling", {"path": "proj/setup.cfg",
                                           "set": {"flake8.max-line-length": 100}}),
        _step("newcfg", "configure_tooling", {"path": "proj/tool.json",
                                              "set": {"a.b": [1, 2]}}),
    ])
    plan_id = plans.apply(store, path)
    _run(store, home, concurrency=4)
    assert set(_states(store, plan_id).values()) == {"completed"}

    _check_applied(proj)
    app = proj / "app"
    assert (app / "README.md").read_text() == "# demo\nport 8080\n"
    assert (app / "src" / "demo.py").read_text() == "NAME = 'demo'\n"
    assert stat.S_IMODE((app / "run.sh").stat().st_mode) == 0o755
    assert (app / "logo.bin").read_bytes() == b"\x89PNG{{name}}\xff"  # binary: untouched
    assert (app / "Dockerfile").read_text() == "FROM python\nLABEL demo\n"
    assert not (app / "ci.yml").exists() and not (app / "features").exists()
    assert not (app / ".git").exists() and not (app / "uncommitted.txt").exists()
    toml = tomllib.loads((proj / "pyproject.toml").read_text())
    assert toml["tool"]["ruff"]["line-length"] == 100 and toml["tool"]["mypy"]["strict"]
    assert toml["project"]["name"] == "demo"
    assert stat.S_IMODE((proj / "pyproject.toml").stat().st_mode) == 0o600
    pkg = json.loads((proj / "package.json").read_text())
    assert pkg["scripts"] == {"test": "jest", "lint": "eslint ."}
    assert yaml.safe_load((proj / "config.yaml").read_text()) == {"server": {"port": 8080}}
    assert "max-line-length = 100" in (proj / "setup.cfg").read_text()
    assert json.loads((proj / "tool.json").read_text()) == {"a": {"b": [1, 2]}}
    # before-images are content-addressed blobs, referenced from the events
    doc = plans.status(store, plan_id)
    files_id = next(s["action_id"] for s in doc["actions"] if s["step"] == "files")
    monkeypatch.setenv("SP_HOME", str(home.root))
    recorded = blobs.recorded(files_id, "before")
    assert recorded is not None
    keep = next(i for i in recorded["before"] if i["path"].endswith("keep.txt"))
    assert (home.root / "blobs" / keep["blob"]).read_bytes() == before["keep.txt"][0]
    assert keep["mode"] == 0o640

    plans.rollback(store, plan_id)
    _run(store, home, concurrency=1)
    states = _states(store, plan_id)
    assert states.pop("plan") == "rolled_back"
    assert set(states.values()) == {"rolled_back"}
    assert _snapshot(proj) == before


def test_third_action_failing_rolls_back_the_first_two(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    proj = _project(tmp_path)
    tpl = _git_template(tmp_path)
    before = _snapshot(proj)
    plan_id = plans.apply(store, _plan(tmp_path, [
        _files_step(), _template_step(tpl, ["files"]),
        _step("three", "shell", {"command": "test -d proj/app && exit 3", "shell": True},
              ["scaffold"]),
    ]))
    _run(store, home)
    assert _states(store, plan_id) == {"plan": "rolled_back", "files": "rolled_back",
                                       "scaffold": "rolled_back", "three": "failed"}
    assert _snapshot(proj) == before
    assert not (proj / "app").exists()


def test_kill_9_mid_plan_then_replay_rolls_back_files_and_template(
        sp: Sp, tmp_path: Path) -> None:
    proj = _project(tmp_path)
    tpl = _git_template(tmp_path)
    before = _snapshot(proj)
    path = _plan(tmp_path, [
        _files_step(), _template_step(tpl, ["files"]),
        _step("three", "shell", {"command": "echo $$ > slow.pid; exec sleep 60",
                                 "shell": True}, ["scaffold"]),
    ])
    plan_id = sp.proc("plan", "apply", str(path)).stdout.strip()
    worker = sp.popen("worker", "--until-idle")
    pidfile = tmp_path / "slow.pid"
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, worker.poll()
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    _check_applied(proj)
    assert (proj / "app" / "README.md").exists()

    replay = sp.proc("replay")
    assert replay.returncode == 0, replay.stderr
    status = json.loads(sp.proc("plan", "status", plan_id, "--format", "json").stdout)
    assert status["state"] == "rolling_back"

    p = sp.proc("worker", "--until-idle")
    assert p.returncode == 0, p.stderr
    status = json.loads(sp.proc("plan", "status", plan_id, "--format", "json").stdout)
    assert status["state"] == "rolled_back"
    assert [s["state"] for s in status["actions"]] == ["rolled_back", "rolled_back", "failed"]
    assert _snapshot(proj) == before
    assert sp.proc("replay", "--check").returncode == 0


def test_clone_template_refuses_a_non_empty_target_and_takes_an_empty_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tpl = tmp_path / "tpl"
    (tpl / "features" / "x").mkdir(parents=True)
    (tpl / "a.txt").write_text("{{v}}")
    (tpl / "features" / "x" / "{{v}}.txt").write_text("x")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine").write_text("mine")
    payload = {"source": str(tpl), "path": str(busy), "variables": {"v": "1"}}
    assert actions_run.main(["clone_template", "apply", json.dumps(payload)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in busy.iterdir()] == ["mine"]
    empty = tmp_path / "empty"
    empty.mkdir()
    payload = {**payload, "path": str(empty), "features": ["x"]}
    assert actions_run.main(["clone_template", "apply", json.dumps(payload)]) == 0
    assert sorted(p.name for p in empty.iterdir()) == ["1.txt", "a.txt"]
    assert actions_run.main(["clone_template", "apply", json.dumps(
        {**payload, "path": str(tmp_path / "n"), "features": ["nope"]})]) == 2
    assert not (tmp_path / "n").exists()


def test_plan_validate_reports_bad_payloads_with_their_paths(sp: Sp, tmp_path: Path) -> None:
    path = _plan(tmp_path, [
        _step("f", "modify_files", {"changes": [{"path": "x", "operation": "create"}]}),
        _step("t", "configure_tooling", {"path": "x.conf", "set": {"a": 1}}),
    ])
    p = sp.proc("plan", "validate", str(path))
    assert p.returncode == 2
    out = p.stdout + p.stderr
    assert "actions[0].payload.changes[0].content" in out
    assert "actions[1].payload.format" in out


def test_toml_writer_round_trips() -> None:
    doc = {"top": 1, "s": 'q"uote\n', "arr": [1, "a", True], "tool": {
        "ruff": {"line-length": 100, "select": ["E", "F"]}, "my key": {"x": 1.5}},
        "empty": {}}
    assert tomllib.loads(tooling.dump_toml(doc)) == doc
