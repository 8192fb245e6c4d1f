"""Agents' capability policies: set (an audited event), read, and check a spec against them.

A policy comes from an agent file's ``capabilities:`` / ``storage:`` sections (``sp agent
apply``) or from a policy file (``sp agent policy ID --set FILE``) in the seed's shape, either
for one agent (``allowed:`` / ``denied:`` at the top, or under ``capabilities:``) or for several
(``capabilities: {research_agent: {allowed: ..., denied: ...}}``).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from sp.agents.config import load_document
from sp.ledger import events as ev
from sp.ledger.errors import UsageError
from sp.ledger.interface import Ledger, LedgerTransaction
from sp.security import policy as pol
from sp.security.policy import Denial, Policy

if TYPE_CHECKING:  # the sandbox module is imported where a sandbox is built, not at start-up
    from sp.security.sandbox import SandboxSpec


class _Query(Protocol):
    def query_one(self, sql: str, params: Any = ...) -> Any: ...


def stream_of(agent_id: str) -> str:
    return f"policy:{agent_id}"


def policy_of(q: _Query, agent_id: str | None) -> Policy | None:
    """The agent's effective policy, or None when it has none."""
    if not agent_id:
        return None
    row = q.query_one("SELECT policy FROM policies WHERE agent_id = ?", (agent_id,))
    if row is None:
        return None
    return pol.from_dict(msgspec.json.decode(row[0]))


def decode_file(path: str | Path, agent_id: str) -> Policy:
    """Read a policy file (the seed's shape) and return ``agent_id``'s policy.

    :raises UsageError: unreadable, malformed, or no policy for that agent (with its path).
    """
    where = str(path)
    doc = load_document(path)
    if not isinstance(doc, dict) or not doc:
        raise UsageError(f"{where}: $: expected a mapping with capabilities (allowed/denied)")
    unknown = set(doc) - {"capabilities", "storage", *_POLICY_KEYS}
    if unknown:
        raise UsageError(f"{where}: $: unknown key {sorted(unknown, key=str)[0]!r}; expected"
                         " capabilities, storage, allowed, denied, default, user, group or"
                         " linux_capabilities")
    storage = doc.get("storage")
    if "capabilities" in doc:
        caps = doc["capabilities"]
        base = f"{where}: $.capabilities"
        if isinstance(caps, dict) and caps and not set(caps) & set(_POLICY_KEYS):
            # several agents: pick this one's
            if agent_id not in caps:
                names = ", ".join(sorted(map(str, caps))) or "none"
                raise UsageError(f"{base}: no entry for agent {agent_id!r} (entries: {names})")
            caps = caps[agent_id]
            base = f"{base}.{agent_id}"
            if isinstance(caps, dict) and "storage" in caps:
                storage, caps = caps["storage"], {k: v for k, v in caps.items() if k != "storage"}
        return pol.decode(caps, storage, base, f"{where}: $.storage")
    caps = {k: v for k, v in doc.items() if k in _POLICY_KEYS}
    return pol.decode(caps, storage, f"{where}: $", f"{where}: $.storage")


# The keys of one agent's policy (the seed's three, and whom its actions run as).
_POLICY_KEYS = ("allowed", "denied", "default", *pol.IDENTITY_KEYS)


def set_policy(store: Ledger, agent_id: str, policy: Policy | None, source: str = "",
               by: str = "") -> bool:
    """Record ``agent_id``'s policy (None clears it); False when it is already that."""
    with store.transaction() as tx:
        return set_in(tx, agent_id, policy, source, by)


def set_in(tx: LedgerTransaction, agent_id: str, policy: Policy | None, source: str,
           by: str) -> bool:
    """:func:`set_policy` inside a transaction the caller holds."""
    if not agent_id.strip():
        raise UsageError("agent id must not be empty")
    from sp.agents import names

    names.check(agent_id, "agent id", "agent")
    current = tx.query_one("SELECT sha256 FROM policies WHERE agent_id = ?", (agent_id,))
    if policy is None or policy.empty:
        if current is None:
            return False
        data: dict[str, Any] = {}
        digest = ""
    else:
        digest = pol.digest(policy)
        if current is not None and current[0] == digest:
            return False
        data = pol.to_dict(policy)
        # An empty dict means "cleared" to the projection: keep the default visible.
        data.setdefault("default", policy.default)
    stream = stream_of(agent_id)
    tx.append(stream, [ev.PolicySet(by=by, agent_id=agent_id, policy=data, source=source,
                                    sha256=digest)], tx.stream_version(stream))
    return True


# -- checks before anything is written ------------------------------------------------------------


def _path_env(spec: ev.ActionFields) -> str | None:
    return spec.env.get("PATH")


