"""The kernel sandbox (security/): real Landlock, namespaces and audit, real processes.

Each test runs the real shim (``wrap()``) around a real program; a test is skipped only where
this kernel lacks the mechanism, with the reason :func:`sp.security.sandbox.probe` gives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sp.security import landlock
from sp.security.sandbox import (
    SANDBOX_EXIT,
    Capabilities,
    SandboxSpec,
    plan,
    probe,
    read_denials,
    wrap,
)

pytestmark = pytest.mark.slow
CAPS = probe()
PY = sys.executable


def need(abi: int = 1, namespaces: tuple[str, ...] = (), audit: bool = False) -> None:
    if CAPS.landlock_abi < abi:
        pytest.skip(f"needs Landlock ABI {abi}, the kernel has {CAPS.landlock_abi}: "
                    f"{CAPS.landlock_reason}")
    for n in namespaces:
        if n not in CAPS.namespaces:
            pytest.skip(f"cannot create a {n} namespace here: {CAPS.namespaces_reason}")
    if audit and not CAPS.kernel_audit:
        pytest.skip(f"no Landlock audit records here: {CAPS.audit_reason}")


def run(spec: SandboxSpec, argv: list[str],
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(wrap(spec, argv), capture_output=True, text=True, timeout=timeout)


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


@pytest.fixture
def listeners() -> Iterator[tuple[int, int]]:
    """Two real TCP listeners on 127.0.0.1 (the host's network namespace)."""
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        socks.append(s)
    try:
        yield socks[0].getsockname()[1], socks[1].getsockname()[1]
    finally:
        for s in socks:
            s.close()


def test_writing_outside_the_one_writable_folder_fails_and_is_recorded(tmp_path: Path) -> None:
    need(abi=1)
    ok, other = tmp_path / "ok", tmp_path / "other"
    ok.mkdir()
    other.mkdir()
    (other / "existing").write_text("before")
    denials = tmp_path / "denials.jsonl"
    spec = SandboxSpec(read=["/"], write=[str(ok)], denials_path=str(denials))
    r = run(spec, py(f"""
        open({str(ok / "a")!r}, "w").write("fine")
        for p in ({str(other / "existing")!r}, {str(other / "new")!r}):
            try:
                open(p, "w").write("after")
            except OSError as e:
                print(e.errno)
    """))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["13", "13"]
    assert (ok / "a").read_text() == "fine"
    mknod = run(SandboxSpec(read=["/"], write=[str(ok)]),
                ["mknod", str(ok / "disk"), "b", "8", "0"])
    assert mknod.returncode != 0 and not (ok / "disk").exists()
    assert (other / "existing").read_text() == "before"
    assert not (other / "new").exists()
    if not CAPS.kernel_audit:
        pytest.skip(f"no Landlock audit records here: {CAPS.audit_reason}")
    recs = read_denials(denials)
    assert {"access": "fs.write_file", "path": str(other / "existing")} in recs
    assert {"access": "fs.make_reg", "path": str(other)} in recs
    assert f"sp: sandbox denied fs.write_file {other / 'existing'}\n" in r.stderr


def test_denied_file_inside_a_readable_tree_cannot_be_read(tmp_path: Path) -> None:
    need(abi=1)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "secret").write_text("s3cret")
    (tree / "public").write_text("hello")
    (tree / "sub" / "deep").write_text("deep")
    spec = SandboxSpec(read=["/"], deny_read=[str(tree / "secret")])
    r = run(spec, py(f"""
        import os
        print(sorted(os.listdir({str(tree)!r})))
        print(open({str(tree / "public")!r}).read(), open({str(tree / "sub" / "deep")!r}).read())
        try:
            open({str(tree / "secret")!r}).read()
        except OSError as e:
            print(e.errno)
    """))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["['public', 'secret', 'sub']", "hello deep", "13"]


def test_denied_directory_cannot_be_listed_or_read(tmp_path: Path) -> None:
    need(abi=1)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id").write_text("k")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "f").write_text("w")
    system = [p for p in ("/usr", "/lib", "/lib64", "/etc") if os.path.exists(p)]
    spec = SandboxSpec(read=[str(tmp_path), *system, sys.prefix, sys.base_prefix],
                       deny_read=[str(tmp_path / "keys")])
    r = run(spec, py(f"""
        import os
        print(open({str(tmp_path / "work" / "f")!r}).read())
        for op in (lambda: os.listdir({str(tmp_path / "keys")!r}),
                   lambda: open({str(tmp_path / "keys" / "id")!r}).read()):
            try:
                op()
            except OSError as e:
                print(e.errno)
    """))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["w", "13", "13"]


