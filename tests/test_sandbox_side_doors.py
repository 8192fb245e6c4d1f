"""Side doors around a policy, attacked for real: named unix sockets with ``network: []``
(issue 11, item 3) and an execute allow-list bypassed through the dynamic loader or a memfd
(item 4). Real shim, real kernel (Landlock, namespaces, seccomp, noexec mounts), real
listeners; skipped only where this kernel lacks the mechanism."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sp.commands import actions, policies
from sp.commands.home import Home
from sp.ledger.errors import UsageError
from sp.ledger.store import EventStore
from sp.runner.worker import Worker
from sp.security import policy as pol
from sp.security import seccomp
from sp.security.sandbox import SandboxSpec, probe, wrap
from tests.conftest import Sp

pytestmark = pytest.mark.slow
CAPS = probe()
PY = os.path.realpath("/usr/bin/python3" if os.path.exists("/usr/bin/python3")
                      else sys.executable)
SP_PY = os.path.realpath(sys.executable)
ID = shutil.which("id") or "/usr/bin/id"
LOADER = "/lib64/ld-linux-x86-64.so.2" if os.path.exists("/lib64/ld-linux-x86-64.so.2") else (
    "/lib/ld-linux-aarch64.so.1")
needs_box = pytest.mark.skipif(
    CAPS.landlock_abi < 1 or not {"pid", "mnt"} <= set(CAPS.namespaces)
    or seccomp.supported() is not None,
    reason=f"needs Landlock, pid+mount namespaces and seccomp here: {CAPS}")

# the two attacks of item 4, each printing one line: what it got
ATTACKS = f"""
import os, subprocess
def run(argv, **kw):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, **kw)
        return f"{{r.returncode}} {{r.stdout.strip()}} {{r.stderr.strip()[-120:]}}"
    except OSError as e:
        return f"errno {{e.errno}}"
print("loader:", run([{LOADER!r}, {ID!r}, "-u"]))
fd = os.memfd_create("payload", 0)
os.write(fd, open({ID!r}, "rb").read())
print("memfd:", run([f"/proc/self/fd/{{fd}}", "-u"], pass_fds=(fd,)))
try:
    os.execve(fd, [{ID!r}, "-u"], {{}})
except OSError as e:
    print("fexecve: errno", e.errno)
