"""From an agent's policy to what the kernel enforces for one attempt.

:func:`sandbox_spec` turns a :class:`~sp.security.policy.Policy` into the
:class:`~sp.security.sandbox.SandboxSpec` the attempt's process enters before exec; paths are
resolved here, when the attempt is claimed, so the rules name real files. :func:`prepare` adds
what the machine can do (:func:`sp.security.sandbox.probe`) and says what will be enforced, or why
the attempt must be refused.
"""

from __future__ import annotations

import contextlib
import glob
import os
import sys
import sysconfig
from typing import Any

import msgspec

from sp.security import sandbox
from sp.security.policy import (
    SECRETS,
    SYSTEM_READ,
    SYSTEM_WRITE,
    NetRule,
    Policy,
    real,
    resolve_program,
)


def _existing(paths: list[str]) -> list[str]:
    """The resolved paths that exist, globs (``/etc/python3*``) expanded, each once."""
    out: list[str] = []
    for pattern in paths:
        for p in sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]:
            r = real(p)
            if os.path.exists(r) and r not in out:
                out.append(r)
    return out


def _secrets(policy: Policy, needed: list[str]) -> list[str]:
    """What of :data:`~sp.security.policy.SECRETS` stays unreadable under ``policy``: all of it,
    except a secret the policy names itself in ``read`` or ``write``; where it names a path
    inside a secret folder (``/root/project``), or the attempt ``needed`` one inside (its
    TMPDIR in a home under ``/root``, sp's interpreter in ``/root/.pyenv``, which an action
    also runs for ``sp checkpoint``, an allowed program), the rest of that folder stays out of
    reach."""
    named = [real(p) for p in [*(policy.read or []), *(policy.write or [])]]
    out: list[str] = []
    for secret in _existing(list(SECRETS)):
        if secret in named:
            continue
        inside = [p for p in [*named, *map(real, needed)]
                  if p.startswith(secret.rstrip("/") + "/")]
        out.extend(_around(secret, inside) if inside else [secret])
    return out


def _around(folder: str, keep: list[str]) -> list[str]:
    """The entries of ``folder`` (recursively along the way) that lead to none of ``keep``."""
    out: list[str] = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return out
    for name in names:
        path = os.path.join(folder, name)
        if path in keep:
            continue
        below = [k for k in keep if k.startswith(path + "/")]
        out.extend(_around(path, below) if below else [path])
    return out


def _home_entries(home: str, tmpdir: str) -> list[str]:
    """Everything directly in sp's home except the folder of temporary folders, and every
    other action's temporary folder (new ones, made later, are not covered by the carved
    rules at all, so they are out of reach too)."""
    out: list[str] = []
    tmp_root = os.path.dirname(tmpdir)
    with contextlib.suppress(OSError):
        for name in os.listdir(home):
            path = os.path.join(home, name)
            if real(path) != real(tmp_root):
                out.append(path)
    with contextlib.suppress(OSError):
        for name in os.listdir(tmp_root):
            path = os.path.join(tmp_root, name)
            if real(path) != real(tmpdir):
                out.append(path)
    return out


