"""The ``install_dependencies`` action type: packages into a project's virtualenv (pip) or its
``node_modules`` (npm), from the registries this machine reaches; undone to the exact set before.

```yaml
- id: deps
  type: install_dependencies
  payload: {manager: pip, project: app, packages: ["six==1.16.0"], requirements: req.txt}
- id: js
  type: install_dependencies
  payload: {manager: npm, project: web, packages: ["is-number@7.0.0"]}
```

Runs as ``python -m sp.actions.run install_dependencies apply '<payload JSON>'``. ``project`` is
relative to the step's directory. pip installs into ``venv`` (default ``.venv`` below the
project; created with ``python -m venv`` when missing) with ``<venv>/bin/python -m pip install
--disable-pip-version-check --no-input``; npm runs ``npm install`` in the project (with no
``packages``: what ``package.json`` lists). ``env`` is given to pip and npm (an index or a
registry mirror: ``PIP_INDEX_URL``, ``npm_config_registry``) and its ``PATH`` is where
validation looks for ``python`` / ``npm``.

Before installing, the whole package set (``pip list --format json`` / ``npm ls --json
--depth=0``), whether the venv or ``node_modules`` existed, and for npm the before-images of
``package.json`` and ``package-lock.json`` are recorded in a checkpoint (a retry keeps the
first). The result checkpoint holds the ``before`` and ``after`` sets and the ``diff``:
``added``, ``upgraded``, ``downgraded``, ``removed``.

Undo restores the previous set. pip: a venv the action created is removed; otherwise the
packages added are uninstalled and every package that changed version or went away is
installed again at its exact previous version (``--no-deps``), then the set is compared with
the recorded one and the undo fails (exit 1) if they differ. npm: ``package.json`` and
``package-lock.json`` get their exact bytes back (or are removed if the action created them),
then ``node_modules`` is removed if there was none before, else rebuilt with ``npm ci`` (with
no lock file before: ``npm install --no-package-lock``); ``restored_exactly`` says whether the
set matches the recorded one (a set that had drifted from the lock cannot come back by
``npm ci``). Packages installed from a path or a VCS URL come back only if the index has
their recorded version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import msgspec
from packaging.version import InvalidVersion, Version

from sp.actions import ActionType, Command, Requirement, blobs, register
from sp.actions.run import argv_for
from sp.ledger.errors import UsageError

PIP_FLAGS = ["--disable-pip-version-check", "--no-input"]
NPM_FLAGS = ["--no-audit", "--no-fund", "--no-update-notifier"]
NPM_FILES = ("package.json", "package-lock.json")


class DepsPayload(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    manager: Literal["pip", "npm"]
    project: str = "."
    packages: list[str] = []
    requirements: str | None = None  # pip: a requirements file, relative to the project
    venv: str | None = None  # pip: default .venv (relative to the project)
    python: str = "python3"  # pip: the interpreter that creates a missing venv
    env: dict[str, str] = {}


class NoRollback(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Nothing to say: the compensation restores the recorded package set."""


def command(payload: DepsPayload) -> Command:
    return Command(argv=argv_for("install_dependencies", "apply", payload),
                   env=dict(payload.env))


def compensation(payload: DepsPayload, rollback: NoRollback | None) -> Command:
    return Command(argv=argv_for("install_dependencies", "undo", payload),
                   env=dict(payload.env))


def requires(payload: DepsPayload, rollback: NoRollback | None) -> list[Requirement]:
    if payload.manager == "pip":
        return [Requirement("payload.python", payload.python, env=dict(payload.env))]
    return [Requirement("payload.manager", "npm", env=dict(payload.env)),
            Requirement("payload.manager", "node", env=dict(payload.env))]


