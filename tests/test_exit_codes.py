"""Exit 70 means a bug in sp, nothing else (issue 11, item 13).

A sweep feeds every command what a careless operator types (wrong types, huge and negative
numbers, missing files, directories for files, unwritable outputs) and checks that none is an
"internal error"; the bad input that used to be one is refused up front (one line, exit 2,
nothing written). A reader that goes away (``sp status | head -1``) ends the command quietly.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, Sp

HUGE = str(10**20)


@pytest.fixture
def busy(sp: Sp, tmp_path: Path) -> tuple[Sp, str]:
    """A home with one finished action of 3 steps (and a few plain ones)."""
    agent = tmp_path / "a1.yaml"
    agent.write_text("id: a1\nactions:\n  t:\n    command: [sh, -c, 'exit 0']\n"
                     "    steps: [one, two, three]\n")
    sp("agent", "apply", str(agent))
    action_id = sp("action", "execute", "--agent", "a1", "--task", "t").output.split()[0]
    for i in range(3):
        sp("submit", "--", "echo", str(i))
    return sp, action_id


def events(sp: Sp) -> int:
    with sqlite3.connect(sp.home.root / "ledger.db") as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


def _bad_invocations(action: str, tmp: Path) -> list[list[str]]:
    missing, folder = str(tmp / "missing.yaml"), str(tmp)
    unwritable = "/proc/sp-cannot-write-here/report.html"
    return [
        # numbers out of any sane range, negative, not numbers
        ["status", "--recent", HUGE], ["status", "--recent", "-5"], ["status", "--recent", "x"],
        ["plan", "list", "--limit", HUGE], ["plan", "list", "--limit", "-1"],
        ["action", "watch", "--since-seq", HUGE], ["action", "watch", "--since-seq", "-1"],
        ["trigger", "show", "x", "--limit", HUGE],
        ["submit", "--priority", HUGE, "--", "true"], ["submit", "--priority", "-" + HUGE,
                                                      "--", "true"],
        ["submit", "--retries", HUGE, "--", "true"], ["submit", "--retries", "-1", "--", "true"],
        ["submit", "--timeout", HUGE + "h", "--", "true"],
        ["submit", "--delay", HUGE + "d", "--", "true"], ["submit", "--timeout", "-5s", "--",
                                                         "true"],
        ["submit", "--cwd", missing, "--", "true"], ["submit", "--cwd", "/etc/passwd", "--",
                                                    "true"],
        ["submit", "--each", missing], ["submit", "--each", folder],
        ["submit", "--after", "nope", "--", "true"],
        ["restart", action, "--from-step", "99"], ["restart", action, "--from-step", "-5"],
        ["restart", action, "--from-step", HUGE],
        ["checkpoint", "--action", action, "--step", HUGE, "{}"],
        ["checkpoint", "--action", action, "--step", "-5", "{}"],
        ["progress", "--action", action, "1e400"], ["progress", "--action", action, "nan"],
        ["progress", "--action", action, "-5"], ["progress", "--action", action, "inf"],
        ["wait", action, "--timeout", HUGE + "d"], ["wait", action, "--timeout", "-1s"],
        ["report", "--html", unwritable], ["report", "--html", folder],
        ["report", "--html", str(tmp / "r.html"), "--since", HUGE + "d"],
        ["metrics", "--since", HUGE + "d"], ["metrics", "--since", "garbage"],
        ["gc", "--dry-run", "--completed", HUGE + "d"], ["gc", "--dry-run", "--temp", "-1d"],
        ["archive", "--before", HUGE + "d", str(tmp / "a.db")],
        ["archive", "--before", "30d", folder], ["archive", "--before", "30d", "/dev/null"],
        ["verify", "--archive", missing], ["verify", "--archive", folder],
        ["verify", "--archive", "/dev/zero"],
        ["audit", "nope"], ["logs", "nope"], ["cancel", "nope"], ["plan", "status", "nope"],
        ["plan", "show", missing], ["plan", "apply", missing], ["plan", "validate", folder],
        ["rollback", "nope"], ["deploy", "status", "nope"], ["plan", "cancel", "nope"],
        ["agent", "apply", missing], ["agent", "show", "nope"],
        ["agent", "policy", "nope", "--set", missing],
        ["action", "execute", "--agent", "nope", "--task", "t"],
        ["action", "execute", "--agent", "a1", "--task", "nope"],
        ["action", "execute", "--agent", "a1", "--task", "t", "--timeout", HUGE + "d"],
        ["trigger", "apply", missing], ["trigger", "show", "nope"],
        ["schedule", "add", "s1", "--cron", "99 99 * * *", "--agent", "a1", "--task", "t"],
        ["schedule", "add", "s1", "--cron", "* * * * *", "--agent", "a1", "--task", "t",
         "--jitter", HUGE + "d"],
        ["schedule", "add", "s1", "--cron", "* * * * *", "--agent", "a1", "--task", "t",
         "--tz", "Mars/Olympus"],
        ["schedule", "show", "nope"], ["schedule", "rm", "nope"],
        ["schedule", "export", "--systemd", "/proc/sp-nope"],
        ["sql", "SELECT * FROM nope"], ["sql", "DELETE FROM events"], ["sql", "SELECT 1/0"],
        ["sql", f"SELECT zeroblob({HUGE})"],
        ["worker", "--until-idle", "--grace", HUGE + "d"], ["worker", "--until-idle",
                                                            "--grace", "-1s"],
        ["tick", "--max-seconds", HUGE], ["tick", "--concurrency", HUGE],
        ["pause", "--agent", "nope\n"], ["resume", "--agent", "nope"],
        ["daemon", "--config", missing], ["daemon", "--grace", HUGE + "d", "--config", folder],
    ]


@pytest.mark.slow
def test_no_bad_invocation_is_an_internal_error(busy: tuple[Sp, str], tmp_path: Path) -> None:
    sp, action = busy
    seen = []
    for args in _bad_invocations(action, tmp_path):
        result = sp(*args, ok=False)
        seen.append((result.exit_code, args, result.output[-300:]))
    internal = [s for s in seen if s[0] == 70 or "internal error" in s[2]
                or "Traceback" in s[2]]
    assert not internal, "\n".join(map(str, internal))


@pytest.mark.parametrize("args,says", [
    (["status", "--recent", HUGE], "--recent"),
    (["plan", "list", "--limit", HUGE], "--limit"),
    (["action", "watch", "--since-seq", HUGE], "--since-seq"),
    (["restart", "{action}", "--from-step", "99"], "--from-step"),
    (["restart", "{action}", "--from-step", "-5"], "--from-step"),
    (["restart", "{action}", "--from-step", "3"], "--from-step"),
    (["checkpoint", "--action", "{action}", "--step", HUGE, "{{}}"], "--step"),
    (["report", "--html", "/proc/sp-cannot-write-here/r.html"], "/proc/sp-cannot-write-here"),
    (["submit", "--cwd", "/nonexistent", "--", "true"], "/nonexistent"),
])
def test_bad_numbers_and_paths_are_refused_up_front(busy: tuple[Sp, str], args: list[str],
                                                    says: str) -> None:
    sp, action = busy
    before = events(sp)
    result = sp(*[a.format(action=action) for a in args], ok=False)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert says in result.stderr, result.stderr
    assert events(sp) == before


def test_restart_from_a_step_that_exists_is_accepted(busy: tuple[Sp, str]) -> None:
    sp, action = busy
    sp("restart", action, "--from-step", "2")


def test_execute_with_a_task_cwd_that_does_not_exist_is_refused(sp: Sp, tmp_path: Path) -> None:
    agent = tmp_path / "a2.yaml"
    agent.write_text("id: a2\nactions:\n  t:\n    command: [pwd]\n    cwd: /nonexistent\n")
    sp("agent", "apply", str(agent))
    before = events(sp)
    for verb in ("execute", "run"):
        result = sp("action", verb, "--agent", "a2", "--task", "t", ok=False)
        assert result.exit_code == 2 and "/nonexistent" in result.stderr, result.output
        result = sp("action", verb, "--agent", "a2", "--task", "t", "--detach", ok=False)
        assert result.exit_code == 2 and "/nonexistent" in result.stderr, result.output
    assert events(sp) == before


# -- a reader that goes away --------------------------------------------------------------

# Commands whose output is many lines, far larger than a pipe's buffer.
PIPED = [["status", "--recent", "500"], ["sql", "SELECT * FROM events"],
         ["audit", "{action}"], ["metrics"]]


@pytest.mark.slow
@pytest.mark.parametrize("args", PIPED, ids=lambda a: " ".join(a))
def test_a_command_piped_into_head_exits_quietly(sp: Sp, tmp_path: Path,
                                                 args: list[str]) -> None:
    """``sp ... | head -1`` with output far larger than the pipe: quiet, not exit 70."""
    sp("init")
    lines = "".join(f"echo {'x' * 200} {i}\n" for i in range(400))
    ids = sp("submit", "--each", "-", input=lines).output.split()
    sp.home.log_path(ids[0]).parent.mkdir(parents=True, exist_ok=True)
    sp.home.log_path(ids[0]).write_bytes(b"line of output\n" * 100_000)
    argv = [a.format(action=ids[0]) for a in args]
    cmd = [sys.executable, "-m", "sp.cli", "--home", str(sp.home.root), *argv]
    r, w = os.pipe()
    proc = subprocess.Popen(cmd, stdout=w, stderr=subprocess.PIPE, cwd=REPO)
    os.close(w)
    with os.fdopen(r, "rb") as reader:
        first = reader.readline()  # then the reader goes away, as head -1 does
    assert first
    _, stderr = proc.communicate(timeout=60)
    assert stderr == b"", stderr
    assert proc.returncode in (0, 141), (proc.returncode, stderr)


# -- webhook secrets: refused when applied; one bad hook never stops the daemon -------------

HOOKS = """\
agent: watcher
triggers:
  network:
    - {{port: {port}, name: good, secret_env: SP_T_GOOD, action: handle_webhook}}
    - {{port: {port}, name: bad, {bad}, action: handle_webhook}}
