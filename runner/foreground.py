"""Run one action to its end in the foreground (``sp action execute``): every attempt, its
retries (waiting out each backoff), cancel requests and Ctrl-C, all recorded."""

from __future__ import annotations

import signal
import time
from types import FrameType

from sp.commands import execution
from sp.commands.execution import Claim
from sp.commands.home import Home
from sp.ledger.interface import Ledger
from sp.machines.states import ActionState
from sp.runner.attempt import Attempt
from sp.runner.sweeper import Sweeper
from sp.runner.worker import CANCEL_CHECK_S, HEARTBEAT_S, POLL_S


def run_claimed(store: Ledger, home: Home, claim: Claim,
                poll_s: float = POLL_S) -> ActionState:
    """Run ``claim`` and any retries of it until the action reaches a final state (or is
    interrupted by SIGINT/SIGTERM, which is recorded and returns ``INTERRUPTED``). Like every
    process that runs work, it sweeps for actions dead workers left, first and then every half
    lease period (:mod:`sp.runner.sweeper`; its own attempt is never touched)."""
    stop: list[int] = []
    sweeper = Sweeper(store, f"{claim.owner} (recovery sweep)")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.append(signum)

    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        current: Claim | None = claim
        while True:
            assert current is not None
            state = _one_attempt(store, home, current, stop, poll_s, sweeper)
            if state is not ActionState.RETRYING or stop:
                return state if state is not None else ActionState.INTERRUPTED
            retry_at = execution.next_retry_ms(store) or store.clock.now_ms()
            while store.clock.now_ms() < retry_at and not stop:
                time.sleep(min(0.2, (retry_at - store.clock.now_ms()) / 1000))
            if stop:
                return ActionState.RETRYING
            current = execution.claim(store, claim.action_id, claim.owner)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


def _one_attempt(store: Ledger, home: Home, claim: Claim, stop: list[int],
                 poll_s: float, sweeper: Sweeper) -> ActionState | None:
    sweeper.sweep_if_due()
    attempt = Attempt(store, home, claim, claim.owner)
    attempt.start()
    next_cancel = time.monotonic() + CANCEL_CHECK_S
    next_beat = time.monotonic() + HEARTBEAT_S
    while not attempt.poll(time.monotonic()):
        now = time.monotonic()
        if stop:
            attempt.stop("interrupted", "interrupted by a signal")
        if now >= next_cancel:
            next_cancel = now + CANCEL_CHECK_S
            if execution.cancel_requests(store, [claim.action_id]):
                attempt.stop("cancelled", "cancelled while running")
        if now >= next_beat:
            next_beat = now + HEARTBEAT_S
            execution.heartbeat(store, [claim.action_id], claim.owner)
        sweeper.sweep_if_due()
        time.sleep(poll_s)
    outcome = attempt.outcome
    assert outcome is not None
    if attempt.stop_kind == "interrupted":
        execution.interrupt(store, claim, "interrupted by a signal", outcome.duration_ms,
                            then=claim.spec.on_interrupt, usage=outcome.usage)
        return ActionState.INTERRUPTED
    state = execution.finish(store, claim, outcome)
    if state is not None and claim.spec.notify is not None:
        from sp.runner.notifications import deliver

        deliver(store, attempt, state, claim.spec.notify, claim.owner)
    return state
