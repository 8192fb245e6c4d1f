"""The small Python API of the seed's IoT Sensor Monitor.

```python
from sp.runner.iot import continuous_action, read_sensor, send_alert, trigger_action

@continuous_action(interval="5s")
def monitor_temperature_sensor(context):
    reading = read_sensor("/dev/ttyUSB0")              # a line like "temperature=81.5"
    if reading.temperature > context.threshold:        # settings: {threshold: 80}
        trigger_action("cooling_system_activate")
        send_alert(f"High temperature: {reading.temperature}°C")
    context.memory.record_reading(reading)
    if len(context.memory.recent_readings) > 1000:
        trigger_action("compress_historical_data")
```

and in the trigger file (``sp daemon`` runs it in-process, with the ``schedule`` package)::

    agent: iot-001
    continuous:
      monitor_temperature_sensor:
        python: sensors:monitor_temperature_sensor     # module:function (or file.py:function)
        settings: {threshold: 80}                      # interval: the decorator's, or here

* :func:`trigger_action` fires the agent's task (``trigger.fired``, kind ``continuous``, and the
  task's action, in one transaction). Called from inside an action that sp runs (``$SP_ACTION_ID``
  and ``$SP_HOME`` set) it fires a task of that action's agent, kind ``api``.
* :func:`send_alert` records ``alert.sent`` (stream ``alerts``) and prints the alert on stderr.
* ``context.memory`` is the agent's :class:`sp.runner.memory.AgentMemory`, kept across runs and
  restarts; :func:`memory` opens it from an action's own code.

A continuous function runs inside the daemon, with its privileges and without a sandbox: give
untrusted code an ``action:`` (a task run by a worker) instead.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, overload

from sp.commands import notices
from sp.ledger.errors import UsageError
from sp.ledger.interface import Ledger
from sp.runner.memory import MAX_READINGS, AgentMemory

F = TypeVar("F", bound=Callable[..., Any])
ALERT_LEVELS = notices.ALERT_LEVELS
ALERT_STREAM = notices.ALERT_STREAM
DEFAULT_INTERVAL = "5s"

# "module:qualname" -> the decorated function (its interval is on it: __sp_interval_ms__)
REGISTRY: dict[str, Callable[..., Any]] = {}

# Fire a task: (task, payload, detail) -> action id (None: an idempotent repeat)
Firer = Callable[[str, dict[str, Any], str], "str | None"]


@overload
def continuous_action(interval: F) -> F: ...


@overload
def continuous_action(interval: str | float = DEFAULT_INTERVAL) -> Callable[[F], F]: ...


def continuous_action(interval: Any = DEFAULT_INTERVAL) -> Any:
    """Mark a function ``f(context)`` as a continuous action run every ``interval`` ("5s",
    "1m", or seconds). A trigger file names it ``python: module:function``; an ``interval:``
    there overrides the decorator's. Usable bare (``@continuous_action``: every 5 s).

    :raises UsageError: not a duration.
    """
    if callable(interval):
        return continuous_action(DEFAULT_INTERVAL)(interval)
    from sp.agents.units import parse_duration_ms

    try:
        ms = parse_duration_ms(interval)
    except ValueError as e:
        raise UsageError(f"continuous_action(interval=...): {e}") from None
    if ms <= 0:
        raise UsageError("continuous_action(interval=...): must be positive")

    def mark(fn: F) -> F:
        fn.__sp_interval_ms__ = ms  # type: ignore[attr-defined]
        REGISTRY[f"{fn.__module__}:{fn.__qualname__}"] = fn
        return fn

    return mark


def interval_of(fn: Callable[..., Any]) -> int | None:
    """The decorator's interval (ms), None for an undecorated function."""
    found = getattr(fn, "__sp_interval_ms__", None)
    return int(found) if isinstance(found, int) else None


