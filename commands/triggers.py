"""Trigger files: apply one (an audited event that replaces the previous file), read the
current one, list the triggers with their fires.

Applying checks everything the daemon would trip over later — every named agent and task
exists, every webhook has a secret, names are unique, hooks sharing a port agree on the host —
and writes nothing when anything is wrong. The same document from the same file twice records
nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec

from sp.agents import trigger_names
from sp.agents.trigger_file import TriggerFile, decode_triggers, load_triggers, split_action
from sp.commands import agents
from sp.commands.actions import SubmitSpec, submit_in
from sp.ledger import events as ev
from sp.ledger.errors import UsageError
from sp.ledger.interface import Ledger, LedgerTransaction
from sp.projections.triggers import CONFIG_STREAM, FIRE_STREAM_PREFIX


def stream_of(trigger: str) -> str:
    """The stream of a trigger's fires."""
    return f"{FIRE_STREAM_PREFIX}{trigger}"


def fire_in(tx: LedgerTransaction, spec: SubmitSpec, trigger: str, kind: str,
            agent: str, task: str, payload: dict[str, Any], *, detail: str = "",
            key: str | None = None, by: str = "") -> str | None:
    """Record ``trigger.fired`` and submit ``spec`` in the caller's transaction; returns the
    action id (None, and nothing written, if an action with idempotency ``key`` exists).

    One transaction for both, so that ``sp audit`` says why an action ran and nothing fires
    without its record.
    """
    if key is not None:
        row = tx.query_one("SELECT action_id FROM actions WHERE idem_key = ?", (key,))
        if row is not None:
            return None
    by = by or f"trigger:{trigger}"
    (action_id,) = submit_in(tx, [spec], by, [f"trigger {trigger}"], tx.store.clock.now_ms())
    stream = stream_of(trigger)
    tx.append(stream, [ev.TriggerFired(
        by=by, trigger=trigger, kind=kind, action_id=action_id, agent=agent, task=task,
        payload=payload, detail=detail,
    )], tx.stream_version(stream))
    return action_id


# What may follow /hooks/ in a webhook's URL: no spaces, queries or fragments.
_HOOK_NAME = re.compile(r"[A-Za-z0-9._~:@/-]+")


class Entry(msgspec.Struct, frozen=True):
    """One trigger of the file, as ``sp trigger list`` shows it."""

    kind: str      # filesystem | webhook | serial | condition | continuous
    name: str
    watches: str   # what it looks at, in a few words
    action: str    # agent/task, or python:module:function
    where: str     # its path in the file: $.triggers.filesystem[0]


class Applied(msgspec.Struct, frozen=True):
    """The current trigger file as recorded."""

    doc: TriggerFile
    source: str
    sha256: str
    version: int
    ts: int


def entries(doc: TriggerFile) -> list[Entry]:
    """Every trigger of the document, in file order, names resolved (see agents.trigger_names)."""
    out: list[Entry] = []

    def action(name: str) -> str:
        agent, task = split_action(doc.agent, name)
        return f"{agent}/{task}"

    for i, f in enumerate(doc.triggers.filesystem):
        glob = "" if f.glob == "*" else f" {f.glob}"
        out.append(Entry(trigger_names.FILESYSTEM, trigger_names.filesystem(f),
                         f"{f.path}{glob} [{','.join(f.events)}]"
                         f"{' recursive' if f.recursive else ''}",
                         action(f.action), f"$.triggers.filesystem[{i}]"))
    for i, w in enumerate(doc.triggers.network):
        name = trigger_names.webhook(w)
        out.append(Entry(trigger_names.WEBHOOK, name,
                         f"POST http://{w.host}:{w.port}/hooks/{name} ({w.auth})",
                         action(w.action), f"$.triggers.network[{i}]"))
    for i, s in enumerate(doc.triggers.hardware):
        out.append(Entry(trigger_names.SERIAL, trigger_names.serial(s),
                         f"{s.device} @{s.baud} /{s.pattern}/",
                         action(s.action), f"$.triggers.hardware[{i}]"))
    for key, c in doc.conditions.items():
        out.append(Entry(trigger_names.CONDITION, key, f"{c.trigger} (cooldown {_ms(c.cooldown)})",
                         action(c.action), f"$.conditions.{key}"))
    for key, k in doc.continuous.items():
        every = f"every {_ms(k.interval)}" if k.interval else "at its decorator's interval"
        out.append(Entry(trigger_names.CONTINUOUS, key, every,
                         action(k.action) if k.action else f"python:{k.python}",
                         f"$.continuous.{key}"))
    return out