def _python_roots() -> list[str]:
    """What sp's own interpreter needs to run a built-in action type."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(real(sys.executable))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with_path = sysconfig.get_paths().get(key)
        if with_path:
            roots.add(with_path)
    # sp itself (an editable install lives outside site-packages, behind symlinks).
    roots.update(sandbox.code_roots())
    return sorted(roots)


def _python_libraries() -> list[str]:
    """Where sp's own interpreter maps compiled modules from (kept executable under an
    execute allow-list: security.execmounts)."""
    paths = sysconfig.get_paths()
    return [paths[k] for k in ("platstdlib", "platlib", "stdlib", "purelib") if paths.get(k)]


def _ports(rules: list[NetRule]) -> tuple[list[int] | None, bool]:
    """(ports, any): the TCP ports a rule list names; ``any`` when a rule covers every port."""
    ports: set[int] = set()
    for r in rules:
        if r.port is None:
            return None, True
        ports.add(r.port)
    return sorted(ports), False


def sandbox_spec(policy: Policy, *, tmpdir: str, shell: bool, env_path: str | None,
                 programs: list[str] | None = None, python: bool = False,
                 denials_path: str | None = None, home: str | None = None,
                 run_as: dict[str, Any] | None = None) -> sandbox.SandboxSpec:
    """The sandbox for one attempt of an action under ``policy``.

    ``programs`` are the argv[0]s it will run (allowed executables resolved through PATH),
    ``python`` says sp's own interpreter runs it (a built-in action type), ``tmpdir`` is its
    private temporary folder (always writable). ``home`` is sp's home: everything in it but
    ``tmpdir`` is out of reach — the ledger, the blob store, the logs, other actions' folders —
    whatever the policy allows elsewhere, so a confined action cannot rewrite its own policy
    or read another action's data (it talks to sp through :mod:`sp.runner.broker`). The
    filesystem is therefore always restricted for a sandboxed action, and the
    :data:`~sp.security.policy.SECRETS` stay unreadable under any grant that does not name them.
    ``run_as`` is the policy's ``user:`` resolved (:func:`sp.security.identity.resolve`).
    """
    fs = policy.restricts_fs or home is not None
    off_limits = _home_entries(home, tmpdir) if home is not None else []
    read: list[str] = ["/"] if policy.read is None else [
        *_existing(list(policy.read)), *_existing(list(SYSTEM_READ))]
    write: list[str] = ["/"] if policy.write is None else [
        *_existing(list(policy.write)), *_existing(list(SYSTEM_WRITE))]
    if policy.read is not None and policy.write is not None:
        read.extend(p for p in _existing(list(policy.write)) if p not in read)
    for extra in (tmpdir,):
        if extra not in write and write != ["/"]:
            write.append(extra)
        if extra not in read and read != ["/"]:
            read.append(extra)
    if python and read != ["/"]:
        read.extend(p for p in _existing(_python_roots()) if p not in read)
    execute: list[str] | None = None
    if policy.execute is not None:
        execute = []
        for name in policy.execute:
            found = resolve_program(name, env_path)
            if found and found not in execute:
                execute.append(found)
        if shell:
            execute.append(real("/bin/sh"))
        if python:
            execute.append(real(sys.executable))
    deny_execute = []
    for name in policy.deny_execute:
        found = resolve_program(name, env_path)
        if found and found not in deny_execute:
            deny_execute.append(found)
    tcp_connect: list[int] | None = None
    network = True
    if policy.network is not None:
        if not policy.network:
            network = False
        else:
            ports, anything = _ports(policy.network)
            tcp_connect = None if anything else ports
    deny_ports, _ = _ports([r for r in policy.deny_network if r.host == "*"])
    tcp_deny = deny_ports or []
    return sandbox.SandboxSpec(
        read=read, write=write, execute=execute,
        deny_read=_existing([*policy.deny_read, *off_limits, *_secrets(
            policy, [tmpdir, *_python_roots(), *(execute or [])])]),
        deny_write=_existing([*policy.deny_write, *off_limits]),
        deny_execute=deny_execute, fs=fs, tcp_connect=tcp_connect, tcp_deny=tcp_deny,
        network=network, namespaces=True, denials_path=denials_path,
        user=None if run_as is None else dict(run_as),
        granted_capabilities=list(policy.linux_capabilities),
        unix_sockets=not policy.blocks_unix_sockets,
        libraries=_existing(_python_libraries())
        if python or real(sys.executable) in (execute or []) else [],
    )


def summarised(enforced: dict[str, Any], home: str) -> dict[str, Any]:
    """``enforced`` for the ``started`` event: the carve-outs that keep sp's home out of reach
    (one per entry of the home and per other action's folder) said once, as ``home_protected``,
    instead of listed."""
    fs = enforced.get("fs")
    if not isinstance(fs, dict):
        return enforced
    prefix = home.rstrip("/") + "/"
    out = dict(fs)
    for key in ("deny_read", "deny_write"):
        out[key] = [p for p in fs.get(key) or [] if not str(p).startswith(prefix)]
    return {**enforced, "fs": out, "home_protected": home}


class Prepared(msgspec.Struct, kw_only=True):
    """An attempt's sandbox: the spec its process enters, what the ``started`` event records,
    and, when it must not run, why."""

    spec: sandbox.SandboxSpec | None = None
    enforced: dict[str, Any] = {}
    refused: str | None = None


def reduce(spec: sandbox.SandboxSpec, caps: Any) -> sandbox.SandboxSpec:
    """``spec`` without the mechanisms this machine lacks (``--allow-unsandboxed``)."""
    changes: dict[str, Any] = {}
    abi = int(getattr(caps, "landlock_abi", 0) or 0)
    if abi < 1:
        changes["fs"] = False
    if abi < 4:
        changes["tcp_connect"], changes["tcp_deny"] = None, []
    if not set(getattr(caps, "namespaces", None) or []) >= {"pid", "ipc", "uts", "mnt"}:
        changes["namespaces"] = False
    if "net" not in (getattr(caps, "namespaces", None) or []):
        changes["network"] = True
    from sp.security import seccomp

    if seccomp.supported():
        changes["unix_sockets"] = True
    if os.geteuid() != 0 or getattr(caps, "user_namespace", False):
        changes["user"] = None  # only root can switch users: the program runs as sp's own
    return msgspec.structs.replace(spec, **changes)


def capabilities() -> Any:
    """What this machine can enforce (:func:`sp.security.sandbox.probe`), lowered by the
    operator's ``SP_LANDLOCK_ABI_MAX`` (use at most that Landlock ABI, e.g. to get the same
    enforcement on machines with different kernels; 0 = do not use Landlock) and
    ``SP_SANDBOX_NAMESPACES`` (a comma list of the namespaces sp may create; empty = none)."""
    caps = sandbox.probe()
    changes: dict[str, Any] = {}
    raw = os.environ.get("SP_LANDLOCK_ABI_MAX", "").strip()
    if raw.isdigit() and int(raw) < caps.landlock_abi:
        changes["landlock_abi"] = int(raw)
        changes["landlock_reason"] = f"limited to ABI {raw} by SP_LANDLOCK_ABI_MAX"
        if int(raw) < 7:
            changes["kernel_audit"] = False
            changes["audit_reason"] = ("Landlock audit records need ABI 7"
                                       f" (SP_LANDLOCK_ABI_MAX={raw})")
    names = os.environ.get("SP_SANDBOX_NAMESPACES")
    if names is not None:
        allowed = {n.strip() for n in names.split(",") if n.strip()}
        changes["namespaces"] = [n for n in caps.namespaces if n in allowed]
        changes["namespaces_reason"] = "not allowed by SP_SANDBOX_NAMESPACES"
    return msgspec.structs.replace(caps, **changes) if changes else caps


def prepare(spec: sandbox.SandboxSpec, allow_unsandboxed: bool) -> Prepared:
    """What will be enforced for ``spec`` here, or why the attempt is refused."""
    caps = capabilities()
    enforced, missing = sandbox.plan(spec, caps)
    if missing and not allow_unsandboxed:
        return Prepared(enforced={**enforced, "missing": missing, "refused": True},
                        refused="the policy needs what this machine cannot enforce: "
                        + "; ".join(missing) + " (submit with --allow-unsandboxed to run anyway)")
    if missing:
        spec = reduce(spec, caps)
        enforced, _ = sandbox.plan(spec, caps)
        return Prepared(spec=spec, enforced={**enforced, "missing": missing,
                                             "allow_unsandboxed": True})
    return Prepared(spec=spec, enforced=enforced)
