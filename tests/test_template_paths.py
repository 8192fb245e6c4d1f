"""clone_template stays inside its target (issue 11, item 7): a variable value ``../../x`` in
a file name, or a symlink in the template, once wrote outside the target (with no policy) and
rollback did not restore it. Now the rendered names are refused at validation (exit 2,
nothing written) or, when only the run can see them, the step fails having written nothing
outside; the file outside keeps its bytes. Real plan files, a real worker, real processes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sp.commands import plans
from sp.commands.home import Home
from sp.ledger.store import EventStore
from sp.runner.worker import Worker
from tests import hostile as h
from tests.conftest import Sp

pytestmark = pytest.mark.timeout(120)
PRECIOUS = b"precious bytes \x00\xff\n"


def _tree(root: Path, skip: Path) -> dict[str, bytes | str | None]:
    """Every path below ``root`` but ``skip`` (the home): bytes, link target or None (dir)."""
    out: dict[str, bytes | str | None] = {}
    for p in sorted(root.rglob("*")):
        if p == skip or skip in p.parents:
            continue
        out[str(p.relative_to(root))] = (str(p.readlink()) if p.is_symlink() else
                                         None if p.is_dir() else p.read_bytes())
    return out


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    """A template whose file name is ``{{name}}`` and a file beside the target that a name
    ``../../x`` would reach (the tree is built two folders below the target's parent)."""
    tpl = tmp_path / "tpl"
    (tpl / "sub").mkdir(parents=True)
    (tpl / "{{name}}").write_text("hello {{name}}\n")
    (tpl / "sub" / "{{name}}.txt").write_text("x\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "x").write_bytes(PRECIOUS)
    return tpl, work


def _plan(work: Path, source: str, variables: dict[str, Any],
          features: list[str] | None = None) -> Path:
    path = work / "plan.yaml"  # JSON is YAML
    path.write_text(json.dumps({"name": "scaffold", "actions": [{
        "id": "clone", "type": "clone_template",
        "payload": {"source": source, "path": "app", "variables": variables,
                    "features": features or []}}]}))
    return path


@pytest.mark.parametrize("value", ["../../x", "../x", "..", "a/b", "/etc/x", "."])
def test_a_variable_that_leaves_the_target_is_refused_at_validation(
        sp: Sp, tmp_path: Path, value: str) -> None:
    tpl, work = _setup(tmp_path)
    plan = _plan(work, str(tpl), {"name": value})
    sp("init")
    before, files = h.ledger_state(sp.home), _tree(tmp_path, sp.home.root)
    for verb in ("validate", "apply"):
        result = sp("plan", verb, str(plan), ok=False)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and result.output.count("\n") == 1, result.output
        assert "$.actions[0].payload.variables" in result.output, result.output
        assert h.ledger_state(sp.home) == before
    assert _tree(tmp_path, sp.home.root) == files
    assert (work / "x").read_bytes() == PRECIOUS
    sp("plan", "validate", str(_plan(work, str(tpl), {"name": "demo"})))  # plain: fine


def _bare_repo(tpl: Path, tmp_path: Path) -> Path:
    """The template as a bare git repository: validation cannot see its names (no working
    tree); only the run can."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tpl)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "template"], check=True)
    bare = tmp_path / "tpl.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(tpl), str(bare)], check=True)
    return bare


def _apply_and_run(store: EventStore, home: Home, plan: Path) -> dict[str, Any]:
    plan_id = plans.apply(store, plan)
    Worker(store, home, concurrency=1).run(until_idle=True)
    doc = plans.status(store, plan_id)
    return {s["step"]: s["state"] for s in doc["actions"]}


def test_a_name_only_the_run_sees_fails_the_step_and_writes_nothing_outside(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    tpl, work = _setup(tmp_path)
    bare = _bare_repo(tpl, tmp_path)
    plan = _plan(work, str(bare), {"name": "../../x"})
    files = _tree(tmp_path, home.root)
    assert _apply_and_run(store, home, plan) == {"clone": "failed"}
    assert (work / "x").read_bytes() == PRECIOUS
    assert _tree(tmp_path, home.root) == files  # nothing created anywhere, the target neither


def test_a_symlink_in_the_template_is_never_written_through(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    tpl, work = _setup(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config").write_bytes(PRECIOUS)
    (tpl / "link").symlink_to(outside)  # the base has a link to a folder outside
    (tpl / "features" / "extra" / "link").mkdir(parents=True)  # a feature merges into it
    (tpl / "features" / "extra" / "link" / "config").write_text("overwritten\n")
    (tpl / "features" / "extra" / "link" / "planted").write_text("planted\n")
    plan = _plan(work, str(tpl), {"name": "demo"}, features=["extra"])
    files = _tree(tmp_path, home.root)
    assert _apply_and_run(store, home, plan) == {"clone": "failed"}
    assert (outside / "config").read_bytes() == PRECIOUS
    assert not (outside / "planted").exists()
    assert _tree(tmp_path, home.root) == files
    # Without the feature the same template clones, its link copied as a link.
    assert _apply_and_run(store, home, _plan(work, str(tpl), {"name": "demo"})) == {
        "clone": "completed"}
    assert (work / "app" / "demo").read_text() == "hello demo\n"
    assert (work / "app" / "sub" / "demo.txt").read_text() == "x\n"
    assert (work / "app" / "link").readlink() == outside
    assert (outside / "config").read_bytes() == PRECIOUS