def _ms(ms: int) -> str:
    from sp.agents.durations import format_ms

    return format_ms(ms)


def check(store: Ledger, doc: TriggerFile, source: str,
          require_env: bool = False) -> list[str]:
    """What the daemon would refuse or trip over, beyond the file's shape.

    A ``secret_env`` variable unset here is a warning (the daemon may run with another
    environment), or an error with ``require_env`` (``sp daemon --config``: it is this one).
    Returns warnings (things that work but are unwise).
    :raises UsageError: the first problem, with the file and its path in it.
    """
    warnings: list[str] = []
    for entry in entries(doc):
        if entry.action.startswith("python:"):
            continue
        agent_id, _, task = entry.action.partition("/")
        try:
            agents.task_spec(agents.get(store, agent_id), task, with_fallback=False)
        except UsageError as e:
            raise UsageError(f"{source}: {entry.where}.action: {e}") from None
    seen: dict[str, str] = {}
    for entry in entries(doc):
        if entry.name in seen:
            raise UsageError(f"{source}: {entry.where}: the name {entry.name!r} is taken by "
                             f"{seen[entry.name]} (set name:)")
        seen[entry.name] = entry.where
    for i, f in enumerate(doc.triggers.filesystem):
        if not f.events:
            raise UsageError(f"{source}: $.triggers.filesystem[{i}].events: name at least one")
    hosts: dict[int, str] = {}
    hooks: defaultdict[int, set[str]] = defaultdict(set)
    for i, w in enumerate(doc.triggers.network):
        where = f"{source}: $.triggers.network[{i}]"
        name = trigger_names.webhook(w)
        if not 1 <= w.port <= 65535:
            raise UsageError(f"{where}.port: expected 1..65535, got {w.port}")
        if not _HOOK_NAME.fullmatch(name):
            raise UsageError(f"{where}.name: {name!r} cannot be a URL path "
                             "(letters, digits and ._~:@/- only)")
        if (w.secret is None) == (w.secret_env is None):
            raise UsageError(f"{where}: a shared secret is required: set exactly one of "
                             "secret or secret_env")
        for field in ("secret", "secret_env"):
            value = getattr(w, field)
            if value is not None and not value.strip():  # the daemon could not serve it
                raise UsageError(f"{where}.{field}: is empty; a shared secret is required")
        if w.max_body <= 0:
            raise UsageError(f"{where}.max_body: expected a positive size")
        if hosts.setdefault(w.port, w.host) != w.host:
            raise UsageError(f"{where}.host: port {w.port} is already bound to "
                             f"{hosts[w.port]} by another webhook (one server per port)")
        if name in hooks[w.port]:
            raise UsageError(f"{where}: /hooks/{name} is already served on port {w.port}")
        hooks[w.port].add(name)
        if w.secret_env is not None and not os.environ.get(w.secret_env):
            message = f"{where}.secret_env: ${w.secret_env} is not set"
            if require_env:
                raise UsageError(message)
            warnings.append(f"{message} here; the daemon needs it")
        if w.secret is not None:
            warnings.append(f"{where}.secret: an inline secret is recorded in the ledger; "
                            "prefer secret_env")
    return warnings


