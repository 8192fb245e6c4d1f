"""Hostile plan files (``sp plan validate|apply FILE``).

A plan's author is told every problem, one ``Error:`` line each (plans report them all, by
design); each line names the file and the place, exit 2, and the ledger is untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from hypothesis import given
from hypothesis import strategies as st

from tests import hostile as h
from tests.conftest import Sp


@st.composite
def plan(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 4))
    steps = []
    for i in range(n):
        step: dict[str, Any] = {"id": f"s{i}", "type": "shell",
                                "payload": {"command": draw(h.command)}}
        if i and draw(st.booleans()):
            step["depends_on"] = draw(st.lists(st.sampled_from([f"s{j}" for j in range(i)]),
                                               max_size=2, unique=True))
        if draw(st.booleans()):
            step["timeout"] = draw(st.sampled_from(["30s", "10m", 5]))
        if draw(st.booleans()):
            step["priority"] = draw(st.integers(-1000, 1000))
        if draw(st.booleans()):
            step["retry"] = {"max_attempts": draw(st.integers(1, 5))}
        if draw(st.booleans()):
            step["rollback"] = {"command": draw(h.command)}
        steps.append(step)
    doc: dict[str, Any] = {"name": draw(h.ident), "actions": steps}
    if draw(st.booleans()):
        doc["on_failure"] = draw(st.sampled_from(["rollback", "stop", "continue"]))
    if draw(st.booleans()):
        doc["description"] = draw(h.plain_text)
    return doc


fmt = st.sampled_from(["yaml", "toml"])

WRONG: list[tuple[tuple[Any, ...], Any]] = [
    (("actions",), []), (("actions",), {}), (("actions",), "x"), (("name",), 5),
    (("on_failure",), "explode"), (("rollback",), {"order": "sideways"}),
    (("actions", 0, "id"), "-bad id"), (("actions", 0, "id"), ""), (("actions", 0, "type"), "nuke"),
    (("actions", 0, "payload"), {"command": []}), (("actions", 0, "payload"), {}),
    (("actions", 0, "payload"), {"command": "unbalanced 'quote"}),
    (("actions", 0, "payload"), {"command": ["no-such-program-zz"]}),
    (("actions", 0, "depends_on"), ["s0"]), (("actions", 0, "depends_on"), ["ghost"]),
    (("actions", 0, "timeout"), "1e999h"), (("actions", 0, "timeout"), 10**400),
    (("actions", 0, "priority"), 10**12), (("actions", 0, "priority"), 2**64),
    (("actions", 0, "retry"), {"max_attempts": 0}),
    (("actions", 0, "recovery"), "fallback"),
    (("actions", 0, "rollback"), 7), (("actions", 0, "rollback"), {"command": [""]}),
    (("actions", 0, "plan"), "missing.yaml"),
    (("actions", 0), {"id": "sub", "actions": [], "plan": "x.yaml"}),
    (("actions", 0), "just text"),
]


@pytest.fixture
def ready(sp: Sp) -> Sp:
    sp("init")
    return sp


def assert_plan_rejected(result: Result, file: str) -> None:
    """Exit 2, and every line an ``Error:`` naming the file and a place; nothing else."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.output.split("\n")
    assert lines[-1] == "" and len(lines) >= 2, result.output
    for line in lines[:-1]:
        h.assert_one_line_error(line + "\n", file, 2)


def _reject(sp: Sp, path: Path) -> None:
    before = h.ledger_state(sp.home)
    assert_plan_rejected(sp("plan", "apply", str(path), ok=False), str(path))
    assert h.ledger_state(sp.home) == before
    assert_plan_rejected(sp("plan", "validate", str(path), ok=False), str(path))


@h.FUZZ
@given(doc=plan(), fmt=fmt)
def test_valid_plans_are_accepted(ready: Sp, tmp_path: Path, doc: dict[str, Any],
                                  fmt: str) -> None:
    path = h.write(tmp_path / "plan", doc, fmt)
    result = ready("plan", "validate", str(path), ok=False)
    assert result.exit_code == 0, result.output


def test_a_valid_plan_is_applied(ready: Sp, tmp_path: Path) -> None:
    path = h.write(tmp_path / "plan", {"name": "p", "actions": [
        {"id": "a", "type": "shell", "payload": {"command": ["true"]}}]}, "yaml")
    assert ready("plan", "apply", str(path)).exit_code == 0


@h.FUZZ
@given(doc=st.one_of(h.poisoned(plan()), h.with_unknown_key(plan(), skip=("payload",))),
       fmt=fmt)
def test_mistyped_plans_are_refused(ready: Sp, tmp_path: Path, doc: dict[str, Any],
                                    fmt: str) -> None:
    _reject(ready, h.write(tmp_path / "plan", doc, fmt))


CASES = [(f, w, v) for f in ("yaml", "toml") for w, v in WRONG if f == "yaml" or h.toml_ok(v)]


@pytest.mark.parametrize(("fmt", "where", "value"), CASES, ids=[
    f"{f}:{'.'.join(map(str, w))}={v!r}"[:60] for f, w, v in CASES])
def test_wrong_values_are_refused(ready: Sp, tmp_path: Path, fmt: str, where: tuple[Any, ...],
                                  value: Any) -> None:
    base = {"name": "p", "actions": [{"id": "s0", "type": "shell",
                                      "payload": {"command": ["true"]}}]}
    _reject(ready, h.write(tmp_path / "plan", h.replaced(base, where, value), fmt))


@h.FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".yaml", ".toml"]))
def test_random_bytes_never_crash(ready: Sp, tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"plan{suffix}"
    path.write_bytes(data)
    before = h.ledger_state(ready.home)
    result = ready("plan", "apply", str(path), ok=False)
    if result.exit_code != 0:
        assert_plan_rejected(result, str(path))
        assert h.ledger_state(ready.home) == before


@pytest.mark.parametrize("text", [*h.BAD_YAML, h.laughs(9, 9), "actions: &a [*a]\n",
                                  "actions: " + "[" * 3000 + "]" * 3000 + "\n", ""])
def test_broken_yaml_plans_are_refused(ready: Sp, tmp_path: Path, text: str) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    _reject(ready, path)


@pytest.mark.parametrize("text", [*h.BAD_TOML, "a = " + "[" * 3000 + "]" * 3000 + "\n"])
def test_broken_toml_plans_are_refused(ready: Sp, tmp_path: Path, text: str) -> None:
    path = tmp_path / "plan.toml"
    path.write_text(text)
    _reject(ready, path)


def test_a_bad_sub_plan_file_is_refused_in_the_parent(ready: Sp, tmp_path: Path) -> None:
    (tmp_path / "child.yaml").write_text(h.laughs(9, 9))
    path = tmp_path / "parent.yaml"
    path.write_text("actions:\n  - {id: sub, plan: child.yaml}\n")
    _reject(ready, path)


@pytest.mark.slow
def test_a_bad_plan_in_a_real_process(sp: Sp, tmp_path: Path) -> None:
    sp("init")
    before = h.ledger_state(sp.home)
    path = tmp_path / "plan.yaml"
    path.write_bytes(b"actions:\n  - {id: a, type: shell, payload: {command: [\x00]}}\n")
    proc = sp.proc("plan", "apply", str(path), timeout=30)
    h.assert_one_line_error(proc.stderr, str(path), proc.returncode)
    assert proc.stdout == "" and h.ledger_state(sp.home) == before