def check(payload: DepsPayload, rollback: NoRollback | None) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if not payload.project.strip():
        found.append(("payload.project", "the path is empty"))
    for i, spec in enumerate(payload.packages):
        if not spec.strip():
            found.append((f"payload.packages[{i}]", "the package is empty"))
        elif spec.startswith("-"):
            found.append((f"payload.packages[{i}]", f"{spec!r} is an option, not a package"))
    if payload.manager == "pip":
        if not payload.packages and payload.requirements is None:
            found.append(("payload.packages", "nothing to install: give packages or "
                                              "requirements"))
        if payload.requirements is not None and not payload.requirements.strip():
            found.append(("payload.requirements", "the path is empty"))
        if payload.venv is not None and not payload.venv.strip():
            found.append(("payload.venv", "the path is empty"))
    else:
        if payload.requirements is not None:
            found.append(("payload.requirements", "only for pip (npm installs what "
                                                  "package.json lists when packages is empty)"))
        if payload.venv is not None:
            found.append(("payload.venv", "only for pip"))
    return found


# -- package sets ------------------------------------------------------------------------------

def normalize(name: str) -> str:
    """A pip distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _older(new: str, old: str) -> bool:
    """Whether ``new`` is an older version than ``old`` (PEP 440 order, which also orders
    plain semver; versions it cannot parse count as upgrades)."""
    try:
        return Version(new) < Version(old)
    except InvalidVersion:
        return False


def diff(before: dict[str, str], after: dict[str, str]) -> dict[str, Any]:
    """What an install changed: ``added`` / ``removed`` name -> version, ``upgraded`` /
    ``downgraded`` name -> {from, to}."""
    changed = {n: {"from": before[n], "to": v} for n, v in sorted(after.items())
               if n in before and before[n] != v}
    down = {n: c for n, c in changed.items() if _older(c["to"], c["from"])}
    return {
        "added": {n: v for n, v in sorted(after.items()) if n not in before},
        "upgraded": {n: c for n, c in changed.items() if n not in down},
        "downgraded": down,
        "removed": {n: v for n, v in sorted(before.items()) if n not in after},
    }


def _env() -> dict[str, str]:
    """This environment without what would make the venv's python see other packages."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _run(argv: list[str], cwd: Path, what: str) -> None:
    """Run a tool with its output in the action's log; exit 1 naming it when it fails."""
    sys.stderr.flush()
    done = subprocess.run(argv, cwd=cwd, stdout=sys.stderr, stdin=subprocess.DEVNULL,
                          env=_env(), check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: {what} failed (exit {done.returncode}): "
                         f"{' '.join(argv)}")


def _project(payload: DepsPayload) -> Path:
    return blobs.resolve(os.path.expanduser(payload.project))


def _venv(payload: DepsPayload, project: Path) -> Path:
    return project / os.path.expanduser(payload.venv or ".venv")


def pip_set(venv: Path) -> dict[str, str]:
    """Every distribution installed in ``venv``: normalized name -> version."""
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format",
                          "json", *PIP_FLAGS], capture_output=True, text=True, env=_env(),
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"error: pip list in {venv} failed: {out.stderr.strip()}")
    return {normalize(p["name"]): str(p["version"]) for p in json.loads(out.stdout)}


def npm_set(project: Path) -> dict[str, str]:
    """The top-level packages in ``node_modules``: name -> version (``npm ls`` exits non-zero
    when something is missing or extraneous; its JSON still says what is there)."""
    if not (project / "node_modules").is_dir():
        return {}
    out = subprocess.run(["npm", "ls", "--json", "--depth=0"], cwd=project,
                         capture_output=True, text=True, env=_env(), check=False)
    try:
        deps = json.loads(out.stdout or "{}").get("dependencies") or {}
    except ValueError:
        raise SystemExit(f"error: npm ls in {project}: {out.stderr.strip()}") from None
    return {str(n): str(d["version"]) for n, d in sorted(deps.items())
            if isinstance(d, dict) and d.get("version") and not d.get("missing")}


# -- apply -------------------------------------------------------------------------------------

def _before(payload: DepsPayload, project: Path) -> dict[str, Any]:
    if payload.manager == "pip":
        venv = _venv(payload, project)
        existed = (venv / "bin" / "python").exists()
        return {"manager": "pip", "project": str(project), "venv": str(venv),
                "venv_existed": existed, "packages": pip_set(venv) if existed else {}}
    return {"manager": "npm", "project": str(project),
            "node_modules_existed": (project / "node_modules").is_dir(),
            "files": {name: blobs.image_of(project / name) for name in NPM_FILES},
            "packages": npm_set(project)}


