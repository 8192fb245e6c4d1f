"""Helpers for the trigger tests: an applied agent, a source running in a thread, polling."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sp.agents.trigger_file import TriggerFile, decode_triggers
from sp.commands import agents
from sp.commands.home import Home
from sp.ledger.clock import Clock, SystemClock
from sp.ledger.store import EventStore
from sp.triggers.sources import Source, SourceContext
from tests.waiting import wait_until

AGENT = """\
id: watcher
actions:
  process_new_file:
    command: [sh, -c, 'echo "got $SP_TRIGGER_PATH"']
  handle_webhook:
    command: [sh, -c, 'echo "hook $SP_PAYLOAD"']
"""


def apply_agent(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "watcher.yaml"
    path.write_text(AGENT)
    agents.apply(store, path)


def doc_of(raw: dict[str, Any]) -> TriggerFile:
    return decode_triggers({"agent": "watcher", **raw}, "test")


def event_count(store: EventStore) -> int:
    row = store.query_one("SELECT count(*) FROM events")
    assert row is not None
    return int(row[0])


def fired(store: EventStore) -> list[tuple[str, str, str]]:
    """(trigger, action_id, detail) of every fire, oldest first."""
    return [(r[0], r[1], r[2]) for r in store.query(
        "SELECT trigger, action_id, detail FROM trigger_fires ORDER BY seq")]


def payload_of(store: EventStore, action_id: str) -> dict[str, Any]:
    import json

    row = store.query_one(
        "SELECT data FROM events WHERE stream = ? AND type = 'action.submitted'", (action_id,))
    assert row is not None
    value: dict[str, Any] = json.loads(row[0])["payload"]
    return value


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, every: float = 0.02,
             what: str = "") -> Any:
    """``wait_until`` under its old name: the timeout bounds a broken run only, so it is
    generous enough for a loaded machine (a passing run returns as soon as it holds)."""
    return wait_until(predicate, timeout, what, every)


def context(home: Home, doc: TriggerFile, source: str | None = None) -> SourceContext:
    return SourceContext(home, doc, SystemClock(), source=source)


class Running:
    def __init__(self, thread: threading.Thread, stop: threading.Event,
                 errors: list[BaseException], logs: list[str]) -> None:
        self.thread = thread
        self.stop = stop
        self.errors = errors
        self.logs = logs


@contextmanager
def running(source: Source, home: Home, doc: TriggerFile, source_file: str | None = None,
            clock: Clock | None = None) -> Iterator[Running]:
    """Run a source in a thread of its own (on a real clock unless given one, e.g. a manual
    clock that lets a debounce window pass only when the test says); stop it and re-raise its
    error."""
    logs: list[str] = []
    ctx = SourceContext(home, doc, clock or SystemClock(), logs.append, source=source_file)
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            source.run(ctx, stop)
        except BaseException as e:
            errors.append(e)
        finally:
            ctx.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield Running(thread, stop, errors, logs)
    finally:
        stop.set()
        thread.join(3)
        assert not thread.is_alive(), "the source did not stop within 3 s"
    if errors:
        raise errors[0]
