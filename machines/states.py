"""Action states, importable without loading the ``transitions`` machinery (fast CLI start)."""

from __future__ import annotations

from enum import Enum


class ActionState(Enum):
    PENDING = "pending"
    VALIDATING = "validating"
    QUEUED = "queued"
    EXECUTING = "executing"
    RETRYING = "retrying"
    INTERRUPTED = "interrupted"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


S = ActionState

# Waiting to run: the states the queue projection holds (an interrupted action unless held).
WAITING = frozenset({S.QUEUED, S.RETRYING, S.INTERRUPTED})
# Finished: nothing more happens unless a person restarts or rolls back.
FINAL = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.SKIPPED, S.ROLLED_BACK,
                   S.ROLLBACK_FAILED})
# Done in a way that lets dependents go ahead.
SATISFIED = frozenset({S.COMPLETED, S.SKIPPED})
ACTIVE = frozenset(set(S) - FINAL)
