"""The CLI, in-process (CliRunner) and as a real subprocess: outputs, shapes and errors."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest

from sp.cli.main import cli
from tests.conftest import Sp


def _events(sp: Sp) -> int:
    path = sp.home.ledger_path
    if not path.exists():
        return 0
    return int(json.loads(sp("sql", "SELECT count(*) AS n FROM events", "--format",
                             "json").stdout)[0]["n"])


def _ledger_bytes(sp: Sp) -> bytes:
    return Path(sp.home.ledger_path).read_bytes()


def test_console_scripts_sp_and_alias() -> None:
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts["sp"] == "sp.cli.main:main"
    assert scripts["systemprompt-os"] == "sp.cli.main:main"


def _all_commands() -> list[str]:
    assert isinstance(cli, click.Group)
    from sp.cli.main import load_all

    load_all()
    return sorted(cli.commands)


def test_the_lazy_command_table_matches_the_modules() -> None:
    """Each command is found in the module COMMAND_MODULES names, and every command is in it."""
    import importlib

    from sp.cli.main import COMMAND_MODULES

    found = {}
    for module in set(COMMAND_MODULES.values()):
        for command in importlib.import_module(f"sp.cli.{module}").COMMANDS:
            found[command.name] = module
    assert found == COMMAND_MODULES


def test_a_group_has_its_subcommands_from_other_modules_when_loaded_alone() -> None:
    """`sp action watch` lives in cli.monitor: loading `action` lazily must bring it."""
    import subprocess
    import sys

    code = ("from sp.cli.main import cli; import click\n"
            "ctx = click.Context(cli)\n"
            "group = cli.get_command(ctx, 'action')\n"
            "print(sorted(group.commands))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    from sp.cli.main import load_all

    load_all()
    assert isinstance(cli, click.Group)
    full = cli.commands["action"]
    assert isinstance(full, click.Group)
    assert out == str(sorted(full.commands))
    assert "watch" in out and "monitor" in out


def test_a_command_loads_only_its_own_module() -> None:
    code = ("import sys; from sp.cli.main import main\n"
            "try:\n    main(['--home', sys.argv[1], 'status'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('sp.cli.')))")
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as home:
        out = subprocess.run([sys.executable, "-c", code, home], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
    assert out == "['sp.cli.action', 'sp.cli.main']"


@pytest.mark.parametrize("name", _all_commands())
def test_every_command_has_help_with_an_example(sp: Sp, name: str) -> None:
    out = sp(name, "--help").stdout
    assert "Example:" in out
    assert name in Path(__file__).resolve().parent.parent.joinpath("README.md").read_text()


def test_submit_prints_only_the_id(sp: Sp) -> None:
    out = sp("submit", "--", "echo", "hi").stdout
    assert len(out.strip()) == 16 and out.endswith("\n") and out.count("\n") == 1
    row = json.loads(sp("status", out.strip(), "--format", "json").stdout)
    assert row["state"] == "queued"
    assert row["name"] == "echo hi"


def test_submit_each_is_one_transaction_per_batch(sp: Sp) -> None:
    text = "echo one\n\n# a comment\necho two\necho three\n"
    ids = sp("submit", "--each", "-", input=text).stdout.split()
    assert len(ids) == 3
    rows = json.loads(sp("sql", "SELECT DISTINCT ts FROM events", "--format", "json").stdout)
    assert len(rows) == 1  # one append: one timestamp
    audit = json.loads(sp("audit", ids[1], "--format", "json").stdout)
    assert audit["events"][0]["details"]["command"] == ["echo two"]
    assert audit["events"][0]["details"]["shell"] is True


def test_idempotency_key_returns_existing_action(sp: Sp) -> None:
    a = sp("submit", "--key", "nightly-2026-11-22", "--", "true").stdout
    b = sp("submit", "--key", "nightly-2026-11-22", "--", "true").stdout
    assert a == b
    assert _events(sp) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "--timeout", "7x", "--", "true"],
         'Error: --timeout: expected a duration like "30s", "10m" or "2h", got \'7x\'\n'),
        (["submit"], "Error: a command is required: sp submit [OPTIONS] -- CMD [ARGS...]\n"),
        (["submit", "--retries", "-1", "--", "true"],
         "Error: command: retries must be between 0 and 1000, got -1\n"),
        (["submit", "--after", "ffffffff", "--", "true"], "Error: no action 'ffffffff'\n"),
        (["submit", "--compensate", "echo 'unterminated", "--", "true"],
         "Error: --compensate: No closing quotation\n"),
        (["status", "nope"], "Error: no action 'nope'\n"),
        (["audit", "nope"], "Error: no action 'nope'\n"),
        (["cancel", "nope"], "Error: no action 'nope'\n"),
        (["checkpoint", "{bad json"], None),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(sp: Sp, args: list[str],
                                                      message: str | None) -> None:
    sp("init")
    sp("submit", "--", "true")
    before = _ledger_bytes(sp)
    result = sp(*args, ok=False)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    if message is not None:
        assert result.stderr == message
    assert _ledger_bytes(sp) == before


def test_illegal_transition_refused_and_nothing_appended(sp: Sp) -> None:
    a = sp("submit", "--", "true").stdout.strip()
    sp("worker", "--until-idle")
    n = _events(sp)
    result = sp("cancel", a, ok=False)
    assert result.exit_code == 2
    assert result.stderr == f"Error: action {a} is completed: cannot cancel it\n"
    assert _events(sp) == n


def test_cancel_queued_cascades_to_dependents(sp: Sp) -> None:
    a = sp("submit", "--", "true").stdout.strip()
    b = sp("submit", "--after", a, "--", "true").stdout.strip()
    c = sp("submit", "--after", b, "--", "true").stdout.strip()
    sp("cancel", a, "--reason", "not today")
    status = json.loads(sp("status", "--format", "json").stdout)
    assert {r["action_id"]: r["state"] for r in status["actions"]} == {
        a: "cancelled", b: "cancelled", c: "cancelled"}
    audit = json.loads(sp("audit", c, "--format", "json").stdout)["events"]
    assert audit[-1]["details"]["reason"] == f"dependency {b} was cancelled"


def test_dependencies_and_priority_order(sp: Sp, tmp_path: Path) -> None:
    out = tmp_path / "order.txt"
    low = sp("submit", "--shell", "--", f"echo low >> {out}").stdout.strip()
    sp("submit", "--shell", "--after", low, "--priority", "9", "--", f"echo after-low >> {out}")
    sp("submit", "--shell", "--priority", "5", "--", f"echo high >> {out}")
    sp("submit", "--shell", "--delay", "1h", "--priority", "99", "--", f"echo later >> {out}")
    sp("worker", "--until-idle")
    assert out.read_text().split() == ["high", "low", "after-low"]


def test_status_json_shape(sp: Sp) -> None:
    a = sp("submit", "--name", "n1", "--agent-create", "--agent", "research-001", "--",
           "true").stdout.strip()
    sp("worker", "--until-idle")
    doc = json.loads(sp("status", "--format", "json").stdout)
    assert set(doc) == {"counts", "actions"}
    assert doc["counts"]["completed"] == 1 and doc["counts"]["failed"] == 0
    (row,) = doc["actions"]
    assert row["action_id"] == a and row["agent"] == "research-001"
    for key in ("state", "attempts", "max_attempts", "submitted_ms", "started_ms",
                "finished_ms", "duration_ms", "exit_code", "checkpoint", "result", "progress"):
        assert key in row
    assert row["result"]["log_bytes"] == 0
    assert len(row["result"]["log_sha256"]) == 64


def test_audit_json_shape_and_table(sp: Sp) -> None:
    a = sp("submit", "--", "sh", "-c", "exit 4").stdout.strip()
    sp("worker", "--until-idle")
    doc = json.loads(sp("audit", a, "--format", "json").stdout)
    assert doc["action_id"] == a
    first, *_, last = doc["events"]
    assert set(first) == {"seq", "version", "ts", "event", "from_state", "to_state", "by",
                          "details"}
    assert first["from_state"] is None and first["to_state"] == "pending"
    assert last == {**last, "event": "action.failed", "from_state": "executing",
                    "to_state": "failed"}
    assert last["details"]["exit_code"] == 4 and last["details"]["error_kind"] == "exit_code"
    assert last["by"].startswith("worker:")
    table = sp("audit", a).stdout
    assert "action.failed" in table and "exit_code=4" in table


def test_replay_twice_appends_nothing_and_check_passes(sp: Sp) -> None:
    for _ in range(3):
        sp("submit", "--retries", "1", "--", "sh", "-c", "exit 1")
    sp("worker", "--until-idle")
    n = _events(sp)
    sp("replay")
    sp("replay")
    assert _events(sp) == n
    assert sp("replay", "--check").stdout.startswith(f"ok: rebuilt {n} events")


def test_replay_check_names_first_difference(sp: Sp) -> None:
    import sqlite3

    a = sp("submit", "--", "true").stdout.strip()
    conn = sqlite3.connect(sp.home.ledger_path)
    conn.execute("UPDATE actions SET priority = 7 WHERE action_id = ?", (a,))
    conn.commit()
    conn.close()
    result = sp("replay", "--check", ok=False)
    assert result.exit_code == 1
    assert result.stdout == f"differs: actions {a}: priority: live 7, rebuilt 0\n"
    sp("replay")
    sp("replay", "--check")


def test_checkpoint_requires_a_running_action(sp: Sp) -> None:
    a = sp("submit", "--", "true").stdout.strip()
    result = sp("checkpoint", "--action", a, '{"x": 1}', ok=False)
    assert result.exit_code == 2
    assert result.stderr == f"Error: action {a} is queued: cannot checkpoint it\n"


def test_real_subprocess_round_trip(sp: Sp) -> None:
    p = sp.proc("submit", "--name", "sub", "--", "sh", "-c", "echo out; echo err >&2")
    assert p.returncode == 0, p.stderr
    a = p.stdout.strip()
    p = sp.proc("worker", "--until-idle")
    assert p.returncode == 0, p.stderr
    assert "1 completed" in p.stderr
    p = sp.proc("status", a, "--format", "json")
    assert json.loads(p.stdout)["result"]["tail"] == ["out", "err"]
    p = sp.proc("logs", a)
    assert p.stdout.splitlines()[1:] == ["out", "err"]
    p = sp.proc("verify")
    assert p.returncode == 0 and p.stdout == "ok: 4 events\n"
    p = sp.proc("status", "zzz")
    assert p.returncode == 2 and p.stderr == "Error: no action 'zzz'\n"


def test_home_from_environment(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    home = tmp_path / "envhome"
    p = subprocess.run([sys.executable, "-m", "sp.cli", "init"], capture_output=True, text=True,
                       env={**os.environ, "SP_HOME": str(home)},
                       cwd=Path(__file__).resolve().parent.parent)
    assert p.returncode == 0, p.stderr
    assert (home / "ledger.db").exists() and (home / "logs").is_dir()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shell_completion_scripts(shell: str) -> None:
    import os
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "sp.cli"], capture_output=True, text=True,
                       env={**os.environ, "_SP_COMPLETE": f"{shell}_source"})
    assert p.returncode == 0 and "_sp_completion" in p.stdout


def test_shell_completion_completes_commands() -> None:
    import os
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "sp.cli"], capture_output=True, text=True,
                       env={**os.environ, "_SP_COMPLETE": "bash_complete",
                            "COMP_WORDS": "sp sta", "COMP_CWORD": "1"})
    assert "plain,status" in p.stdout.splitlines()


@pytest.mark.parametrize(("args", "says"), [
    (["--bogus"], "No such option '--bogus'"),
    (["--home"], "Option '--home' requires an argument"),
    (["statu"], "'status'"),  # click's suggestion
])
def test_a_bad_top_level_option_or_command_is_one_line(args: list[str], says: str) -> None:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "sp.cli", *args], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in p.stderr, p.stderr