def check_spec(policy: Policy, spec: ev.ActionFields, where: str) -> list[Denial]:
    """Every refusal ``policy`` makes of an action's fields (a SubmitSpec or the submitted
    event):
    its programs (command, steps, the shell when ``shell: true``) and, for built-in types,
    the paths and hosts their payload names."""
    out: list[Denial] = []
    env_path, cwd = _path_env(spec), spec.cwd
    programs: list[tuple[str, str]] = []
    if spec.steps:
        for i, step in enumerate(spec.steps):
            command = list(step.get("command") or [])
            if step.get("shell"):
                programs.append(("/bin/sh", f"{where}.steps[{i}] (shell: true)"))
            elif command:
                programs.append((command[0], f"{where}.steps[{i}].command[0]"))
    elif spec.command:
        if spec.shell:
            programs.append(("/bin/sh", f"{where} (shell: true)"))
        elif not _sp_code(spec.command):
            here = f"{where}[0]" if where.endswith("command") else f"{where}.command[0]"
            programs.append((spec.command[0], here))
    for program, here in programs:
        d = pol.check_program(policy, program, here, env_path, cwd)
        if d is not None:
            out.append(d)
    out.extend(_payload(policy, spec, where))
    return out


def _sp_code(argv: list[str]) -> bool:
    """sp's own interpreter running one of sp's built-in action modules (a built-in type, or
    its compensation): the policy governs what that code touches (checked below, and by the
    sandbox), not the interpreter sp itself runs on."""
    if len(argv) < 3 or "-m" not in argv[1:3]:
        return False
    module = argv[argv.index("-m", 1) + 1] if argv.index("-m", 1) + 1 < len(argv) else ""
    # sp.actions.*, or actions.* in an argv recorded before sp was one import package (the
    # runner runs that as sp.actions.*: sp.runner.attempt.current_argv)
    return module.removeprefix("sp.").split(".")[0] == "actions" and pol.real(
        argv[0]) == pol.real(sys.executable)


def _payload(policy: Policy, spec: ev.ActionFields, where: str) -> list[Denial]:
    if spec.action_type == "shell" or not spec.payload:
        return []
    from sp.plans import action_types as registry
    from sp.security import paths

    kind = registry.get(spec.action_type)
    if kind is None:
        return []
    try:
        payload = msgspec.convert(spec.payload, kind.payload)
    except msgspec.ValidationError:
        return []  # the type's own validation reports it
    out: list[Denial] = []
    for here, target, access in paths.of(spec.action_type, payload):
        at = f"{where}.payload.{here}"
        if access == "network":
            host, _, port = target.rpartition(":")
            d = pol.check_host(policy, host, int(port), at)
        else:
            base = spec.cwd or os.getcwd()
            full = target if os.path.isabs(target) else os.path.join(base, target)
            d = pol.check_path(policy, full, "write" if access == "write" else "read", at)
        if d is not None:
            out.append(d)
    return out


def refuse(store: Ledger | LedgerTransaction, specs: Sequence[ev.ActionFields],
           wheres: list[str]) -> None:
    """Check each spec against its agent's policy before anything is written.

    :raises UsageError: the first refusal, naming the spec and the rule.
    """
    cache: dict[str, Policy | None] = {}
    for spec, where in zip(specs, wheres, strict=True):
        agent = spec.agent
        if not agent:
            continue
        if agent not in cache:
            cache[agent] = policy_of(store, agent)
        policy = cache[agent]
        if policy is None:
            continue
        denials = check_spec(policy, spec, where)
        if denials:
            raise UsageError(f"{denials[0].line()} (agent {agent})")
        why = identity_problem(policy)
        if why is not None:
            raise UsageError(f"{where}: {why} (agent {agent})")


def identity_problem(policy: Policy) -> str | None:
    """Why the policy's ``user:``/``group:`` cannot be run as on this machine, or None."""
    from sp.security import identity

    try:
        identity.resolve(policy.user, policy.group)
    except identity.UnknownIdentityError as e:
        return f"the policy runs its actions as {policy.user!r}, but {e}"
    return None


