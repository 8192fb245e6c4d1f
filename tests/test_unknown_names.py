"""Unknown names fail closed (issue 11, item 6): a mistyped agent once ran its action with no
policy at all, and a mistyped ``--home`` silently made a new, empty home. Now an unknown agent
is refused (exit 2, one line, a "did you mean" hint, nothing written) unless
``--agent-create``; a read-only command refuses a home with no ledger (and creates nothing);
a writing one says, in one line, that it created the home."""

from __future__ import annotations

from pathlib import Path

import pytest

from sp.commands.home import Home
from tests import hostile as h
from tests.conftest import Sp

AGENT = """\
id: research_01
capabilities:
  allowed:
    - read: ["/usr", "/lib", "/lib64", "/bin", "/etc"]
    - execute: ["true", "sh"]
actions:
  scan: {command: ["true"]}
"""


@pytest.fixture
def ready(sp: Sp, tmp_path: Path) -> Sp:
    (tmp_path / "agent.yaml").write_text(AGENT)
    sp("agent", "apply", str(tmp_path / "agent.yaml"))
    return sp


def _one_line(out: str, *needles: str) -> None:
    assert "Traceback" not in out and out.startswith("Error: ") and out.count("\n") == 1, out
    for n in needles:
        assert n in out, (n, out)


def test_a_mistyped_agent_is_refused_with_a_hint(ready: Sp) -> None:
    before = h.ledger_state(ready.home)
    for argv in (["submit", "--agent", "research-01", "--", "true"],
                 ["submit", "--agent", "research-01", "--each", "-"]):
        result = ready(*argv, input="true\n", ok=False)
        assert result.exit_code == 2, result.output
        _one_line(result.output, "unknown agent 'research-01'", "did you mean research_01?",
                  "--agent-create")
        assert h.ledger_state(ready.home) == before
    result = ready("submit", "--agent", "zzz", "--", "true", ok=False)
    _one_line(result.output, "unknown agent 'zzz'")
    assert "did you mean" not in result.output
    assert h.ledger_state(ready.home) == before


def test_agent_create_records_the_agent_as_known(ready: Sp, tmp_path: Path) -> None:
    assert ready("submit", "--agent", "new-agent", "--", "true", ok=False).exit_code == 2
    ready("submit", "--agent", "research_01", "--", "true")  # known: its file was applied
    ready("submit", "--agent-create", "--agent", "new-agent", "--", "true")
    ready("submit", "--agent", "new-agent", "--", "true")  # known from its first action
    policy = tmp_path / "policy.yaml"
    policy.write_text('allowed:\n  - read: ["/usr"]\n')
    assert ready("submit", "--agent", "ops", "--", "true", ok=False).exit_code == 2
    ready("agent", "policy", "ops", "--set", str(policy))
    ready("submit", "--agent", "ops", "--", "true")  # known: a policy was recorded
    rows = ready("sql", "SELECT agent, count(*) AS n FROM actions GROUP BY agent ORDER BY agent",
                 "--format", "csv").stdout
    assert rows.splitlines()[1:] == ["new-agent,2", "ops,1", "research_01,1"]


def test_a_plan_of_an_unknown_agent_is_refused(ready: Sp, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("agent: research-01\nactions:\n"
                    "  - {id: a, type: shell, payload: {command: [\"true\"]}}\n")
    before = h.ledger_state(ready.home)
    result = ready("plan", "apply", str(plan), ok=False)
    assert result.exit_code == 2, result.output
    _one_line(result.output, str(plan), "$.agent", "did you mean research_01?")
    assert h.ledger_state(ready.home) == before
    plan.write_text(plan.read_text().replace("research-01", "research_01"))
    ready("plan", "apply", str(plan))


READ_ONLY = [["status"], ["audit", "abc"], ["logs", "abc"], ["verify"], ["sql", "SELECT 1"],
             ["metrics"], ["agent", "list"], ["plan", "list"], ["schedule", "list"],
             ["trigger", "list"], ["wait", "abc"], ["report", "--html", "r.html"]]


@pytest.mark.parametrize("argv", READ_ONLY, ids=[" ".join(a) for a in READ_ONLY])
def test_a_read_only_command_never_creates_a_mistyped_home(tmp_path: Path,
                                                           argv: list[str]) -> None:
    typo = Sp(Home(tmp_path / "sp-hoem"))
    result = typo.proc(*argv)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    _one_line(result.stderr, f"no ledger in {typo.home.root}", "--home / SP_HOME")
    assert not typo.home.root.exists()


def test_a_writing_command_says_once_that_it_created_the_home(tmp_path: Path) -> None:
    typo = Sp(Home(tmp_path / "sp-hoem"))
    first = typo.proc("submit", "--", "true")
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("\n") == 1 and first.stderr.startswith("sp: warning: "), first
    assert f"created a new home at {typo.home.root}" in first.stderr
    again = typo.proc("submit", "--", "true")
    assert again.returncode == 0 and again.stderr == "", again.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\n")  # no tasks: refused after the home was opened
    other = Sp(Home(tmp_path / "sp-hmoe"))
    refused = other.proc("agent", "apply", str(bad))
    assert refused.returncode == 2, refused.stderr
    _one_line(refused.stderr, str(bad), f"created a new home at {other.home.root}")
    fresh = Sp(Home(tmp_path / "meant"))
    init = fresh.proc("init")
    assert init.returncode == 0 and "warning" not in init.stderr, init.stderr
    assert fresh.proc("status").returncode == 0
