"""Hostile input beyond the configuration files: checkpoint JSON (``sp checkpoint``), ``sp submit``
arguments and ``--each`` files, and policy files (``sp agent policy ID --set FILE``).

Agent, plan and trigger files: test_hostile_agents.py, test_hostile_plans.py,
test_hostile_triggers.py (webhook bodies too). Shared parts: tests/hostile.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sp.commands import actions, execution
from tests import hostile as h
from tests.conftest import Sp
from tests.test_hostile_agents import capabilities, storage

# -- checkpoint JSON ---------------------------------------------------------------------------


@pytest.fixture
def running_action(sp: Sp) -> tuple[Sp, str]:
    """An executing action (claimed, nothing spawned), every connection closed again."""
    store = sp.home.open()
    try:
        (action_id,) = actions.submit(store, [actions.SubmitSpec(command=["true"])])
        execution.claim(store, action_id, "test-owner")
    finally:
        store.close()
    return sp, action_id


finite = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), h.any_text,
              st.floats(allow_nan=False, allow_infinity=False)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(h.any_text, inner, max_size=4)), max_leaves=12)


def _checkpoint(sp: Sp, action_id: str, data: str) -> Any:
    return sp("checkpoint", "--action", action_id, "--", data, ok=False)


@h.FUZZ
@given(value=finite)
def test_any_json_value_is_a_checkpoint(running_action: tuple[Sp, str], value: Any) -> None:
    sp, action_id = running_action
    result = _checkpoint(sp, action_id, json.dumps(value))
    assert result.exit_code == 0, result.output


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


BAD_JSON = st.one_of(
    # cut short (a number cut short, "10" -> "1", is still JSON: not bad input)
    finite.map(json.dumps).filter(lambda t: len(t) > 1).map(lambda t: t[:-1]).filter(
        lambda t: not _is_json(t)),
    finite.map(lambda v: json.dumps([v]) + "]"),  # one bracket too many
    st.integers(129, 50_000).map(lambda n: "[" * n + "]" * n),
    st.integers(129, 50_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.sampled_from(["", " ", "NaN", "[Infinity]", "[1e999]", "{'a': 1}", "{a: 1}", "[1,]",
                     '{"a" 1}', "\ufeff{}", "nul", '"\\ud800"', '"\\q"', "0x10", "01",
                     "[1] [2]", "\x00", '"a\nb"', '{"a":1}\x1b[2J']),
)


@h.FUZZ
@given(data=BAD_JSON)
def test_bad_checkpoint_json_is_refused(running_action: tuple[Sp, str], data: str) -> None:
    sp, action_id = running_action
    before = h.ledger_state(sp.home)
    h.assert_rejected(_checkpoint(sp, action_id, data), "checkpoint data")
    assert h.ledger_state(sp.home) == before


@h.FUZZ
@given(data=st.text(max_size=60))
def test_any_checkpoint_text_is_accepted_or_refused(running_action: tuple[Sp, str],
                                                    data: str) -> None:
    sp, action_id = running_action
    before = h.ledger_state(sp.home)
    if not h.assert_robust(_checkpoint(sp, action_id, data), "checkpoint data"):
        assert h.ledger_state(sp.home) == before


@pytest.mark.slow
def test_bad_checkpoint_in_a_real_process(running_action: tuple[Sp, str]) -> None:
    sp, action_id = running_action
    before = h.ledger_state(sp.home)
    proc = sp.proc("checkpoint", "--action", action_id, "--", "[" * 100_000)
    h.assert_one_line_error(proc.stderr, "checkpoint data", proc.returncode)
    assert proc.stdout == "" and h.ledger_state(sp.home) == before


# -- sp submit -----------------------------------------------------------------------------------

SUBMIT_BAD = [
    (["--priority", str(10**30)], "priority"), (["--priority", str(2**63)], "priority"),
    (["--retries", str(10**20)], "retries"), (["--retries", "-5"], "retries"),
    (["--timeout", "9" * 30 + "h"], "--timeout"), (["--timeout", "1e999"], "--timeout"),
    (["--timeout", "0"], "timeout"), (["--timeout", "-1s"], "--timeout"),
    (["--delay", "9" * 30 + "h"], "--delay"), (["--delay", "soon"], "--delay"),
    (["--after", "no-such-action"], "no-such-action"), (["--compensate", "x'"], "--compensate"),
    (["--backoff", "sideways"], "--backoff"), (["--priority", "high"], "--priority"),
]


@pytest.mark.parametrize(("args", "names"), SUBMIT_BAD, ids=[" ".join(a)[:40]
                                                              for a, _ in SUBMIT_BAD])
def test_bad_submit_arguments_are_refused(sp: Sp, args: list[str], names: str) -> None:
    sp("init")
    before = h.ledger_state(sp.home)
    result = sp("submit", *args, "--", "true", ok=False)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    out = result.output
    assert out.startswith("Error: ") and out.count("\n") == 1, out
    assert names in out, out
    assert h.ledger_state(sp.home) == before


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage\n", b"echo a\x00b\n",
                                     b"echo ok\n\x80\n", b"true\n" + b"\xc3\x28\n"])
def test_bad_each_files_are_refused(sp: Sp, tmp_path: Path, content: bytes) -> None:
    sp("init")
    before = h.ledger_state(sp.home)
    path = tmp_path / "each.txt"
    path.write_bytes(content)
    h.assert_rejected(sp("submit", "--each", str(path), ok=False), str(path))
    assert h.ledger_state(sp.home) == before


@h.FUZZ
@given(argv=st.lists(h.arg.filter(lambda a: not a.startswith("-")), min_size=1, max_size=4)
       .filter(lambda a: bool(a[0].strip())))
def test_any_command_argv_is_kept_verbatim(sp: Sp, argv: list[str]) -> None:
    result = sp("submit", "--", *argv, ok=False)
    assert result.exit_code == 0, result.output
    action_id = result.stdout.strip()
    store = sp.home.open()
    try:
        row = store.query_one("SELECT data FROM events WHERE stream = ? AND "
                              "type = 'action.submitted'", (action_id,))
    finally:
        store.close()
    assert row is not None
    doc = json.loads(row[0])
    assert doc["command"] == argv and doc.get("shell", False) is False


@pytest.mark.slow
def test_bad_each_file_in_a_real_process(sp: Sp, tmp_path: Path) -> None:
    sp("init")
    before = h.ledger_state(sp.home)
    path = tmp_path / "each.bin"
    path.write_bytes(bytes(range(256)))
    proc = sp.proc("submit", "--each", str(path))
    h.assert_one_line_error(proc.stderr, str(path), proc.returncode)
    assert h.ledger_state(sp.home) == before


# -- policy files (sp agent policy ID --set FILE) -------------------------------------------------

policy_doc = st.fixed_dictionaries({"capabilities": capabilities}, optional={"storage": storage})


@pytest.fixture
def agent(sp: Sp, tmp_path: Path) -> Sp:
    path = tmp_path / "a.yaml"
    path.write_text("id: pa\nactions: {t: {command: [echo]}}\n")
    sp("agent", "apply", str(path))
    return sp


@h.FUZZ
@given(doc=policy_doc, fmt=st.sampled_from(["yaml", "toml"]))
def test_valid_policy_files_are_accepted(agent: Sp, tmp_path: Path, doc: dict[str, Any],
                                         fmt: str) -> None:
    path = h.write(tmp_path / "policy", doc, fmt)
    result = agent("agent", "policy", "pa", "--set", str(path), ok=False)
    assert result.exit_code == 0, result.output


@h.FUZZ
@given(doc=st.one_of(h.poisoned(policy_doc.filter(lambda d: bool(h.paths_of(d)))),
                     h.with_unknown_key(policy_doc)),
       fmt=st.sampled_from(["yaml", "toml"]))
def test_mistyped_policy_files_are_refused(agent: Sp, tmp_path: Path, doc: dict[str, Any],
                                           fmt: str) -> None:
    path = h.write(tmp_path / "policy", doc, fmt)
    before = h.ledger_state(agent.home)
    h.assert_rejected(agent("agent", "policy", "pa", "--set", str(path), ok=False), str(path))
    assert h.ledger_state(agent.home) == before


@h.FUZZ
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".yaml", ".toml"]))
def test_random_policy_bytes_never_crash(agent: Sp, tmp_path: Path, data: bytes,
                                         suffix: str) -> None:
    path = tmp_path / f"policy{suffix}"
    path.write_bytes(data)
    before = h.ledger_state(agent.home)
    if not h.assert_robust(agent("agent", "policy", "pa", "--set", str(path), ok=False),
                           str(path)):
        assert h.ledger_state(agent.home) == before


@pytest.mark.slow
def test_a_bad_policy_file_in_a_real_process(agent: Sp, tmp_path: Path) -> None:
    before = h.ledger_state(agent.home)
    path = tmp_path / "policy.yaml"
    path.write_text(h.laughs(9, 9))
    proc = agent.proc("agent", "policy", "pa", "--set", str(path))
    h.assert_one_line_error(proc.stderr, str(path), proc.returncode)
    assert h.ledger_state(agent.home) == before
