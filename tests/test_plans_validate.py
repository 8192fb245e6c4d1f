"""Plan files: every problem reported with its path, nothing written when invalid; the graph
(sub-plans flattened, levels, critical path); includes; TOML; `sp plan show FILE`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sp import actions
from sp.plans import graph
from sp.plans.load import check_plan
from sp.plans.model import MAX_DEPTH
from tests.conftest import Sp


def _write(tmp_path: Path, text: str, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _ledger(sp: Sp) -> bytes:
    path = Path(sp.home.ledger_path)
    return path.read_bytes() if path.exists() else b""


BROKEN = """
on_failure: maybe
actions:
  - id: fetch
    type: shel
    payload: {command: [echo, hi]}
  - id: build
    type: shell
    payload: {command: [echo, build], cwd: 3}
    depends_on: [fetch]
    timeout: 7x
    dependson: []
  - id: test
    type: shell
    payload: {command: [echo, test]}
    depends_on: [deploy, package]
  - id: package
    type: shell
    payload: {}
    depends_on: [lint]
  - id: lint
    type: shell
    payload: {command: [echo, lint]}
    depends_on: [test]
  - id: notify
    type: shell
    payload: {command: [sp-no-such-program-here, --now]}
    rollback: {command: ./undo-missing.sh, retry: {max_attempts: 0}}
  - id: fetch
    type: shell
    payload: {command: [echo]}
    recovery: fallback
"""


def test_validate_reports_every_problem_with_its_path(sp: Sp, tmp_path: Path) -> None:
    path = _write(tmp_path, BROKEN)
    result = sp("plan", "validate", str(path), ok=False)
    assert result.exit_code == 2
    f = str(path)
    expected = [
        f"{f}: $.on_failure: expected one of rollback, stop, continue, got 'maybe'",
        f"{f}: $.actions[0].type: unknown action type 'shel' "
        f"(known: {', '.join(actions.known())})",
        f"{f}: $.actions[1].dependson: unknown field (did you mean 'depends_on'?)",
        f'{f}: $.actions[1].timeout: expected a duration like "30s", "10m" or "2h", got \'7x\'',
        f"{f}: $.actions[1].payload.cwd: Expected `str | null`, got `int`",
        f"{f}: $.actions[3].payload.command: required field missing",
        f"{f}: $.actions[5].rollback.retry.max_attempts: must be between 1 and 1000, got 0",
        f"{f}: $.actions[5].payload.command[0]: executable 'sp-no-such-program-here' not found"
        " on this machine (not on PATH)",
        f"{f}: $.actions[5].rollback.command: executable './undo-missing.sh' not found on this"
        f" machine (no executable file {tmp_path}/undo-missing.sh)",
        f"{f}: $.actions[6].fallback: required when recovery is fallback",
        f"{f}: $.actions[6].id: duplicate id 'fetch' (first at $.actions[0])",
        f"{f}: $.actions[2].depends_on[0]: unknown action 'deploy'",
        f"{f}: $.actions[2].depends_on: dependency cycle: test -> package -> lint -> test",
    ]
    assert result.stderr.splitlines() == [f"Error: {line}" for line in expected]
    assert result.stdout == ""
    doc = json.loads(sp("plan", "validate", str(path), "--format", "json", ok=False).stdout)
    assert doc["valid"] is False
    assert [f"{p['file']}: {p['path']}: {p['message']}" for p in doc["problems"]] == expected


def test_an_invalid_plan_writes_nothing(sp: Sp, tmp_path: Path) -> None:
    sp("init")
    before = _ledger(sp)
    path = _write(tmp_path, BROKEN)
    result = sp("plan", "apply", str(path), ok=False)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("Error: ") == 13
    assert _ledger(sp) == before
    assert sp("plan", "show", str(path), ok=False).exit_code == 2
    assert _ledger(sp) == before


def _nested(levels: int) -> str:
    """A plan whose innermost action sits in sub-plan number ``levels`` (the top is 1)."""
    body = "{id: leaf, type: shell, payload: {command: [echo, leaf]}}"
    for i in range(levels - 1, 0, -1):
        body = f"{{id: sub{i}, actions: [{body}]}}"
    return f"actions: [{body}]\n"


def test_depth_five_is_accepted_and_six_refused(tmp_path: Path) -> None:
    plan, problems = check_plan(_write(tmp_path, _nested(MAX_DEPTH), "five.yaml"))
    assert problems == [] and plan is not None
    assert [s.id for s in plan.steps] == ["sub1/sub2/sub3/sub4/leaf"]
    _, problems = check_plan(_write(tmp_path, _nested(MAX_DEPTH + 1), "six.yaml"))
    assert [str(p) for p in problems] == [
        f"{tmp_path}/six.yaml: $.actions[0].actions[0].actions[0].actions[0].actions[0]:"
        " sub-plan depth 6 exceeds the maximum of 5"]


def test_cli_refuses_depth_six(sp: Sp, tmp_path: Path) -> None:
    result = sp("plan", "validate", str(_write(tmp_path, _nested(6))), ok=False)
    assert result.exit_code == 2
    assert "sub-plan depth 6 exceeds the maximum of 5" in result.stderr


def test_sub_plans_are_flattened_with_qualified_ids_and_levels(tmp_path: Path) -> None:
    (tmp_path / "inc.yaml").write_text("""
