"""A command string reaches a shell only with an explicit ``shell: true`` (``--shell``): in every
place that builds a command: ``sp submit``, agent tasks and steps, notify commands, plans (the
shell action type and its rollback), condition triggers. Without it, ``;``, ``$(...)`` and
backticks are plain characters of the arguments."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sp.plans.load import load_plan
from sp.triggers.conditions import run_command
from tests.conftest import REPO, Sp


def hostile(marker: Path) -> list[str]:
    """Arguments that would each create ``marker`` if a shell saw them."""
    m = shlex.quote(str(marker))
    return [f"; touch {m}", f"$(touch {m})", f"`touch {m}`", f"&& touch {m}", f"| touch {m}"]


def _created(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.glob("pwned*"))


def test_submit_passes_argv_verbatim(sp: Sp, tmp_path: Path) -> None:
    args = hostile(tmp_path / "pwned")
    action_id = sp("submit", "--", "printf", "%s\\n", *args).stdout.strip()
    sp("worker", "--until-idle")
    assert _created(tmp_path) == []
    assert sp("logs", action_id).stdout.splitlines()[-len(args):] == args


def test_submit_with_shell_is_interpreted(sp: Sp, tmp_path: Path) -> None:
    marker = tmp_path / "pwned-shell"
    sp("submit", "--shell", "--", "echo", "hi;", "touch", shlex.quote(str(marker)))
    sp("worker", "--until-idle")
    assert marker.exists()


def _agent(sp: Sp, tmp_path: Path, body: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(f"id: sh\nactions:\n{body}")
    sp("agent", "apply", str(path))


def test_agent_commands_and_steps_without_shell(sp: Sp, tmp_path: Path) -> None:
    m = tmp_path / "pwned"
    line = f"echo $(touch {m}-a); touch {m}-b `touch {m}-c`"
    _agent(sp, tmp_path, f"""\
  text: {{command: {line!r}}}
  argv: {{command: [echo, {f'$(touch {m}-d)'!r}]}}
  steps:
    command: [echo]
    steps:
      - {{name: one, command: {f'echo $(touch {m}-e)'!r}}}
      - two
  notified:
    command: ['true']
    notify: {{command: [sh, -c, 'echo "$1"', x, {f'$(touch {m}-f)'!r}]}}
""")
    for task in ("text", "argv", "steps", "notified"):
        sp("action", "execute", "--agent", "sh", "--task", task)
    assert _created(tmp_path) == []


def test_agent_commands_and_steps_with_shell(sp: Sp, tmp_path: Path) -> None:
    m = tmp_path / "pwned"
    _agent(sp, tmp_path, f"""\
  text: {{command: {f'echo $(touch {m}-a)'!r}, shell: true}}
  steps:
    command: [echo]
    steps:
      - {{name: one, command: {f'true; touch {m}-b'!r}, shell: true}}
""")
    sp("action", "execute", "--agent", "sh", "--task", "text")
    sp("action", "execute", "--agent", "sh", "--task", "steps")
    assert _created(tmp_path) == ["pwned-a", "pwned-b"]


def test_plan_shell_actions(sp: Sp, tmp_path: Path) -> None:
    m = tmp_path / "pwned"
    path = tmp_path / "plan.yaml"
    path.write_text(f"""\
name: p
actions:
  - {{id: text, type: shell, payload: {{command: {f'echo $(touch {m}-a)'!r}}},
     rollback: {{command: {f'echo `touch {m}-r`'!r}}}}}
  - {{id: argv, type: shell, payload: {{command: [echo, {f'; touch {m}-b'!r}]}}}}
  - {{id: shell, type: shell, payload: {{command: {f'touch {m}-c'!r}, shell: true}}}}
""")
    plan = load_plan(path)
    text = plan.step("text")
    assert text.command == shlex.split(f"echo $(touch {m}-a)") and not text.shell
    assert text.rollback is not None
    assert text.rollback.argv == shlex.split(f"echo `touch {m}-r`")
    assert plan.step("shell").shell
    sp("plan", "apply", str(path))
    sp("worker", "--until-idle")
    assert _created(tmp_path) == ["pwned-c"]


def test_condition_commands_are_argv(tmp_path: Path) -> None:
    assert run_command(["echo", *hostile(tmp_path / "pwned")], 5000, None) == 0
    assert _created(tmp_path) == []


# Every place in the code that can hand text to a shell, and what gates it. A new one fails this
# test until it is looked at and listed here.
SHELL_SITES = {
    "runner/attempt.py": "spec.shell / the step's shell (from --shell or shell: true)",
    "plans/action_types.py": "Command.shell (the shell type's shell: true)",
    "host/limits.py": "a fixed script; the user's argv follows as \"$@\", never parsed",
    "cli/action.py": "sp submit --each FILE: one shell line per line, as its help says",
    # These name /bin/sh as the program a shell: true action needs; they run nothing.
    "actions/shell.py": "a requirement check",
    "commands/policies.py": "the execute policy check",
    "security/enforce.py": "the execute allow-list",
    # python -c with sp's own fixed bootstrap; the user's argv follows "--", never parsed
    "security/sandbox.py": "the sandbox shim's python -c bootstrap",
}
_SHELL = re.compile(r"shell=True|[\"']/bin/sh[\"']|os\.system\(|os\.popen\(|[\"']-c[\"'],")


def test_every_shell_site_is_known() -> None:
    found = set()
    for path in REPO.glob("*/**/*.py"):
        rel = path.relative_to(REPO).as_posix()
        # build/, dist/: copies a `pip install .` or `pip wheel .` of the checkout leaves
        if rel.startswith(("tests/", "bench/", "build/", "dist/")) or "/." in rel or (
                rel.startswith(".")):
            continue
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0]
            if _SHELL.search(code) and "click.option" not in code:
                found.add(rel)
    assert found == set(SHELL_SITES), found


@pytest.mark.parametrize("source", ["runner/attempt.py", "plans/action_types.py"])
def test_shell_sites_are_gated(source: str) -> None:
    """Each ``/bin/sh -c`` there is under an ``if`` on a ``shell`` flag (same or previous line)."""
    lines = (REPO / source).read_text().splitlines()
    sites = [i for i, line in enumerate(lines) if '"/bin/sh"' in line.split("#", 1)[0]
             and '"""' not in line]
    assert sites
    for i in sites:
        near = lines[i] + lines[i - 1]
        assert re.search(r"\bif\b[^\n]*\bshell\b|\bshell\b[^\n]*\belse\b", near) or re.search(
            r"if .*shell", lines[i - 1]), lines[i]
