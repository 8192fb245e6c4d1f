"""Filesystem triggers (inotify, through pyinotify): a file event in a watched directory
becomes an action whose payload names the file.

```yaml
triggers:
  filesystem:
    - path: /data/incoming          # a directory (or one file); relative to the trigger file
      events: [create, close_write] # create, modify, delete, close_write, moved_to
      glob: "*.csv"                 # on the file's name
      recursive: true               # subdirectories too, new ones included
      debounce: 2s                  # a burst on one file fires once, after 2 s of quiet
      action: process_new_file
```

Events on directories themselves are not reported. A burst of events on one file fires once,
when the file has been quiet for the debounce window (and at most ten windows after the
burst's first event, so that a file written to for ever still fires). The action's payload is
``{"path", "event" (the burst's last), "events" (each kind once, in order), "trigger"}``.
"""

from __future__ import annotations

import fnmatch
import os
import threading
import warnings
from pathlib import Path
from typing import Any, NamedTuple

from sp.agents import trigger_names
from sp.agents.trigger_file import FileTrigger, TriggerFile
from sp.ledger.clock import Clock
from sp.ledger.errors import SpError
from sp.triggers.sources import Source, SourceContext

with warnings.catch_warnings():
    # pyinotify imports asyncore, deprecated in 3.11 and replaced by the pyasyncore shim
    # (declared in pyproject.toml) from 3.12 on.
    warnings.simplefilter("ignore", DeprecationWarning)
    import pyinotify  # type: ignore[import-untyped]

POLL_MS = 200  # how long one wait for events may take: ``stop`` is honoured within this
MAX_WAIT_WINDOWS = 10

MASKS: dict[str, int] = {
    "create": pyinotify.IN_CREATE,
    "modify": pyinotify.IN_MODIFY,
    "delete": pyinotify.IN_DELETE,
    "close_write": pyinotify.IN_CLOSE_WRITE,
    "moved_to": pyinotify.IN_MOVED_TO,
}
_LOST = pyinotify.IN_DELETE_SELF | pyinotify.IN_MOVE_SELF


class Burst(NamedTuple):
    """The events one key saw between its first event and its quiet period."""

    key: str
    events: list[str]  # each kind once, in the order first seen
    last: str  # the latest event
    n: int  # how many events
    first_ms: int
    last_ms: int


class Debouncer:
    """Coalesces bursts of events per key (a file), by an injected clock's monotonic time.

    A key is due once no event came for ``window_ms``, or ``max_wait_ms`` after its first
    event, whichever is first. With a zero window every event is due at once, alone.
    """

    def __init__(self, window_ms: int, clock: Clock, max_wait_ms: int | None = None) -> None:
        self.window_ms = max(0, window_ms)
        self.max_wait_ms = (self.window_ms * MAX_WAIT_WINDOWS if max_wait_ms is None
                            else max_wait_ms)
        self.clock = clock
        self._pending: dict[str, Burst] = {}
        self._ready: list[Burst] = []

    def add(self, key: str, event: str) -> None:
        now = self.clock.monotonic_ms()
        if self.window_ms == 0:
            self._ready.append(Burst(key, [event], event, 1, now, now))
            return
        b = self._pending.get(key)
        if b is None:
            self._pending[key] = Burst(key, [event], event, 1, now, now)
        else:
            events = b.events if event in b.events else [*b.events, event]
            self._pending[key] = Burst(key, events, event, b.n + 1, b.first_ms, now)

    def _deadline(self, b: Burst) -> int:
        return min(b.last_ms + self.window_ms, b.first_ms + self.max_wait_ms)

    def due(self) -> list[Burst]:
        """The bursts whose time has come, oldest first; each is returned once."""
        now = self.clock.monotonic_ms()
        out, self._ready = self._ready, []
        for key, b in list(self._pending.items()):
            if self._deadline(b) <= now:
                out.append(b)
                del self._pending[key]
        out.sort(key=lambda b: b.first_ms)
        return out

    def pending(self) -> list[Burst]:
        """The bursts still waiting for their quiet period, oldest first (a copy: safe to call
        from another thread, for status and tests)."""
        return sorted(list(self._pending.values()), key=lambda b: b.first_ms)

    def flush(self) -> list[Burst]:
        """Every pending burst, due or not (at shutdown: what was seen still fires)."""
        out = [*self._ready, *sorted(self._pending.values(), key=lambda b: b.first_ms)]
        self._ready, self._pending = [], {}
        return out

    def next_in_ms(self) -> int | None:
        """How long until the next burst is due (0: now), or None when nothing waits."""
        if self._ready:
            return 0
        if not self._pending:
            return None
        now = self.clock.monotonic_ms()
        return max(0, min(self._deadline(b) for b in self._pending.values()) - now)


