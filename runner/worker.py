"""The worker: claim ready actions and run up to N at once, in one process, without threads.

One loop does everything: poll the running attempts (reap, timeouts, output patterns), then in
one transaction (one fsync) record the attempts that ended, note newly spawned children in their
leases and claim into the free slots; spawn what was claimed (after that commit: write-ahead);
check cancel requests and renew leases for all of them at once; and sleep in ``poll`` on the
children's pidfds and the wake-up pipe, so that a child's exit or a submit is acted on at once.
No thread means no ``preexec_fn`` hazard and no lock juggling; the state lives in the ledger,
not in the worker.

Shutdown (SIGTERM/SIGINT): stop claiming, let running attempts finish for the grace period,
then stop them and record ``action.interrupted`` (resumable, per the task's ``on_interrupt``).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
import uuid
from types import FrameType
from typing import Any

import msgspec

from commands import execution
from commands.execution import Claim, Outcome
from commands.home import Home
from ledger.errors import SpError
from ledger.store import EventStore
from machines.states import ActionState

from .attempt import Attempt
from .wake import Waker

POLL_S = 0.02  # timeouts, output patterns and free slots are checked at least this often
# A spawned child is noted in its lease with the next transaction the worker makes anyway, or
# after this long: a short action ends (and its lease goes) before it costs a commit of its own.
CHILD_RECORD_S = POLL_S
HEARTBEAT_S = 5.0
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


class Worker:
    """Runs actions from one home. ``run()`` returns when stopped or, optionally, idle."""

    def __init__(self, store: EventStore, home: Home, owner: str | None = None,
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
        self.running: dict[str, Attempt] = {}
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
        interrupt what still runs (``sp tick``)."""
        waker = Waker(self.home.root)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        end = None if max_seconds is None else time.monotonic() + max_seconds
        next_beat = time.monotonic() + HEARTBEAT_S
        next_cancel = time.monotonic() + CANCEL_CHECK_S
        try:
            while True:
                now = time.monotonic()
                if end is not None and now >= end:
                    self.request_stop(grace_s=0.0)
                self._turn(now)
                if not self.running:
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
                    execution.heartbeat(self.store, list(self.running), self.owner)
                if self.stopping and self.stop_deadline is not None and now >= self.stop_deadline:
                    self._interrupt_all("worker stopped (signal)" if end is None or now < end
                                        else f"sp tick reached --max-seconds {max_seconds:g}")
                full = len(self.running) >= self.concurrency or self.stopping
                self._sleep(None if full else waker, now)
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
            waker.close()
        return self.summary

    # -- one turn: reap, then record, note children and claim in one transaction -----------
    def _turn(self, now: float) -> None:
        ended = [a for a in self.running.values() if a.poll(now)]
        free = 0 if self.stopping else self.concurrency - len(self.running) + len(ended)
        if free > 0 and now >= self._next_pause_check:
            self._next_pause_check = now + PAUSE_CHECK_S
            self._paused = execution.paused_agents(self.store)
        if "" in self._paused:
            free = 0
        # Children still running CHILD_RECORD_S after their spawn are noted in their leases:
        # with this turn's transaction, or one of their own if nothing else is written.
        waiting = [a for a in self.running.values() if a.child_pending and a.outcome is None
                   and now - a.child_pending[1] >= CHILD_RECORD_S]
        if not ended and free <= 0 and not waiting:
            return
        children = [c for c in (a.child_to_record() for a in waiting) if c is not None]
        pairs: list[tuple[Claim, Outcome]] = []
        for a in ended:
            assert a.outcome is not None  # poll() is True once there is one
            pairs.append((a.claim, a.outcome))
        try:
            states, claims = execution.finish_and_claim(
                self.store, self.owner, pairs, free, self._paused, children)
        except Exception:
            if not pairs and not children:
                raise
            # Claiming failed: what ended is still recorded (and the children noted) on its
            # own, then the claim is tried once more, alone, and raises what it raises.
            states = execution.finish_many(self.store, pairs)
            if children:
                execution.record_children(self.store, self.owner, children)
            claims = execution.claim_many(self.store, self.owner, free, self._paused)
        for a in waiting:
            a.child_pending = None
        for attempt, state in zip(ended, states, strict=True):
            del self.running[attempt.action_id]
            self._count(state)
            if state is not None:
                self._notify(attempt, state)
        for claim in claims:
            attempt = Attempt(self.store, self.home, claim, self.owner, note_children=False)
            self.running[claim.action_id] = attempt
            self.summary.ran += 1
            attempt.start()
        self.summary.peak_running = max(self.summary.peak_running, len(self.running))

    def _ready_now(self) -> bool:
        if "" in self._paused:
            return False
        return execution.ready_count(self.store, self._paused) > 0

    def _sleep(self, waker: Waker | None, now: float) -> None:
        """Until a child exits, a submit wakes us (``waker``), or the next check is due."""
        timeout = POLL_S
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
        for action_id in execution.cancel_requests(self.store, list(self.running)):
            self.running[action_id].stop("cancelled", "cancelled while running")

    def _interrupt_all(self, reason: str) -> None:
        """The grace period is over: stop what still runs and record it as interrupted."""
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
        from runner import notifications

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
