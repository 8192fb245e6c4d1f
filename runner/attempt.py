"""One running attempt of an action: its steps as child processes, supervised without blocking.

The worker owns many attempts at once and calls :meth:`Attempt.poll` on each; nothing here
sleeps or waits. Each step runs in its own process group (argv, no shell unless asked), with its
output appended to ``logs/<id>.log``. A finished step is checkpointed (when enabled) before the
next one starts, so a resumed attempt skips the steps already done.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

from sp.commands import actions, execution
from sp.commands.execution import Claim, Outcome
from sp.commands.home import Home
from sp.host import proc as proc_identity
from sp.ledger.interface import Ledger
from sp.runner.spawn import spawn

KILL_GRACE_S = 5.0
TAIL_LINES = 20
_pidfd_open = getattr(os, "pidfd_open", None)  # Linux 5.3+


class Step:
    def __init__(self, index: int, name: str, argv: list[str]) -> None:
        self.index, self.name, self.argv = index, name, argv


def steps_of(claim: Claim) -> list[Step]:
    """The steps to run: the task's steps, or its one command."""
    spec = claim.spec
    if spec.steps:
        out = []
        for i, step in enumerate(spec.steps):
            command = list(step.get("command") or [])
            if step.get("shell"):
                command = ["/bin/sh", "-c", " ".join(command)]
            out.append(Step(i, str(step.get("name", f"step {i}")), current_argv(command)))
        return out
    argv = ["/bin/sh", "-c", " ".join(spec.command)] if spec.shell else list(spec.command)
    return [Step(0, claim.spec.name, current_argv(argv))]


def current_argv(argv: list[str]) -> list[str]:
    """``argv`` with sp's built-in action modules under their present name.

    A built-in type's command is recorded in the ledger as sp's interpreter running one of its
    modules (``python -P -m sp.actions.run ...``). One recorded before sp became one import
    package names the module ``actions.run``, which is no longer importable: an action queued
    then, or a plan's compensation recorded then, still runs ``sp.actions.run``. The ledger
    keeps what was recorded; only the spawned argv changes. (commands.policies._sp_code
    recognises both names the same way.)"""
    if len(argv) < 3 or "-m" not in argv[1:3]:
        return argv
    at = argv.index("-m", 1) + 1
    if (at < len(argv) and argv[at].split(".")[0] == "actions"
            and os.path.realpath(argv[0]) == os.path.realpath(sys.executable)):
        return [*argv[:at], f"sp.{argv[at]}", *argv[at + 1:]]
    return argv


