"""The worker: claim ready actions and run up to N at once, in one process, without threads.

One loop does everything: claim into free slots (one transaction for the batch), poll the
running attempts (reap, timeouts, output patterns), check cancel requests and renew leases for
all of them at once, record the attempts that ended (one transaction for the batch), and sleep
in ``select`` on the wake-up pipe so that a submit starts work at once. No thread means no
``preexec_fn`` hazard and no lock juggling; the state lives in the ledger, not in the worker.

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
from commands.home import Home
from ledger.errors import SpError
from ledger.store import EventStore
from machines.states import ActionState

from .attempt import Attempt
from .wake import Waker

POLL_S = 0.02  # reap/timeout cadence while attempts run
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
                if not self.stopping:
                    self._fill_slots()
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
                self._poll_all(time.monotonic())
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
                if (self.running and len(self.running) >= self.concurrency) or self.stopping:
                    _wait_for(None, POLL_S)
                else:
                    _wait_for(waker, POLL_S)
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
            waker.close()
        return self.summary

    # -- claiming -------------------------------------------------------------------------------
    def _fill_slots(self) -> None:
        free = self.concurrency - len(self.running)
        if free <= 0:
            return
        now = time.monotonic()
        if now >= self._next_pause_check:
            self._next_pause_check = now + PAUSE_CHECK_S
            self._paused = execution.paused_agents(self.store)
        for claim in execution.claim_many(self.store, self.owner, free, self._paused):
            attempt = Attempt(self.store, self.home, claim, self.owner)
            self.running[claim.action_id] = attempt
            self.summary.ran += 1
            attempt.start()
        self.summary.peak_running = max(self.summary.peak_running, len(self.running))

    def _ready_now(self) -> bool:
        if "" in self._paused:
            return False
        return execution.ready_count(self.store, self._paused) > 0

    # -- supervising ----------------------------------------------------------------------------
    def _poll_all(self, now: float) -> None:
        ended = [a for a in self.running.values() if a.poll(now)]
        if ended:
            self._record(ended)

    def _record(self, ended: list[Attempt]) -> None:
        pairs = [(a.claim, a.outcome) for a in ended if a.outcome is not None]
        states = execution.finish_many(self.store, pairs)  # type: ignore[arg-type]
        for attempt, state in zip(ended, states, strict=True):
            del self.running[attempt.action_id]
            self._count(state)
            if state is not None:
                self._notify(attempt, state)

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


def _wait_for(waker: Waker | None, timeout_s: float) -> None:
    """Sleep up to ``timeout_s``, waking early when a submit writes to the pipe."""
    if waker is None:
        time.sleep(timeout_s)
        return
    with contextlib.suppress(InterruptedError):
        ready, _, _ = select.select([waker], [], [], max(0.0, timeout_s))
        if ready:
            waker.drain()
