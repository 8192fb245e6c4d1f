"""Domain errors. Every error a person may see subclasses :class:`SpError`."""

from __future__ import annotations


class SpError(Exception):
    """Base of every error shown to a person as one line. ``exit_code`` follows cli/main.py."""

    exit_code = 1


class UsageError(SpError):
    """Bad input: a malformed option, file or value. Nothing was written."""

    exit_code = 2


class LedgerError(SpError):
    exit_code = 1


class ConcurrencyError(LedgerError):
    """Another writer appended to the stream first; ``expected`` is stale."""

    exit_code = 75

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream}: expected version {expected}, but it is at {actual} "
            "(another writer got there first)"
        )
        self.stream, self.expected, self.actual = stream, expected, actual


class LedgerBusyError(LedgerError):
    exit_code = 75

    def __init__(self, path: str, waited_s: float) -> None:
        super().__init__(f"ledger {path} stayed locked for {waited_s:.0f}s; try again")


class CorruptEventError(LedgerError):
    """A stored row does not decode into a known event."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"event seq {seq} does not decode: {reason}")
        self.seq = seq


class SchemaTooNewError(LedgerError):
    def __init__(self, path: str, found: int, known: int) -> None:
        super().__init__(
            f"ledger {path} has schema version {found}, this sp knows up to {known}; upgrade sp"
        )


class ReadOnlyQueryError(UsageError):
    """A query given to ``sp sql`` tried to change something, or is not valid SQL."""


class ActionNotFoundError(SpError):
    exit_code = 3

    def __init__(self, action_id: str) -> None:
        super().__init__(f"no action {action_id!r}")
        self.action_id = action_id


class AmbiguousActionError(UsageError):
    def __init__(self, prefix: str, matches: list[str]) -> None:
        shown = ", ".join(matches[:5])
        super().__init__(f"action id prefix {prefix!r} matches several actions: {shown}")


class InvalidTransitionError(SpError):
    """The lifecycle machine refuses ``trigger`` in ``state``. Nothing was appended."""

    exit_code = 4

    def __init__(self, action_id: str, state: str, trigger: str) -> None:
        super().__init__(f"action {action_id} is {state}: cannot {trigger} it")
        self.action_id, self.state, self.trigger = action_id, state, trigger


class WaitTimeoutError(SpError):
    """``sp wait --timeout`` ran out before the actions finished."""

    exit_code = 75

    def __init__(self, pending: list[str], timeout_s: float) -> None:
        super().__init__(
            f"still running after {timeout_s:g}s: {', '.join(pending[:5])}"
            + (" ..." if len(pending) > 5 else "")
        )
