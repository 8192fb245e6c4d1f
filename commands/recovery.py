"""Crash recovery: actions left ``executing`` by an owner that is gone.

Each gets a recorded event, never a silent fix-up: ``action.interrupted`` (back to the queue,
to resume from its last checkpoint) when attempts remain, ``action.failed`` otherwise, or
``action.cancelled`` if a cancel had been requested. A second run finds nothing to do.

This is the seed's supervisor. ``sp replay`` runs it, and so does every process that runs work
(``sp tick``, ``sp worker``, ``sp daemon``, ``sp action execute``: see :mod:`sp.runner.sweeper`),
first and then every half lease period. Two sweeps never race: each holds the home's recovery
lock (a ``flock`` on ``<home>/run/recovery.lock``); a sweep that finds it taken does nothing.
The evidence (is the owner alive, did the attempt run: /proc, the log) is gathered before the
write transaction; inside it the decision is taken again on what is still true (the same
attempt, the same lease). This module only decides and records (:func:`sweep`); processes are
stopped and files removed after the commit by the runner (:mod:`sp.runner.reaper`).

Which attempts count. An attempt counts when there is evidence that it ran: a child noted in
its lease, a live process whose environment names it, output of its own in its log, or a
checkpoint or progress it recorded. One with none of that (claimed, perhaps ahead, by a worker
that died before spawning it) is queued again even when it was the last. But an action is never
given more than ``max_attempts + 1`` attempts whatever the evidence (``attempts`` is counted from
the ``started`` events, so replay agrees): a poison action that kills its worker before anything
is noted ends ``failed``.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import msgspec

from sp.commands.actions import cascade, state_of
from sp.commands.home import Home
from sp.host import proc
from sp.ledger import events as ev
from sp.ledger import side
from sp.ledger.interface import Ledger, LedgerTransaction
from sp.machines import action as machine
from sp.machines.action import ActionState

LOCK_FILE = "recovery.lock"  # in <home>/run/
LOG_LOOK_BYTES = 1 << 16  # how much of an attempt's log is read for output of its own
_SP_NOTE = b"--- sp: "  # lines the worker itself writes into a log
_RAN_TYPES = tuple(ev.tag_of(t) for t in (ev.ActionCheckpointed, ev.ActionProgressed))


class Recovered(msgspec.Struct, frozen=True):
    action_id: str
    outcome: str  # interrupted, held, failed, cancelled
    reason: str


class _Lease(NamedTuple):
    owner: str
    pid: int
    pid_start: int
    host: str
    expires_ms: int
    child_pid: int | None
    child_start: int | None


class _Suspect(NamedTuple):
    """An executing action whose owner looked gone, with the evidence gathered outside the
    write transaction."""

    action_id: str
    attempt: int
    lease: _Lease | None
    reason: str
    strays: list[tuple[int, int]]  # live processes whose environment names the attempt
    log_output: bool  # the attempt wrote output of its own to its log


def _lease(store: Ledger | LedgerTransaction, action_id: str) -> _Lease | None:
    row = side.lease(store, action_id)
    return None if row is None else _Lease(*row)


def owner_gone(store: Ledger, action_id: str, now_ms: int) -> str | None:
    """Why the owner of a running action is gone, or None if it is alive."""
    return _gone_because(_lease(store, action_id), store.host, now_ms)


def _gone_because(lease: _Lease | None, host: str, now_ms: int) -> str | None:
    if lease is None:
        return "no lease: its owner never heartbeated or is gone"
    if lease.host == host and not proc.alive(int(lease.pid), int(lease.pid_start)):
        return f"owner {lease.owner} (pid {lease.pid}) is no longer running"
    if lease.expires_ms < now_ms:
        return (f"heartbeat_missing: lease of {lease.owner} expired "
                f"{(now_ms - lease.expires_ms) // 1000}s ago")
    return None


def _denials_left(store: Ledger, action_id: str, attempt: int,
                  by: str) -> tuple[list[ev.Event], str | None]:
    """The kernel's denials a sandboxed attempt collected before its worker died (the shim
    writes them to ``<home>/run/<action>-<attempt>.denials``): recorded with the interruption,
    so a crash does not lose the security record."""
    from sp.security.sandbox import denials_file, read_denials

    path = denials_file(os.path.dirname(os.path.abspath(store.path)), action_id, attempt)
    if not os.path.exists(path):
        return [], None
    from sp.commands.execution import security_denied

    found = read_denials(path)
    if not found:
        return [], path
    return [security_denied(by, attempt, "run", found)], path


@contextlib.contextmanager
def sweep_lock(root: str, wait: bool = True) -> Iterator[bool]:
    """Hold the home's recovery lock for a sweep; yields False at once, holding nothing, when
    ``wait`` is False and another sweep holds it. The kernel drops a ``flock`` when its holder
    dies, so a killed sweep leaves no stale lock behind.

    :raises OSError: ``<home>/run`` cannot be created or the lock file opened.
    """
    run = os.path.join(root, "run")
    os.makedirs(run, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(run, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def log_shows_output(path: str, action_id: str, attempt: int) -> bool:
    """Whether this attempt wrote anything of its own to its log. The worker writes a header
    (``--- sp: attempt N of ID``) when it takes an attempt, before spawning, and its own notes
    start with ``--- sp: ``: any other byte after this attempt's header came from the action."""
    header = f"--- sp: attempt {attempt} of {action_id}\n".encode()
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return False
            # mmap: rfind scans from the end in C, without reading a large log into memory.
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                at = m.rfind(header)
                if at < 0:
                    return False
                start = at + len(header)
                rest = m[start:start + LOG_LOOK_BYTES]
    except (OSError, ValueError):  # gone, unreadable, or emptied meanwhile
        return False
    return any(line.strip() and not line.startswith(_SP_NOTE) for line in rest.split(b"\n"))