def test_denied_executable_fails_by_any_path(tmp_path: Path) -> None:
    need(abi=1)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    x = bindir / "x"
    shutil.copy2("/bin/true", x)
    (tmp_path / "link").symlink_to(x)
    denials = tmp_path / "d.jsonl"
    spec = SandboxSpec(read=["/"], deny_execute=[str(x)], denials_path=str(denials))
    paths = [str(x), str(bindir / ".." / "bin" / "x"), str(tmp_path / "link"), "/bin/true"]
    r = run(spec, py(f"""
        import subprocess
        for p in {paths!r}:
            try:
                print(subprocess.run([p]).returncode)
            except OSError as e:
                print("errno", e.errno)
        print(len(open({str(x)!r}, "rb").read()) > 0)  # still readable, just not executable
    """))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["errno 13"] * 3 + ["0", "True"]
    if CAPS.kernel_audit:
        assert {"access": "fs.execute", "path": str(x)} in read_denials(denials)


def test_execute_list_keeps_the_dynamic_loader(tmp_path: Path) -> None:
    need(abi=1)
    true, ls = os.path.realpath("/bin/true"), os.path.realpath(shutil.which("ls") or "/bin/ls")
    assert landlock.elf_interp(true), "this test needs a dynamically linked /bin/true"
    spec = SandboxSpec(read=["/"], execute=[true, os.path.realpath(PY)])
    r = run(spec, py(f"""
        import subprocess
        print(subprocess.run([{true!r}]).returncode)
        try:
            subprocess.run([{ls!r}])
        except OSError as e:
            print("errno", e.errno)
    """))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["0", "errno 13"]


_CONNECT = """
    import socket
    for port in {ports!r}:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            print(port, "ok")
        except OSError as e:
            print(port, e.errno)
"""


def test_tcp_deny_list_refuses_one_port(tmp_path: Path, listeners: tuple[int, int]) -> None:
    need(abi=4)
    allowed, denied = listeners
    denials = tmp_path / "d.jsonl"
    spec = SandboxSpec(fs=False, tcp_deny=[denied], denials_path=str(denials))
    r = run(spec, py(_CONNECT.format(ports=[allowed, denied])))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{allowed} ok", f"{denied} 13"]
    if CAPS.kernel_audit:
        assert read_denials(denials) == [{"access": "net.connect_tcp", "port": denied}]
        assert f"sp: sandbox denied net.connect_tcp port {denied}\n" in r.stderr


def test_tcp_allow_list_refuses_every_other_port(listeners: tuple[int, int]) -> None:
    need(abi=4)
    allowed, other = listeners
    r = run(SandboxSpec(fs=False, tcp_connect=[allowed]),
            py(_CONNECT.format(ports=[allowed, other])))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{allowed} ok", f"{other} 13"]


def test_no_network_leaves_only_loopback(listeners: tuple[int, int]) -> None:
    need(abi=0, namespaces=("net",))
    port, _ = listeners
    r = run(SandboxSpec(fs=False, network=False), py(f"""
        import socket
        print([name for _, name in socket.if_nameindex()])
        for addr in (("127.0.0.1", {port}), ("192.0.2.1", 80)):
            try:
                socket.create_connection(addr, timeout=5).close()
                print("connected")
            except OSError as e:
                print(e.errno)
    """))
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "['lo']"
    assert out[1:] != ["connected", "connected"] and "connected" not in out[1:]


def test_pid_namespace_shows_only_the_sandbox() -> None:
    need(abi=0, namespaces=("pid", "mnt"))
    r = run(SandboxSpec(fs=False), py("""
        import os
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        print(os.getpid(), pids)
        print(open("/proc/1/cmdline", "rb").read().split(b"\\0")[:5])
    """))
    assert r.returncode == 0, r.stderr
    own, pids = r.stdout.splitlines()[0].split(" ", 1)
    assert own != "1"
    assert pids == f"[1, {own}]"
    assert "sp.security.enter" in r.stdout.splitlines()[1]


