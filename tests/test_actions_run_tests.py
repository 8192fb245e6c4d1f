"""The ``run_tests`` action type with real processes: a small pytest project made here, run
as a plan step by a worker, its outcome parsed from pytest's summary line and JUnit XML."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from sp.actions import tests_type
from sp.commands import plans
from sp.commands.home import Home
from sp.ledger.store import EventStore
from sp.runner.worker import Worker

pytestmark = pytest.mark.timeout(120)

SAMPLE = '''
import pytest

def test_one():
    assert 1 + 1 == 2

def test_two():
    assert "a" in "abc"

def test_bad():
    assert 2 + 2 == 5

@pytest.mark.skip(reason="not today")
def test_later():
    pass
'''


def _checkpoint(store: EventStore, action_id: str) -> Any:
    row = store.query_one("SELECT data FROM checkpoints WHERE action_id = ?", (action_id,))
    assert row is not None
    return json.loads(row[0])


def _run_plan(store: EventStore, home: Home, tmp_path: Path, step: str) -> dict[str, Any]:
    path = tmp_path / "plan.yaml"
    path.write_text(f"name: tests\nactions:\n{step}")
    plan_id = plans.apply(store, path)
    Worker(store, home, concurrency=1).run(until_idle=True)
    (action,) = plans.status(store, plan_id)["actions"]
    return dict(action)


def test_run_tests_parses_a_real_pytest_project(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "test_sample.py").write_text(SAMPLE)
    action = _run_plan(store, home, tmp_path,
                       "  - {id: test, type: run_tests, payload: {cwd: proj}}\n")
    assert action["state"] == "failed" and action["exit_code"] == 1
    result = _checkpoint(store, action["action_id"])
    assert (result["passed"], result["failed"], result["skipped"], result["errors"]) == (2, 1, 1, 0)
    assert result["failing"] == ["test_sample.py::test_bad"]
    assert result["source"] == "junit" and result["duration_s"] >= 0
    # both parsers agree: pytest's own summary line and the JUnit XML added automatically
    summary, junit = result["summary"], result["junit"]
    assert (summary["passed"], summary["failed"], summary["skipped"]) == (2, 1, 1)
    assert (junit["passed"], junit["failed"], junit["skipped"]) == (2, 1, 1)
    assert junit["failing"] == ["test_sample::test_bad"]
    assert any(a.startswith("--junitxml=") for a in result["command"])
    row = store.query_one("SELECT error FROM actions WHERE action_id = ?",
                          (action["action_id"],))
    assert row is not None


def test_run_tests_all_passing_completes(store: EventStore, home: Home, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "test_ok.py").write_text("def test_ok():\n    pass\n")
    action = _run_plan(store, home, tmp_path,
                       "  - {id: test, type: run_tests, payload: {cwd: proj}}\n")
    assert action["state"] == "completed"
    result = _checkpoint(store, action["action_id"])
    assert (result["passed"], result["failed"], result["failing"]) == (1, 0, [])


def test_run_tests_reads_junit_xml_written_by_any_command(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "runner.py").write_text(
        "open('report.xml', 'w').write('''<testsuites><testsuite name=\"s\" time=\"1.5\">"
        "<testcase classname=\"pkg.Mod\" name=\"ok\"/>"
        "<testcase classname=\"pkg.Mod\" name=\"broken\"><failure message=\"x\"/></testcase>"
        "<testcase classname=\"pkg.Mod\" name=\"boom\"><error message=\"y\"/></testcase>"
        "<testcase classname=\"pkg.Mod\" name=\"later\"><skipped/></testcase>"
        "</testsuite></testsuites>''')\n")
    step = (f"  - {{id: test, type: run_tests, payload: {{cwd: proj, junit_xml: report.xml, "
            f"command: [{sys.executable}, runner.py]}}}}\n")
    action = _run_plan(store, home, tmp_path, step)
    assert action["state"] == "failed" and action["exit_code"] == 1  # the command exited 0
    result = _checkpoint(store, action["action_id"])
    assert (result["passed"], result["failed"], result["skipped"], result["errors"]) == (1, 1, 1, 1)
    assert result["failing"] == ["pkg.Mod::broken", "pkg.Mod::boom"]
    assert result["duration_s"] == 1.5 and result["summary"] is None


def test_summary_line_parser() -> None:
    out = ("....\nFAILED tests/test_x.py::test_y - assert 0\nERROR tests/test_z.py\n"
           "===== 3 passed, 1 failed, 2 skipped, 1 error, 4 warnings in 0.52s =====\n")
    assert tests_type.parse_pytest_output(out) == {
        "passed": 3, "failed": 1, "skipped": 2, "errors": 1, "duration_s": 0.52,
        "failing": ["tests/test_x.py::test_y", "tests/test_z.py"]}
    assert tests_type.parse_pytest_output("1 passed in 0.01s\n") is not None
    assert tests_type.parse_pytest_output("no summary here\n") is None


def test_run_tests_plan_validation(tmp_path: Path) -> None:
    from sp.plans.errors import PlanInvalidError

    path = tmp_path / "plan.yaml"
    path.write_text("name: t\nactions:\n  - {id: a, type: run_tests, payload: {command: []},"
                    " rollback: {command: x}}\n  - {id: b, type: run_tests,"
                    " payload: {command: [no-such-program-here]}}\n")
    with pytest.raises(PlanInvalidError) as err:
        plans.validate(path)
    text = "\n".join(str(p) for p in err.value.problems)
    assert "$.actions[0].payload.command: the command is empty" in text
    assert "$.actions[0].rollback: a run_tests action cannot be rolled back" in text
    assert "$.actions[1].payload.command[0]: executable 'no-such-program-here'" in text