"""


def _lines(out: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


@pytest.fixture
def unix_listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A root listener of the test's own, on a path anyone (and the policy) can read."""
    folder = tmp_path / "run"
    folder.mkdir()
    folder.chmod(0o755)
    path = str(folder / "ctl.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o666)
    srv.listen(8)
    try:
        yield path, srv
    finally:
        srv.close()


def _pending(srv: socket.socket) -> bool:
    """Did anything connect (a connection waits in the backlog)?"""
    return bool(select.select([srv], [], [], 0)[0])


_CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
print("connected")
"""


# -- item 3: named unix sockets ------------------------------------------------------------------


@needs_box
def test_shim_refuses_unix_sockets_but_keeps_stream_socketpairs(
        tmp_path: Path, unix_listener: tuple[str, socket.socket]) -> None:
    path, srv = unix_listener
    dgram = str(tmp_path / "run" / "log.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(dgram)
    os.chmod(dgram, 0o666)
    code = textwrap.dedent(f"""
        import socket
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            try:
                socket.socket(socket.AF_UNIX, kind).connect({path!r})
                print("connected")
            except OSError as e:
                print("errno", e.errno)
        a, b = socket.socketpair()
        a.send(b"x"); print("pair", b.recv(1).decode())
        try:
            a.connect({path!r})
        except OSError as e:
            print("reconnect errno", e.errno)
        try:
            c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            c.sendto(b"leak", {dgram!r})
            print("dgram sent")
        except OSError as e:
            print("dgram errno", e.errno)
    """)
    spec = SandboxSpec(read=["/"], write=[str(tmp_path)], network=False, unix_sockets=False)
    r = subprocess.run(wrap(spec, [PY, "-c", code]), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["errno 13", "errno 13", "pair x", "reconnect errno 106",
                                     "dgram errno 13"]
    assert not _pending(srv)
    sink.setblocking(False)
    with pytest.raises(BlockingIOError):
        sink.recv(16)
    sink.close()
    # the same program with unix sockets allowed does connect: the test's listener is real
    spec = SandboxSpec(read=["/"], write=[str(tmp_path)], network=False)
    r = subprocess.run(wrap(spec, [PY, "-c", _CONNECT, path]), capture_output=True, text=True,
                       timeout=30)
    assert r.stdout == "connected\n", r.stderr


def _run(store: EventStore, home: Home, command: list[str], agent: str = "lab",
         **kw: Any) -> str:
    (aid,) = actions.submit(store, [actions.SubmitSpec(command=command, agent=agent, **kw)])
    Worker(store, home).run(until_idle=True, wait_retries=False)
    return aid


def _state(store: EventStore, aid: str) -> tuple[str, str | None, str | None]:
    row = store.query_one("SELECT state, error_kind, error FROM actions WHERE action_id = ?",
                          (aid,))
    assert row is not None
    return row[0], row[1], row[2]


def _started(store: EventStore, aid: str) -> dict[str, Any]:
    (row,) = store.query("SELECT data FROM events WHERE stream = ? AND type = 'action.started'",
                         (aid,))
    box: dict[str, Any] = json.loads(row[0])["sandbox"]
    return box


def _log(home: Home, aid: str) -> str:
    return home.log_path(aid).read_text(errors="replace")


@needs_box
def test_no_network_policy_cannot_connect_to_a_named_unix_socket(
        store: EventStore, home: Home, tmp_path: Path,
        unix_listener: tuple[str, socket.socket]) -> None:
    path, srv = unix_listener
    policies.set_policy(store, "lab", pol.decode({"allowed": [
        {"network": []}, {"read": [str(tmp_path)]}]}))
    aid = _run(store, home, [PY, "-c", _CONNECT, path], cwd=str(tmp_path))
    assert _state(store, aid)[0] == "failed", _log(home, aid)
    assert "PermissionError" in _log(home, aid) and "connected" not in _log(home, aid)
    assert not _pending(srv)
    assert _started(store, aid)["unix_sockets"].startswith("refused")
    # a policy that opts in reaches it
    policies.set_policy(store, "lab", pol.decode({"allowed": [
        {"network": []}, {"read": [str(tmp_path)]}], "unix_sockets": "any"}))
    aid = _run(store, home, [PY, "-c", _CONNECT, path], cwd=str(tmp_path))
    assert _state(store, aid)[0] == "completed", _log(home, aid)
    assert _pending(srv)
    assert "unix_sockets" not in _started(store, aid)


def test_unix_sockets_in_a_policy_is_any_or_none_and_errors_name_the_path() -> None:
    assert pol.decode({"unix_sockets": "none"}).blocks_unix_sockets
    assert not pol.decode({"allowed": [{"network": []}],
                           "unix_sockets": "any"}).blocks_unix_sockets
    assert pol.decode({"allowed": [{"network": ["https://arxiv.org"]}]}).blocks_unix_sockets
    assert not pol.decode({"allowed": [{"write": ["/tmp"]}]}).blocks_unix_sockets
    with pytest.raises(UsageError) as e:
        pol.decode({"unix_sockets": ["/run/docker.sock"]})
    assert str(e.value).startswith("$.capabilities.unix_sockets: a list of socket paths cannot")
    with pytest.raises(UsageError) as e:
        pol.decode({"unix_sockets": "some"})
    assert str(e.value) == "$.capabilities.unix_sockets: expected any or none, got 'some'"


@needs_box
def test_agent_policy_shows_the_unix_socket_and_exec_rules(sp: Sp, tmp_path: Path) -> None:
    pf = tmp_path / "policy.yaml"
    pf.write_text("allowed:\n  - network: []\n  - execute: [python3]\n")
    sp("agent", "policy", "lab", "--set", str(pf))
    shown = sp("agent", "policy", "lab").stdout
    assert "unix sockets: none" in shown
    assert "unix sockets refused" in shown and "noexec mounts" in shown, shown
    info = json.loads(sp("agent", "policy", "lab", "--format", "json").stdout)
    enforced = info["enforcement"]["enforced"]
    assert enforced["unix_sockets"] and enforced["memfd_exec"] and enforced["exec_mounts"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("allowed:\n  - network: []\nunix_sockets: [/run/x.sock]\n")
    r = sp.proc("agent", "policy", "lab", "--set", str(bad))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "unix_sockets" in r.stderr and "Traceback" not in r.stderr


@needs_box
def test_a_sandboxed_action_without_network_still_checkpoints_through_its_worker(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    policies.set_policy(store, "lab", pol.decode({"allowed": [
        {"network": []}, {"write": [str(tmp_path / "out")]}, {"execute": [SP_PY, "sh"]}]}))
    (tmp_path / "out").mkdir()
    sp_cli = f"{sys.executable} -m sp.cli"  # the venv's link: its packages
    aid = _run(store, home, ["sh", "-c", f"{sp_cli} checkpoint --step 0 '{{\"n\": 1}}' &&"
                                         f" {sp_cli} progress 50 half"],
               cwd=str(Path(__file__).parent.parent))
    assert _state(store, aid)[0] == "completed", _log(home, aid)
    kinds = [r[0] for r in store.query("SELECT type FROM events WHERE stream = ?", (aid,))]
    assert "action.checkpointed" in kinds and "action.progressed" in kinds
    box = _started(store, aid)
    assert box["unix_sockets"] and box["exec_mounts"]


# -- item 4: the execute allow-list --------------------------------------------------------------


@needs_box
@pytest.mark.parametrize("write", ["tmp", "/"])
def test_shim_loader_and_memfd_cannot_run_an_unlisted_program(tmp_path: Path,
                                                              write: str) -> None:
    copy = tmp_path / "id-copy"
    shutil.copy2(ID, copy)
    code = ATTACKS + textwrap.dedent(f"""
        print("copy:", run([{LOADER!r}, {str(copy)!r}, "-u"]))
        print("allowed:", run([{LOADER!r}, {PY!r}, "-c", "print('py')"]))
    """)
    spec = SandboxSpec(read=["/"], write=[str(tmp_path) if write == "tmp" else "/"],
                       execute=[PY])
    before = Path("/proc/sys/vm/memfd_noexec").read_text()
    r = subprocess.run(wrap(spec, [PY, "-c", code]), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = _lines(r.stdout)
    assert not got["loader"].startswith("0"), got
    assert "failed to map segment" in got["loader"]
    assert got["memfd"] == "errno 13", got
    assert got["fexecve"] == "errno 13", got
    assert "failed to map segment" in got["copy"], got
    assert got["allowed"].startswith("0 py"), got  # the loader still runs an allowed program
    assert Path("/proc/sys/vm/memfd_noexec").read_text() == before  # only the sandbox's


@needs_box
def test_execute_allow_list_holds_against_the_loader_and_a_memfd(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    script = out / "job.sh"
    script.write_text(f"echo from-script > {out}/script.txt\n")
    policies.set_policy(store, "lab", pol.decode({"allowed": [
        {"execute": [PY, "sh"]}, {"write": [str(out)]}]}))
    aid = _run(store, home, [PY, "-c", ATTACKS])
    log = _log(home, aid)
    assert _state(store, aid)[0] == "completed", log
    got = _lines(log)
    assert "failed to map segment" in got["loader"], log
    assert got["memfd"] == "errno 13" and got["fexecve"] == "errno 13", log
    box = _started(store, aid)
    assert box["memfd_exec"] and box["exec_fd"] and box["exec_mounts"]["executable"]
    # allowed programs still run: python3, and a shell script through the allowed sh
    aid = _run(store, home, ["sh", str(script)])
    assert _state(store, aid)[0] == "completed", _log(home, aid)
    assert (out / "script.txt").read_text() == "from-script\n"
    aid = _run(store, home, ["sh", "-c", f"{ID} -u"])
    assert _state(store, aid)[0] == "failed", _log(home, aid)  # Landlock, as before


@needs_box
def test_without_a_mount_namespace_an_execute_allow_list_is_refused(
        store: EventStore, home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SP_SANDBOX_NAMESPACES", "pid,ipc,uts,net")
    policies.set_policy(store, "lab", pol.decode({"allowed": [{"execute": [PY]}]}))
    aid = _run(store, home, [PY, "-c", "print('ran')"])
    state, kind, error = _state(store, aid)
    assert (state, kind) == ("failed", "sandbox_unavailable")
    assert error is not None and "execute allow-list needs a mount namespace" in error
    box = _started(store, aid)
    assert any("execute allow-list" in m for m in box["missing"])


def test_seccomp_filter_covers_each_abi_and_refuses_unknown_machines() -> None:
    for machine in ("x86_64", "aarch64"):
        insns = seccomp.program(unix=True, exec_fd=True, memfd_sealed=True, machine=machine)
        arches = {k for code, _, _, k in insns if code == 0x15 and k > 0x40000000 - 1}
        assert len(arches) >= 2
        assert all(0 <= jt < 256 and 0 <= jf < 256 for _, jt, jf, _ in insns)
    with pytest.raises(OSError):
        seccomp.program(unix=True, exec_fd=False, memfd_sealed=False, machine="riscv64")