"""


def _watcher(sp: Sp, tmp_path: Path) -> None:
    from tests.triggerkit import AGENT

    (tmp_path / "watcher.yaml").write_text(AGENT)
    sp("agent", "apply", str(tmp_path / "watcher.yaml"))


@pytest.mark.parametrize("bad", ['secret: ""', "secret: '   '", 'secret_env: ""'])
def test_an_empty_secret_is_refused_when_applied(sp: Sp, tmp_path: Path, bad: str) -> None:
    _watcher(sp, tmp_path)
    path = tmp_path / "t.yaml"
    path.write_text(HOOKS.format(port=9, bad=bad))
    before = events(sp)
    result = sp("trigger", "apply", str(path), ok=False)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "$.triggers.network[1].secret" in result.stderr
    assert "is empty" in result.stderr and events(sp) == before


@pytest.mark.slow
def test_the_daemon_starts_every_hook_but_one_without_its_secret(sp: Sp,
                                                                 tmp_path: Path) -> None:
    """The applied file's second hook needs $SP_T_BAD, unset in the daemon's environment:
    the daemon says so in one line and serves the first (a real POST is answered)."""
    import json
    import signal
    import urllib.request

    from sp.triggers import webhook
    from tests.triggerkit import wait_for

    _watcher(sp, tmp_path)
    port = webhook.free_port()
    path = tmp_path / "t.yaml"
    path.write_text(HOOKS.format(port=port, bad="secret_env: SP_T_BAD"))
    sp("trigger", "apply", str(path))  # a warning: $SP_T_BAD is not set here
    err = tmp_path / "daemon.err"
    env = {k: v for k, v in os.environ.items() if k != "SP_T_BAD"}
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sp.cli", "--home", str(sp.home.root), "daemon",
             "--concurrency", "0"], stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO,
            env={**env, "SP_T_GOOD": "tok"})
    try:
        wait_for(lambda: "daemon: started" in err.read_text() or proc.poll() is not None,
                 timeout=45)
        assert proc.poll() is None, err.read_text()
        log = err.read_text()
        bad = [ln for ln in log.splitlines() if "/hooks/bad" in ln]
        assert len(bad) == 1 and "$SP_T_BAD is not set" in bad[0], log
        req = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/good", data=b"{}",
                                     headers={"X-SP-Token": "tok"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 202 and json.loads(resp.read())["action_id"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, err.read_text()
