"""The kernel sandbox for one action's process: what can be enforced here, and the exec shim.

:func:`probe` says what this kernel and this process can do, :func:`plan` turns a
:class:`SandboxSpec` into what *will* be enforced (for the ``started`` event) plus a human reason
for each requested mechanism that cannot be, and :func:`wrap` returns the argv that applies
exactly that plan in the child (``python -I -m sp.security.enter``, see there) before exec'ing the
program. The shim exits :data:`SANDBOX_EXIT` rather than run the program with less than planned.

Mechanisms: Landlock (filesystem rules, TCP connect ports, signal scoping; denials read back
from kernel audit on ABI 7+), ``no_new_privs``, and pid/ipc/uts/mount/network namespaces (inside
a user namespace when not root). Decisions the spec leaves open:

- ``write`` does not imply ``read``; an ``execute`` entry is also readable as a file (exec opens
  it for reading); ``deny_read`` also denies executing; device nodes are never creatable;
- ``/dev/null``, ``/dev/zero``, ``/dev/full``, ``/dev/random``, ``/dev/urandom`` and ``/dev/tty``
  are always readable and writable when the filesystem is restricted (shell redirections need
  them); a deny still carves them out;
- Landlock signal scoping (ABI 6+) is applied with the pid namespace: the program cannot signal
  processes outside its domain, notably the shim's outer process in its own process group;
- TCP rules restrict ``connect`` only (binding and UDP are not restricted); with ``network:
  False`` they are moot and not applied;
- denial records are evidence, not confinement: when kernel audit is unreadable (not root, or
  Landlock ABI < 7) ``enforced["denial_log"]`` is None with a ``denial_log_reason``, and it is
  not listed as missing;
- a program running as root loses the capabilities that would let it step around the sandbox
  or the machine (:data:`DROPPED_CAPABILITIES`: loading kernel modules, raw devices and raw
  sockets, ptrace, mount and the rest of ``CAP_SYS_ADMIN``, audit control, BPF...) and those
  that step around permission checks (``linux.GRANTABLE_CAPABILITIES``: ``DAC_OVERRIDE``,
  ``DAC_READ_SEARCH``, ``FOWNER``, ``CHOWN``, ``SETUID``/``SETGID``, ``KILL``...; a policy may
  grant these back) from all five capability sets before exec (:mod:`sp.security.identity`); it
  keeps only ``NET_BIND_SERVICE`` and ``NET_BROADCAST``. A policy's ``user:`` runs it as that
  user (sp must run as root for that; otherwise it is listed as missing).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import msgspec

from sp.security import audit, landlock, linux
from sp.security.enter import SANDBOX_EXIT

__all__ = ["SANDBOX_EXIT", "Capabilities", "SandboxSpec", "code_roots", "plan", "probe", "probed",
           "read_denials", "wrap"]

DROPPED_CAPABILITIES = linux.DROPPED_CAPABILITIES
DEVICES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"]
_BASE_NAMESPACES = ["pid", "ipc", "uts", "mnt"]
_ARG_CHUNK = 100_000  # one argv string may not exceed 128 KiB (MAX_ARG_STRLEN)
# The folder that holds the sp package (this file is sp/security/sandbox.py): the shim puts it
# on sys.path instead of running site. Installed, it is site-packages; in a checkout it is the
# repository, whose sp/<name> are symlinks to its top-level folders (:func:`code_roots`).
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = ("import sys; sys.path.insert(0, " + repr(PACKAGE_PARENT) + "); "
         "from sp.security.enter import main; main(sys.argv[1:])")


class SandboxSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What to confine one action's process to. Paths are real (resolved) absolute paths."""

    read: list[str] = []
    write: list[str] = []
    execute: list[str] | None = None
    deny_read: list[str] = []
    deny_write: list[str] = []
    deny_execute: list[str] = []
    fs: bool = True
    tcp_connect: list[int] | None = None
    tcp_deny: list[int] = []
    network: bool = True
    namespaces: bool = True
    hostname: str = "sp-sandbox"
    denials_path: str | None = None
    # The policy's ``user:`` resolved (security.identity.RunAs), and the capabilities it grants
    # back from linux.GRANTABLE_CAPABILITIES (names like "CAP_DAC_OVERRIDE").
    user: dict[str, Any] | None = None
    granted_capabilities: list[str] = []
    # False: no unix-domain socket can be created (security.seccomp); the policy's
    # ``unix_sockets:``. ``libraries``: folders beyond the system's that code is mapped from
    # (sp's own interpreter's packages), kept executable under an execute allow-list.
    unix_sockets: bool = True
    libraries: list[str] = []


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What this kernel and process can enforce; each ``*_reason`` says why something is not."""

    landlock_abi: int = 0
    landlock_reason: str = ""
    namespaces: list[str] = []
    namespaces_reason: str = ""
    user_namespace: bool = False  # namespaces are created inside a new user namespace (not root)
    kernel_audit: bool = False
    audit_reason: str = ""


def _landlock_reason() -> str:
    try:
        lsms = Path("/sys/kernel/security/lsm").read_text().strip().split(",")
    except OSError:
        lsms = []
    if lsms and "landlock" not in lsms:
        return "Landlock is built in but not enabled (add landlock to the lsm= boot parameter)"
    return "the kernel has no Landlock (landlock_create_ruleset failed)"


def _probe_namespaces(user: bool) -> tuple[list[str], str]:
    """Try each unshare in a throwaway child (unsharing is irreversible for the caller)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # only async-signal-safe work here: the caller may have threads
        try:
            os.close(r)
            if user:
                try:
                    linux.unshare(linux.CLONE_NEWUSER)
                except OSError as e:
                    os.write(w, f"!user namespaces: {e.strerror}\n".encode())
                    os._exit(0)
            done = []
            for name in ("pid", "ipc", "uts", "mnt", "net"):
                try:
                    linux.unshare(linux.NAMESPACE_FLAGS[name])
                    done.append(name)
                except OSError as e:
                    os.write(w, f"!{name}: {e.strerror}\n".encode())
            if "pid" in done and "mnt" in done:
                # a pid namespace is only useful with its own /proc (an unprivileged mount of
                # proc fails where the host's /proc has parts masked, e.g. in containers)
                init = os.fork()
                if init == 0:
                    try:
                        linux.mount("none", "/", None, linux.MS_REC | linux.MS_PRIVATE)
                        linux.mount("proc", "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV)
                        os._exit(0)
                    except OSError as e:
                        os._exit(e.errno or 1)
                code = os.waitstatus_to_exitcode(os.waitpid(init, 0)[1])
                if code:
                    done.remove("pid")
                    os.write(w, f"!pid: cannot mount its /proc ({os.strerror(code)})\n".encode())
            os.write(w, "".join(f"{n}\n" for n in done).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 4096):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    lines = b"".join(chunks).decode().splitlines()
    have = [x for x in lines if x and not x.startswith("!")]
    reasons = "; ".join(x[1:] for x in lines if x.startswith("!"))
    return have, (f"unshare failed: {reasons}" if reasons else "")


def probed() -> bool:
    """Whether :func:`probe` already ran in this process (its answer is cached)."""
    return probe.cache_info().currsize > 0


@functools.cache
def probe() -> Capabilities:
    """What can be enforced here (cached per process). It forks a throwaway child: call it
    outside any ledger transaction and before a process starts threads
    (:func:`sp.commands.preparation.before_begin`, the daemon's start)."""
    abi = landlock.abi_version()
    user = os.geteuid() != 0
    have, ns_reason = _probe_namespaces(user)
    audit_reason = ""
    if abi < 7:
        audit_reason = f"Landlock audit records need ABI 7, the kernel has {abi}"
    else:
        audit_reason = audit.readable() or ""
    return Capabilities(landlock_abi=abi, landlock_reason=_landlock_reason() if not abi else "",
                        namespaces=have, namespaces_reason=ns_reason, user_namespace=user,
                        kernel_audit=not audit_reason, audit_reason=audit_reason)


def plan(spec: SandboxSpec, caps: Capabilities) -> tuple[dict[str, Any], list[str]]:
    """(enforced, missing): what the shim will apply, and why each other request cannot be."""
    abi = caps.landlock_abi
    enforced: dict[str, Any] = {"landlock_abi": abi, "no_new_privs": True}
    missing: list[str] = []

    want_ns = list(_BASE_NAMESPACES) if spec.namespaces else []
    if not spec.network:
        want_ns.append("net")
    namespaces = [n for n in want_ns if n in caps.namespaces]
    for n in want_ns:
        if n not in namespaces:
            missing.append(f"{'network' if n == 'net' else n} namespace: "
                           f"{caps.namespaces_reason or 'cannot be created here'}")
    enforced["namespaces"] = namespaces
    if namespaces and caps.user_namespace:
        enforced["user_namespace"] = True
    if "uts" in namespaces:
        enforced["hostname"] = spec.hostname
    enforced["proc"] = "pid namespace" if {"pid", "mnt"} <= set(namespaces) else "host"

    if spec.fs:
        if abi >= 1:
            enforced["fs"] = {"read": list(spec.read), "write": list(spec.write),
                              "execute": None if spec.execute is None else list(spec.execute),
                              "deny_read": list(spec.deny_read),
                              "deny_write": list(spec.deny_write),
                              "deny_execute": list(spec.deny_execute), "devices": DEVICES}
            if abi < 3:
                missing.append(f"truncating files outside the write set needs Landlock ABI 3, "
                               f"the kernel has {abi}")
        else:
            missing.append(f"filesystem rules need Landlock: {caps.landlock_reason}")

    wants_tcp = spec.tcp_connect is not None or bool(spec.tcp_deny)
    if wants_tcp and "net" not in namespaces:
        if abi >= 4:
            enforced["tcp"] = {
                "connect": None if spec.tcp_connect is None else sorted(set(spec.tcp_connect)),
                "deny": sorted(set(spec.tcp_deny))}
        else:
            missing.append(f"tcp port rules need Landlock ABI 4, the kernel has {abi}")

    uses_landlock = "fs" in enforced or "tcp" in enforced
    if abi >= 6 and "pid" in namespaces:
        enforced["scoped"] = ["signal"]
    # Denial records are evidence, not confinement: without them the program is just as
    # confined, so their absence is stated in ``enforced`` rather than listed as missing.
    if os.geteuid() == 0 and not caps.user_namespace:
        enforced.update(_identity(spec))
    elif spec.user is not None:
        missing.append(f"running as user {spec.user['name']} needs sp to run as root")
    _exec_and_sockets(spec, namespaces, enforced, missing)
    enforced["denial_log"] = None
    if spec.denials_path and uses_landlock:
        if caps.kernel_audit:
            enforced["denial_log"] = "kernel_audit"
        else:
            enforced["denial_log_reason"] = f"no kernel audit: {caps.audit_reason}"
    return enforced, missing


def _identity(spec: SandboxSpec) -> dict[str, Any]:
    """Who the program runs as and what root capabilities it loses (sp runs as root): the
    sandbox-escaping ones always, the permission-check ones unless the policy grants them."""
    granted = sorted(set(spec.granted_capabilities) & set(linux.GRANTABLE_CAPABILITIES))
    dropped = set(linux.CAPABILITIES) - set(granted)
    out: dict[str, Any] = {"dropped_capabilities": sorted(dropped)}
    if granted:
        out["granted_capabilities"] = granted
    if spec.user is not None:
        out["user"] = dict(spec.user)
    return out


def _exec_and_sockets(spec: SandboxSpec, namespaces: list[str], enforced: dict[str, Any],
                      missing: list[str]) -> None:
    """What closes the execute allow-list's side doors (:mod:`sp.security.execmounts`: the
    loader, files written by the action; the pid namespace's ``vm.memfd_noexec`` and
    :mod:`sp.security.seccomp`: memfds and ``execveat`` of a descriptor) and unix sockets."""
    from sp.security import execmounts, seccomp

    allow_list = spec.fs and spec.execute is not None
    no_filter = seccomp.supported()
    if allow_list:
        if "mnt" in namespaces:
            writable = execmounts.existing([*spec.write, *execmounts.ALWAYS_WRITABLE])
            enforced["exec_mounts"] = {
                "noexec": execmounts.existing([*execmounts.PROGRAM_DIRS, *writable]),
                "executable": execmounts.existing([
                    *execmounts.executable_dirs(spec.execute or []), *spec.libraries,
                    *(spec.execute or [])]),
                "writable": writable}
        else:
            missing.append("an execute allow-list needs a mount namespace (noexec mounts), or"
                           " the dynamic loader runs any program")
        if no_filter:
            missing.append(f"refusing to execute memfds needs a seccomp filter: {no_filter}")
        else:
            # vm.memfd_noexec=2 is per pid namespace; without one, memfd_create itself is
            # refused unless MFD_NOEXEC_SEAL (the shim also falls back to that)
            enforced["memfd_exec"] = ("refused (vm.memfd_noexec=2)" if "pid" in namespaces
                                      else "refused (seccomp: sealed memfds only)")
            enforced["exec_fd"] = "refused (seccomp: execveat AT_EMPTY_PATH)"
    if not spec.unix_sockets:
        if no_filter:
            missing.append(f"refusing unix sockets needs a seccomp filter: {no_filter}")
        else:
            enforced["unix_sockets"] = "refused (seccomp: socket(AF_UNIX), io_uring)"


@functools.cache
def code_roots() -> tuple[str, ...]:
    """The folders sp's own code is read from: the folder that holds the sp package, and the
    real folder of each subpackage that lies outside it (a subpackage reached through a
    symlink is read at the link's target, and Landlock rules apply to what a path resolves
    to). In a checkout the targets are beside ``sp/``, so this is the repository alone."""
    package = os.path.join(PACKAGE_PARENT, "sp")
    parent = os.path.realpath(PACKAGE_PARENT).rstrip("/") + "/"
    roots = [PACKAGE_PARENT]
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(package)):
            target = os.path.realpath(os.path.join(package, name))
            if os.path.isdir(target) and not target.startswith(parent) and target not in roots:
                roots.append(target)
    return tuple(roots)