def apply(store: Ledger, path: str | Path, by: str = "",
          require_env: bool = False) -> tuple[TriggerFile, bool, list[str]]:
    """Validate a trigger file and record it; returns (document, changed, warnings).

    The file replaces the previously applied one. The same document from the same file again
    records nothing. ``require_env``: see :func:`check`.
    :raises UsageError: unreadable, malformed or invalid (the message names the file and path);
        nothing is written.
    """
    doc, raw = load_triggers(str(path))
    warnings = check(store, doc, str(path), require_env)
    document = msgspec.to_builtins(raw, enc_hook=str)
    digest = hashlib.sha256(msgspec.json.encode(document)).hexdigest()
    source = str(Path(path).resolve())
    with store.transaction() as tx:
        row = tx.query_one(
            "SELECT sha256, source FROM trigger_config ORDER BY version DESC LIMIT 1")
        if row is not None and (row[0], row[1]) == (digest, source):
            return doc, False, warnings
        version = tx.stream_version(CONFIG_STREAM)
        tx.append(CONFIG_STREAM, [ev.TriggersApplied(
            by=by, config=document, source=source, sha256=digest,
        )], version)
    return doc, True, warnings


def applied(store: Ledger) -> Applied | None:
    """The current trigger file, or None when none was applied."""
    row = store.query_one(
        "SELECT config, source, sha256, version, ts FROM trigger_config"
        " ORDER BY version DESC LIMIT 1")
    if row is None:
        return None
    config, source, digest, version, ts = row
    doc = decode_triggers(msgspec.json.decode(config), f"{source} (applied)")
    return Applied(doc, source, digest, int(version), int(ts))


def current(store: Ledger) -> TriggerFile | None:
    """The current trigger document, or None when none was applied."""
    found = applied(store)
    return found.doc if found else None


def listing(store: Ledger) -> list[dict[str, Any]]:
    """Every trigger of the current file with its fire count and last fire, then triggers
    that fired but are no longer in the file."""
    found = applied(store)
    # SQLite's bare columns beside max(): kind, ts and action_id come from the newest fire.
    stats = {
        name: (kind, n, ts, action_id) for name, kind, n, _seq, ts, action_id in store.query(
            "SELECT trigger, kind, count(*), max(seq), ts, action_id FROM trigger_fires"
            " GROUP BY trigger ORDER BY trigger")
    }
    out: list[dict[str, Any]] = []
    listed: set[str] = set()
    for e in entries(found.doc) if found else []:
        _kind, n, ts, action_id = stats.get(e.name, ("", 0, None, None))
        out.append({"kind": e.kind, "name": e.name, "watches": e.watches, "action": e.action,
                    "fires": n, "last_fire_ms": ts, "last_action_id": action_id,
                    "applied": True})
        listed.add(e.name)
    for name, (kind, n, ts, action_id) in stats.items():
        if name not in listed:
            out.append({"kind": kind, "name": name, "watches": "(not in the file)",
                        "action": None, "fires": n, "last_fire_ms": ts,
                        "last_action_id": action_id, "applied": False})
    return out


def show(store: Ledger, name: str, limit: int = 50) -> dict[str, Any]:
    """One trigger: its definition (if in the current file) and its latest fires, newest
    first, each with the state of the action it submitted.

    :raises UsageError: no trigger of that name, now or ever.
    """
    found = applied(store)
    entry = next((e for e in entries(found.doc) if e.name == name), None) if found else None
    total = store.query_one("SELECT count(*) FROM trigger_fires WHERE trigger = ?", (name,))
    count = int(total[0]) if total else 0
    if entry is None and count == 0:
        known = ", ".join(e.name for e in entries(found.doc)) if found else ""
        raise UsageError(f"no trigger {name!r}" + (f" (triggers: {known})" if known else ""))
    rows = store.query(
        "SELECT f.seq, f.ts, f.kind, f.action_id, a.state, f.detail FROM trigger_fires f"
        " LEFT JOIN actions a ON a.action_id = f.action_id"
        " WHERE f.trigger = ? ORDER BY f.seq DESC LIMIT ?", (name, limit))
    return {
        "name": name,
        "definition": msgspec.to_builtins(entry) if entry else None,
        "fires": count,
        "recent": [{"seq": seq, "ts": ts, "kind": kind, "action_id": action_id,
                    "state": state, "detail": detail}
                   for seq, ts, kind, action_id, state, detail in rows],
    }
