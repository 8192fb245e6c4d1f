"""Secrets stay secret under a policy (issue 11, item 2), attacked for real as root under the
real kernel sandbox: a confined action tries to read password hashes, private keys, root's
and a user's files and sp's own ledger, with the default read set and without it (an open
``read``, and ``read: [/]``); a root action loses the capabilities that step around file
permissions; ``user:`` runs it as another user, whose TMPDIR and broker folder work.

Fake secrets are created where real ones live (a temporary folder under ``/root`` and a
temporary home under ``/home``, a key in ``/etc/ssl/private`` and one named like an ssh host
key) and removed again whatever happens."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
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
pytestmark = [
    pytest.mark.skipif(CAPS.landlock_abi < 1, reason="the kernel has no Landlock"),
    pytest.mark.skipif(os.geteuid() != 0, reason="attacks a root action: needs root"),
]
OTHER_UID = 4242  # owns a file nobody else may read; needs no passwd entry


def _run(store: EventStore, home: Home, script: str, **kw: Any) -> str:
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=["sh", "-c", script],
                                                       agent="lab", **kw)])
    Worker(store, home).run(until_idle=True, wait_retries=False)
    return aid


def _state(store: EventStore, aid: str) -> str:
    row = store.query_one("SELECT state FROM actions WHERE action_id = ?", (aid,))
    assert row is not None
    return str(row[0])


def _started(store: EventStore, aid: str) -> dict[str, Any]:
    (row,) = store.query("SELECT data FROM events WHERE stream = ? AND type = 'action.started'",
                         (aid,))
    out: dict[str, Any] = json.loads(row[0])["sandbox"]
    return out


def _log(home: Home, aid: str) -> str:
    return home.log_path(aid).read_text(errors="replace")


def _probe(targets: list[Path | str]) -> str:
    """A script that tries to read each target and says READ or DENIED for each."""
    return "".join(f"if cat '{t}' >/dev/null 2>&1; then echo 'READ {t}'; else echo 'DENIED {t}';"
                   " fi; " for t in targets)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder other users may search (pytest's own is root's alone): a ``user:``
    action must be able to reach its TMPDIR in sp's home and the policy's data folder."""
    folder = Path(tempfile.mkdtemp(prefix="sp-test-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def home(open_tmp: Path) -> Home:
    return Home(open_tmp / "home")


@pytest.fixture
def data(open_tmp: Path) -> Path:
    folder = open_tmp / "data"
    folder.mkdir()
    (folder / "mine.txt").write_text("mine\n")
    return folder


@pytest.fixture
def secrets(home: Home, store: EventStore) -> Iterator[dict[str, Path]]:
    """Fake secrets where real ones live; all removed at the end."""
    tag = f"sp-test-{uuid.uuid4().hex[:8]}"
    made: list[Path] = []
    try:
        root_dir = Path("/root") / tag
        root_dir.mkdir(mode=0o700)
        made.append(root_dir)
        (root_dir / "notes.txt").write_text("root's notes\n")
        user_home = Path("/home") / tag
        (user_home / ".ssh").mkdir(parents=True, mode=0o700)
        made.append(user_home)
        (user_home / ".ssh" / "id_rsa").write_text("-----BEGIN FAKE KEY-----\n")
        ssl_key = Path("/etc/ssl/private") / f"{tag}.key"
        made.append(ssl_key)
        ssl_key.write_text("-----BEGIN FAKE TLS KEY-----\n")
        host_key = Path("/etc/ssh") / f"ssh_host_{tag.replace('-', '')}_key"
        made.append(host_key)
        host_key.write_text("-----BEGIN FAKE HOST KEY-----\n")
        yield {"shadow": Path("/etc/shadow"), "gshadow": Path("/etc/gshadow"),
               "root_file": root_dir / "notes.txt", "ssh_key": user_home / ".ssh" / "id_rsa",
               "ledger": home.ledger_path, "tls_key": ssl_key, "host_key": host_key}
    finally:
        for path in made:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


# The same data-folder policy three ways: with the default read set (read lists only the data
# folder), without it (read open, only writes restricted), and with read: [/].
POLICIES = {
    "default read set": lambda d: {"allowed": [{"read": [str(d)]}, {"write": [str(d)]}]},
    "open read": lambda d: {"allowed": [{"write": [str(d)]}]},
    "read everything": lambda d: {"allowed": [{"read": ["/", str(d)]}, {"write": [str(d)]}]},
}


@pytest.mark.parametrize("shape", sorted(POLICIES))
def test_a_confined_action_reads_no_secret_but_still_runs_programs(
        store: EventStore, home: Home, data: Path, secrets: dict[str, Path],
        shape: str) -> None:
    policies.set_policy(store, "lab", pol.decode(POLICIES[shape](data)))
    targets = sorted(secrets.values())
    script = (_probe([*targets, data / "mine.txt", "/etc/passwd"])
              + f"ls '{secrets['root_file'].parent}' >/dev/null 2>&1 && echo 'LISTED root';"
              " id -un; python3 -c 'import ssl, json; print(\"PY-OK\")'")
    aid = _run(store, home, script)
    log = _log(home, aid)
    assert _state(store, aid) == "completed", log
    for target in targets:
        assert f"DENIED {target}" in log, (target, log)
    assert f"READ {data / 'mine.txt'}" in log and "READ /etc/passwd" in log, log
    assert "LISTED root" not in log
    # /etc/passwd and nsswitch resolve names; a program with libraries (and certificates) runs
    assert "\nroot\n" in log and "PY-OK" in log, log
    box = _started(store, aid)
    assert "/etc/shadow" in box["fs"]["deny_read"]
    assert "CAP_DAC_OVERRIDE" in box["dropped_capabilities"]


def test_a_policy_that_names_a_secret_gets_it_and_nothing_next_to_it(
        store: EventStore, home: Home, data: Path, secrets: dict[str, Path]) -> None:
    granted = [secrets["tls_key"], secrets["root_file"]]
    policies.set_policy(store, "lab", pol.decode({"allowed": [
        {"read": ["/", *map(str, granted)]}, {"write": [str(data)]}]}))
    aid = _run(store, home, _probe([*granted, secrets["shadow"], secrets["ssh_key"]]))
    log = _log(home, aid)
    assert _state(store, aid) == "completed", log
    for path in granted:
        assert f"READ {path}" in log, log
    assert f"DENIED {secrets['shadow']}" in log and f"DENIED {secrets['ssh_key']}" in log, log


@pytest.fixture
def foreign_file(data: Path) -> Path:
    """A file in the allowed folder that only its owner (not root) may read."""
    path = data / "theirs.txt"
    path.write_text("not root's\n")
    os.chown(path, OTHER_UID, OTHER_UID)
    path.chmod(0o600)
    return path


def _caps(text: str) -> dict[str, int]:
    return {line.split(":")[0]: int(line.split(":")[1], 16) for line in text.splitlines()
            if line.startswith("Cap")}


# CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID, KILL, SETGID, SETUID, SYS_CHROOT, SETFCAP
PERMISSION_BITS = (0, 1, 2, 3, 4, 5, 6, 7, 18, 31)


def test_a_root_action_loses_the_capabilities_that_step_around_permissions(
        store: EventStore, home: Home, data: Path, foreign_file: Path) -> None:
    policies.set_policy(store, "lab", pol.decode({"allowed": [
        {"read": [str(data)]}, {"write": [str(data)]}]}))
    report = data / "caps.txt"
    aid = _run(store, home, _probe([foreign_file])
               + f"grep ^Cap /proc/self/status > {report}; chown {OTHER_UID} {data / 'mine.txt'}"
               " 2>/dev/null || echo CHOWN-REFUSED")
    log = _log(home, aid)
    assert _state(store, aid) == "completed", log
    assert f"DENIED {foreign_file}" in log and "CHOWN-REFUSED" in log, log
    caps = _caps(report.read_text())
    for name in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
        for bit in PERMISSION_BITS:
            assert not caps[name] & (1 << bit), (name, bit)
    assert caps["CapEff"] & (1 << 10)  # NET_BIND_SERVICE stays
    box = _started(store, aid)
    assert {"CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_SETUID",
            "CAP_SYS_ADMIN"} <= set(box["dropped_capabilities"])


def test_a_policy_can_grant_dac_override_back(
        store: EventStore, home: Home, data: Path, foreign_file: Path) -> None:
    policies.set_policy(store, "lab", pol.decode({
        "allowed": [{"read": [str(data)]}, {"write": [str(data)]}],
        "linux_capabilities": ["dac_override"]}))
    aid = _run(store, home, _probe([foreign_file, "/etc/shadow"]))
    log = _log(home, aid)
    assert f"READ {foreign_file}" in log and "DENIED /etc/shadow" in log, log
    box = _started(store, aid)
    assert box["granted_capabilities"] == ["CAP_DAC_OVERRIDE"]
    assert "CAP_DAC_OVERRIDE" not in box["dropped_capabilities"]


def test_user_nobody_runs_the_action_as_65534_with_its_tmpdir_and_broker(
        store: EventStore, home: Home, data: Path) -> None:
    data.chmod(0o777)  # the policy's folder must be the user's to write too
    root_only = data / "root-only.txt"
    root_only.write_text("root's\n")
    root_only.chmod(0o600)
    policies.set_policy(store, "lab", pol.decode({
        "allowed": [{"read": [str(data)]}, {"write": [str(data)]}], "user": "nobody"}))
    request = '{"id":"r1","op":"progress","percent":50,"message":"half"}'
    aid = _run(store, home, (
        "id -u; id -g; echo scratch > \"$TMPDIR/scratch\" && echo TMP-OK;"
        f" echo out > {data}/made.txt && echo DATA-OK; " + _probe([root_only])
        + f" echo '{request}' >> \"$SP_BROKER/requests\";"
        " for i in $(seq 1 500); do grep -q '\"r1\"' \"$SP_BROKER/responses\" 2>/dev/null"
        " && echo BROKER-OK && break; sleep 0.02; done"))
    log = _log(home, aid)
    assert _state(store, aid) == "completed", log
    lines = log.splitlines()
    assert "65534" in lines and "TMP-OK" in lines and "DATA-OK" in lines, log
    assert f"DENIED {root_only}" in log and "BROKER-OK" in lines, log
    assert (data / "made.txt").stat().st_uid == 65534
    progress = store.query_one("SELECT COUNT(*) FROM events WHERE stream = ?"
                               " AND type = 'action.progressed'", (aid,))
    assert progress is not None and progress[0] == 1
    box = _started(store, aid)
    assert box["user"] == {"name": "nobody", "uid": 65534, "gid": 65534,
                           "groups": box["user"]["groups"]}


def _events(store: EventStore) -> int:
    row = store.query_one("SELECT COUNT(*) FROM events")
    assert row is not None
    return int(row[0])


def test_an_unknown_user_is_refused_at_submit_and_at_claim(
        sp: Sp, store: EventStore, home: Home, tmp_path: Path) -> None:
    policies.set_policy(store, "lab", pol.decode({"user": "nobody"}))
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=["true"], agent="lab")])
    # the user database changes between submit and claim (here: the policy's user)
    policies.set_policy(store, "lab", pol.decode({"user": "sp-no-such-user"}))
    Worker(store, home).run(until_idle=True, wait_retries=False)
    row = store.query_one("SELECT state, error_kind, error FROM actions WHERE action_id = ?",
                          (aid,))
    assert row is not None and row[:2] == ("failed", "policy_denied"), row
    assert "sp-no-such-user" in row[2]
    before = _events(store)
    store.close()
    result = sp.proc("submit", "--agent", "lab", "--", "true")
    assert result.returncode == 2, result
    (line,) = result.stderr.splitlines()
    assert "sp-no-such-user" in line and "Traceback" not in result.stderr
    with home.open() as again:
        assert _events(again) == before


@pytest.mark.parametrize(("caps", "message"), [
    ({"user": ["root"]}, "$.user: expected a name or a number"),
    ({"group": "nogroup"}, "$.group: a group needs a user"),
    ({"linux_capabilities": ["sys_admin"]},
     "$.linux_capabilities[0]: 'sys_admin' cannot be granted"),
    ({"linux_capabilities": ["CAP_BOGUS"]},
     "$.linux_capabilities[0]: unknown capability 'CAP_BOGUS'"),
    ({"linux_capabilities": "dac_override"}, "$.linux_capabilities: expected a list"),
])
def test_identity_fields_are_checked_with_their_path(
        sp: Sp, tmp_path: Path, caps: dict[str, Any], message: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"capabilities": {"allowed": [{"read": ["/data"]}], **caps}}))
    result = sp.proc("agent", "policy", "lab", "--set", str(path))
    assert result.returncode == 2, result
    (line,) = result.stderr.splitlines()
    assert f"{path}: $.capabilities{message[1:]}" in line, line
