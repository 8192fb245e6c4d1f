"""A foreground worker: claim ready actions and run them one at a time.

This is the minimal runner the foundation needs (``sp worker --until-idle``): its own process
group per action, output streamed to ``logs/<id>.log``, timeout (SIGTERM, then SIGKILL),
cancel within a second, lease heartbeats, and SIGTERM/SIGINT handled by giving the running
attempt back to the queue (recorded, resumable).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
import uuid
from collections import deque
from pathlib import Path
from types import FrameType

import msgspec

from commands import execution
from commands.execution import Claim, Outcome
from commands.home import Home
from ledger.store import EventStore
from machines.action import ActionState

POLL_S = 0.05
HEARTBEAT_S = 5.0
CANCEL_CHECK_S = 0.25
KILL_GRACE_S = 5.0
TAIL_LINES = 20


class WorkerSummary(msgspec.Struct):
    ran: int = 0
    completed: int = 0
    failed: int = 0
    retrying: int = 0
    cancelled: int = 0
    interrupted: int = 0


class Worker:
    def __init__(self, store: EventStore, home: Home, owner: str | None = None) -> None:
        self.store = store
        self.home = home
        self.owner = owner or f"worker:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self, until_idle: bool = True, idle_poll_s: float = 1.0) -> WorkerSummary:
        """Run ready actions until stopped; with ``until_idle``, until nothing is left to do.

        Nothing left = no action ready and none waiting out a retry backoff; actions delayed
        by ``--delay`` or blocked on dependencies do not keep an idle worker alive.
        """
        summary = WorkerSummary()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self.stopping:
                claim = execution.claim_next(self.store, self.owner)
                if claim is None:
                    retry_at = execution.next_retry_ms(self.store)
                    if until_idle and retry_at is None:
                        break
                    # A retry waiting out its backoff is work in progress: wait for it.
                    wait_s = idle_poll_s
                    if retry_at is not None:
                        wait_s = max(0.0, (retry_at - self.store.clock.now_ms()) / 1000)
                    time.sleep(min(wait_s, idle_poll_s))
                    continue
                summary.ran += 1
                new = self.run_one(claim)
                if new is ActionState.COMPLETED:
                    summary.completed += 1
                elif new is ActionState.FAILED:
                    summary.failed += 1
                elif new is ActionState.RETRYING:
                    summary.retrying += 1
                elif new is ActionState.CANCELLED:
                    summary.cancelled += 1
                elif new is ActionState.INTERRUPTED:
                    summary.interrupted += 1
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        return summary

    def run_one(self, claim: Claim) -> ActionState | None:
        spec = claim.spec
        log_path = self.home.log_path(claim.action_id)
        env = {**os.environ, **spec.env,
               "SP_ACTION_ID": claim.action_id, "SP_HOME": str(self.home.root),
               "SP_ATTEMPT": str(claim.attempt), "SP_CHECKPOINT": claim.checkpoint or "",
               "SP_RESUME_STEP": "" if claim.resume_step is None else str(claim.resume_step)}
        argv = spec.command
        if spec.shell:
            argv = ["/bin/sh", "-c", " ".join(spec.command)]
        start = time.monotonic()
        with open(log_path, "ab") as log:
            log.write(f"--- sp: attempt {claim.attempt} of {claim.action_id}\n".encode())
            log.flush()
            offset = log.tell()
            try:
                child = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=spec.cwd, env=env, start_new_session=True,
                )
            except OSError as e:
                return self._finish(claim, Outcome(
                    exit_code=None, duration_ms=_ms_since(start), error_kind="spawn",
                    error=f"cannot run {argv[0]!r}: {e.strerror}", retryable=False,
                ), log_path, offset)
            execution.record_child(self.store, claim.action_id, self.owner, child.pid)
            kind, error = self._supervise(claim, child, start)
        if kind == "interrupted":
            execution.interrupt(self.store, claim, "worker stopped (signal)", _ms_since(start))
            return ActionState.INTERRUPTED
        code = child.returncode
        if kind is None and code != 0:
            kind, error = "exit_code", f"exited with code {code}"
        return self._finish(claim, Outcome(
            exit_code=code, duration_ms=_ms_since(start), error_kind=kind, error=error,
        ), log_path, offset)

    def _supervise(self, claim: Claim, child: subprocess.Popen[bytes],
                   start: float) -> tuple[str | None, str]:
        """Wait for the child; enforce timeout, cancel and shutdown. Returns (error kind, text)."""
        timeout_s = None if claim.spec.timeout_ms is None else claim.spec.timeout_ms / 1000
        next_beat = start + HEARTBEAT_S
        next_cancel = start + CANCEL_CHECK_S
        while child.poll() is None:
            now = time.monotonic()
            if self.stopping:
                _stop(child)
                return "interrupted", "worker stopped"
            if timeout_s is not None and now - start > timeout_s:
                _stop(child)
                return "timeout", f"timed out after {timeout_s:g}s"
            if now >= next_cancel:
                next_cancel = now + CANCEL_CHECK_S
                if execution.cancel_requested(self.store, claim.action_id):
                    _stop(child)
                    return "cancelled", "cancelled while running"
            if now >= next_beat:
                next_beat = now + HEARTBEAT_S
                execution.heartbeat(self.store, [claim.action_id], self.owner)
            time.sleep(POLL_S)
        return None, ""

    def _finish(self, claim: Claim, outcome: Outcome, log_path: Path,
                offset: int) -> ActionState | None:
        result = _log_facts(log_path, offset)
        outcome = msgspec.structs.replace(outcome, result=result)
        return execution.finish(self.store, claim, outcome)


def _stop(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL after a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    try:
        child.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _ms_since(start: float) -> int:
    return int((time.monotonic() - start) * 1000)


def _log_facts(path: Path, offset: int) -> dict[str, object]:
    """Size, SHA-256 and last lines of this attempt's output."""
    h = hashlib.sha256()
    tail: deque[bytes] = deque(maxlen=TAIL_LINES)
    size = 0
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f:
            h.update(line)
            size += len(line)
            tail.append(line)
    return {
        "log_bytes": size,
        "log_sha256": h.hexdigest(),
        "tail": [ln.decode(errors="replace").rstrip("\n") for ln in tail],
    }