actions:
  - {id: x, type: shell, payload: {command: [echo, x]}}
  - {id: y, type: shell, payload: {command: [echo, y]}, depends_on: [x]}
  - {id: z, type: shell, payload: {command: [echo, z]}}
""")
    plan, problems = check_plan(_write(tmp_path, """
name: flat
actions:
  - {id: a, type: shell, payload: {command: [echo, a]}}
  - {id: b, type: shell, payload: {command: [echo, b]}, depends_on: [a]}
  - {id: c, type: shell, payload: {command: [echo, c]}, depends_on: [a]}
  - {id: sub, plan: inc.yaml, depends_on: [b, c]}
  - {id: d, type: shell, payload: {command: [echo, d]}, depends_on: [sub]}
"""))
    assert problems == [] and plan is not None
    deps = {s.id: s.depends_on for s in plan.steps}
    assert deps == {"a": [], "b": ["a"], "c": ["a"], "sub/x": ["b", "c"], "sub/z": ["b", "c"],
                    "sub/y": ["sub/x"], "d": ["sub/y", "sub/z"]}
    assert plan.levels() == [["a"], ["b", "c"], ["sub/x", "sub/z"], ["sub/y"], ["d"]]
    assert all(s.cwd == str(tmp_path) for s in plan.steps)


def test_problems_in_an_included_file_name_that_file(tmp_path: Path) -> None:
    (tmp_path / "inc.yaml").write_text("actions:\n  - {id: x, type: nope, payload: {}}\n")
    (tmp_path / "loop.yaml").write_text("actions:\n  - {id: again, plan: plan.yaml}\n")
    _, problems = check_plan(_write(tmp_path, """
actions:
  - {id: a, plan: inc.yaml}
  - {id: b, plan: missing.yaml}
  - {id: c, plan: loop.yaml}
"""))
    # An included file's problems are one problem of its parent, by count and position: its
    # text is never shown (tests/test_config_bounded.py); validated alone, it says all.
    hidden = "(an included file's text is not shown: sp plan validate {} shows it)"
    assert [str(p) for p in problems] == [
        f"{tmp_path}/plan.yaml: $.actions[0].plan: {tmp_path}/inc.yaml: not a valid sub-plan:"
        f" 1 problem, the first at line 2, column 19 {hidden.format(tmp_path / 'inc.yaml')}",
        f"{tmp_path}/plan.yaml: $.actions[1].plan: {tmp_path}/missing.yaml: cannot read: "
        "No such file or directory",
        f"{tmp_path}/plan.yaml: $.actions[2].plan: {tmp_path}/loop.yaml: not a valid sub-plan:"
        f" 1 problem, the first at line 2, column 23 {hidden.format(tmp_path / 'loop.yaml')}",
    ]
    _, alone = check_plan(tmp_path / "inc.yaml")
    assert [str(p) for p in alone] == [
        f"{tmp_path}/inc.yaml: $.actions[0].type: unknown action type 'nope' "
        f"(known: {', '.join(actions.known())})"]


def test_toml_plan_and_shell_forms(tmp_path: Path) -> None:
    plan, problems = check_plan(_write(tmp_path, """
name = "toml-plan"
on_failure = "continue"

[rollback]
strategy = "best-effort"
order = "forward"

[[actions]]
id = "split"
type = "shell"
payload = {command = "echo 'two words'"}
rollback = "echo undo"