def test_hostname_and_no_new_privs() -> None:
    need(abi=0, namespaces=("uts",))
    r = run(SandboxSpec(fs=False, hostname="sp-test-host"),
            ["sh", "-c", "hostname; grep NoNewPrivs /proc/self/status"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["sp-test-host", "NoNewPrivs:", "1"]
    assert socket.gethostname() != "sp-test-host"


@pytest.mark.parametrize(("script", "code"), [
    ("exit 7", 7), ("exit 0", 0), ("kill -USR1 $$", -signal.SIGUSR1), ("kill -9 $$", -9),
    ("exit 125", 125),
])
def test_exit_status_and_death_by_signal_are_mirrored(script: str, code: int) -> None:
    r = run(SandboxSpec(read=["/"]) if CAPS.landlock_abi else SandboxSpec(fs=False),
            ["sh", "-c", script])
    assert r.returncode == code, r.stderr
    assert "sp: sandbox" not in r.stderr


def test_program_starts_with_default_signal_dispositions() -> None:
    """Python (the shim) ignores SIGPIPE and SIGXFSZ; the program must not inherit that."""
    argv = ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"]
    r = run(SandboxSpec(fs=False), argv)
    assert r.returncode == 0, r.stderr
    # exactly what the program gets without the sandbox (whatever the caller itself ignores,
    # e.g. under make), never Python's own SIGPIPE/SIGXFSZ settings
    bare = subprocess.run(argv, capture_output=True, text=True, check=True,
                          restore_signals=True)
    assert r.stdout.split() == bare.stdout.split()
    ignored = int(r.stdout.split()[3], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)) and not ignored & (1 << (signal.SIGXFSZ - 1))


def _start(script: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(wrap(SandboxSpec(fs=False), ["sh", "-c", script]),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    assert p.stdout is not None and p.stdout.readline() == "ready\n"
    return p


def _alive(marker: str) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def test_sigterm_to_the_group_ends_the_program_promptly() -> None:
    p = _start("echo ready; exec sleep 61.5")
    os.killpg(p.pid, signal.SIGTERM)
    assert p.wait(timeout=5) == -signal.SIGTERM
    assert not _alive("61.5")


def test_init_forwards_a_signal_sent_only_to_it() -> None:
    need(abi=0, namespaces=("pid",))
    p = _start("trap 'echo got; exit 5' USR1; echo ready; while :; do sleep 0.05; done")
    init = int(Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()[0])
    os.kill(init, signal.SIGUSR1)
    assert p.wait(timeout=5) == 5
    assert p.stdout is not None and p.stdout.read() == "got\n"


def test_program_ignoring_sigterm_is_ended_by_sigkill_of_the_group() -> None:
    p = _start("trap '' TERM; echo ready; exec sleep 62.5")
    os.killpg(p.pid, signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        p.wait(timeout=0.5)
    assert _alive("62.5")
    os.killpg(p.pid, signal.SIGKILL)
    assert p.wait(timeout=5) == -signal.SIGKILL
    for _ in range(200):  # the namespace's processes die with its init, asynchronously
        if not _alive("62.5"):
            break
        os.sched_yield()
        subprocess.run(["true"])
    assert not _alive("62.5")


def test_program_cannot_signal_the_shim_in_its_process_group() -> None:
    """``kill 0`` reaches the whole group, the shim's outer process included; Landlock signal
    scoping keeps it alive (SIGALRM would otherwise end it and lose the program's status)."""
    need(abi=6, namespaces=("pid",))
    r = run(SandboxSpec(fs=False), ["sh", "-c", "trap '' ALRM; kill -ALRM 0; exit 3"])
    assert r.returncode == 3, r.stderr


def test_what_was_promised_but_cannot_be_applied_stops_the_program(tmp_path: Path) -> None:
    need(abi=0, namespaces=("uts",))
    marker = tmp_path / "ran"
    r = run(SandboxSpec(fs=False, hostname="x" * 100), ["touch", str(marker)])
    assert r.returncode == SANDBOX_EXIT
    assert r.stderr == "sp: sandbox: cannot apply hostname: Invalid argument\n"
    assert not marker.exists()


def test_missing_program_is_not_a_sandbox_failure() -> None:
    r = run(SandboxSpec(fs=False), ["/nonexistent/prog"])
    assert r.returncode == 127
    assert "cannot run /nonexistent/prog" in r.stderr


def test_plan_names_what_this_kernel_cannot_enforce() -> None:
    spec = SandboxSpec(read=["/"], write=["/tmp"], tcp_deny=[22], denials_path="/tmp/d")
    enforced, missing = plan(spec, Capabilities(landlock_abi=3, namespaces=[],
                                                namespaces_reason="unshare failed: EPERM"))
    assert "tcp port rules need Landlock ABI 4, the kernel has 3" in missing
    assert "pid namespace: unshare failed: EPERM" in missing
    assert "tcp" not in enforced and enforced["fs"]["read"] == ["/"]
    assert enforced["namespaces"] == [] and enforced["denial_log"] is None
    assert enforced["denial_log_reason"]

    enforced, missing = plan(SandboxSpec(network=False), Capabilities(landlock_abi=0))
    assert "fs" not in enforced
    assert any(m.startswith("filesystem rules need Landlock") for m in missing)
    assert any(m.startswith("network namespace") for m in missing)

    full = Capabilities(landlock_abi=7, namespaces=["pid", "ipc", "uts", "mnt", "net"],
                        kernel_audit=True)
    enforced, missing = plan(spec, full)
    assert missing == []
    assert enforced["tcp"] == {"connect": None, "deny": [22]}
    assert enforced["namespaces"] == ["pid", "ipc", "uts", "mnt"]
    assert enforced["denial_log"] == "kernel_audit" and enforced["scoped"] == ["signal"]
    # no network at all makes port rules moot rather than missing
    enforced, missing = plan(SandboxSpec(network=False, tcp_connect=[443]),
                             Capabilities(landlock_abi=3, namespaces=["net"]))
    assert "tcp" not in enforced and not any("tcp" in m for m in missing)


def test_deny_decomposition_rules(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "secret").write_text("")
    (tmp_path / "a" / "other").write_text("")
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "ln").symlink_to(tmp_path / "a" / "secret")
    root = str(tmp_path)
    rules = landlock.fs_rules([(root, landlock.READ)], [(f"{root}/a/secret", landlock.READ)],
                              landlock.handled_fs(7))
    assert rules == {root: landlock.READ_DIR, f"{root}/a/other": landlock.READ_FILE,
                     f"{root}/b": landlock.READ_FILE}
    rules = landlock.fs_rules([(root, landlock.WRITE)], [(f"{root}/a", landlock.WRITE)],
                              landlock.handled_fs(7))
    assert rules == {f"{root}/b": landlock.WRITE}
    # a deny above the allowed path wins
    assert landlock.fs_rules([(f"{root}/a", landlock.READ)], [(root, landlock.READ)], 0xFFFF) == {}


def test_read_denials_of_a_missing_or_torn_file(tmp_path: Path) -> None:
    assert read_denials(tmp_path / "none.jsonl") == []
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"access": "fs.read_file", "path": "/x"}\n{"access": "fs.wr')
    assert read_denials(torn) == [{"access": "fs.read_file", "path": "/x"}]


def test_concurrent_sandboxes_each_record_only_their_own_denials(tmp_path: Path) -> None:
    need(abi=1, audit=True)
    procs = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        spec = SandboxSpec(read=["/"], denials_path=str(tmp_path / f"{name}.jsonl"))
        procs.append(subprocess.Popen(wrap(spec, ["sh", "-c", f"touch {tmp_path / name}/f"]),
                                      stderr=subprocess.DEVNULL))
    assert [p.wait(timeout=30) for p in procs] == [1, 1]
    for name in ("one", "two"):
        assert read_denials(tmp_path / f"{name}.jsonl") == [
            {"access": "fs.make_reg", "path": str(tmp_path / name)}]


def _world_python() -> str | None:
    for p in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(p) and os.stat(os.path.realpath(p)).st_mode & 0o001:
            return p
    return None


def test_unprivileged_user_gets_the_same_sandbox_through_a_user_namespace() -> None:
    """As root the shim never takes the user-namespace path, so run it as nobody here (in a
    world-traversable temporary folder: pytest's own is private to root)."""
    need(abi=1)
    if os.geteuid() != 0:
        pytest.skip("already unprivileged: every other test covers the user-namespace path")
    python = _world_python()
    if python is None:
        pytest.skip("no world-executable python3 to run the shim as nobody")
    with tempfile.TemporaryDirectory(prefix="sp-sandbox-") as tmp:
        _run_as_nobody(Path(tmp), python)


def _run_as_nobody(tmp: Path, python: str) -> None:
    lib = tmp / "lib" / "sp" / "security"
    lib.mkdir(parents=True)
    shutil.copy(Path(landlock.__file__).parent.with_name("__init__.py"), lib.parent)
    for mod in ("__init__", "enter", "linux", "landlock", "audit", "identity", "execmounts",
                "seccomp"):
        shutil.copy(Path(landlock.__file__).with_name(f"{mod}.py"), lib / f"{mod}.py")
    out = tmp / "out"
    out.mkdir()
    for p in (tmp, tmp / "lib", lib.parent, lib, out):
        p.chmod(0o777)
    spec = SandboxSpec(read=["/"], write=[str(out)], network=False, hostname="unpriv")
    caps = Capabilities(landlock_abi=CAPS.landlock_abi, namespaces=list(CAPS.namespaces),
                        user_namespace=True)
    enforced, _ = plan(spec, caps)
    r = subprocess.run(
        [python, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp / 'lib')!r}); "
                             "from sp.security.enter import main; main(sys.argv[1:])",
         json.dumps(enforced), "--", "sh", "-c",
         f"id -u; hostname; grep NoNewPrivs /proc/self/status; touch {out}/f && echo wrote; "
         f"touch {tmp}/nope"],
        capture_output=True, text=True, timeout=30, user=65534, group=65534, extra_groups=[])
    if r.returncode == SANDBOX_EXIT and "namespaces" in r.stderr:
        pytest.skip(f"unprivileged user namespaces are disabled here: {r.stderr.strip()}")
    assert r.stdout.split() == ["65534", "unpriv", "NoNewPrivs:", "1", "wrote"], r.stderr
    assert r.returncode == 1, r.stderr
    assert (out / "f").exists()
    assert not (tmp / "nope").exists()