def wrap(spec: SandboxSpec, argv: list[str], caps: Capabilities | None = None) -> list[str]:
    """The argv to exec instead of ``argv``: the shim applying ``plan(spec, caps)``
    (``caps`` defaults to :func:`probe`; pass the same value the started event was planned
    with)."""
    if not argv:
        raise ValueError("wrap() needs a program to run")
    enforced, _ = plan(spec, caps if caps is not None else probe())
    text = json.dumps({**enforced, "denials_path": spec.denials_path}, separators=(",", ":"))
    chunks = [text[i:i + _ARG_CHUNK] for i in range(0, len(text), _ARG_CHUNK)]
    # -S: no site (an editable install's finder alone costs ~8 ms); the folder that holds the
    # sp package goes on sys.path instead. -I: no environment variables, no user site, no
    # current dir.
    return [sys.executable, "-I", "-S", "-c", _BOOT, *chunks, "--", *argv]


def denials_file(home: str, action_id: str, attempt: int) -> str:
    """Where the shim of one attempt writes the kernel's denials (``<home>/run/``): read by
    the worker when the attempt ends, and by ``sp replay`` when its worker died first."""
    return os.path.join(home, "run", f"{action_id}-{attempt}.denials")


def read_denials(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The denial records the shim wrote (``[]`` when there is no file).

    A line that does not parse (the shim was killed mid-write) is skipped, not raised.
    """
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out
