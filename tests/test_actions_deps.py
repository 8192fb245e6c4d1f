"""``install_dependencies`` for real: pip into a real venv and npm into a real project, from
PyPI and the npm registry (skipped, saying why, when a registry cannot be reached: probed once
per session); install, upgrade, the recorded sets and diff, and rollback to the exact previous
set."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sp.actions import blobs, deps
from sp.commands import plans
from sp.commands.home import Home
from sp.ledger.store import EventStore
from sp.runner.worker import Worker
from tests import registry
from tests.conftest import Sp

pytestmark = pytest.mark.timeout(300)

def _skip_unless_reachable(which: str, url: str) -> None:
    """Skip (never fail) the tests that install from a registry this machine cannot reach."""
    reason = registry.unreachable(url)
    if reason is not None:
        pytest.skip(f"{which} is unreachable ({reason}): install_dependencies tests need it")


@pytest.fixture(scope="session")
def pypi() -> None:
    _skip_unless_reachable("PyPI", registry.PYPI)


@pytest.fixture(scope="session")
def npm_registry() -> None:
    _skip_unless_reachable("the npm registry", registry.NPM)


def _pip_set(venv: Path) -> dict[str, str]:
    return deps.pip_set(venv)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, pypi: None) -> Path:
    """One real venv for the module (creating one costs seconds)."""
    path = tmp_path_factory.mktemp("pipproj") / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path


def _plan(tmp_path: Path, steps: list[dict[str, Any]], on_failure: str = "rollback",
          name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"name": "deps", "on_failure": on_failure, "actions": steps}))
    return path


def _step(step: str, payload: dict[str, Any], deps_: list[str] | None = None) -> dict[str, Any]:
    return {"id": step, "type": "install_dependencies", "payload": payload,
            "depends_on": deps_ or []}


def _fail(deps_: list[str]) -> dict[str, Any]:
    return {"id": "boom", "type": "shell", "payload": {"command": ["false"]},
            "depends_on": deps_}


def _run(store: EventStore, home: Home) -> None:
    Worker(store, home, concurrency=1).run(until_idle=True)


def _states(store: EventStore, plan_id: str) -> dict[str, str]:
    doc = plans.status(store, plan_id)
    return {"plan": doc["state"], **{s["step"]: s["state"] for s in doc["actions"]}}


def _result(store: EventStore, home: Home, plan_id: str, step: str,
            monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    doc = plans.status(store, plan_id)
    action_id = next(s["action_id"] for s in doc["actions"] if s["step"] == step)
    monkeypatch.setenv("SP_HOME", str(home.root))
    data = blobs.checkpoints(action_id)[-1]
    assert isinstance(data, dict)
    return data


def test_diff_names_added_upgraded_downgraded_removed() -> None:
    got = deps.diff({"six": "1.16.0", "a": "1.9", "b": "2.0", "gone": "1"},
                    {"six": "1.17.0", "a": "1.10", "b": "2.0rc1", "new": "3"})
    assert got == {"added": {"new": "3"},
                   "upgraded": {"a": {"from": "1.9", "to": "1.10"},
                                "six": {"from": "1.16.0", "to": "1.17.0"}},
                   "downgraded": {"b": {"from": "2.0", "to": "2.0rc1"}},
                   "removed": {"gone": "1"}}
    assert deps.normalize("Zope.Interface_x") == "zope-interface-x"


def test_pip_install_upgrade_then_rollback_restores_the_exact_set(
        store: EventStore, home: Home, tmp_path: Path, venv: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = _pip_set(venv)
    assert "six" not in original
    project = str(venv.parent)
    plan_id = plans.apply(store, _plan(tmp_path, [
        _step("six16", {"manager": "pip", "project": project, "packages": ["six==1.16.0"]}),
        _step("six17", {"manager": "pip", "project": project, "packages": ["six==1.17.0"]},
              ["six16"]),
        _fail(["six17"]),
    ]))
    _run(store, home)
    assert _states(store, plan_id) == {"plan": "rolled_back", "six16": "rolled_back",
                                       "six17": "rolled_back", "boom": "failed"}
    assert _pip_set(venv) == original  # six gone, nothing else touched
    first = _result(store, home, plan_id, "six16", monkeypatch)
    assert first["before"]["packages"] == original and first["before"]["venv_existed"]
    assert first["diff"] == {"added": {"six": "1.16.0"}, "upgraded": {}, "downgraded": {},
                             "removed": {}}
    assert first["after"]["packages"] == {**original, "six": "1.16.0"}
    second = _result(store, home, plan_id, "six17", monkeypatch)
    assert second["diff"]["upgraded"] == {"six": {"from": "1.16.0", "to": "1.17.0"}}
    assert second["diff"]["added"] == {}


def test_pip_rollback_reinstalls_what_went_away_at_its_exact_version(
        store: EventStore, home: Home, tmp_path: Path, venv: Path, sp: Sp) -> None:
    original = _pip_set(venv)
    project = str(venv.parent)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", *deps.PIP_FLAGS, "six==1.16.0"],
                   check=True)
    before = _pip_set(venv)
    plan_id = plans.apply(store, _plan(tmp_path, [
        _step("up", {"manager": "pip", "project": project, "packages": ["six==1.17.0"]})]))
    _run(store, home)
    assert _states(store, plan_id) == {"plan": "completed", "up": "completed"}
    assert _pip_set(venv)["six"] == "1.17.0"
    # someone removes six meanwhile: the undo still brings back 1.16.0, the recorded version
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", *deps.PIP_FLAGS, "six"],
                   check=True)
    sp("rollback", plan_id)
    _run(store, home)
    assert _states(store, plan_id) == {"plan": "rolled_back", "up": "rolled_back"}
    assert _pip_set(venv) == before
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", *deps.PIP_FLAGS, "six"],
                   check=True)
    assert _pip_set(venv) == original


def test_pip_creates_a_missing_venv_from_requirements_and_rollback_removes_it(
        store: EventStore, home: Home, tmp_path: Path, venv: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "app"
    project.mkdir()
    (project / "req.txt").write_text("six==1.16.0\n")
    plan_id = plans.apply(store, _plan(tmp_path, [
        _step("deps", {"manager": "pip", "project": "app", "requirements": "req.txt",
                       "venv": "env", "python": sys.executable}),
        _fail(["deps"]),
    ]))
    _run(store, home)
    assert _states(store, plan_id) == {"plan": "rolled_back", "deps": "rolled_back",
                                       "boom": "failed"}
    assert not (project / "env").exists()
    assert sorted(p.name for p in project.iterdir()) == ["req.txt"]
    got = _result(store, home, plan_id, "deps", monkeypatch)
    assert got["before"] == {"manager": "pip", "project": str(project),
                             "venv": str(project / "env"), "venv_existed": False,
                             "packages": {}}
    assert got["after"]["packages"]["six"] == "1.16.0"
    assert got["diff"]["added"]["six"] == "1.16.0" and "pip" in got["diff"]["added"]


@pytest.fixture
def npm_project(tmp_path: Path, npm_registry: None) -> Path:
    project = tmp_path / "web"
    project.mkdir()
    (project / "package.json").write_bytes(b'{\n  "name": "web",  "version": "1.0.0"\n}\n')
    return project


def _npm_version(project: Path, name: str) -> str | None:
    path = project / "node_modules" / name / "package.json"
    return str(json.loads(path.read_text())["version"]) if path.exists() else None


def test_npm_install_upgrade_then_rollback_removes_node_modules(
        store: EventStore, home: Home, tmp_path: Path, npm_project: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = (npm_project / "package.json").read_bytes()
    plan_id = plans.apply(store, _plan(tmp_path, [
        _step("six", {"manager": "npm", "project": "web", "packages": ["is-number@6.0.0"]}),
        _step("seven", {"manager": "npm", "project": "web", "packages": ["is-number@7.0.0"]},
              ["six"]),
        _fail(["seven"]),
    ]))
    _run(store, home)
    assert _states(store, plan_id) == {"plan": "rolled_back", "six": "rolled_back",
                                       "seven": "rolled_back", "boom": "failed"}
    assert sorted(p.name for p in npm_project.iterdir()) == ["package.json"]
    assert (npm_project / "package.json").read_bytes() == original
    first = _result(store, home, plan_id, "six", monkeypatch)
    assert first["diff"]["added"] == {"is-number": "6.0.0"}
    assert first["before"]["node_modules_existed"] is False
    assert first["before"]["files"]["package-lock.json"] == {"blob": None, "mode": None}
    second = _result(store, home, plan_id, "seven", monkeypatch)
    assert second["diff"]["upgraded"] == {"is-number": {"from": "6.0.0", "to": "7.0.0"}}
    assert second["after"]["packages"] == {"is-number": "7.0.0"}


def test_npm_rollback_restores_package_files_and_runs_npm_ci(
        store: EventStore, home: Home, tmp_path: Path, npm_project: Path, sp: Sp) -> None:
    subprocess.run(["npm", "install", *deps.NPM_FLAGS, "is-number@6.0.0"], cwd=npm_project,
                   check=True, capture_output=True)
    files = {n: (npm_project / n).read_bytes() for n in deps.NPM_FILES}
    plan_id = plans.apply(store, _plan(tmp_path, [
        _step("up", {"manager": "npm", "project": "web", "packages": ["is-number@7.0.0"]})]))
    _run(store, home)
    assert _npm_version(npm_project, "is-number") == "7.0.0"
    assert (npm_project / "package-lock.json").read_bytes() != files["package-lock.json"]
    sp("rollback", plan_id)
    _run(store, home)
    assert _states(store, plan_id) == {"plan": "rolled_back", "up": "rolled_back"}
    assert {n: (npm_project / n).read_bytes() for n in deps.NPM_FILES} == files
    assert _npm_version(npm_project, "is-number") == "6.0.0"
    comp = plans.status(store, plan_id)["rollback"][0]["steps"][0]["compensation_id"]
    audit = json.loads(sp("audit", comp, "--format", "json").stdout)
    assert "npm ci" in json.dumps(audit)


def test_validation_reports_missing_programs_and_bad_payloads(sp: Sp, tmp_path: Path) -> None:
    path = _plan(tmp_path, [
        _step("py", {"manager": "pip", "packages": ["six"], "python": "/nonexistent/python3"}),
        _step("js", {"manager": "npm", "packages": ["is-number"],
                     "env": {"PATH": str(tmp_path / "empty")}}),
        _step("nothing", {"manager": "pip"}),
        _step("opt", {"manager": "npm", "packages": ["--global"], "venv": ".venv"}),
        _step("which", {"manager": "cargo", "packages": ["x"]}),
    ])
    p = sp.proc("plan", "validate", str(path))
    assert p.returncode == 2
    err = p.stderr
    assert "actions[0].payload.python: executable '/nonexistent/python3' not found" in err
    assert "actions[1].payload.manager: executable 'npm' not found on this machine" in err
    assert "actions[2].payload.packages: nothing to install" in err
    assert "actions[3].payload.packages[0]: '--global' is an option" in err
    assert "actions[3].payload.venv: only for pip" in err
    assert "actions[4].payload.manager" in err
    ok = _plan(tmp_path, [_step("py", {"manager": "pip", "packages": ["six"],
                                       "python": sys.executable}),
                          _step("js", {"manager": "npm"})], name="ok.yaml")
    assert shutil.which("npm") is not None
    assert sp.proc("plan", "validate", str(ok)).returncode == 0
