"""The seam between the daemon and the things it watches.

A :class:`Source` runs in a thread of its own until ``stop`` is set; when it sees something worth
an action it calls ``ctx.fire(...)``. Each source module offers ``build(doc, ctx) -> list[Source]``
and is named in :data:`BUILDERS`, so the daemon knows nothing of inotify, HTTP or serial ports.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any, Protocol

from sp.agents.trigger_file import TriggerFile, split_action
from sp.commands.fire import fire
from sp.commands.home import Home
from sp.ledger.clock import Clock, SystemClock
from sp.ledger.interface import Ledger


class SourceContext:
    """What a source may use: its own ledger connection, the clock, fire() and a log line."""

    def __init__(self, home: Home, doc: TriggerFile, clock: Clock | None = None,
                 log: Callable[[str], None] | None = None, source: str | None = None) -> None:
        self.home = home
        self.doc = doc
        self.source = source  # the trigger file's path: relative paths in it start there
        self.clock: Clock = clock or SystemClock()
        self._log = log or (lambda _msg: None)
        self._local = threading.local()

    def store(self) -> Ledger:
        """This thread's ledger connection (SQLite connections are not shared across threads)."""
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = self.home.open(clock=self.clock)
        return store  # type: ignore[no-any-return]

    def fire(self, trigger: str, kind: str, action: str, payload: dict[str, Any], *,
             detail: str = "", key: str | None = None) -> str | None:
        agent, task = split_action(self.doc.agent, action)
        return fire(self.store(), trigger, kind, agent, task, payload, detail=detail, key=key)

    def log(self, message: str) -> None:
        self._log(message)

    def close(self) -> None:
        store = getattr(self._local, "store", None)
        if store is not None:
            store.close()
            self._local.store = None


class Source(Protocol):
    name: str

    def run(self, ctx: SourceContext, stop: threading.Event) -> None:
        """Watch until ``stop`` is set; must return promptly after it is (poll it, or use
        timeouts of at most about a second)."""
        ...


# kind -> "module:function" building the sources of that kind from the trigger file
BUILDERS: dict[str, str] = {
    "filesystem": "sp.triggers.filesystem:build",
    "webhook": "sp.triggers.webhook:build",
    "serial": "sp.triggers.serial_port:build",
    "conditions": "sp.triggers.conditions:build",
    "continuous": "sp.triggers.continuous:build",
    "load": "sp.triggers.load_source:build",
}


def build_all(doc: TriggerFile, ctx: SourceContext,
              kinds: list[str] | None = None) -> list[Source]:
    """Every source the file asks for (a kind whose module is missing is skipped with a log)."""
    sources: list[Source] = []
    for kind, target in BUILDERS.items():
        if kinds is not None and kind not in kinds:
            continue
        module_name, _, func = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            ctx.log(f"daemon: no {kind} support in this build")
            continue
        sources.extend(getattr(module, func)(doc, ctx))
    return sources
