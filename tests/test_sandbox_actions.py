"""An agent's policy enforced on its actions by the real kernel, end to end: the worker claims,
records what the sandbox enforces in ``action.started``, the action's own process enters
Landlock and namespaces before exec, a denied access fails inside it, and the kernel's record
of the denial is an ``action.security_denied`` event in its audit.

Skipped only where this kernel lacks the mechanism (the reason says which)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sp.commands import actions, policies
from sp.commands.home import Home
from sp.ledger.store import EventStore
from sp.runner.worker import Worker
from sp.security import policy as pol
from sp.security import sandbox
from tests.conftest import Sp

CAPS = sandbox.probe()
needs_landlock = pytest.mark.skipif(CAPS.landlock_abi < 1, reason="the kernel has no Landlock")
needs_tcp = pytest.mark.skipif(CAPS.landlock_abi < 4,
                               reason="Landlock TCP rules need ABI 4, the kernel has "
                                      f"{CAPS.landlock_abi}")
needs_audit = pytest.mark.skipif(not CAPS.kernel_audit,
                                 reason=f"no kernel audit records: {CAPS.audit_reason}")
needs_netns = pytest.mark.skipif("net" not in CAPS.namespaces,
                                 reason=f"no network namespace: {CAPS.namespaces_reason}")
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"


def _run(store: EventStore, home: Home, command: list[str], agent: str = "lab",
         **kw: Any) -> str:
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=command, agent=agent, **kw)])
    Worker(store, home).run(until_idle=True, wait_retries=False)
    return aid


def _row(store: EventStore, aid: str) -> tuple[str, str | None, str | None]:
    row = store.query_one("SELECT state, error_kind, error FROM actions WHERE action_id = ?",
                          (aid,))
    assert row is not None
    return row[0], row[1], row[2]


def _events(store: EventStore, aid: str, kind: str) -> list[dict[str, Any]]:
    return [json.loads(r[0]) for r in store.query(
        "SELECT data FROM events WHERE stream = ? AND type = ? ORDER BY version", (aid, kind))]


def _log(home: Home, aid: str) -> str:
    return home.log_path(aid).read_text(errors="replace")


@pytest.fixture
def lab(tmp_path: Path) -> dict[str, Path]:
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n")
    return {"out": out, "elsewhere": elsewhere, "secret": secret}


def _only_out(store: EventStore, lab: dict[str, Path], **extra: Any) -> None:
    """Write only to ``out``; never read ``secret``; never run passwd."""
    caps: dict[str, Any] = {
        "allowed": [{"write": [str(lab["out"])]}, *extra.pop("allowed", [])],
        "denied": [{"read": [str(lab["secret"])]}, {"execute": ["passwd"]},
                   *extra.pop("denied", [])],
    }
    policies.set_policy(store, "lab", pol.decode(caps, extra.pop("storage", None)))


@needs_landlock
def test_writing_inside_the_allowed_folder_works_and_started_lists_the_enforcement(
        store: EventStore, home: Home, lab: dict[str, Path]) -> None:
    _only_out(store, lab)
    aid = _run(store, home, ["sh", "-c", f"echo ok > {lab['out']}/result.txt"])
    assert _row(store, aid)[0] == "completed", _log(home, aid)
    assert (lab["out"] / "result.txt").read_text() == "ok\n"
    (started,) = _events(store, aid, "action.started")
    box = started["sandbox"]
    assert box["agent"] == "lab"
    assert box["landlock_abi"] == CAPS.landlock_abi and box["no_new_privs"] is True
    assert str(lab["out"]) in box["fs"]["write"]
    assert str(lab["secret"]) in box["fs"]["deny_read"]
    assert any(p.endswith("/passwd") for p in box["fs"]["deny_execute"])
    assert set(box["namespaces"]) >= {"pid", "ipc", "uts", "mnt"} & set(CAPS.namespaces)
    assert not box.get("missing")
    assert _events(store, aid, "action.security_denied") == []


@needs_landlock
@needs_audit
def test_a_write_elsewhere_fails_with_eacces_and_a_security_event(
        store: EventStore, home: Home, lab: dict[str, Path], sp: Sp) -> None:
    _only_out(store, lab)
    target = lab["elsewhere"] / "x.txt"
    aid = _run(store, home, ["sh", "-c", f"echo no > {target}"])
    state, kind, error = _row(store, aid)
    assert (state, kind) == ("failed", "security_denied")
    assert not target.exists()
    assert "Permission denied" in _log(home, aid)
    (denied,) = _events(store, aid, "action.security_denied")
    assert denied.get("stage", "run") == "run"  # the default is not stored
    assert any(d["access"].startswith("fs.") and d.get("path") == str(lab["elsewhere"])
               for d in denied["denials"]), denied
    audit = sp("audit", aid).stdout
    assert "action.security_denied" in audit and str(lab["elsewhere"]) in audit
    assert error is not None and "the sandbox refused" in error


@needs_landlock
@needs_audit
def test_reading_a_denied_path_fails(store: EventStore, home: Home,
                                     lab: dict[str, Path]) -> None:
    _only_out(store, lab)
    aid = _run(store, home, ["cat", str(lab["secret"])])
    assert _row(store, aid)[:2] == ("failed", "security_denied")
    log = _log(home, aid)
    assert "top secret" not in log and "Permission denied" in log
    (denied,) = _events(store, aid, "action.security_denied")
    assert any(d.get("path") == str(lab["secret"]) and d["access"] == "fs.read_file"
               for d in denied["denials"]), denied


@needs_landlock
@needs_audit
def test_a_denied_executable_run_from_inside_the_action_fails(
        store: EventStore, home: Home, lab: dict[str, Path], tmp_path: Path) -> None:
    _only_out(store, lab)
    link = tmp_path / "harmless"
    link.symlink_to("/usr/bin/passwd")
    # the policy check sees only `sh`; the kernel sees the exec of passwd through the link
    aid = _run(store, home, ["sh", "-c", f"{link} --help"])
    assert _row(store, aid)[:2] == ("failed", "security_denied")
    (denied,) = _events(store, aid, "action.security_denied")
    assert any(d["access"] == "fs.execute" and d.get("path") == "/usr/bin/passwd"
               for d in denied["denials"]), denied


@needs_landlock
@needs_tcp
@needs_audit
def test_connecting_to_a_denied_port_fails_and_an_allowed_one_works(
        store: EventStore, home: Home, lab: dict[str, Path]) -> None:
    with socket.socket() as denied_srv, socket.socket() as allowed_srv:
        for s in (denied_srv, allowed_srv):
            s.bind(("127.0.0.1", 0))
            s.listen(4)
        bad, good = denied_srv.getsockname()[1], allowed_srv.getsockname()[1]
        _only_out(store, lab, denied=[{"network": [f"*:{bad}"]}])
        code = ("import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])),"
                " timeout=5); print('connected')")
        ok = _run(store, home, [PY, "-c", code, str(good)])
        assert _row(store, ok)[0] == "completed", _log(home, ok)
        assert "connected" in _log(home, ok)
        aid = _run(store, home, [PY, "-c", code, str(bad)])
    assert _row(store, aid)[:2] == ("failed", "security_denied")
    assert "PermissionError" in _log(home, aid)
    (denied,) = _events(store, aid, "action.security_denied")
    assert any(d["access"] == "net.connect_tcp" and d.get("port") == bad
               for d in denied["denials"]), denied
    (started,) = _events(store, aid, "action.started")
    assert bad in started["sandbox"]["tcp"]["deny"]


@needs_netns
def test_a_policy_without_network_runs_in_an_empty_network_namespace(
        store: EventStore, home: Home, lab: dict[str, Path]) -> None:
    _only_out(store, lab, allowed=[{"network": []}])
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        code = ("import socket,sys\ntry:\n socket.create_connection(('127.0.0.1', "
                f"{port}), timeout=3)\nexcept OSError as e:\n print('refused', e.errno);"
                " sys.exit(7)\nprint('connected')")
        aid = _run(store, home, [PY, "-c", code])
    assert _row(store, aid)[:2] == ("failed", "exit_code"), _log(home, aid)
    assert "refused" in _log(home, aid) and "connected" not in _log(home, aid)
    (started,) = _events(store, aid, "action.started")
    assert "net" in started["sandbox"]["namespaces"]


@pytest.fixture
def abi3(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SP_LANDLOCK_ABI_MAX", "3")
    yield


@needs_tcp
def test_a_policy_the_machine_cannot_enforce_is_refused_unless_allowed_unsandboxed(
        store: EventStore, home: Home, lab: dict[str, Path], abi3: None) -> None:
    _only_out(store, lab, denied=[{"network": ["*:22"]}])
    aid = _run(store, home, ["true"])
    state, kind, error = _row(store, aid)
    assert (state, kind) == ("failed", "sandbox_unavailable")
    assert error is not None and "tcp port rules need Landlock ABI 4" in error
    assert "--allow-unsandboxed" in error
    (started,) = _events(store, aid, "action.started")
    assert started["sandbox"]["refused"] is True
    assert not home.log_path(aid).exists() or "sp-sandbox" not in _log(home, aid)
    # the same action, allowed to run with less: it runs, and the record says what was missing
    aid = _run(store, home, ["sh", "-c", f"echo ok > {lab['out']}/r"], allow_unsandboxed=True)
    assert _row(store, aid)[0] == "completed", _log(home, aid)
    (started,) = _events(store, aid, "action.started")
    box = started["sandbox"]
    assert box["allow_unsandboxed"] is True and box["landlock_abi"] == 3
    assert any("tcp port rules" in m for m in box["missing"])
    assert "tcp" not in box and "fs" in box


@needs_landlock
def test_the_cli_refuses_then_runs_with_allow_unsandboxed(
        sp: Sp, home: Home, lab: dict[str, Path], tmp_path: Path) -> None:
    pf = tmp_path / "policy.yaml"
    pf.write_text(f"allowed:\n  - write: ['{lab['out']}']\ndenied:\n  - network: ['*:22']\n")
    sp("agent", "policy", "lab", "--set", str(pf))
    shown = sp("agent", "policy", "lab").stdout
    assert "enforced here:" in shown
    env = {"SP_LANDLOCK_ABI_MAX": "3"}
    refused = sp.proc("submit", "--agent", "lab", "--", "true", env=env)
    assert refused.returncode == 0
    worker = sp.proc("worker", "--until-idle", env=env)
    assert worker.returncode == 0, worker.stderr
    status = sp.proc("status", refused.stdout.strip(), "--format", "json", env=env)
    assert json.loads(status.stdout)["error_kind"] == "sandbox_unavailable"
    ok = sp.proc("submit", "--agent", "lab", "--allow-unsandboxed", "--", "true", env=env)
    sp.proc("worker", "--until-idle", env=env)
    status = sp.proc("status", ok.stdout.strip(), "--format", "json", env=env)
    assert json.loads(status.stdout)["state"] == "completed", status.stdout


@needs_landlock
@pytest.mark.skipif(os.geteuid() != 0, reason="capabilities are dropped for root programs only")
def test_a_root_program_loses_the_capabilities_that_step_around_the_sandbox(
        store: EventStore, home: Home, lab: dict[str, Path]) -> None:
    _only_out(store, lab)
    report = lab["out"] / "caps.txt"
    aid = _run(store, home, ["sh", "-c", f"grep -E '^Cap(Eff|Bnd)' /proc/self/status > {report}"])
    assert _row(store, aid)[0] == "completed", _log(home, aid)
    caps = {line.split(":")[0]: int(line.split(":")[1], 16)
            for line in report.read_text().splitlines()}
    for bit in (16, 21, 13, 30, 39):  # SYS_MODULE, SYS_ADMIN, NET_RAW, AUDIT_CONTROL, BPF
        assert not caps["CapEff"] & (1 << bit) and not caps["CapBnd"] & (1 << bit), bit
    assert not caps["CapEff"] & (1 << 1)  # DAC_OVERRIDE too (tests/test_sandbox_secrets.py)
    (started,) = _events(store, aid, "action.started")
    assert "CAP_SYS_ADMIN" in started["sandbox"]["dropped_capabilities"]


@needs_landlock
def test_a_built_in_type_runs_inside_the_sandbox_of_its_plans_agent(
        sp: Sp, store: EventStore, home: Home, lab: dict[str, Path], tmp_path: Path) -> None:
    # reads and writes only `out` (plus what a program needs to start, and sp's interpreter)
    policies.set_policy(store, "lab", pol.decode({"allowed": [
        {"read": [str(lab["out"])]}, {"write": [str(lab["out"])]}]}))
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: files\nagent: lab\nactions:\n"
        "  - id: write\n    type: modify_files\n    payload:\n      changes:\n"
        f"        - {{path: '{lab['out']}/made.txt', operation: create, content: hi}}\n")
    sp("plan", "apply", str(plan))
    Worker(store, home).run(until_idle=True, wait_retries=False)
    (aid,) = [r[0] for r in store.query("SELECT action_id FROM actions WHERE agent = 'lab'")]
    assert _row(store, aid)[0] == "completed", _log(home, aid)
    assert (lab["out"] / "made.txt").read_text() == "hi"
    (started,) = _events(store, aid, "action.started")
    assert str(lab["out"]) in started["sandbox"]["fs"]["write"]
    assert "/" not in started["sandbox"]["fs"]["read"]


@needs_landlock
def test_a_sandboxed_action_checkpoints_through_its_worker_not_the_ledger(
        store: EventStore, home: Home, lab: dict[str, Path]) -> None:
    _only_out(store, lab)
    sp_cli = f"{sys.executable} -m sp.cli"
    script = (
        f"cat {home.ledger_path} > /dev/null 2>&1 && echo LEDGER-READ;"
        f" echo junk >> {home.ledger_path} 2>/dev/null && echo LEDGER-WRITTEN;"
        f" ls {home.root / 'blobs'} > /dev/null 2>&1 && echo BLOBS-LISTED;"
        f" {sp_cli} checkpoint --step 0 '{{\"cursor\": 41}}' && {sp_cli} progress 50 half")
    aid = _run(store, home, ["sh", "-c", script], cwd=str(Path(__file__).parent.parent))
    log = _log(home, aid)
    assert _row(store, aid)[0] == "completed", log
    # sp's home is out of reach even where the policy lets it read and write everything else
    assert "LEDGER-READ" not in log and "LEDGER-WRITTEN" not in log
    assert "BLOBS-LISTED" not in log
    (cp,) = _events(store, aid, "action.checkpointed")
    assert cp["data"] == {"cursor": 41} and cp["by"] == f"action:{aid}"
    (pr,) = _events(store, aid, "action.progressed")
    assert pr["percent"] == 50


@needs_landlock
def test_the_broker_answers_only_for_the_action_itself(
        store: EventStore, home: Home, lab: dict[str, Path]) -> None:
    (other,) = actions.submit(store, [actions.SubmitSpec(command=["true"])])
    Worker(store, home).run(until_idle=True, wait_retries=False)
    _only_out(store, lab)
    code = (
        "import sys\nfrom sp.runner import broker\n"
        "for op, args in [('checkpoints', {'action_id': sys.argv[1]}),"
        " ('put_blob', {'path': '/etc/hostname'}), ('nonsense', {})]:\n"
        "    try:\n        broker.call(op, **args)\n        print('ALLOWED', op)\n"
        "    except broker.BrokerError as e:\n        print('REFUSED', op, e)\n")
    aid = _run(store, home, [PY, "-c", code, other], cwd=str(Path(__file__).parent.parent),
               env={"PYTHONPATH": str(Path(__file__).parent.parent)})
    log = _log(home, aid)
    assert _row(store, aid)[0] == "completed", log
    assert "ALLOWED" not in log
    assert "REFUSED checkpoints" in log and "only its own checkpoints" in log
    assert "REFUSED put_blob" in log and "not a file in the action's own folder" in log
    assert "REFUSED nonsense" in log


@needs_landlock
def test_a_sandboxed_plan_rolls_back_through_the_broker(
        sp: Sp, store: EventStore, home: Home, lab: dict[str, Path], tmp_path: Path) -> None:
    target = lab["out"] / "config.txt"
    target.write_bytes(b"original\n")
    target.chmod(0o640)
    policies.set_policy(store, "lab", pol.decode({"allowed": [
        {"read": [str(lab["out"])]}, {"write": [str(lab["out"])]}]}))
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: change\nagent: lab\non_failure: rollback\nactions:\n"
        "  - id: edit\n    type: modify_files\n    payload:\n      changes:\n"
        f"        - {{path: '{target}', operation: modify, content: changed}}\n"
        f"        - {{path: '{lab['out']}/new.txt', operation: create, content: new}}\n"
        "  - id: boom\n    type: shell\n    depends_on: [edit]\n    payload:\n"
        "      command: [sh, -c, 'exit 3']\n")
    sp("plan", "apply", str(plan))
    Worker(store, home).run(until_idle=True, wait_retries=False)
    assert target.read_bytes() == b"original\n"
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)
    assert not (lab["out"] / "new.txt").exists()
    rows = store.query("SELECT name, state, agent FROM actions ORDER BY submitted_seq")
    assert ("change/edit:rollback", "completed", "lab") in [tuple(r) for r in rows], rows
    blobs = list((home.root / "blobs").iterdir())
    assert blobs  # the before-image went into the store, through the worker


@needs_landlock
@needs_audit
def test_denials_of_an_attempt_whose_worker_was_killed_are_recorded_by_replay(
        sp: Sp, store: EventStore, home: Home, lab: dict[str, Path]) -> None:
    _only_out(store, lab)
    store.close()
    target = lab["elsewhere"] / "x"
    aid = sp("submit", "--agent", "lab", "--retries", "1", "--", "sh", "-c",
             f"echo no > {target}; sleep 1").stdout.strip()
    worker = sp.popen("worker", "--until-idle")
    denials = home.root / "run" / f"{aid}-1.denials"
    log = home.log_path(aid)
    deadline = time.monotonic() + 30
    while not (log.exists() and b"Permission denied" in log.read_bytes()) and (
            time.monotonic() < deadline):
        time.sleep(0.02)  # waiting for a real process to reach a point, not for time to pass
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    while not denials.exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # the orphaned shim writes them when its program ends
    assert denials.exists(), "the shim did not write its denials"
    sp("replay")
    audit = json.loads(sp("audit", aid, "--format", "json").stdout)
    kinds = [e["event"] for e in audit["events"]]
    assert kinds[-2:] == ["action.security_denied", "action.interrupted"], kinds
    assert audit["events"][-2]["details"]["denials"][0]["path"] == str(lab["elsewhere"])
    assert not denials.exists()
    assert sp("verify").exit_code == 0
