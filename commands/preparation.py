"""The host work a claim needs, done before its ``BEGIN IMMEDIATE``: nothing but the ledger
inside the write transaction.

A claim may need the attempt's cgroups (``resources:``), whose limits its ``action.started``
records as the kernel reads them back, and the sandbox's capabilities (a namespace probe that
forks). Writing /sys/fs/cgroup or forking under the write lock would hold every other writer
for as long as the kernel takes, and a fork in a threaded process is unsafe; so both happen
here, before the transaction, and the claim inside it only takes over what was made
(:func:`sp.commands.execution.claim_many` and its siblings).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from sp.ledger.interface import Ledger

__all__ = ["Limits", "UnpreparedError", "before_begin", "discard", "prepare_limits", "warm_up"]


# Cgroups made before a claim's transaction, by (action_id, attempt): the prepared limits, or
# why the required ones cannot be had.
Limits = dict[tuple[str, int], Any]


class UnpreparedError(Exception):
    """An action to claim needs cgroups that were not made before the transaction."""


def prepare_limits(store: Ledger, action_ids: Sequence[str],
                   new: Sequence[tuple[str, dict[str, Any], bool]] = ()) -> Limits:
    """Create the cgroups of the next attempt of each of ``action_ids`` that asks for
    resources (and of each ``new`` ``(action_id, resources, limits_required)``, attempt 1),
    before ``BEGIN``: writing /sys/fs/cgroup under the write lock would hold every other
    writer. The claim then records what was enforced, read back from the kernel; what it does
    not use is removed (:func:`discard`)."""
    wanted: list[tuple[str, int, dict[str, Any], bool]] = [(a, 1, r, q) for a, r, q in new]
    if action_ids:
        marks = ", ".join("?" for _ in action_ids)
        for aid, attempts, resources, required in store.query(
                "SELECT a.action_id, a.attempts, json_extract(e.data, '$.resources'),"
                " json_extract(e.data, '$.limits_required') FROM actions a JOIN events e"
                " ON e.stream = a.action_id AND e.version = 1"
                f" WHERE a.action_id IN ({marks})", tuple(action_ids)):
            if resources is not None:
                wanted.append((str(aid), int(attempts) + 1, msgspec.json.decode(resources),
                               bool(required)))
    ready: Limits = {}
    for aid, attempt, resources, required in wanted:
        if not resources:
            continue
        from sp.agents.config import Resources
        from sp.agents.units import dec_hook
        from sp.host import limits

        try:
            ready[(aid, attempt)] = limits.prepare(
                msgspec.convert(resources, Resources, dec_hook=dec_hook), f"{aid}-{attempt}",
                required=required)
        except limits.LimitsUnavailableError as e:
            ready[(aid, attempt)] = e
    return ready


def discard(ready: Limits) -> None:
    """Remove the cgroups made for claims that did not take them (after the transaction)."""
    if not ready:
        return
    from sp.host import limits

    for made in ready.values():
        if isinstance(made, limits.Prepared):
            limits.cleanup(made)
    ready.clear()


def before_begin(store: Ledger) -> None:
    """The host work a claim may need, done before its ``BEGIN IMMEDIATE``: the sandbox's
    namespace probe forks a child, and a fork must neither hold the ledger's write lock (every
    other writer would wait on it) nor happen in a threaded process (the daemon probes at its
    start, before its threads: :func:`warm_up`). The probe runs once per process, and only
    where some agent has a policy (the only claims that consult it)."""
    from sp.security import sandbox

    if sandbox.probed():
        return
    if store.query_one("SELECT 1 FROM policies LIMIT 1") is not None:
        warm_up()


def warm_up() -> None:
    """Run the per-process host probes now (:func:`sp.security.sandbox.probe`, cached)."""
    from sp.security import enforce

    enforce.capabilities()