[[actions]]
id = "sh"
type = "shell"
payload = {command = "echo a | tr a b", shell = true}
depends_on = ["split"]
timeout = "2m"
retry = {max_attempts = 3, backoff = "linear"}
""", "plan.toml"))
    assert problems == [] and plan is not None
    split, sh = plan.steps
    assert split.command == ["echo", "two words"] and not split.shell
    assert split.rollback is not None and split.rollback.argv == ["echo", "undo"]
    assert sh.command == ["echo a | tr a b"] and sh.shell
    assert (sh.timeout_ms, sh.max_attempts, sh.backoff) == (120_000, 3, "linear")
    assert (plan.on_failure, plan.rollback_order, plan.rollback_strategy) == (
        "continue", "forward", "best-effort")


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2]", "$: expected a mapping with actions, got a list"),
    ("name: x\n", "$.actions: required field missing"),
    ("actions: []\n", "$.actions: a plan needs at least one action"),
    ("actions:\n  - {id: 'a b', type: shell, payload: {command: [echo]}}\n",
     "$.actions[0].id: 'a b' is not a valid id: it contains ' '; use letters, digits, '.', "
     "'_' and '-', starting with a letter or digit, at most 64"),
    ("actions:\n  - {id: a, type: shell, payload: {command: \"echo 'x\"}}\n",
     "$.actions[0].payload.command: cannot split the command: No closing quotation"),
    ("actions:\n  - {id: a, type: shell, payload: {command: []}}\n",
     "$.actions[0].payload.command: the command is empty"),
    ("actions:\n  - {id: a, actions: [], plan: x.yaml}\n",
     "$.actions[0]: a sub-plan has either actions: or plan:, not both"),
    ("actions:\n  - {id: a, type: shell, payload: {command: [echo]}, depends_on: [a]}\n",
     "$.actions[0].depends_on: dependency cycle: a -> a"),
    ("actions:\n  - {id: a, type: shell, payload: {command: [echo]}, fallback: "
     "{type: shell, payload: {command: [echo]}}}\n",
     "$.actions[0].fallback: only used with recovery: fallback"),
    ("actions:\n  - {id: a, type: shell, payload: {command: [echo]}, recovery: fallback, "
     "fallback: {type: shell, payload: {command: [sp-no-such-fallback]}}}\n",
     "$.actions[0].fallback.payload.command[0]: executable 'sp-no-such-fallback' not found on "
     "this machine (not on PATH)"),
    ("actions: [{id: a, type: shell, payload: {command: [echo]}, recovery: later}]\n",
     "$.actions[0].recovery: expected one of retry, fallback, skip, abort, got 'later'"),
    ("actions:\n  - {id: a, type: shell, payload: {command: [echo], colour: red}}\n",
     "$.actions[0].payload.colour: unknown field"),
])
def test_single_problems(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    _, problems = check_plan(path)
    assert [str(p) for p in problems] == [f"{path}: {message}"]


def test_graph_helpers() -> None:
    deps = {"a": [], "b": ["a", "d"], "c": ["b"], "d": ["c"], "e": ["e"], "f": ["a"]}
    assert graph.cycles(list(deps), deps) == [["b", "d", "c", "b"], ["e", "e"]]
    dag = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    order = graph.topological(["d", "c", "b", "a"], dag)
    assert order.index("a") < order.index("b") < order.index("d")
    assert graph.levels(order, dag) == {"a": 1, "b": 2, "c": 2, "d": 3}
    assert graph.critical_path(order, dag, {"a": 1, "b": 5, "c": 2, "d": 1}) == (
        7, ["a", "b", "d"])


def test_show_file_gives_order_parallelism_and_unknown_estimate(sp: Sp, tmp_path: Path) -> None:
    path = _write(tmp_path, """
name: diamond
actions:
  - {id: a, type: shell, payload: {command: [echo, a]}}
  - {id: b, type: shell, payload: {command: [echo, b]}, depends_on: [a]}
  - {id: c, type: shell, payload: {command: [echo, c]}, depends_on: [a]}
  - {id: d, type: shell, payload: {command: [echo, d]}, depends_on: [b, c]}
""")
    sp("init")
    before = _ledger(sp)
    doc = json.loads(sp("plan", "show", str(path), "--format", "json").stdout)
    assert doc["levels"] == [["a"], ["b", "c"], ["d"]]
    assert doc["parallel"] == [["b", "c"]] and doc["max_parallel"] == 2
    assert doc["estimated_ms"] is None and doc["unknown"] == ["a", "b", "c", "d"]
    assert doc["critical_path"] == ["a", "b", "d"]
    out = sp("plan", "show", str(path)).stdout
    assert "parallel: level 2: b, c" in out
    assert "estimated duration: unknown (no history for a, b, c, d)" in out
    assert _ledger(sp) == before
