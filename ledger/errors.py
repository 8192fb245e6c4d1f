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


class LedgerDamagedError(LedgerError):
    """The ledger file is corrupt (SQLite said so, or a row is not what sp wrote): not a
    transient condition, so never exit 75 (automation would retry for ever)."""

    def __init__(self, path: str, what: str, seq: int | None = None) -> None:
        where = f"event seq {seq}: " if seq is not None else ""
        super().__init__(f"ledger {path} is damaged: {where}{what}; run sp verify")
        self.path, self.what, self.seq = path, what, seq


class LedgerWipedError(LedgerError):
    """The home remembers a ledger (``ledger.id``) that is gone, empty or another one."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(
            f"ledger {path} {what}; restore it from a backup, or run sp init --force to "
            "start a new one (recorded)"
        )
        self.path = path


class DiskFullError(SpError):
    """No space (or quota) left where sp writes: the ledger, a log, a blob."""

    exit_code = 1

    def __init__(self, where: str) -> None:
        super().__init__(f"disk full: no space left for {where}; free some space and rerun")
        self.where = where


# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 10, 11, 13, 26
_NO_SPACE_ERRNOS = (28, 122)  # ENOSPC, EDQUOT on Linux
# Below this much free space, an I/O error of SQLite's is taken for a full disk.
LOW_SPACE_BYTES = 1 << 20


def translate(exc: BaseException, path: str) -> SpError | None:
    """The domain error for a driver or OS error that is not a bug in sp: a damaged ledger
    (SQLITE_CORRUPT, SQLITE_NOTADB, text that is not UTF-8) or a full disk (SQLITE_FULL,
    ENOSPC, EDQUOT). ``None`` for anything else. ``path`` names the ledger.

    Duck-typed on the exception (``sqlite_errorcode``, ``errno``) so that the CLI can ask
    without importing sqlite3.
    """
    if isinstance(exc, SpError):
        return exc
    if isinstance(exc, OSError):
        if exc.errno in _NO_SPACE_ERRNOS:
            return DiskFullError(exc.filename or path)
        return None
    if type(exc).__module__ != "sqlite3":
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == _SQLITE_FULL or (primary == _SQLITE_IOERR and _no_space_at(path)):
        # SQLite says SQLITE_FULL for a database write, but "disk I/O error" when the space
        # runs out under its shared-memory file or a journal: free space tells them apart.
        return DiskFullError(path)
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return LedgerDamagedError(path, str(exc))
    if "Could not decode to UTF-8" in str(exc):
        # Raised by Python's driver, not SQLite (no error code): a text column holds bytes
        # sp never wrote. The caller that knows the row names its seq.
        return LedgerDamagedError(path, "a row holds text that is not valid UTF-8")
    return None


class LedgerTamperedError(LedgerError):
    """``sp replay`` refused to rebuild from (and append to) a log that ``sp verify`` flags."""

    def __init__(self, path: str, seq: int | None, reason: str) -> None:
        where = f"at seq {seq}" if seq is not None else "at its end"
        super().__init__(f"ledger {path} fails sp verify {where}: {reason}; nothing was changed "
                         "(sp replay --force rebuilds from it anyway)")
        self.seq, self.reason = seq, reason


def _no_space_at(path: str) -> bool:
    import os

    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < LOW_SPACE_BYTES
