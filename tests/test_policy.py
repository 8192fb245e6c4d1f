"""Capability policies: the seed's shape decoded, stored as events, checked before anything runs
(programs through PATH and symlinks, built-in types' paths through ``..`` and symlinks), and the
storage quotas that stop a running action."""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from sp.commands import actions, policies
from sp.commands.home import Home
from sp.ledger.errors import UsageError
from sp.ledger.store import EventStore
from sp.runner.worker import Worker
from sp.security import policy as pol
from tests.conftest import Sp


def _ledger_bytes(home: Home) -> str:
    h = hashlib.sha256()
    for suffix in ("", "-wal"):
        p = Path(str(home.ledger_path) + suffix)
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()


def _agent(tmp_path: Path, caps: str, storage: str = "", command: str = "[\"true\"]") -> Path:
    """An agent file with these ``capabilities:`` (YAML text) and ``storage:`` (a YAML line)."""
    doc: dict[str, object] = {
        "id": "research-001", "capabilities": yaml.safe_load(textwrap.dedent(caps)),
        "actions": {"scan": {"command": yaml.safe_load(command)}},
    }
    if storage:
        doc.update(yaml.safe_load(storage))
    f = tmp_path / "agent.yaml"
    f.write_text(yaml.safe_dump(doc))
    return f


# -- decoding ---------------------------------------------------------------------------------


def test_the_seeds_policy_decodes_into_allow_and_deny_lists() -> None:
    p = pol.decode({
        "allowed": [{"read": ["/data/research", "/data/papers"]},
                    {"write": ["/data/research/output"]},
                    {"network": ["https://arxiv.org", "https://scholar.google.com"]},
                    {"execute": ["python3", "jupyter"]}],
        "denied": [{"write": ["/etc", "/usr", "/boot"]}, {"network": ["*:22", "*:3389"]},
                   {"execute": ["sudo", "su", "passwd"]}],
    })
    assert p.read == ["/data/research", "/data/papers"]
    assert p.write == ["/data/research/output"]
    assert p.execute == ["python3", "jupyter"]
    assert [(r.host, r.port) for r in p.network or []] == [("arxiv.org", 443),
                                                           ("scholar.google.com", 443)]
    assert [(r.host, r.port) for r in p.deny_network] == [("*", 22), ("*", 3389)]
    assert p.deny_execute == ["sudo", "su", "passwd"]
    assert p.deny_write == ["/etc", "/usr", "/boot"]


@pytest.mark.parametrize(("caps", "message"), [
    ({"allowed": [{"reed": ["/x"]}]}, "$.capabilities.allowed[0]: unknown capability 'reed'"),
    ({"allowed": [{"read": ["data"]}]}, "$.capabilities.allowed.read[0]: 'data' must be an"
                                        " absolute path"),
    ({"denied": [{"network": ["*:99999"]}]}, "$.capabilities.denied.network[0]"),
    ({"denied": [{"network": ["gopher://x"]}]}, "no default port for 'gopher'"),
    ({"allowed": "read"}, "$.capabilities.allowed: expected a list"),
    ({"default": "maybe"}, "$.capabilities.default: expected allow or deny"),
    ({"allowed": [{"execute": ["bin/x"]}]}, "$.capabilities.allowed.execute[0]"),
    ({"permitted": []}, "$.capabilities: unknown key 'permitted'"),
])
def test_a_bad_policy_names_its_place(caps: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as e:
        pol.decode(caps)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_default_deny_turns_unlisted_categories_into_empty_allow_lists() -> None:
    p = pol.decode({"default": "deny", "allowed": [{"execute": ["true"]}]})
    assert p.read == [] and p.write == [] and p.network == [] and p.execute == ["true"]
    open_policy = pol.decode({"allowed": [{"execute": ["true"]}]})
    assert open_policy.read is None and open_policy.network is None


# -- checks -----------------------------------------------------------------------------------


def test_a_denied_program_is_found_through_dotdot_and_symlinks(tmp_path: Path) -> None:
    p = pol.decode({"denied": [{"execute": ["passwd"]}]})
    passwd = pol.resolve_program("passwd")
    assert passwd is not None
    link = tmp_path / "innocent"
    link.symlink_to(passwd)
    for argv0 in ("passwd", "/usr/bin/../bin/passwd", str(link)):
        d = pol.check_program(p, argv0, "$.command[0]")
        assert d is not None and "is denied by the policy (denied: passwd)" in d.reason, argv0
    assert pol.check_program(p, "true", "$.command[0]") is None


def test_an_allow_list_of_programs_refuses_everything_else(tmp_path: Path) -> None:
    p = pol.decode({"allowed": [{"execute": ["python3"]}]})
    assert pol.check_program(p, "python3", "x") is None
    d = pol.check_program(p, "true", "x")
    assert d is not None and "is not allowed by the policy (allowed: python3)" in d.reason
    missing = pol.check_program(p, "no-such-program-here", "x")
    assert missing is not None and "is not found" in missing.reason


def test_paths_are_checked_after_dotdot_and_symlinks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "escape").symlink_to(elsewhere)
    p = pol.decode({"allowed": [{"write": [str(out)]}]})
    assert pol.check_path(p, str(out / "a.txt"), "write", "w") is None
    for sneaky in (str(out / ".." / "elsewhere" / "a.txt"), str(out / "escape" / "a.txt")):
        d = pol.check_path(p, sneaky, "write", "w")
        assert d is not None and "outside the policy's allowed write paths" in d.reason, sneaky
        assert d.target == str(elsewhere / "a.txt")
    deny = pol.decode({"denied": [{"read": [str(elsewhere)]}]})
    d = pol.check_path(deny, str(out / "escape" / "secret"), "read", "r")
    assert d is not None and "is denied by the policy" in d.reason


