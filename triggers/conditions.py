"""Condition triggers (the seed's condition-based scheduling), evaluated on an interval.

```yaml
conditions:
  disk_space_low:   {trigger: "disk_usage > 90%", action: cleanup_old_files, cooldown: 1h}
  data_disk_full:   {trigger: "disk_usage(/data) >= 95%", action: cleanup_old_files}
  high_cpu_temp:    {trigger: "cpu_temp > 80C", action: throttle_agents, cooldown: 5m}
  network_available: {trigger: internet_connected, action: sync_remote_data, cooldown: 30m}
  offline:          {trigger: "not internet_connected(192.168.1.1:80)", action: note_outage}
  busy:             {trigger: "load > 2.5", action: pause_batch}
  memory_tight:     {trigger: "memory_usage > 80%", action: drop_caches}
  backup_disk_gone: {trigger: command_fails, command: [mountpoint, -q, /mnt/backup],
                     action: alert_backup, interval: 5m}
```

Expressions are parsed strictly (:func:`parse_condition`; a bad one is refused when the file is
decoded, naming the condition). Measures: ``disk_usage[(PATH)]`` and ``memory_usage`` in ``%``,
``cpu_temp`` in ``C`` (the hottest CPU sensor psutil reports), ``load`` (the 1-minute load
average), and the booleans ``internet_connected[(HOST:PORT)]`` (a TCP connection within
:data:`CONNECT_TIMEOUT_S`, default ``1.1.1.1:53``), ``command_succeeds`` and ``command_fails``
(the exit status of ``command:``); ``not`` negates a boolean. Comparisons: ``> >= < <=``.

Each condition is checked every ``interval``. When it holds it fires (``trigger.fired`` and the
task, stream ``trigger:<name>``) unless it fired less than ``cooldown`` ago
(:class:`Cooldown`; the last fire is read back from the ledger on start, so a daemon restart
does not fire again early). A measure that cannot be taken (no temperature sensor, a missing
path) is reported once per outage and never fires meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from typing import Any

from sp.agents import trigger_names
from sp.agents.condition_syntax import Expression, parse_condition, parse_host
from sp.agents.trigger_file import Condition, TriggerFile
from sp.commands.fire import stream_of
from sp.ledger.errors import SpError
from sp.triggers.sources import Source, SourceContext

DEFAULT_HOST = ("1.1.1.1", 53)
CONNECT_TIMEOUT_S = 1.5
COMMAND_TIMEOUT_MAX_MS = 5 * 60_000

class Unavailable(Exception):
    """The measure cannot be taken now (no sensor, no such path)."""


# -- measuring --------------------------------------------------------------------------------


_CPU_CHIPS = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal", "soc_thermal",
              "x86_pkg_temp", "acpitz")


def cpu_temp() -> float:
    """The hottest CPU temperature psutil reports (°C). :raises Unavailable: no sensor."""
    import psutil

    read = getattr(psutil, "sensors_temperatures", None)
    temps = read() if read is not None else {}
    chips = {k: v for k, v in temps.items() if k in _CPU_CHIPS and v} or temps
    values = [t.current for entries in chips.values() for t in entries if t.current is not None]
    if not values:
        raise Unavailable("no temperature sensor (psutil reports none on this machine)")
    return float(max(values))


def connected(host: str, port: int, timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def run_command(argv: list[str], timeout_ms: int, stop: threading.Event | None) -> int | str:
    """The command's exit status; ``"timeout"`` when it ran too long (killed, with its process
    group), ``"stopped"`` when the daemon stops meanwhile; 127 when it cannot be started."""
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        return 127
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        over = time.monotonic() > deadline
        if over or (stop is not None and stop.is_set()):
            with contextlib.suppress(OSError):  # gone already
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout" if over else "stopped"


def measure(expr: Expression, cond: Condition, stop: threading.Event | None = None) -> Any:
    """Take the measure now. :raises Unavailable: it cannot be taken."""
    import psutil

    name = expr.measure
    if name == "disk_usage":
        path = expr.arg or "/"
        try:
            return float(psutil.disk_usage(path).percent)
        except OSError as e:
            raise Unavailable(f"disk_usage({path}): {e.strerror or e}") from None
    if name == "memory_usage":
        return float(psutil.virtual_memory().percent)
    if name == "cpu_temp":
        return cpu_temp()
    if name == "load":
        return float(os.getloadavg()[0])
    if name == "internet_connected":
        host, port = parse_host(expr.arg, "") if expr.arg else DEFAULT_HOST
        return connected(host, port)
    assert cond.command is not None
    timeout = max(1000, min(COMMAND_TIMEOUT_MAX_MS, int(cond.interval)))
    return run_command(cond.command, timeout, stop)


def holds(expr: Expression, value: Any) -> bool:
    """Whether the measured ``value`` makes the condition true."""
    if expr.measure == "command_succeeds":
        truth = value == 0
    elif expr.measure == "command_fails":
        truth = value != 0 and value != "stopped"
    elif expr.threshold is None:
        truth = bool(value)
    else:
        t = expr.threshold
        truth = {">": value > t, ">=": value >= t, "<": value < t, "<=": value <= t}[
            expr.op or ">"]
    return bool(truth != expr.negate if expr.threshold is None else truth)


class Cooldown:
    """Fire at most once per ``cooldown_ms`` (a pure class: the caller says what time it is).

    A wall clock stepped back before the last fire counts as ready: a step must not silence a
    condition for the length of the step.
    """

    def __init__(self, cooldown_ms: int, last_ms: int | None = None) -> None:
        self.cooldown_ms = cooldown_ms
        self.last_ms = last_ms

    def ready(self, now_ms: int) -> bool:
        if self.last_ms is None:
            return True
        elapsed = now_ms - self.last_ms
        return elapsed >= self.cooldown_ms or elapsed < 0

    def fired(self, now_ms: int) -> None:
        self.last_ms = now_ms


class ConditionSource:
    """One condition, checked every ``interval`` in its own thread."""

    def __init__(self, name: str, cond: Condition, expr: Expression) -> None:
        self.condition = name
        self.name = name  # agents.trigger_names: a condition's name is its key
        self.cond = cond
        self.expr = expr
        self.cooldown = Cooldown(int(cond.cooldown))
        self.checks = 0
        self._primed = False
        self._unavailable: str | None = None
        self._fire_error: str | None = None

    def check(self, ctx: SourceContext, stop: threading.Event | None = None) -> str | None:
        """Evaluate once; fire if the condition holds and the cooldown allows. Returns the
        action id of a fire."""
        store = ctx.store()
        if not self._primed:  # the last fire before a restart still counts for the cooldown
            row = store.query_one("SELECT max(ts) FROM events WHERE stream = ?",
                                  (stream_of(self.name),))
            if row is not None and row[0] is not None:
                self.cooldown.fired(int(row[0]))
            self._primed = True
        self.checks += 1
        try:
            value = measure(self.expr, self.cond, stop)
        except Unavailable as e:
            if self._unavailable is None:
                ctx.log(f"{self.name}: unavailable: {e}; it will not fire while so")
            self._unavailable = str(e)
            return None
        if self._unavailable is not None:
            ctx.log(f"{self.name}: available again")
            self._unavailable = None
        now = ctx.clock.now_ms()
        if not holds(self.expr, value) or not self.cooldown.ready(now):
            return None
        payload = {"condition": self.condition, "expression": self.cond.trigger,
                   "value": value, "threshold": self.expr.threshold}
        try:
            action_id = ctx.fire(self.name, trigger_names.CONDITION, self.cond.action, payload,
                                 detail=f"{self.cond.trigger}: {value}{self.expr.unit}")
        except SpError as e:
            if str(e) != self._fire_error:
                ctx.log(f"{self.name}: cannot fire: {e}")
            self._fire_error = str(e)
            return None
        self._fire_error = None
        self.cooldown.fired(now)
        return action_id

    def run(self, ctx: SourceContext, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.check(ctx, stop)
            except Exception as e:  # keep watching: one bad check must not end the condition
                ctx.log(f"{self.name}: check failed: {type(e).__name__}: {e}")
            stop.wait(int(self.cond.interval) / 1000)


def build(doc: TriggerFile, ctx: SourceContext) -> list[Source]:
    return [ConditionSource(name, cond, parse_condition(cond, f"$.conditions.{name}"))
            for name, cond in doc.conditions.items()]