class ContinuousContext:
    """What a continuous function receives: ``memory``, its entry's ``settings`` (also as
    attributes: ``context.threshold``), ``run`` (1 for the first run), ``name``, ``agent``,
    and ``trigger_action`` / ``send_alert`` / ``log``."""

    def __init__(self, name: str, agent: str, store_of: Callable[[], Ledger],
                 fire: Firer, *, settings: dict[str, Any] | None = None,
                 source: str = "", log: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.agent = agent
        self.settings: dict[str, Any] = dict(settings or {})
        self.source = source or f"continuous:{name}"
        self.run = 0
        self.memory = AgentMemory(store_of, agent,
                                  int(self.settings.get("max_readings", MAX_READINGS)))
        self._store_of = store_of
        self._fire = fire
        self._log = log or (lambda message: sys.stderr.write(message + "\n"))

    def __getattr__(self, key: str) -> Any:
        # Only called for names that are not attributes: the entry's settings.
        settings = self.__dict__.get("settings", {})
        if key in settings:
            return settings[key]
        raise AttributeError(f"context has no {key!r} (add it to the entry's settings:)")

    def trigger_action(self, task: str, payload: dict[str, Any] | None = None) -> str | None:
        """Fire the agent's ``task`` (or ``agent/task``); returns the action id.

        :raises UsageError: unknown agent or task (nothing written).
        """
        return self._fire(task, dict(payload or {}), f"trigger_action from {self.source}")

    def send_alert(self, message: str, level: str = "warning") -> None:
        """Record ``alert.sent`` and print it on stderr. :raises UsageError: unknown level."""
        record_alert(self._store_of(), message, level, self.source, self.agent)

    def log(self, message: str) -> None:
        self._log(f"{self.source}: {message}")


def record_alert(store: Ledger, message: str, level: str, source: str, agent: str) -> None:
    """Append ``alert.sent`` to the stream ``alerts``, then print it on stderr.

    :raises UsageError: ``level`` is not info, warning, error or critical.
    """
    notices.record_alert(store, message, level, source, agent)
    sys.stderr.write(f"alert [{level}] {source}: {message}\n")
    sys.stderr.flush()


_current = threading.local()


@contextmanager
def using(context: ContinuousContext) -> Iterator[ContinuousContext]:
    """Make ``context`` the one :func:`trigger_action` and :func:`send_alert` use in this
    thread (the continuous source wraps each run in it)."""
    previous = getattr(_current, "context", None)
    _current.context = context
    try:
        yield context
    finally:
        _current.context = previous


def current() -> ContinuousContext | None:
    """The context of the continuous function running in this thread, if any."""
    found = getattr(_current, "context", None)
    return found if isinstance(found, ContinuousContext) else None


def trigger_action(name: str, payload: dict[str, Any] | None = None) -> str | None:
    """Fire the agent's task ``name`` (``agent/task`` for another agent's); returns the id of
    the action. Inside a continuous function: kind ``continuous``; inside an action sp runs:
    kind ``api``, a task of that action's agent.

    :raises UsageError: outside both, or an unknown agent or task (nothing written).
    """
    context = current()
    if context is not None:
        return context.trigger_action(name, payload)
    with _outside() as (store, agent, action_id):
        from sp.agents.trigger_file import split_action
        from sp.commands.fire import fire

        agent_of, task = split_action(agent, name)
        return fire(store, f"api:{agent}", "api", agent_of, task, dict(payload or {}),
                    detail=f"trigger_action from action {action_id}", by=f"action:{action_id}")


def send_alert(message: str, level: str = "warning") -> None:
    """Record ``alert.sent`` (``info``, ``warning``, ``error`` or ``critical``) and print it
    on stderr.

    :raises UsageError: outside a continuous function and an action, or an unknown level.
    """
    context = current()
    if context is not None:
        context.send_alert(message, level)
        return
    from sp.runner import broker

    if broker.active():  # sandboxed: the worker records it
        try:
            broker.call("alert", message=message, level=level)
        except broker.BrokerError as e:
            raise UsageError(str(e)) from None
        return
    with _outside() as (store, agent, action_id):
        record_alert(store, message, level, f"action:{action_id}", agent)


def memory(agent: str | None = None, home: str | None = None) -> AgentMemory:
    """An agent's memory from outside the daemon: inside a continuous function its context's;
    else ``agent`` (default: the agent of the action this process runs in) in the ledger at
    ``home`` (default ``$SP_HOME``). Close it when done (``with iot.memory() as m:``).

    :raises UsageError: no agent or no home can be found.
    """
    context = current()
    if context is not None and agent in (None, context.agent):
        return context.memory
    store = _open(home)
    try:
        if agent is None:
            agent = _agent_of_action(store)[0]
    except BaseException:
        store.close()
        raise
    return AgentMemory(lambda: store, agent, close=store.close)


def _open(home: str | None) -> Ledger:
    from sp.commands.home import Home

    root = home or os.environ.get("SP_HOME")
    if not root:
        raise UsageError("not inside sp: $SP_HOME is not set (pass home=)")
    return Home(root).open()


def _agent_of_action(store: Ledger) -> tuple[str, str]:
    action_id = os.environ.get("SP_ACTION_ID")
    if not action_id:
        raise UsageError("not inside a continuous action or an sp action: $SP_ACTION_ID is "
                         "not set")
    row = store.query_one("SELECT agent FROM actions WHERE action_id = ?", (action_id,))
    if row is None:
        raise UsageError(f"$SP_ACTION_ID {action_id!r}: no such action in {store.path}")
    if not row[0]:
        raise UsageError(f"action {action_id} belongs to no agent: it has no tasks to trigger")
    return str(row[0]), action_id


@contextmanager
def _outside() -> Iterator[tuple[Ledger, str, str]]:
    """The ledger, agent and action of the sp action this process runs in (opened per call,
    like :mod:`sp.runner.api`: actions call rarely)."""
    store = _open(None)
    try:
        agent, action_id = _agent_of_action(store)
        yield store, agent, action_id
    finally:
        store.close()


# -- sensors -----------------------------------------------------------------------------------


class Reading(dict[str, Any]):
    """A sensor line's ``key=value`` pairs, also as attributes (``reading.temperature``);
    numbers are converted. ``line`` is the line as read."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"the reading has no {key!r} (line: {self.get('line')!r})"
                                 ) from None


_PAIR = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*)\s*[=:]\s*([^\s,;]+)")


def parse_reading(line: str) -> Reading:
    """``"temperature=81.5 humidity=40%"`` -> ``Reading(temperature=81.5, humidity=40.0,
    line=...)``; values that are not numbers stay strings."""
    out = Reading(line=line)
    for key, raw in _PAIR.findall(line):
        text = raw.rstrip("%")
        try:
            out[key] = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
        except ValueError:
            out[key] = raw
    return out


def read_sensor(device: str, *, baud: int = 9600, timeout_s: float = 2.0) -> Reading:
    """Read one line from a serial device (pyserial) and parse it with :func:`parse_reading`.

    :raises UsageError: the device cannot be opened or sent no full line within the timeout.
    """
    import time

    import serial

    try:
        port = serial.serial_for_url(device, baudrate=baud, timeout=0.1)
    except (serial.SerialException, OSError, ValueError) as e:
        raise UsageError(f"read_sensor: cannot open {device}: {e}") from None
    deadline = time.monotonic() + timeout_s
    buf = b""
    try:
        while time.monotonic() < deadline:
            buf += port.read(port.in_waiting or 1)
            while b"\n" in buf:
                raw, _, buf = buf.partition(b"\n")
                line = raw.decode("utf-8", "replace").strip()
                if line:
                    return parse_reading(line)
    except (serial.SerialException, OSError) as e:
        raise UsageError(f"read_sensor: {device}: {e}") from None
    finally:
        port.close()
    raise UsageError(f"read_sensor: no line from {device} within {timeout_s:g}s")