def test_hosts_and_ports_for_connections_sp_makes() -> None:
    p = pol.decode({"allowed": [{"network": ["https://arxiv.org"]}],
                    "denied": [{"network": ["*:22"]}]})
    assert pol.check_host(p, "arxiv.org", 443, "u") is None
    assert pol.check_host(p, "example.org", 443, "u") is not None
    assert pol.check_host(p, "arxiv.org", 22, "u") is not None


# -- stored as events, shown --------------------------------------------------------------------


def test_an_agent_files_capabilities_become_a_policy_event(sp: Sp, home: Home,
                                                            tmp_path: Path) -> None:
    f = _agent(tmp_path, """\
        allowed:
          - write: [/srv/out]
        denied:
          - execute: [passwd]
        """, storage="storage: {quotas: {log_space: 1MB}}")
    sp("agent", "apply", str(f))
    shown = json.loads(sp("agent", "policy", "research-001", "--format", "json").stdout)
    assert shown["categories"]["write"] == {"allowed": ["/srv/out"], "denied": []}
    assert shown["categories"]["execute"]["denied"] == ["passwd"]
    assert shown["categories"]["read"]["allowed"] == "any"
    assert shown["quotas"] == {"log_space": 1024 * 1024}
    table = sp("agent", "policy", "research-001").stdout
    assert "write" in table and "/srv/out" in table and "quota log_space" in table
    audit = sp("audit", "policy:research-001").stdout
    assert "policy.set" in audit
    # applying the same file again records nothing; a policy file replaces it (audited)
    sp("agent", "apply", str(f))
    pf = tmp_path / "policy.yaml"
    pf.write_text("capabilities:\n  research-001:\n    denied:\n      - execute: [su]\n"
                  "  other: {denied: [{execute: [sudo]}]}\n")
    sp("agent", "policy", "research-001", "--set", str(pf))
    shown = json.loads(sp("agent", "policy", "research-001", "--format", "json").stdout)
    assert shown["categories"]["execute"]["denied"] == ["su"]
    assert shown["version"] == 2
    store = home.open()
    try:
        n = store.query_one("SELECT count(*) FROM events WHERE stream = 'policy:research-001'")
    finally:
        store.close()
    assert n is not None and n[0] == 2
    sp("agent", "policy", "research-001", "--clear")
    assert "no policy" in sp("agent", "policy", "research-001").stdout


def test_a_bad_policy_file_is_one_line_exit_2_and_writes_nothing(sp: Sp, home: Home,
                                                                 tmp_path: Path) -> None:
    sp("agent", "apply", str(_agent(tmp_path, "denied: [{execute: [su]}]")))
    before = _ledger_bytes(home)
    pf = tmp_path / "p.yaml"
    for text, where in [("capabilities: {nobody: {denied: []}}", "no entry for agent"),
                        ("allowed: [{write: [relative]}]", "$.allowed.write[0]"),
                        ("denied: [{execute: 5}]", "$.denied[0].execute"),
                        ("storage: {quotas: {log_space: lots}}", "$.storage.quotas.log_space"),
                        ("allowed: [oops", "not valid YAML")]:
        pf.write_text(text)
        r = sp("agent", "policy", "research-001", "--set", str(pf), ok=False)
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and where in lines[0], r.output
        assert _ledger_bytes(home) == before


