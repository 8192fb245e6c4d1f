"""Actions finished at known clock times, for the retention and archive tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sp.commands.actions import SubmitSpec, submit
from sp.ledger import events as ev
from sp.ledger.clock import ManualClock
from sp.ledger.store import EventStore

HOUR = 3_600_000
DAY = 24 * HOUR


def action(store: EventStore, state: str = "completed", *, agent: str | None = None,
           group: str | None = None, depends_on: list[str] | None = None,
           checkpoint: Any = None, action_type: str = "shell",
           payload: dict[str, Any] | None = None) -> str:
    """Submit one action and drive it to ``state`` now (the store's clock)."""
    (action_id,) = submit(store, [SubmitSpec(
        command=["true"], agent=agent, group=group, depends_on=depends_on or [],
        action_type=action_type, payload=payload or {})])
    if state == "queued":
        return action_id
    if state == "cancelled":
        store.append(action_id, [ev.ActionCancelled(reason="test")], 2)
        return action_id
    events: list[ev.Event] = [ev.ActionStarted(attempt=1, owner="test", pid=1)]
    if checkpoint is not None:
        events.append(ev.ActionCheckpointed(data=checkpoint))
    ends: dict[str, ev.Event] = {
        "completed": ev.ActionCompleted(),
        "failed": ev.ActionFailed(error="boom", exit_code=1),
        "skipped": ev.ActionSkipped(error="boom", exit_code=1),
        "executing": ev.ActionProgressed(percent=50.0),
    }
    events.append(ends[state])
    store.append(action_id, events, 2)
    return action_id


def files_of(home: Path, action_id: str, *, log: bool = True, tmp: bool = True) -> list[Path]:
    """Give the action a log and a temporary folder with something in them."""
    made = []
    if log:
        p = home / "logs" / f"{action_id}.log"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"output of {action_id}\n")
        made.append(p)
    if tmp:
        d = home / "tmp" / action_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "scratch.bin").write_bytes(b"x" * 1000)
        made.append(d)
    return made


def set_mtime(path: Path, ms: int) -> None:
    os.utime(path, ns=(ms * 1_000_000, ms * 1_000_000), follow_symlinks=False)


def blob(home: Path, sha: str, at_ms: int, data: bytes = b"before") -> Path:
    p = home / "blobs" / sha
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    set_mtime(p, at_ms)
    return p


def advance(clock: ManualClock, ms: int) -> None:
    clock.advance(ms)
