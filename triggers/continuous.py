"""Continuous actions: something done every ``interval`` while the daemon runs (the seed's
``@continuous_action(interval="5s")``), timed by the ``schedule`` package.

```yaml
agent: iot-001
continuous:
  health:                       # submit the agent's task each interval
    interval: 30s
    action: health_check
  monitor_temperature_sensor:   # call a Python function in-process each interval
    python: sensors:monitor_temperature_sensor     # module:function, or path/file.py:function
    interval: 5s                # optional: the @continuous_action decorator's otherwise
    settings: {threshold: 80}   # context.threshold
```

* ``action:`` fires the task (``trigger.fired``, kind ``continuous``, stream
  ``trigger:<name>``) with payload ``{"continuous": name, "run": n}``. While the
  previous run has not finished (queued, running, retrying) the interval is skipped — a slow
  task does not pile up a queue — and the skip is logged once per streak (not recorded: it
  would be an event every few seconds).
* ``python:`` calls ``function(context)`` (:class:`sp.runner.iot.ContinuousContext`) in the source's
  thread; a run that raises is logged and the next one goes ahead. Runs never overlap: the next
  run is timed from the end of the previous one.

Each entry runs in a thread of its own, so a slow function delays only itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sp.agents import trigger_names
from sp.agents.trigger_file import PYTHON_TARGET, Continuous, TriggerFile, split_action
from sp.ledger.errors import UsageError
from sp.machines.states import FINAL, ActionState
from sp.triggers.sources import Source, SourceContext


def load_python(target: str, where: str = "python", base: Path | None = None
                ) -> Callable[..., Any]:
    """Import ``module:function`` (or ``path/file.py:function``). ``base`` is the trigger
    file's folder: a relative file path starts there, and modules are also looked for there.

    :raises UsageError: the module or the function cannot be found, or it is not callable.
    """
    m = PYTHON_TARGET.fullmatch(target)
    if m is None:
        raise UsageError(f"{where}: expected module:function, got {target!r}")
    module_name, func = m["module"], m["func"]
    try:
        if module_name.endswith(".py"):
            path = (base / module_name if base else Path(module_name)).resolve()
            name = f"sp_continuous_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None or not path.is_file():
                raise UsageError(f"{where}: no such file {module_name}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            if base is not None and str(base) not in sys.path:
                sys.path.insert(0, str(base))
            module = importlib.import_module(module_name)
    except UsageError:
        raise
    except Exception as e:  # the user's module failed to import: say why, in one line
        raise UsageError(f"{where}: cannot import {module_name}: {type(e).__name__}: {e}"
                         ) from None
    found: Any = module
    for part in func.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise UsageError(f"{where}: {module_name} has no {func}")
    if not callable(found):
        raise UsageError(f"{where}: {target} is not a function")
    return found  # type: ignore[no-any-return]


class ContinuousSource:
    """One continuous entry: a ``schedule.Scheduler`` of its own, run in the source's
    thread."""

    def __init__(self, entry_name: str, entry: Continuous, agent: str | None, interval_ms: int,
                 function: Callable[..., Any] | None = None) -> None:
        self.entry_name = entry_name
        self.name = entry_name  # agents.trigger_names: a continuous entry's name is its key
        self.entry = entry
        self.agent = agent
        self.interval_ms = interval_ms
        self.function = function
        self.runs = 0
        self.failures = 0
        self.skipped = 0
        self.context: Any = None
        self._last_action: str | None = None
        self._complaint: str | None = None

    # -- one run -----------------------------------------------------------------------------
    def run_once(self, ctx: SourceContext) -> None:
        """Do what one interval asks; errors are logged (once while they repeat), not raised."""
        self.runs += 1
        try:
            if self.function is not None:
                self._call(ctx)
            else:
                self._submit(ctx)
        except Exception as e:
            self.failures += 1
            self._complain(ctx, f"run {self.runs} failed: {type(e).__name__}: {e}")
        else:
            self._complaint = None

    def _complain(self, ctx: SourceContext, message: str) -> None:
        if message.split(":", 1)[-1] != (self._complaint or "").split(":", 1)[-1]:
            ctx.log(f"{self.name}: {message}")
        self._complaint = message

    def _submit(self, ctx: SourceContext) -> None:
        assert self.entry.action is not None
        if self._last_action is not None:
            row = ctx.store().query_one("SELECT state FROM actions WHERE action_id = ?",
                                        (self._last_action,))
            if row is not None and ActionState(row[0]) not in FINAL:
                self.skipped += 1
                self._complain(ctx, f"skipped: the previous run {self._last_action} has not "
                                    "finished")
                return
        self._last_action = ctx.fire(self.name, trigger_names.CONTINUOUS, self.entry.action,
                                     {"continuous": self.entry_name, "run": self.runs},
                                     detail=f"every {self.interval_ms} ms")

    def _call(self, ctx: SourceContext) -> None:
        from sp.runner import iot

        if self.context is None:
            assert self.agent is not None
            agent = self.agent

            def fire(task: str, payload: dict[str, Any], detail: str) -> str | None:
                agent_of, task_of = split_action(agent, task)
                from sp.commands.fire import fire as fire_task

                return fire_task(ctx.store(), self.name, trigger_names.CONTINUOUS, agent_of,
                                 task_of, payload, detail=detail)

            self.context = iot.ContinuousContext(
                self.entry_name, agent, ctx.store, fire, settings=self.entry.settings,
                source=f"continuous:{self.name}", log=ctx.log)
        self.context.run = self.runs
        assert self.function is not None
        with iot.using(self.context):
            self.function(self.context)

    # -- the thread --------------------------------------------------------------------------
    def run(self, ctx: SourceContext, stop: threading.Event) -> None:
        import schedule

        scheduler = schedule.Scheduler()
        job = scheduler.every()
        # schedule's annotations say int, but its timedelta maths takes fractions of seconds
        job.interval = self.interval_ms / 1000  # type: ignore[assignment]
        job.seconds.do(self.run_once, ctx)
        while not stop.is_set():
            scheduler.run_pending()
            idle = scheduler.idle_seconds
            stop.wait(0.5 if idle is None else min(0.5, max(0.005, idle)))


def build(doc: TriggerFile, ctx: SourceContext) -> list[Source]:
    """:raises UsageError: a ``python:`` function cannot be imported, or has no interval."""
    from sp.runner.iot import interval_of

    sources: list[Source] = []
    base = Path(ctx.source).resolve().parent if ctx.source else None
    for name, entry in doc.continuous.items():
        where = f"$.continuous.{name}"
        function = None
        interval: int | None = entry.interval
        if entry.python is not None:
            function = load_python(entry.python, f"{where}.python", base)
            interval = interval if interval is not None else interval_of(function)
        if interval is None:
            raise UsageError(f"{where}.interval: required (or decorate the function with "
                             "@continuous_action(interval=...))")
        sources.append(ContinuousSource(name, entry, doc.agent, int(interval), function))
    return sources