# -- refused before anything is written ---------------------------------------------------------


def test_submitting_a_denied_program_is_refused_with_nothing_written(sp: Sp, home: Home,
                                                                     tmp_path: Path) -> None:
    sp("agent", "apply", str(_agent(tmp_path, "denied: [{execute: [passwd]}]")))
    before = _ledger_bytes(home)
    link = tmp_path / "pw"
    link.symlink_to("/usr/bin/passwd")
    for argv0 in ("passwd", "/usr/bin/../bin/passwd", str(link)):
        r = sp("submit", "--agent", "research-001", "--", argv0, "--help", ok=False)
        assert r.exit_code == 2
        assert "is denied by the policy (denied: passwd)" in r.output
        assert len(r.output.strip().splitlines()) == 1
    assert _ledger_bytes(home) == before
    # the same program without the agent is not this policy's business
    sp("submit", "--", "passwd", "--help")


def test_a_shell_command_needs_the_shell_to_be_allowed(sp: Sp, tmp_path: Path) -> None:
    sp("agent", "apply", str(_agent(tmp_path, "allowed: [{execute: ['true']}]")))
    r = sp("submit", "--agent", "research-001", "--shell", "--", "true", ok=False)
    assert r.exit_code == 2 and "/bin/sh" in r.output and "not allowed" in r.output
    sp("submit", "--agent", "research-001", "--", "true")


def test_a_built_in_types_paths_are_checked_before_the_plan_is_recorded(
        sp: Sp, home: Home, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(tmp_path)
    sp("agent", "apply", str(_agent(tmp_path, f"allowed: [{{write: [{out}]}}]")))
    before = _ledger_bytes(home)
    plan = tmp_path / "plan.yaml"
    for target in (out / ".." / "x.txt", out / "link" / "x.txt"):
        plan.write_text(textwrap.dedent(f"""\
            name: p
            agent: research-001
            actions:
              - id: write
                type: modify_files
                payload:
                  changes:
                    - {{path: "{target}", operation: create, content: hi}}
            """))
        r = sp("plan", "apply", str(plan), ok=False)
        assert r.exit_code == 2, r.output
        assert "payload.changes[0].path" in r.output and "outside the policy's allowed" \
            in r.output
        assert _ledger_bytes(home) == before
    plan.write_text(plan.read_text().replace(str(out / "link" / "x.txt"), str(out / "x.txt")))
    sp("plan", "apply", str(plan))


# -- refused when claimed: a security event in the audit ----------------------------------------


def test_a_policy_tightened_after_submit_refuses_the_attempt_on_the_record(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=["passwd", "--help"],
                                                       agent="research-001")],
                            agent_create=True)
    policies.set_policy(store, "research-001", pol.decode({"denied": [{"execute": ["passwd"]}]}))
    Worker(store, home).run(until_idle=True, wait_retries=False)
    row = store.query_one("SELECT state, error_kind FROM actions WHERE action_id = ?", (aid,))
    assert row == ("failed", "policy_denied")
    types = [r[0] for r in store.query(
        "SELECT type FROM events WHERE stream = ? ORDER BY version", (aid,))]
    assert types[-3:] == ["action.started", "action.security_denied", "action.failed"]
    data = store.query_one("SELECT data FROM events WHERE stream = ? AND type ="
                           " 'action.security_denied'", (aid,))
    assert data is not None
    denial = json.loads(data[0])
    assert denial["stage"] == "validation"
    assert denial["denials"][0]["access"] == "execute"
    assert "passwd" in denial["denials"][0]["target"]
    view = store.query("SELECT action_id, agent, stage, access, target FROM v_security")
    assert [(r[0], r[1], r[2], r[3]) for r in view] == [(aid, "research-001", "validation",
                                                          "execute")]
    assert "passwd" in view[0][4]
    assert not (home.logs / f"{aid}.log").exists() or b"passwd" not in (
        home.logs / f"{aid}.log").read_bytes().split(b"\n", 1)[-1]


# -- quotas -------------------------------------------------------------------------------------