class Attempt:
    """A claimed attempt in progress. Create, then :meth:`start`, then :meth:`poll` until done."""

    def __init__(self, store: Ledger, home: Home, claim: Claim, owner: str,
                 note_children: bool = True) -> None:
        """``note_children``: note each spawned process in the lease at once, in a transaction
        of its own; the worker passes False and notes them in batches (:attr:`child_pending`).
        """
        self.store, self.home, self.claim, self.owner = store, home, claim, owner
        self.note_children = note_children
        self.action_id = claim.action_id
        self.steps = steps_of(claim)
        # Steps sp runs itself are skipped when done; a plain command gets $SP_RESUME_STEP and
        # $SP_CHECKPOINT and decides for itself.
        first = (claim.resume_step or 0) if claim.spec.steps else 0
        self.pending = [s for s in self.steps if s.index >= first]
        self.current: Step | None = None
        self.started = time.monotonic()
        timeout_ms = claim.spec.timeout_ms
        self.deadline = None if timeout_ms is None else self.started + timeout_ms / 1000
        self.log_path = home.log_path(self.action_id)
        # Read back too (log_facts at the end) through this same handle: no second open.
        self.log: IO[bytes] = open(self.log_path, "a+b")  # noqa: SIM115 - closed in _done
        self.log.write(f"--- sp: attempt {claim.attempt} of {self.action_id}\n".encode())
        if first:
            self.log.write(f"--- sp: resuming at step {first}\n".encode())
        self.log.flush()
        self.offset = self.log.tell()
        self.scan_offset = self.offset
        self.scanner: Any = None
        if claim.spec.failure_patterns:
            from sp.runner.patterns import PatternScanner

            self.scanner = PatternScanner(claim.spec.failure_patterns)
        self.prepared: Any = None
        self.limits: dict[str, Any] = claim.limits
        self.pid: int | None = None  # the running step's process (the leader of its group)
        self._popen: subprocess.Popen[bytes] | None = None  # when spawned through Popen
        # The running step's process as a file descriptor that turns readable when it exits:
        # the worker sleeps on it instead of polling (None where the kernel has no pidfd).
        self.pidfd: int | None = None
        # A spawned child not yet noted in the lease (the worker writes it with its next
        # transaction, not one of its own per spawn), and when it was spawned.
        self.child_pending: tuple[int, float] | None = None
        self.rusage: Any = None
        self.returncode: int | None = None
        self.stop_kind: str | None = None
        self.stop_text = ""
        self.kill_at: float | None = None
        self.outcome: Outcome | None = None
        self.stop_retryable = True
        self.kill_now = False
        # The agent's sandbox and quotas (security/): the action's private TMPDIR, where the
        # sandbox writes the kernel's denials, and the storage watch (the log cap for all).
        self.tmpdir: str | None = None
        self.denials_path: str | None = None
        if claim.sandbox is not None or claim.policy is not None:
            self.tmpdir = os.path.join(str(home.root), "tmp", self.action_id)
        self.broker: Any = None
        if claim.sandbox is not None:
            self.denials_path = claim.sandbox.denials_path
            from sp.runner.broker import Broker

            compensates = claim.spec.payload.get("compensates")
            run_as = getattr(claim.sandbox, "user", None)  # a policy's user: (resolved)
            self.broker = Broker(store, str(home.root), self.action_id,
                                 compensates if isinstance(compensates, str) else None,
                                 os.path.join(str(self.tmpdir), ".sp-broker"),
                                 claim.spec.agent, run_as["uid"] if run_as else None)
        from sp.security.quotas import watch_for

        self.quota = watch_for(store, str(home.root), self.action_id, claim.spec.agent,
                               claim.policy, self.log.fileno(), self.offset, self.tmpdir)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        # Timed from here: a worker may claim an attempt a moment before it spawns it.
        self.started = time.monotonic()
        timeout_ms = self.claim.spec.timeout_ms
        self.deadline = None if timeout_ms is None else self.started + timeout_ms / 1000
        if self.claim.refused is not None:
            self._done(self.claim.refused_kind, self.claim.refused, retryable=False)
            return
        if self.tmpdir is not None:
            os.makedirs(self.tmpdir, mode=0o700, exist_ok=True)
            self._hand_over(self.tmpdir)
        if self.denials_path is not None:
            os.makedirs(os.path.dirname(self.denials_path), mode=0o700, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.denials_path)
        if self.claim.prepared is not None:
            self.prepared = self.claim.prepared
        self._next_step()

    def _hand_over(self, tmpdir: str) -> None:
        """A policy's ``user:``: the action's TMPDIR and broker folder become that user's
        (:func:`sp.security.identity.hand_over`; the broker was told whose files to expect)."""
        run_as = getattr(self.claim.sandbox, "user", None)
        if run_as is None:
            return
        from sp.security import identity

        identity.hand_over([tmpdir, os.path.join(tmpdir, ".sp-broker")], run_as)

    def abandon(self, kind: str, text: str) -> None:
        """End an attempt that was claimed but never started (its outcome: not run)."""
        if self.outcome is None and self.pid is None:
            self.log.write(f"--- sp: not run: {text}\n".encode())
            self.log.flush()
            self._done(kind, text, retryable=False)

    def _env(self, step: Step) -> dict[bytes, bytes]:
        """The step's environment, as bytes: the worker's, the action's, and sp's variables.

        Bytes because the worker's environment is copied as it is held (``os.environ``'s
        own bytes mapping, one C-level dict copy) and ``Popen`` does not encode it again.
        """
        c = self.claim
        env = _environ_bytes()
        enc = os.fsencode
        for k, v in c.spec.env.items():
            env[enc(k)] = enc(v)
        env.update({
            b"SP_ACTION_ID": enc(c.action_id), b"SP_HOME": enc(str(self.home.root)),
            b"SP_ATTEMPT": str(c.attempt).encode(), b"SP_CHECKPOINT": enc(c.checkpoint or ""),
            b"SP_RESUME_STEP": b"" if c.resume_step is None else str(c.resume_step).encode(),
            b"SP_STEP": str(step.index).encode(), b"SP_STEP_NAME": enc(step.name),
        })
        if self.tmpdir is not None:
            tmp = enc(self.tmpdir)
            env.update({b"TMPDIR": tmp, b"TMP": tmp, b"TEMP": tmp})
        if self.broker is not None:
            env.update(self.broker.env)
        return env

    def _next_step(self) -> None:
        if not self.pending:
            self._done(None, "")
            return
        step = self.current = self.pending.pop(0)
        if len(self.steps) > 1:
            self.log.write(f"--- sp: step {step.index} {step.name}\n".encode())
            self.log.flush()
        argv = step.argv
        if self.claim.sandbox is not None:
            from sp.security import enforce, sandbox

            argv = sandbox.wrap(self.claim.sandbox, argv, enforce.capabilities())
        if self.prepared is not None:
            from sp.host import limits

            argv = limits.wrap(self.prepared, argv)
        try:
            pid, self._popen = spawn(argv, self._env(step), self.log.fileno(),
                                     self.claim.spec.cwd)
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in argv, env or cwd
            why = e.strerror if isinstance(e, OSError) else str(e)
            self._done("spawn", f"cannot run {step.argv[0]!r}: {why}", retryable=False)
            return
        self.pid = pid
        if self.note_children:
            execution.record_child(self.store, self.action_id, self.owner, pid)
        else:
            self.child_pending = (pid, time.monotonic())
        if _pidfd_open is not None:
            try:
                self.pidfd = _pidfd_open(pid)
            except OSError:
                self.pidfd = None

    def child_to_record(self) -> tuple[str, int, int] | None:
        """``(action_id, pid, pid_start)`` of the running step's process if the lease does not
        name it yet (see :func:`sp.commands.execution.record_children`)."""
        if self.child_pending is None or self.outcome is not None:
            return None
        pid = self.child_pending[0]
        return (self.action_id, pid, proc_identity.start_time(pid))

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None

    def poll(self, now: float) -> bool:
        """Advance: reap, scan output, enforce the timeout. True once the attempt is over."""
        if self.outcome is not None:
            return True
        child = self.pid
        if child is None:
            return False
        if self.scanner is not None and self.stop_kind is None:
            self._scan()
        if self.broker is not None:
            self.broker.serve()
        if self.stop_kind is None:
            over = self.quota.check(now)
            if over is not None:
                self.stop("quota_exceeded", over.text(), retryable=False, kill_now=over.kill_now)
        if self.deadline is not None and now > self.deadline and self.stop_kind is None:
            timeout_s = (self.claim.spec.timeout_ms or 0) / 1000
            self.stop("timeout", f"timed out after {timeout_s:g}s")
        if self.kill_at is not None and now >= self.kill_at:
            self._signal(signal.SIGKILL)
            self.kill_at = None
        try:
            pid, status, rusage = os.wait4(child, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: its status is lost (as Popen says, 0)
            pid, status, rusage = child, 0, None
        if pid == 0:
            return False
        self._close_pidfd()
        self.child_pending = None  # gone: nothing for recovery to find
        code = os.waitstatus_to_exitcode(status) if rusage is not None else 0
        if self._popen is not None:
            self._popen.returncode = code
        self.returncode = code
        self.rusage = rusage
        self._signal(signal.SIGKILL)  # leftovers of the step's process group
        if self.stop_kind is not None:
            self._done(self.stop_kind, self.stop_text, retryable=self.stop_retryable)
        elif code != 0:
            reason = self._exhausted(code)
            if reason:
                self._done("resource_exhaustion", reason)
            elif self.claim.sandbox is not None and code == _sandbox_exit():
                self._done("sandbox_unavailable", "the sandbox could not be applied (the log"
                           " says what)", retryable=False)
            elif self.prepared is not None and code == _shim_exit():
                self._done("limits_unavailable", "the limits shim could not apply the limits",
                           retryable=False)
            else:
                retryable = code not in self.claim.spec.non_retryable_exit_codes
                self._done("exit_code", f"exited with code {code}", retryable=retryable)
        else:
            if self.scanner is not None:
                self._scan(final=True)
                if self.stop_kind is not None:
                    self._done(self.stop_kind, self.stop_text)
                    return True
            step = self.current
            if step is not None and len(self.steps) > 1 and self.claim.spec.checkpoint_enabled:
                actions.checkpoint(self.store, self.action_id, {"step": step.name}, step.index,
                                   by=self.owner)
            self._next_step()
        return self.outcome is not None

    def stop(self, kind: str, text: str, retryable: bool = True, kill_now: bool = False) -> None:
        """Ask the step to stop (SIGTERM to its group), SIGKILL after the grace period (at
        once with ``kill_now``)."""
        if self.outcome is not None or self.stop_kind is not None:
            return
        self.stop_kind, self.stop_text, self.stop_retryable = kind, text, retryable
        if kill_now:
            self._signal(signal.SIGKILL)
            return
        self._signal(signal.SIGTERM)
        self.kill_at = time.monotonic() + KILL_GRACE_S

    def _signal(self, sig: int) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
        if self.prepared is not None:
            from sp.host import limits

            limits.kill_all(self.prepared, sig)

    def _exhausted(self, code: int | None) -> str | None:
        if self.prepared is None:
            return None
        from sp.host import limits

        reason: str | None = limits.exhausted(self.prepared, code)
        return reason

    def _scan(self, final: bool = False) -> None:
        """Feed the output written since the last scan to the failure-pattern scanner."""
        hit = None
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.scan_offset)
                while hit is None and (chunk := f.read(1 << 20)):
                    self.scan_offset += len(chunk)
                    hit = self.scanner.feed(chunk)
        except OSError:
            return
        if hit is None and final:
            hit = self.scanner.finish()
        if hit is not None:
            self.stop("output_pattern", f"output matched a failure pattern: {hit[:200]}")

    def _done(self, kind: str | None, text: str, retryable: bool = True) -> None:
        usage: dict[str, int] = {}
        if self.prepared is not None:
            from sp.host import limits

            usage = limits.usage(self.prepared, self.rusage)
            limits.cleanup(self.prepared)
        elif self.rusage is not None:
            r = self.rusage
            usage = {"cpu_user_ms": int(r.ru_utime * 1000), "cpu_sys_ms": int(r.ru_stime * 1000),
                     "peak_rss_bytes": int(r.ru_maxrss) * 1024,
                     "io_read_bytes": int(r.ru_inblock) * 512,
                     "io_write_bytes": int(r.ru_oublock) * 512}
        self._close_pidfd()
        self.child_pending = None
        if self.broker is not None:
            self.broker.close()  # the action's folders, held open while it could ask
        try:
            facts = _facts(self.log, self.offset)
        finally:
            self.log.close()
        security, stage = self._security()
        if security and stage == "run" and kind == "exit_code":
            first = security[0]
            kind, retryable = "security_denied", False
            text = (f"{text} after the sandbox refused {first.get('access')}"
                    f" {first.get('path', first.get('port', ''))}")
        self.outcome = Outcome(
            exit_code=self.returncode, duration_ms=int((time.monotonic() - self.started) * 1000),
            error_kind=kind, error=text, retryable=retryable, usage=usage, result=facts,
            security=security, security_stage=stage,
        )

    def _security(self) -> tuple[list[dict[str, Any]], str]:
        """What the policy refused: before running (the claim's denials) or, read back from
        the kernel's audit records the sandbox collected, while running."""
        if self.claim.denials:
            return list(self.claim.denials), "validation"
        if self.denials_path is None:
            return [], "run"
        from sp.security import sandbox

        try:
            found = sandbox.read_denials(self.denials_path)
        except OSError:
            return [], "run"
        with contextlib.suppress(OSError):
            os.unlink(self.denials_path)
        return found, "run"


def _sandbox_exit() -> int:
    from sp.security import sandbox

    return sandbox.SANDBOX_EXIT


def _shim_exit() -> int:
    from sp.host import limits

    return limits.SHIM_EXIT


def log_facts(path: Path, offset: int) -> dict[str, Any]:
    """Size, SHA-256 and last lines of this attempt's output."""
    with open(path, "rb") as f:
        return _facts(f, offset)


def _facts(f: IO[bytes], offset: int) -> dict[str, Any]:
    h = hashlib.sha256()
    tail: deque[bytes] = deque(maxlen=TAIL_LINES)
    size = 0
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


def _environ_bytes() -> dict[bytes, bytes]:
    """A copy of this process's environment as bytes (``os.environ``'s own mapping)."""
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict):
        return dict(data)
    return {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