def describe(store: Ledger, agent_id: str) -> dict[str, Any]:
    """The effective policy of ``agent_id`` for display: allow/deny per category, quotas, where
    it came from, and what this machine can enforce of it."""
    row = store.query_one(
        "SELECT policy, version, source, updated_ms FROM policies WHERE agent_id = ?",
        (agent_id,))
    known = store.query_one("SELECT 1 FROM agents WHERE agent_id = ?", (agent_id,))
    if row is None:
        if known is None:
            raise UsageError(f"no agent {agent_id!r} and no policy for it"
                             " (sp agent apply FILE, or sp agent policy ID --set FILE)")
        return {"agent_id": agent_id, "policy": None, "categories": {}, "quotas": {},
                "note": "no policy: the agent's actions run unconfined"}
    p = pol.from_dict(msgspec.json.decode(row[0]))
    cats: dict[str, dict[str, Any]] = {}
    for cat in pol.CATEGORIES:
        allow = getattr(p, cat)
        deny = getattr(p, f"deny_{cat}")
        if cat == "network":
            allow = None if allow is None else [r.text for r in allow]
            deny = [r.text for r in deny]
        cats[cat] = {"allowed": "any" if allow is None else allow, "denied": deny}
    quotas = {k: getattr(p, k) for k in ("temp_space", "output_space", "log_space")
              if getattr(p, k) is not None}
    out: dict[str, Any] = {
        "agent_id": agent_id, "version": row[1], "source": row[2], "updated_ms": row[3],
        "default": p.default, "categories": cats, "quotas": quotas,
        "output_dirs": p.output_dirs,
        "unix_sockets": "none" if p.blocks_unix_sockets else "any",
    }
    try:
        from sp.security import sandbox
        from sp.security.enforce import sandbox_spec

        spec = sandbox_spec(p, tmpdir="/tmp", shell=False, env_path=None)
        from sp.security.enforce import capabilities

        enforced, missing = sandbox.plan(spec, capabilities())
        out["enforcement"] = {"enforced": enforced, "missing": missing}
    except ImportError:  # pragma: no cover - the sandbox module is part of the package
        pass
    return out


# -- when an attempt is claimed ------------------------------------------------------------------


def home_of(tx: LedgerTransaction) -> str:
    """sp's home: the folder of the ledger."""
    return os.path.dirname(os.path.abspath(tx.store.path))


def attempt_sandbox(tx: LedgerTransaction, action_id: str, attempt: int, spec: ev.ActionSubmitted,
                    ) -> tuple[SandboxSpec | None, dict[str, Any], Policy | None,
                               list[dict[str, Any]], tuple[str, str] | None]:
    """The agent's policy for this attempt: (sandbox spec, what the started event records,
    policy, denials, (why, kind) when it must not run)."""
    if not spec.agent:
        return None, {}, None, [], None
    policy = policy_of(tx, spec.agent)
    if policy is None:
        return None, {}, None, [], None
    record: dict[str, Any] = {"agent": spec.agent}
    found = check_spec(policy, spec, "action")
    if found:
        denials = [{"access": d.access, "target": d.target, "reason": d.reason} for d in found]
        return None, {**record, "refused": True}, policy, denials, (
            f"refused by the policy of agent {spec.agent}: {found[0].reason}", "policy_denied")
    if policy.has_quotas:
        record["quotas"] = {k: getattr(policy, k) for k in ("temp_space", "output_space",
                                                            "log_space")
                            if getattr(policy, k) is not None}
    if not (policy.restricts_fs or policy.restricts_network or policy.sets_identity):
        return None, record, policy, [], None
    from sp.security import enforce, identity, sandbox

    try:  # the user database may have changed since the submit
        run_as = identity.resolve(policy.user, policy.group)
    except identity.UnknownIdentityError as e:
        return None, {**record, "refused": True}, policy, [], (
            f"refused by the policy of agent {spec.agent}: it runs its actions as"
            f" {policy.user!r}, but {e}", "policy_denied")
    home = home_of(tx)
    tmpdir = os.path.join(home, "tmp", action_id)
    blocked = identity.unreachable(tmpdir, run_as) if run_as is not None else None
    if blocked is not None and run_as is not None:
        return None, {**record, "refused": True}, policy, [], (
            f"refused by the policy of agent {spec.agent}: user {run_as['name']} cannot reach"
            f" its TMPDIR {tmpdir}: {blocked} is not searchable by it", "sandbox_unavailable")
    shell = spec.shell or any(s.get("shell") for s in spec.steps)
    programs = [s["command"][0] for s in spec.steps if s.get("command")] if spec.steps else (
        spec.command[:1])
    # sp's own interpreter (a built-in type, or a compensation that runs one) reads its code
    python = spec.action_type != "shell" or any(
        os.path.realpath(shutil.which(p) or p) == os.path.realpath(sys.executable)
        for p in programs)
    sb = enforce.sandbox_spec(
        policy, tmpdir=tmpdir, shell=shell,
        env_path=spec.env.get("PATH"), programs=programs, python=python,
        denials_path=sandbox.denials_file(home, action_id, attempt), home=home,
        run_as=dict(run_as) if run_as is not None else None)
    prepared = enforce.prepare(sb, spec.allow_unsandboxed)
    record.update(enforce.summarised(prepared.enforced, home))
    if prepared.refused is not None:
        return None, record, policy, [], (prepared.refused, "sandbox_unavailable")
    return prepared.spec, record, policy, [], None
