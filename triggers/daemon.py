"""``sp daemon``: run every source of the applied trigger file, each in a supervised thread of
its own, and a worker in the main thread.

* A source that raises (or returns while the daemon runs) is logged on stderr and restarted
  after a backoff — 1 s, doubling up to 30 s, back to 1 s once it ran for a minute — without
  taking the daemon or the other sources down.
* SIGTERM/SIGINT: the sources are told to stop at once (each returns within about a second
  and fires what it already saw), the worker stops claiming and gives running actions its
  grace period (then records them ``interrupted``, resumable), and the daemon exits 0.
* SIGHUP reloads the applied trigger file (``sp trigger apply`` first): the new sources are
  built, the old ones stopped, the new ones started; a file that cannot be built (a secret
  variable unset) is refused and the old sources go on.
* The daemon records nothing of its own — no start, no heartbeat: only what the sources fire,
  what the worker runs, and what its recovery sweeps find (first, then every half lease
  period: actions a dead worker left ``executing``; see :mod:`sp.runner.sweeper`).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from sp.agents.trigger_file import TriggerFile
from sp.commands.home import Home
from sp.ledger.clock import Clock
from sp.ledger.errors import SpError
from sp.runner.worker import Worker
from sp.triggers.sources import Source, SourceContext, build_all

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0  # a source that ran this long before failing starts its backoff afresh
JOIN_S = 3.0  # how long shutdown waits for the sources, all together
BIND_WAIT_S = 5.0  # how long a reload waits for its servers to listen before saying so


class _DaemonWorker(Worker):
    """A worker whose SIGTERM/SIGINT stops the whole daemon (sources first)."""

    def __init__(self, *args: Any, on_signal: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._daemon_on_signal = on_signal

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._daemon_on_signal()


class _Generation:
    """The sources of one trigger document, their threads and their stop event."""

    def __init__(self, ctx: SourceContext, sources: list[Source]) -> None:
        self.ctx = ctx
        self.sources = sources
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []


class Daemon:
    """The sources of the applied trigger file plus, with ``concurrency > 0``, a worker."""

    def __init__(self, home: Home, *, concurrency: int = 1, grace_s: float = 30.0,
                 clock: Clock | None = None, log: Callable[[str], None] | None = None,
                 backoff_min_s: float = BACKOFF_MIN_S,
                 backoff_max_s: float = BACKOFF_MAX_S) -> None:
        self.home = home
        self.concurrency = concurrency
        self.grace_s = grace_s
        self.clock = clock
        self._log = log or (lambda _m: None)
        self._log_lock = threading.Lock()
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.stop = threading.Event()
        self.restarts: dict[str, int] = {}
        self._reload = threading.Event()
        self._gen: _Generation | None = None
        self._worker: Worker | None = None
        self._lock = threading.Lock()

    def log(self, message: str) -> None:
        if not message.startswith("daemon: "):
            message = f"daemon: {message}"
        with self._log_lock:
            self._log(message)

    # -- control, from any thread or a signal handler -------------------------------------
    def request_stop(self) -> None:
        """Stop the sources now and the worker after its grace period; ``run`` then returns."""
        self.stop.set()
        gen = self._gen
        if gen is not None:
            gen.stop.set()
        worker = self._worker
        if worker is not None:
            worker.request_stop()

    def request_reload(self) -> None:
        """Reload the applied trigger file: new sources replace the old ones (SIGHUP)."""
        self._reload.set()

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop()

    def _on_reload_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_reload()

    # -- running ----------------------------------------------------------------------------
    def _load(self) -> _Generation:
        """The applied document's sources (none when no file was applied).

        :raises UsageError: a source cannot be built (a webhook's secret variable is unset).
        """
        from sp.commands import triggers

        store = self.home.open(clock=self.clock)
        try:
            found = triggers.applied(store)
        finally:
            store.close()
        doc = found.doc if found else TriggerFile()
        ctx = SourceContext(self.home, doc, self.clock, self.log,
                            source=found.source if found else None)
        return _Generation(ctx, build_all(doc, ctx))

    def _start(self, gen: _Generation) -> None:
        gen.threads = [threading.Thread(target=self._supervise, args=(s, gen), daemon=True,
                                        name=f"sp-source-{s.name}") for s in gen.sources]
        self._gen = gen
        for t in gen.threads:
            t.start()
        if self.stop.is_set():  # a stop that came while starting
            gen.stop.set()

    @staticmethod
    def _ready(gen: _Generation) -> None:
        """Wait (up to BIND_WAIT_S) until the sources that say so are ready — a webhook
        listens, a folder is watched — so that "started" and "reloaded" mean ready: a file
        written or a request sent once they are logged is not missed."""
        deadline = time.monotonic() + BIND_WAIT_S
        for source in gen.sources:
            for name in ("bound", "watching"):
                event = getattr(source, name, None)
                if isinstance(event, threading.Event):
                    event.wait(max(0.0, deadline - time.monotonic()))

    def _halt(self, gen: _Generation, wait_s: float = JOIN_S) -> None:
        gen.stop.set()
        deadline = time.monotonic() + wait_s
        for t in gen.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in gen.threads if t.is_alive()]
        if stuck:
            self.log(f"sources still stopping: {', '.join(stuck)}")

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or :meth:`request_stop`); returns the exit code (0).

        :raises UsageError: a source cannot be built; nothing was started.
        """
        gen = self._load()
        if self.concurrency > 0:
            # The sandbox probe forks: before any thread of ours exists, and outside any
            # transaction (a worker's claim would otherwise run it under the write lock).
            from sp.commands.preparation import warm_up

            warm_up()
        handlers = self._install_signals()
        names = ", ".join(s.name for s in gen.sources) or "no trigger sources"
        worker = (f"a worker running up to {self.concurrency} at once" if self.concurrency
                  else "no worker")
        self._start(gen)
        self._ready(gen)
        self.log(f"started: {names}; {worker}")
        manager = threading.Thread(target=self._manage, daemon=True, name="sp-daemon-reload")
        manager.start()
        try:
            if self.concurrency > 0:
                self._run_worker()  # its worker sweeps for what dead workers left
            else:
                self._sweep_only()
        finally:
            self.request_stop()
            manager.join(JOIN_S)
            with self._lock:
                if self._gen is not None:
                    self._halt(self._gen)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        self.log("stopped")
        return 0

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}  # run from a test thread: stop through request_stop()
        handlers: dict[int, Any] = {s: signal.signal(s, self._on_stop_signal)
                                    for s in (signal.SIGTERM, signal.SIGINT)}
        handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_reload_signal)
        return handlers

    def _manage(self) -> None:
        """Reload on request: build the new sources first (a file that cannot be built leaves
        the old ones running), then stop the old ones and start the new."""
        while not self.stop.is_set():
            if not self._reload.wait(0.25):
                continue
            self._reload.clear()
            try:
                gen = self._load()
            except SpError as e:
                self.log(f"reload refused, the running triggers stay: {e}")
                continue
            with self._lock:
                if self.stop.is_set():
                    return
                if self._gen is not None:
                    self._halt(self._gen)
                self._start(gen)
            self._ready(gen)
            self.log(f"reloaded: {', '.join(s.name for s in gen.sources) or 'no sources'}")

    def _run_worker(self) -> None:
        store = self.home.open(clock=self.clock)
        try:
            worker = self._worker = _DaemonWorker(
                store, self.home, concurrency=self.concurrency, grace_s=self.grace_s,
                on_signal=self.request_stop)
            if self.stop.is_set():
                worker.request_stop()
            summary = worker.run()
            self.log(f"worker ran {summary.ran}: {summary.completed} completed, "
                     f"{summary.failed} failed, {summary.interrupted} interrupted, "
                     f"{summary.recovered} recovered from dead workers")
        finally:
            self._worker = None
            store.close()

    def _sweep_only(self) -> None:
        """Without a worker (``-c 0``), still the supervisor: recover, every half lease
        period, the actions dead workers left executing (``sp worker`` or a tick run them)."""
        from sp.runner.sweeper import Sweeper

        store = self.home.open(clock=self.clock)
        try:
            sweeper = Sweeper(store, "daemon (recovery sweep)")
            while True:
                for r in sweeper.sweep_if_due():
                    self.log(f"recovered {r.action_id}: {r.outcome} ({r.reason})")
                if self.stop.wait(0.5):
                    return
        finally:
            store.close()

    def _supervise(self, source: Source, gen: _Generation) -> None:
        delay = self.backoff_min_s
        try:
            while not gen.stop.is_set():
                started = time.monotonic()
                try:
                    source.run(gen.ctx, gen.stop)
                    if gen.stop.is_set():
                        return
                    problem = "stopped by itself"
                except SpError as e:
                    problem = str(e)
                except Exception as e:
                    problem = f"{type(e).__name__}: {e}"
                if time.monotonic() - started >= STABLE_S:
                    delay = self.backoff_min_s
                self.restarts[source.name] = self.restarts.get(source.name, 0) + 1
                self.log(f"{source.name}: {problem}; restarting in {delay:g}s")
                if gen.stop.wait(delay):
                    return
                delay = min(delay * 2, self.backoff_max_s)
        finally:
            gen.ctx.close()