class WatchLostError(SpError):
    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: the watched path went away")


class FileSource:
    """Watches one path for one filesystem trigger."""

    def __init__(self, trigger: FileTrigger, root: Path) -> None:
        self.trigger = trigger
        self.root = root
        self.name = trigger_names.filesystem(trigger)
        self.wanted = 0
        for event in trigger.events:
            self.wanted |= MASKS[event]
        self.watching = threading.Event()  # set once the watch is in place (for tests)
        self._debouncer: Debouncer | None = None
        self._lost = False
        self._overflowed = False

    def pending(self) -> list[Burst]:
        """What the running source has seen and not fired yet (see ``Debouncer.pending``)."""
        return [] if self._debouncer is None else self._debouncer.pending()

    def matches(self, path: str) -> bool:
        return fnmatch.fnmatchcase(os.path.basename(path), self.trigger.glob)

    def _on_event(self, event: Any) -> None:
        mask = int(event.mask)
        if mask & _LOST and os.path.normpath(event.path) == os.path.normpath(self.root):
            self._lost = True
            return
        if mask & pyinotify.IN_Q_OVERFLOW:
            self._overflowed = True
            return
        if event.dir or not mask & self.wanted:
            return
        path = str(event.pathname)
        if not self.matches(path):
            return
        kind = next(k for k, m in MASKS.items() if mask & m)
        assert self._debouncer is not None
        self._debouncer.add(path, kind)

    def run(self, ctx: SourceContext, stop: threading.Event) -> None:
        debouncer = self._debouncer = Debouncer(int(self.trigger.debounce), ctx.clock)
        self._lost = self._overflowed = False
        wm = pyinotify.WatchManager()
        notifier = pyinotify.Notifier(wm, self._on_event, timeout=POLL_MS)
        mask = self.wanted | _LOST
        if self.trigger.recursive:
            mask |= pyinotify.IN_CREATE  # pyinotify's auto_add needs it for new directories
        try:
            try:
                wm.add_watch(str(self.root), mask, rec=self.trigger.recursive,
                             auto_add=self.trigger.recursive, quiet=False)
            except pyinotify.WatchManagerError as e:
                reason = "no such file or directory" if not self.root.exists() else str(e)
                raise SpError(f"cannot watch {self.root}: {reason}") from None
            self.watching.set()
            while not stop.is_set():
                wait = debouncer.next_in_ms()
                if notifier.check_events(timeout=POLL_MS if wait is None
                                         else min(POLL_MS, wait)):
                    notifier.read_events()
                    notifier.process_events()
                if self._overflowed:
                    self._overflowed = False
                    ctx.log(f"{self.name}: the kernel's event queue overflowed; "
                            "some events were lost")
                for burst in debouncer.due():
                    self._fire(ctx, burst)
                if self._lost:
                    raise WatchLostError(str(self.root))
            for burst in debouncer.flush():
                self._fire(ctx, burst)
        finally:
            self.watching.clear()
            notifier.stop()

    def _fire(self, ctx: SourceContext, burst: Burst) -> None:
        payload = {"path": burst.key, "event": burst.last, "events": burst.events,
                   "trigger": self.name}
        detail = f"{burst.last} {burst.key}"
        if burst.n > 1:
            detail += f" ({burst.n} events: {', '.join(burst.events)})"
        try:
            action_id = ctx.fire(self.name, trigger_names.FILESYSTEM, self.trigger.action, payload,
                                 detail=detail)
        except SpError as e:
            ctx.log(f"{self.name}: {burst.key}: not fired: {e}")
            return
        ctx.log(f"{self.name}: {burst.last} {burst.key} -> action {action_id}")


def build(doc: TriggerFile, ctx: SourceContext) -> list[Source]:
    """One source per filesystem trigger; relative paths are read from the trigger file's
    directory (``ctx.source``; else the working directory)."""
    sources: list[Source] = []
    for t in doc.triggers.filesystem:
        root = Path(t.path).expanduser()
        if not root.is_absolute() and ctx.source:
            root = Path(ctx.source).parent / root
        sources.append(FileSource(t, root.absolute()))
    return sources
