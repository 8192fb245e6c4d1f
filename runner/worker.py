"""The worker: claim ready actions and run up to N at once, in one process, without threads.

One loop does everything: poll the running attempts (reap, timeouts, output patterns); spawn
into the free slots attempts already claimed (their ``started`` committed: write-ahead); then,
while the children run, one transaction (one fsync) records the attempts that ended, notes
newly spawned children in their leases and claims again; check cancel requests and renew
leases for all of them at once; and sleep in ``poll`` on the children's pidfds and the wake-up
pipe, so that a child's exit or a submit is acted on at once. While actions are short, up to
``AHEAD_PER_SLOT`` attempts per slot are claimed ahead, so no transaction stands between a
child's exit and the next spawn, and the outcomes of several wait a few ms to share one commit.
An attempt claimed ahead holds a lease like a running one (recovery after a crash treats both
alike); a cancel or a stop ends it without spawning it. No thread means no ``preexec_fn``
hazard and no lock juggling; the state lives in the ledger, not in the worker.

Shutdown (SIGTERM/SIGINT): stop claiming, let running attempts (and those already claimed
ahead, as slots free up) finish for the grace period, then stop them and record
``action.interrupted`` (per the task's ``on_interrupt``); an attempt claimed ahead that has not
started by then goes back as ``action.interrupted`` too, resumable, since nothing of it ran.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
import uuid
from collections import deque
from types import FrameType
from typing import Any

import msgspec

from sp.commands import execution
from sp.commands.execution import Claim, Outcome
from sp.commands.home import Home
from sp.host.wake import Waker
from sp.ledger.errors import DiskFullError, SpError, translate
from sp.ledger.interface import Ledger
from sp.machines.states import ActionState
from sp.runner.attempt import Attempt
from sp.runner.sweeper import Sweeper

POLL_S = 0.02  # timeouts, output patterns and free slots are checked at least this often
# A spawned child is noted in its lease with the next transaction the worker makes anyway, or
# after this long: a short action ends (and its lease goes) before it costs a commit of its own.
CHILD_RECORD_S = POLL_S
HEARTBEAT_S = 5.0
# Claiming ahead (pipelining): while actions are short (the last one to end ran under
# AHEAD_MAX_MS), keep AHEAD_PER_SLOT attempts per slot claimed (``started`` committed) but not
# yet spawned, so that a child's exit is followed by the next spawn at once and the turn's
# transaction runs while the children run. Long actions gain nothing from it: none is held.
AHEAD_PER_SLOT = 2
AHEAD_MAX_MS = 50


def _ahead_max_ms() -> int:
    """``SP_AHEAD_MAX_MS`` moves the "short" bound (a loaded machine runs ``true`` in more than
    50 ms; tests of claiming ahead set it high so that they do not depend on the load)."""
    raw = os.environ.get("SP_AHEAD_MAX_MS", "")
    return int(raw) if raw.isdigit() else AHEAD_MAX_MS


# Nothing is claimed ahead this close to run()'s max_seconds (``sp tick``): what is still
# claimed ahead then goes back unrun, and an attempt given back counts as one.
AHEAD_HORIZON_S = 1.0
# Group commit: ended attempts wait up to GROUP_S for a transaction while children run and at
# least DEFER_WHILE_AHEAD attempts are claimed ahead, so that one fsync records several.
GROUP_S = 0.005
DEFER_WHILE_AHEAD = 1
CANCEL_CHECK_S = 0.25
PAUSE_CHECK_S = 1.0


class WorkerSummary(msgspec.Struct):
    ran: int = 0
    completed: int = 0
    failed: int = 0
    retrying: int = 0
    cancelled: int = 0
    interrupted: int = 0
    skipped: int = 0
    peak_running: int = 0
    recovered: int = 0  # actions of dead owners this worker's sweeps recovered


class Worker:
    """Runs actions from one home. ``run()`` returns when stopped or, optionally, idle."""

    def __init__(self, store: Ledger, home: Home, owner: str | None = None,
                 concurrency: int = 1, grace_s: float = 30.0,
                 notify_all: bool = False) -> None:
        if concurrency < 1:
            raise SpError("concurrency must be at least 1")
        self.store = store
        self.home = home
        self.owner = owner or f"worker:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.concurrency = concurrency
        self.grace_s = grace_s
        self.notify_all = notify_all
        self.running: dict[str, Attempt] = {}  # spawned, in a slot
        self.ahead: deque[Attempt] = deque()  # claimed (write-ahead committed), not spawned
        self.ended: list[Attempt] = []  # over, the outcome not recorded yet
        self._ended_since = 0.0
        self._end: float | None = None  # run()'s max_seconds, as a monotonic time
        self._short = False  # the last attempt to end was short: claim ahead
        self._ahead_max_ms = _ahead_max_ms()
        self.stopping = False
        self.stop_deadline: float | None = None
        self.summary = WorkerSummary()
        self._paused: frozenset[str] = frozenset()
        self._next_pause_check = 0.0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop()

    def request_stop(self, grace_s: float | None = None) -> None:
        """Stop claiming; running attempts get ``grace_s`` to finish, then are interrupted."""
        if not self.stopping:
            self.stopping = True
            grace = self.grace_s if grace_s is None else grace_s
            self.stop_deadline = time.monotonic() + grace

    def run(self, until_idle: bool = False, max_seconds: float | None = None,
            idle_poll_s: float = 1.0, wait_retries: bool = True) -> WorkerSummary:
        """Run until stopped; ``until_idle``: until nothing is running, ready or (with
        ``wait_retries``) waiting out a retry backoff; ``max_seconds``: stop claiming then and
        interrupt what still runs (``sp tick``). A recovery sweep runs first and then every
        half lease period (:mod:`sp.runner.sweeper`), so what a dead worker left is run again."""
        sweeper = Sweeper(self.store, f"{self.owner} (recovery sweep)")
        waker = Waker(self.home.root)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        end = self._end = None if max_seconds is None else time.monotonic() + max_seconds
        next_beat = time.monotonic() + HEARTBEAT_S
        next_cancel = time.monotonic() + CANCEL_CHECK_S
        try:
            while True:
                now = time.monotonic()
                if end is not None and now >= end:
                    self.request_stop(grace_s=0.0)
                if not self.stopping:
                    self.summary.recovered += len(sweeper.sweep_if_due())
                self._turn(now)
                if not (self.running or self.ahead or self.ended):
                    if self.stopping:
                        break
                    retry_at = execution.next_retry_ms(self.store) if wait_retries else None
                    if until_idle and retry_at is None and not self._ready_now():
                        break
                    wait = idle_poll_s
                    if retry_at is not None:
                        wait = min(wait, max(0.0, (retry_at - self.store.clock.now_ms()) / 1000))
                    if end is not None:
                        wait = min(wait, max(0.0, end - now))
                    _wait_for(waker, wait)
                    continue
                now = time.monotonic()
                if now >= next_cancel:
                    next_cancel = now + CANCEL_CHECK_S
                    self._check_cancels()
                if now >= next_beat:
                    next_beat = now + HEARTBEAT_S
                    execution.heartbeat(self.store, self._held(), self.owner)
                if self.stopping and self.stop_deadline is not None and now >= self.stop_deadline:
                    self._interrupt_all("worker stopped (signal)" if end is None or now < end
                                        else f"sp tick reached --max-seconds {max_seconds:g}")
                full = len(self.running) >= self.concurrency or self.stopping
                self._sleep(None if full else waker, now)
        except (DiskFullError, OSError) as e:
            no_space = translate(e, self.store.path)  # ENOSPC/EDQUOT in a log or blob too
            if not isinstance(no_space, DiskFullError):
                raise
            self._stop_on_disk_full(str(no_space))
            raise no_space from None
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
            waker.close()
        return self.summary

    # -- one turn: reap, spawn what is claimed ahead, then record and claim in one transaction
    def _turn(self, now: float) -> None:
        for a in [a for a in self.running.values() if a.poll(now)]:
            del self.running[a.action_id]
            self._ended(a, now)
        self._spawn_ahead()
        free = 0 if self.stopping else self.concurrency - len(self.running)
        ahead_ok = self._short and not self.stopping and (
            self._end is None or now < self._end - AHEAD_HORIZON_S)
        depth = self.concurrency * AHEAD_PER_SLOT if ahead_ok else 0
        want = free + max(0, depth - len(self.ahead))
        if want > 0 and now >= self._next_pause_check:
            self._next_pause_check = now + PAUSE_CHECK_S
            self._paused = execution.paused_agents(self.store)
        if "" in self._paused:
            want = free = 0
        # Children still running CHILD_RECORD_S after their spawn are noted in their leases:
        # with this turn's transaction, or one of their own if nothing else is written.
        waiting = [a for a in self.running.values() if a.child_pending and a.outcome is None
                   and now - a.child_pending[1] >= CHILD_RECORD_S]
        if free <= 0 and not waiting and not (self.ended and not self._defer(now)):
            return
        children = [c for c in (a.child_to_record() for a in waiting) if c is not None]
        pairs: list[tuple[Claim, Outcome]] = []
        for a in self.ended:
            assert a.outcome is not None  # poll() is True once there is one
            pairs.append((a.claim, a.outcome))
        try:
            states, claims = execution.finish_and_claim(
                self.store, self.owner, pairs, want, self._paused, children)
        except Exception:
            if not pairs and not children:
                raise
            # Claiming failed: what ended is still recorded (and the children noted) on its
            # own, then the claim is tried once more, alone, and raises what it raises.
            states = execution.finish_many(self.store, pairs)
            if children:
                execution.record_children(self.store, self.owner, children)
            claims = None
        for a in waiting:
            a.child_pending = None
        self._recorded(states)
        if claims is None:
            claims = execution.claim_many(self.store, self.owner, want, self._paused)
        for claim in claims:
            self.ahead.append(Attempt(self.store, self.home, claim, self.owner,
                                      note_children=False))
        self._spawn_ahead()

    def _ended(self, attempt: Attempt, now: float) -> None:
        """``attempt`` is over: its outcome is recorded with a coming transaction."""
        if not self.ended:
            self._ended_since = now
        self.ended.append(attempt)
        if attempt.pid is not None and attempt.outcome is not None:
            self._short = attempt.outcome.duration_ms < self._ahead_max_ms

    def _defer(self, now: float) -> bool:
        """Group commit: leave the ended attempts for a later transaction while children run,
        attempts claimed ahead wait for the next free slots, and the oldest ended recently."""
        return (bool(self.running) and len(self.ahead) >= DEFER_WHILE_AHEAD
                and not self.stopping and now - self._ended_since < GROUP_S)

    def _recorded(self, states: list[ActionState | None]) -> None:
        ended, self.ended = self.ended, []
        for attempt, state in zip(ended, states, strict=True):
            self._count(state)
            if state is not None:
                self._notify(attempt, state)

    def _spawn_ahead(self) -> None:
        """Start attempts claimed ahead in the free slots: their ``started`` is committed
        (write-ahead), so no transaction stands between a child's exit and the next spawn.
        Also while stopping: they were claimed before, and run in the grace period."""
        while self.ahead and len(self.running) < self.concurrency:
            attempt = self.ahead.popleft()
            self.summary.ran += 1
            attempt.start()
            if attempt.outcome is not None:  # refused, or could not be spawned
                self._ended(attempt, time.monotonic())
            else:
                self.running[attempt.action_id] = attempt
        self.summary.peak_running = max(self.summary.peak_running, len(self.running))

    def _give_back(self, reason: str) -> None:
        """Hand attempts claimed ahead but never spawned back to the queue (resumable)."""
        while self.ahead:
            attempt = self.ahead.popleft()
            attempt.abandon("interrupted", reason)
            execution.interrupt(self.store, attempt.claim, reason, 0, then="resume")
            self.summary.interrupted += 1

    def _record_ended(self) -> None:
        if self.ended:
            pairs = [(a.claim, a.outcome) for a in self.ended]
            self._recorded(execution.finish_many(self.store, pairs))  # type: ignore[arg-type]

    def _held(self) -> list[str]:
        """Every action whose lease this worker holds: running, claimed ahead, ended."""
        return [*self.running, *(a.action_id for a in self.ahead),
                *(a.action_id for a in self.ended)]

    def _ready_now(self) -> bool:
        if "" in self._paused:
            return False
        return execution.ready_count(self.store, self._paused) > 0

    def _sleep(self, waker: Waker | None, now: float) -> None:
        """Until a child exits, a submit wakes us (``waker``), or the next check is due."""
        timeout = POLL_S
        if self.ended:  # deferred (group commit): due GROUP_S after the first ended
            timeout = min(timeout, self._ended_since + GROUP_S - now)
        fds: list[int] = []
        for a in self.running.values():
            if a.outcome is not None:  # e.g. refused or not spawned: record it at once
                return
            if a.pidfd is not None:
                fds.append(a.pidfd)
            if a.child_pending is not None:
                timeout = min(timeout, a.child_pending[1] + CHILD_RECORD_S - now)
        _wait_for(waker, timeout, fds)

    def _count(self, state: ActionState | None) -> None:
        s = self.summary
        if state is ActionState.COMPLETED:
            s.completed += 1
        elif state is ActionState.FAILED:
            s.failed += 1
        elif state is ActionState.RETRYING:
            s.retrying += 1
        elif state is ActionState.CANCELLED:
            s.cancelled += 1
        elif state is ActionState.SKIPPED:
            s.skipped += 1
        elif state is ActionState.INTERRUPTED:
            s.interrupted += 1

    def _check_cancels(self) -> None:
        held = [*self.running, *(a.action_id for a in self.ahead)]
        for action_id in execution.cancel_requests(self.store, held):
            running = self.running.get(action_id)
            if running is not None:
                running.stop("cancelled", "cancelled while running")
                continue
            for attempt in [a for a in self.ahead if a.action_id == action_id]:
                self.ahead.remove(attempt)
                attempt.abandon("cancelled", "cancelled before it ran")
                self._ended(attempt, time.monotonic())

    def _stop_on_disk_full(self, reason: str) -> None:
        """No space left: claim nothing more, stop what runs (its output has nowhere to go),
        and record what still fits. Whatever does not fit stays a started attempt without a
        completion, which the next recovery sweep puts back in the queue."""
        self.stopping = True
        with contextlib.suppress(DiskFullError):
            self._interrupt_all(reason)
        for attempt in self.running.values():  # the record failed: at least stop them
            attempt.stop("interrupted", reason, kill_now=True)

    def _interrupt_all(self, reason: str) -> None:
        """The grace period is over: stop what still runs and record it as interrupted."""
        self._give_back(f"{reason} (before it ran)")
        self._record_ended()
        for attempt in self.running.values():
            attempt.stop("interrupted", reason)
        deadline = time.monotonic() + 10
        while any(not a.poll(time.monotonic()) for a in self.running.values()):
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        for attempt in list(self.running.values()):
            outcome = attempt.outcome
            duration = outcome.duration_ms if outcome else 0
            usage = outcome.usage if outcome else {}
            execution.interrupt(self.store, attempt.claim, reason, duration,
                                then=attempt.claim.spec.on_interrupt, usage=usage)
            del self.running[attempt.action_id]
            self.summary.interrupted += 1

    def _notify(self, attempt: Attempt, state: ActionState) -> None:
        spec = attempt.claim.spec
        notify: dict[str, Any] | None = spec.notify
        if notify is None and not self.notify_all:
            return
        if state not in (ActionState.COMPLETED, ActionState.FAILED, ActionState.SKIPPED):
            return
        from sp.runner import notifications

        notifications.deliver(self.store, attempt, state, notify, self.owner)


def _wait_for(waker: Waker | None, timeout_s: float, fds: list[int] | None = None) -> None:
    """Sleep up to ``timeout_s``, waking early when a submit writes to the pipe or one of
    ``fds`` (children's pidfds) turns readable."""
    timeout_s = max(0.0, timeout_s)
    if waker is None and not fds:
        time.sleep(timeout_s)
        return
    poller = select.poll()
    for fd in fds or ():
        poller.register(fd, select.POLLIN)
    if waker is not None:
        poller.register(waker.fileno(), select.POLLIN)
    ready: list[tuple[int, int]] = []
    with contextlib.suppress(InterruptedError):
        ready = poller.poll(timeout_s * 1000)
    if waker is not None and any(fd == waker.fileno() for fd, _ in ready):
        waker.drain()