def _run(store: EventStore, home: Home, spec: actions.SubmitSpec) -> tuple[str, str, str]:
    (aid,) = actions.submit(store, [spec])
    Worker(store, home).run(until_idle=True, wait_retries=False)
    row = store.query_one("SELECT state, error_kind, error FROM actions WHERE action_id = ?",
                          (aid,))
    assert row is not None
    return str(row[0]), str(row[1]), str(row[2])


def test_a_log_quota_stops_a_chatty_action(store: EventStore, home: Home) -> None:
    policies.set_policy(store, "chatty", pol.decode({}, {"quotas": {"log_space": "64K"}}))
    state, kind, error = _run(store, home, actions.SubmitSpec(
        command=["sh", "-c", "yes 0123456789abcdef"], agent="chatty", retries=3))
    assert (state, kind) == ("failed", "quota_exceeded")
    assert "log_space quota was exceeded" in error
    # stopped near the budget, not after filling the disk (one 20 ms turn of output at most)
    logs = list(home.logs.glob("*.log"))
    assert logs and logs[0].stat().st_size < 64 * 1024 * 1024
    attempts = store.query_one("SELECT attempts FROM actions WHERE agent = 'chatty'")
    assert attempts == (1,)  # not retried: it would only exceed it again


def test_the_agents_other_logs_count_against_its_log_quota(store: EventStore,
                                                           home: Home) -> None:
    policies.set_policy(store, "a", pol.decode({}, {"quotas": {"log_space": "8K"}}))
    state, _, _ = _run(store, home, actions.SubmitSpec(
        command=["sh", "-c", "head -c 6000 /dev/zero"], agent="a"))
    assert state == "completed"
    state, kind, _ = _run(store, home, actions.SubmitSpec(
        command=["sh", "-c", "head -c 6000 /dev/zero; sleep 5"], agent="a"))
    assert (state, kind) == ("failed", "quota_exceeded")


def test_a_temp_quota_stops_an_action_filling_its_tmpdir(store: EventStore, home: Home) -> None:
    policies.set_policy(store, "t", pol.decode({}, {"quotas": {"temp_space": "1M"}}))
    state, kind, error = _run(store, home, actions.SubmitSpec(
        command=["sh", "-c", 'head -c 3000000 /dev/urandom > "$TMPDIR/big"; sleep 30'],
        agent="t"))
    assert (state, kind) == ("failed", "quota_exceeded")
    assert "temp_space" in error
    assert (home.root / "tmp").is_dir()


def test_an_output_quota_counts_the_output_folders(store: EventStore, home: Home,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    policies.set_policy(store, "o", pol.decode(
        {}, {"quotas": {"output_space": "1M"}, "output_dirs": [str(out)]}))
    state, kind, error = _run(store, home, actions.SubmitSpec(
        command=["sh", "-c", f'head -c 3000000 /dev/urandom > "{out}/r.bin"; sleep 30'],
        agent="o"))
    assert (state, kind) == ("failed", "quota_exceeded") and "output_space" in error


def test_every_log_is_capped_even_without_a_quota(store: EventStore, home: Home,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SP_LOG_MAX", "100K")
    state, kind, error = _run(store, home, actions.SubmitSpec(command=["yes"]))
    assert (state, kind) == ("failed", "quota_exceeded") and "log cap" in error


def test_a_quota_is_recorded_in_the_started_event(store: EventStore, home: Home) -> None:
    policies.set_policy(store, "q", pol.decode({}, {"quotas": {"log_space": "1M"}}))
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=["true"], agent="q")])
    Worker(store, home).run(until_idle=True, wait_retries=False)
    data = store.query_one("SELECT data FROM events WHERE stream = ? AND type ="
                           " 'action.started'", (aid,))
    assert data is not None
    assert json.loads(data[0])["sandbox"]["quotas"] == {"log_space": 1024 * 1024}


def test_tmpdir_is_the_actions_own_folder(store: EventStore, home: Home,
                                          tmp_path: Path) -> None:
    policies.set_policy(store, "t", pol.decode({}, {"quotas": {"temp_space": "1M"}}))
    marker = tmp_path / "tmpdir.txt"
    state, _, _ = _run(store, home, actions.SubmitSpec(
        command=["sh", "-c", f'echo "$TMPDIR" > {marker}'], agent="t"))
    assert state == "completed"
    tmpdir = marker.read_text().strip()
    assert Path(tmpdir).parent == home.root / "tmp"
    assert oct(os.stat(tmpdir).st_mode & 0o777) == oct(0o700)