def _suspects(store: Ledger, now: int, skip_own: bool) -> list[_Suspect]:
    """Executing actions whose owner looks gone, with the evidence of each attempt (a /proc
    scan and a look at its log: side work kept out of the write transaction)."""
    me = (os.getpid(), proc.start_time(os.getpid())) if skip_own else None
    root = os.path.dirname(os.path.abspath(store.path))
    home = Home(root)
    found: list[_Suspect] = []
    rows = store.query("SELECT action_id, attempts FROM actions WHERE state = 'executing'"
                       " ORDER BY submitted_seq")
    for action_id, attempts in rows:
        lease = _lease(store, action_id)
        if me is not None and lease is not None and (lease.pid, lease.pid_start) == me:
            continue  # held by this very process: alive, and it ends its attempts itself
        reason = _gone_because(lease, store.host, now)
        if reason is None:
            continue
        strays = proc.of_attempt(action_id, int(attempts))
        output = log_shows_output(str(home.log_path(action_id)), action_id, int(attempts))
        found.append(_Suspect(action_id, int(attempts), lease, reason, strays, output))
    return found


def _progressed(tx: LedgerTransaction, action_id: str) -> bool:
    """Whether the current attempt recorded a checkpoint or progress (it ran)."""
    marks = ", ".join("?" for _ in _RAN_TYPES)
    row = tx.query_one(
        f"SELECT count(*) FROM events WHERE stream = ? AND type IN ({marks}) AND version >"
        " (SELECT max(version) FROM events WHERE stream = ? AND type = ?)",
        (action_id, *_RAN_TYPES, action_id, ev.tag_of(ev.ActionStarted)),
    )
    return bool(row and row[0])


def _unchanged(before: _Lease | None, now: _Lease | None) -> bool:
    """The lease is the one the evidence was gathered for (not renewed, not taken over)."""
    if before is None or now is None:
        return before is None and now is None
    return before[:5] == now[:5]


class Cleanup:
    """What the sweep decided to stop and remove once its transactions have committed (the
    runner's :func:`sp.runner.reaper.clean_up` does it: commands decide, they never kill)."""

    def __init__(self) -> None:
        self.groups: list[tuple[int, int]] = []  # process groups noted in leases
        self.strays: list[tuple[int, int]] = []
        self.files: list[str] = []  # denials files, recorded
        self.cgroups: list[dict[str, Any]] = []  # the `limits` of the attempts' started events


class Swept(NamedTuple):
    done: list[Recovered]
    cleanup: Cleanup