def apply(payload: DepsPayload) -> dict[str, Any]:
    from sp.runner import api

    problems = check(payload, None)
    if problems:
        raise UsageError("; ".join(f"{w}: {m}" for w, m in problems))
    project = _project(payload)
    if not project.is_dir():
        raise UsageError(f"{project}: no such project directory")
    previous = api.last_checkpoint()
    if isinstance(previous, dict) and "before" in previous:
        before: dict[str, Any] = previous["before"]  # a retry: the original set is kept
    else:
        before = _before(payload, project)
        blobs.report({"before": before}, step=0)
    if payload.manager == "pip":
        venv = Path(before["venv"])
        if not (venv / "bin" / "python").exists():
            _run([payload.python, "-m", "venv", str(venv)], project, "creating the venv")
        reqs = ["-r", payload.requirements] if payload.requirements else []
        _run([str(venv / "bin" / "python"), "-m", "pip", "install", *PIP_FLAGS, *reqs,
              *payload.packages], project, "pip install")
        after = pip_set(venv)
    else:
        _run(["npm", "install", *NPM_FLAGS, *payload.packages], project, "npm install")
        after = npm_set(project)
    state: dict[str, Any] = {"packages": after}
    if payload.manager == "npm":
        state["files"] = {n: blobs.sha_of(project / n) for n in NPM_FILES}
    done = {"before": before, "after": state, "diff": diff(before["packages"], after),
            "installed": list(payload.packages)}
    blobs.report(done, step=1)
    return done


# -- undo --------------------------------------------------------------------------------------

def undo(payload: DepsPayload, original: str | None) -> dict[str, Any]:
    action_id = blobs.compensated_action(original)
    found = blobs.recorded(action_id, "before")
    if found is None:
        return {"restored": False, "note": f"{action_id} recorded no package set: nothing done"}
    before: dict[str, Any] = found["before"]
    result = (_undo_pip if before["manager"] == "pip" else _undo_npm)(before)
    return {**result, "compensates": action_id}


def _undo_pip(before: dict[str, Any]) -> dict[str, Any]:
    venv, project = Path(before["venv"]), Path(before["project"])
    if not before["venv_existed"]:
        shutil.rmtree(venv, ignore_errors=True)
        return {"restored": True, "removed_venv": str(venv)}
    wanted: dict[str, str] = before["packages"]
    current = pip_set(venv)
    extra = sorted(n for n in current if n not in wanted)
    back = [f"{n}=={v}" for n, v in sorted(wanted.items()) if current.get(n) != v]
    python = str(venv / "bin" / "python")
    if extra:
        _run([python, "-m", "pip", "uninstall", "-y", *PIP_FLAGS, *extra], project,
             "pip uninstall")
    if back:
        _run([python, "-m", "pip", "install", "--no-deps", *PIP_FLAGS, *back], project,
             "pip install of the previous versions")
    now = pip_set(venv)
    if now != wanted:
        raise SystemExit(f"error: {venv} does not match the recorded set after the undo: "
                         f"{json.dumps(diff(wanted, now), sort_keys=True)}")
    return {"restored": True, "uninstalled": extra, "reinstalled": back}


def _undo_npm(before: dict[str, Any]) -> dict[str, Any]:
    project = Path(before["project"])
    for name, image in before["files"].items():
        blobs.restore(project / name, image)
    modules = project / "node_modules"
    if not before["node_modules_existed"]:
        shutil.rmtree(modules, ignore_errors=True)
        how = "removed node_modules"
    elif before["files"]["package-lock.json"]["blob"] is not None:
        _run(["npm", "ci", *NPM_FLAGS], project, "npm ci")
        how = "npm ci"
    else:
        _run(["npm", "install", "--no-package-lock", *NPM_FLAGS], project, "npm install")
        how = "npm install --no-package-lock"
    now = npm_set(project)
    return {"restored": True, "how": how, "restored_exactly": now == before["packages"],
            "packages": now}


TYPE = register(ActionType(
    name="install_dependencies", payload=DepsPayload, rollback=NoRollback, command=command,
    compensation=compensation, requires=requires, check=check,
))
