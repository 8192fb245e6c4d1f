"""Configuration files are read bounded: regular files only, at most a cap, text never echoed.

Every kind of configuration file sp reads (agent, plan, sub-plan, trigger, policy, the
``--each`` list, the daemon's ``--config``) is given what a careless or hostile operator might
name: ``/dev/zero`` (today: memory grows until the OOM killer), a FIFO (today: blocks for
ever), a directory, a 9 MiB file. Each is one line naming the file, exit 2, nothing written,
in a real process (with a memory limit, so that the old code fails instead of eating the
machine; with a timeout, so that a hang is a failure). An included file, even a secret one,
is never echoed in the errors.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, Sp

AGENT = "id: a1\nactions:\n  t:\n    command: [echo, hi]\n"
PLAN = "name: p\nactions:\n  - {id: a, type: shell, payload: {command: [echo, hi]}}\n"
TRIGGERS = "agent: a1\ncontinuous:\n  tick:\n    interval: 5s\n    action: t\n"
POLICY = "filesystem:\n  read: [/tmp]\n"
SECRET = "TOPSECRET"

# Each config kind: how to make sp read FILE as that kind (the agent a1 exists already).
KINDS: dict[str, Callable[[str, Path], list[str]]] = {
    "agent": lambda f, d: ["agent", "apply", f],
    "plan": lambda f, d: ["plan", "apply", f],
    "plan-validate": lambda f, d: ["plan", "validate", f],
    "sub-plan": lambda f, d: ["plan", "apply", _parent(d, f)],
    "trigger": lambda f, d: ["trigger", "apply", f],
    "daemon-config": lambda f, d: ["daemon", "--config", f, "--concurrency", "0"],
    "policy": lambda f, d: ["agent", "policy", "a1", "--set", f],
    "each": lambda f, d: ["submit", "--each", f],
}


def _parent(folder: Path, child: str) -> str:
    parent = folder / "parent.yaml"
    parent.write_text(f"name: parent\nactions:\n  - id: sub\n    plan: {child}\n")
    return str(parent)


def _limits() -> None:  # in the child: the old code's /dev/zero read fails at 1 GiB, fast
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def run(sp: Sp, args: list[str], env: dict[str, str] | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """sp in a real process, memory-limited; a hang past ``timeout`` fails the test."""
    return subprocess.run(
        [sys.executable, "-m", "sp.cli", "--home", str(sp.home.root), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, preexec_fn=_limits,
        env={**os.environ, **(env or {})},
    )


def events(sp: Sp) -> tuple[int, int | None]:
    with sqlite3.connect(sp.home.root / "ledger.db") as db:
        count, top = db.execute("SELECT count(*), max(seq) FROM events").fetchone()
    return int(count), top


@pytest.fixture
def ready(sp: Sp, tmp_path: Path) -> Sp:
    (tmp_path / "a1.yaml").write_text(AGENT)
    sp("agent", "apply", str(tmp_path / "a1.yaml"))
    return sp


def assert_refused(proc: subprocess.CompletedProcess[str], name: str, why: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert name in proc.stderr and why in proc.stderr, proc.stderr


def _bad(kind: str, tmp_path: Path) -> tuple[str, str]:
    """A path sp must refuse to read, and the words that say why."""
    if kind == "zero":
        return "/dev/zero", "a character device"
    if kind == "fifo":
        fifo = tmp_path / "fifo.yaml"
        os.mkfifo(fifo)
        return str(fifo), "a FIFO"
    if kind == "dir":
        folder = tmp_path / "dir.yaml"
        folder.mkdir()
        return str(folder), "directory"
    big = tmp_path / "big.yaml"
    with open(big, "w") as f:  # 9 MiB of comments: well-formed, just too large
        line = "# " + "x" * 1021 + "\n"
        for _ in range(9 * 1024):
            f.write(line)
    return str(big), "larger than 8388608 bytes"


@pytest.mark.slow
@pytest.mark.parametrize("what", ["zero", "fifo", "dir", "big"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_config_file_that_is_not_a_small_regular_file_is_refused(
        ready: Sp, tmp_path: Path, kind: str, what: str) -> None:
    path, why = _bad(what, tmp_path)
    args = KINDS[kind](path, tmp_path)
    if what == "dir" and kind != "sub-plan":
        why = ""  # the command's own argument check says it (click: "is a directory")
    before = events(ready)
    proc = run(ready, args)
    assert_refused(proc, path, why)
    assert events(ready) == before


@pytest.mark.slow
def test_the_cap_is_configurable_and_a_bad_cap_is_refused(ready: Sp, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    before = events(ready)
    proc = run(ready, ["plan", "validate", str(plan)], env={"SP_CONFIG_MAX_BYTES": "20"})
    assert_refused(proc, str(plan), "larger than 20 bytes")
    proc = run(ready, ["plan", "validate", str(plan)], env={"SP_CONFIG_MAX_BYTES": "lots"})
    assert_refused(proc, "SP_CONFIG_MAX_BYTES", "'lots'")
    proc = run(ready, ["plan", "validate", str(plan)], env={"SP_CONFIG_MAX_BYTES": "4096"})
    assert proc.returncode == 0, proc.stderr
    assert events(ready) == before


def test_each_from_stdin_is_bounded_too(ready: Sp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SP_CONFIG_MAX_BYTES", "100")
    before = events(ready)
    result = ready("submit", "--each", "-", input="echo hi\n" * 100, ok=False)
    assert result.exit_code == 2 and "--each -: larger than 100 bytes" in result.stderr
    assert events(ready) == before
    ready("submit", "--each", "-", input="echo hi\n")


def test_a_symlink_to_a_regular_file_is_followed(ready: Sp, tmp_path: Path) -> None:
    (tmp_path / "real.yaml").write_text(PLAN)
    (tmp_path / "link.yaml").symlink_to(tmp_path / "real.yaml")
    ready("plan", "validate", str(tmp_path / "link.yaml"))
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    proc = run(ready, ["plan", "validate", str(tmp_path / "zero.yaml")])  # memory-limited
    assert_refused(proc, "zero.yaml", "a character device, not a regular file")


# -- an included file's text is never shown ------------------------------------------------

SECRET_FILES = {
    # valid YAML: a mapping of keys that are secrets (each one an "unknown field")
    "shadow.yaml": f"root:$6${SECRET}hash:19000:0:99999:7:::\n{SECRET}_KEY: {SECRET}value\n",
    # broken YAML whose parser messages quote what they found
    "dup.yaml": f"{SECRET}: 1\n{SECRET}: 2\n",
    "alias.yaml": f"a: *{SECRET}\n",
    "tag.yaml": f"a: !{SECRET} x\n",
    # a plan-shaped file whose values are quoted by the checks
    "values.yaml": f"actions:\n  - {{id: a, type: {SECRET}, payload: {{}}}}\n"
                   f"  - {{id: '{SECRET} x', type: shell, payload: {{command: [echo]}},"
                   f" depends_on: [{SECRET}2], recovery: {SECRET}3}}\n",
    # TOML: tomllib quotes keys in its messages
    "dup.toml": f"[{SECRET}]\na = 1\n[{SECRET}]\nb = 2\n",
    "keys.toml": f"{SECRET} = \"{SECRET}\"\n",
}


@pytest.mark.parametrize("name", list(SECRET_FILES))
def test_an_included_file_is_never_echoed(ready: Sp, tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text(SECRET_FILES[name])
    parent = _parent(tmp_path, name)
    before = events(ready)
    for args in (["plan", "validate", parent], ["plan", "apply", parent],
                 ["plan", "validate", "--format", "json", parent]):
        result = ready(*args, ok=False)
        assert result.exit_code == 2, result.output
        assert SECRET not in result.output, result.output
        assert name in result.output and ("line" in result.output or "TOML" in result.output)
    assert events(ready) == before


def test_an_include_of_etc_shadow_shows_none_of_its_lines(ready: Sp, tmp_path: Path) -> None:
    shadow = Path("/etc/shadow")
    lines = [ln for ln in shadow.read_text().splitlines() if ln.strip()]
    assert lines, "/etc/shadow is empty here"
    parent = _parent(tmp_path, str(shadow))
    before = events(ready)
    proc = run(ready, ["plan", "apply", parent])
    assert proc.returncode == 2 and "/etc/shadow" in proc.stderr, proc.stderr
    for line in lines:
        user = line.split(":", 1)[0]
        assert f"{user}:" not in proc.stderr and line not in proc.stderr, proc.stderr
    assert events(ready) == before


@pytest.mark.parametrize("kind", ["agent", "trigger", "policy", "plan-validate"])
@pytest.mark.parametrize("name", ["dup.yaml", "alias.yaml", "tag.yaml", "dup.toml"])
def test_syntax_errors_never_quote_the_file(ready: Sp, tmp_path: Path, kind: str,
                                            name: str) -> None:
    """Not only includes: a parser's message names the line and column, never the text."""
    path = tmp_path / name
    path.write_text(SECRET_FILES[name])
    before = events(ready)
    result = ready(*KINDS[kind](str(path), tmp_path), ok=False)
    assert result.exit_code == 2, result.output
    assert SECRET not in result.output and "line" in result.output, result.output
    assert events(ready) == before