def sweep(store: Ledger, by: str = "replay", *, wait: bool = True,
          skip_own: bool = False) -> Swept:
    """Record an event for every executing action whose owner is gone, and say what to clean
    up after (the decider of recovery; :func:`sp.runner.reaper.recover` acts on it).

    The evidence (the /proc scan for strays, the logs) is gathered before any write
    transaction, so that the write lock is never held across a scan of every process; each
    decision is then taken again under the lock on what is still true.

    ``wait``: wait for a sweep another process runs, else (``False``) return nothing at once:
    it does the work. ``skip_own``: leave the attempts this process holds alone (a worker's
    own sweep).

    :raises OSError: the home's recovery lock cannot be taken.
    """
    root = os.path.dirname(os.path.abspath(store.path))
    cleanup = Cleanup()
    with sweep_lock(root, wait) as held:
        if not held:
            return Swept([], cleanup)
        now = store.clock.now_ms()
        done: list[Recovered] = []
        for suspect in _suspects(store, now, skip_own):
            outcome = _recover_one(store, suspect, by, now, cleanup)
            if outcome is not None:
                done.append(outcome)
        return Swept(done, cleanup)


def _recover_one(store: Ledger, s: _Suspect, by: str, now: int,
                 effects: Cleanup) -> Recovered | None:
    """Decide and record one suspect in a transaction of its own; None when it turns out
    alive or changed meanwhile (it finished, a live owner renewed its lease)."""
    action_id = s.action_id
    with store.transaction() as tx:
        state, version = state_of(tx, action_id)
        row = tx.query_one(
            "SELECT attempts, max_attempts, cancel_requested, owner, started_ms"
            " FROM actions WHERE action_id = ?", (action_id,),
        )
        lease = _lease(tx, action_id)
        if state is not ActionState.EXECUTING or row is None or int(row[0]) != s.attempt \
                or not _unchanged(s.lease, lease):
            return None
        attempts, max_attempts, cancel_req, owner, started = row
        duration = max(0, now - int(started or now))
        noted = lease is not None and bool(lease.child_pid)
        ran = noted or bool(s.strays) or s.log_output or _progressed(tx, action_id)
        reason = s.reason
        event: ev.Event
        if cancel_req:
            event = ev.ActionCancelled(by=by, reason=f"cancelled; {reason}")
            outcome = "cancelled"
        elif attempts < max_attempts or (not ran and attempts == max_attempts):
            if attempts >= max_attempts:
                reason = (f"{reason}; no process, output or checkpoint of it was recorded, it"
                          " may never have run: queued once more")
            spec = tx.read_stream(action_id)[0].event
            then = spec.on_interrupt if isinstance(spec, ev.ActionSubmitted) else "resume"
            event = ev.ActionInterrupted(by=by, reason=reason, owner=owner or "",
                                         duration_ms=duration, then=then)
            outcome = "interrupted" if then != "hold" else "held"
        else:
            kind = "heartbeat_missing" if reason.startswith("heartbeat") else "interrupted"
            left = ("no attempts left" if ran else
                    f"no attempts left (attempt {attempts} of {max_attempts}: one unproven"
                    " attempt is given back, not more)")
            event = ev.ActionFailed(by=by, error_kind=kind, error=f"{reason}; {left}",
                                    duration_ms=duration)
            outcome = "failed"
        new = machine.check_event(action_id, state, event)
        denied, denials_file = _denials_left(store, action_id, int(attempts), by)
        tx.append(action_id, [*denied, event], version)
        _note_effects(tx, action_id, lease, s, denials_file, effects)
        side.drop_lease(tx, action_id)
        if new in (ActionState.FAILED, ActionState.CANCELLED):
            cascade(tx, action_id, f"dependency {action_id} {new.value}", by)
            from sp.commands import reactor  # a plan (or its rollback) decides its next event

            reactor.on_action_finished(tx, action_id, new)
    return Recovered(action_id, outcome, reason)


def _note_effects(tx: LedgerTransaction, action_id: str, lease: _Lease | None, s: _Suspect,
                  denials_file: str | None, effects: Cleanup) -> None:
    """Remember what to stop and remove once this decision has committed."""
    if denials_file is not None:
        effects.files.append(denials_file)
    if lease is not None and lease.child_pid:
        effects.groups.append((int(lease.child_pid), int(lease.child_start or 0)))
    effects.strays.extend(s.strays)
    started = [r.event for r in tx.read_stream(action_id)
               if isinstance(r.event, ev.ActionStarted)]
    if started and started[-1].limits.get("cgroups"):
        effects.cgroups.append(started[-1].limits)
