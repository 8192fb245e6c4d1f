"""The home's memory of its ledger: ``<home>/ledger.id``.

A ledger truncated to 0 bytes, deleted, or swapped for another file would otherwise be
re-created empty on the next command, and ``sp verify`` would say ``ok: 0 events``: the record
gone without a trace. So the ledger carries an id (``meta.ledger_id``, written in the
transaction that creates it) and the home keeps a copy beside it, written and fsynced before
the first command returns. Every open compares the two (one stat, one small read, and the id
read with the query the open makes anyway); a mismatch is refused until the user restores the
ledger or runs ``sp init --force``, which records the re-initialisation in the new ledger.

The marker also keeps the head that the last clean ``sp verify`` saw. It is not rewritten per
append (that would cost an fsync per transaction); ``sp verify`` checks that the row it saw is
still there with the same hash, which catches an older copy restored over a newer ledger.

The home is out of every sandboxed action's reach (security/sandbox), so the marker is too.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from sp.ledger import side
from sp.ledger.errors import LedgerWipedError
from sp.ledger.interface import Ledger
from sp.ledger.store import EventStore

if TYPE_CHECKING:
    from sp.commands.home import Home
    from sp.ledger.verify import VerifyResult

MARKER = "ledger.id"


class VerifiedHead(msgspec.Struct, frozen=True):
    seq: int
    hash: str
    at_ms: int


class Marker(msgspec.Struct, frozen=True):
    ledger_id: str
    created_ms: int
    verified: VerifiedHead | None = None


def marker_path(root: Path) -> Path:
    return root / MARKER


def read_marker(root: Path) -> Marker | None:
    """The home's marker, or None when the home has none (new, or made by an older sp).

    :raises LedgerWipedError: the marker exists but is unreadable (damaged: refuse rather
        than guess).
    """
    path = marker_path(root)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LedgerWipedError(str(root / "ledger.db"),
                               f"cannot be checked: {path}: {e.strerror}") from None
    try:
        return msgspec.json.decode(data, type=Marker)
    except msgspec.DecodeError as e:
        raise LedgerWipedError(str(root / "ledger.db"),
                               f"cannot be checked: {path} is damaged ({e})") from None


def write_marker(root: Path, marker: Marker) -> None:
    """Replace the marker atomically and durably (temp file, fsync, rename, fsync the dir)."""
    path = marker_path(root)
    tmp = path.with_name(f".{MARKER}.{os.getpid()}.{time.monotonic_ns()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, msgspec.json.encode(marker) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def refuse_if_gone(ledger: Path, marker: Marker) -> None:
    """Before opening: a home that had a ledger must still have one (opening would create it).

    :raises LedgerWipedError: the file is missing or empty.
    """
    try:
        size = ledger.stat().st_size
    except FileNotFoundError:
        raise LedgerWipedError(str(ledger), f"is missing (this home's ledger is "
                               f"{marker.ledger_id})") from None
    if size == 0:
        raise LedgerWipedError(str(ledger), f"is empty, 0 bytes (this home's ledger is "
                               f"{marker.ledger_id})")


def new_ledger_refused(root: Path, ledger: Path) -> str | None:
    """Why a ledger about to be created in a home with no marker (made by an older sp) would
    hide a lost one: its logs/ remembers actions. None when creating it is fine."""
    try:
        if ledger.stat().st_size > 0:
            return None
    except FileNotFoundError:
        pass
    try:
        logs = sum(1 for _ in (root / "logs").glob("*.log"))
    except OSError:
        return None
    return f"is empty but {root / 'logs'} holds {logs} action logs" if logs else None


def settle(store: Ledger, root: Path, known: Marker | None, found: str | None) -> None:
    """After opening: the ledger's id (``found``) must be the home's (``known``). A new ledger
    gets its id and the home its marker; a home from an older sp adopts its ledger.

    :raises LedgerWipedError: the ledger is another one, or has no id while the home
        expects one.
    """
    if known is not None:
        if found == known.ledger_id:
            return
        what = f"carries id {found}" if found else "carries no id"
        raise LedgerWipedError(store.path, f"is not this home's ledger: it {what}, the home's "
                               f"is {known.ledger_id}")
    if found is None:
        found = _give_id(store)
    write_marker(root, Marker(found, store.clock.now_ms()))


def _give_id(store: Ledger) -> str:
    """Write the ledger's id once: concurrent first uses of a home agree on the first one."""
    import uuid  # only when a ledger is created: a cron run need not load it

    with store.transaction() as tx:
        return side.meta_once(tx, "ledger_id", uuid.uuid4().hex)


def stale_head(store: Ledger, marker: Marker | None) -> tuple[int, str] | None:
    """Whether the head a clean ``sp verify`` saw before is still in the ledger, unchanged:
    ``(seq, why)`` when not. A row gone from the tail, or rewritten, means an older copy."""
    if marker is None or marker.verified is None:
        return None
    seen = marker.verified
    row = store.query_one("SELECT hash FROM events WHERE seq = ?", (seen.seq,))
    if row is not None:
        if row[0] == seen.hash:
            return None
        return seen.seq, ("differs from the row a clean sp verify saw there (the ledger was "
                          "rewritten, or is an older copy)")
    head, _ = store.head()
    if head >= seen.seq:  # moved out by sp archive: verify accounts for archived seqs
        return None
    return seen.seq, (f"gone: the ledger ends at seq {head}, a clean sp verify saw up to "
                      f"seq {seen.seq} (an older copy, or events lost at the tail; restored a "
                      "backup on purpose? sp init --force accepts it)")


# EventStore, not Ledger: sp.ledger.verify checks the SQLite file itself (raw hash-chain rows,
# PRAGMA checks), which is not part of the Protocol.
def verify_home(home: Home, store: EventStore, archives: Sequence[str | Path] = (),
                full: bool = False) -> VerifyResult:
    """``sp verify``: the chain and SQLite's check (:func:`sp.ledger.verify.verify`), and the
    head the last clean verify saw; a clean result's head is remembered for the next one.

    :raises UsageError: a file in ``archives`` is missing or not an archive of this ledger.
    """
    from sp.ledger.verify import verify

    result = verify(store, archives, full=full)
    known = read_marker(home.root)
    stale = stale_head(store, known)
    if stale is not None and not result.reason:
        return msgspec.structs.replace(result, ok=False, bad_seq=stale[0], reason=stale[1])
    if result.ok:
        remember_head(home.root, known, *store.head(), store.clock.now_ms())
    return result


def remember_head(root: Path, marker: Marker | None, seq: int, hash_: str,
                  now_ms: int) -> None:
    """Keep the head a clean ``sp verify`` saw (one fsync per verify, none per append)."""
    if marker is None or seq == 0:
        return
    write_marker(root, msgspec.structs.replace(marker, verified=VerifiedHead(seq, hash_, now_ms)))


def reinitialise(home: Home) -> str:
    """``sp init --force``: start a new ledger where the home's is gone, empty, damaged or
    another one. The old files are moved aside (never deleted: they are evidence), and the new
    ledger's first event, ``ledger.reinitialised``, says what was found. On an intact home it
    only forgets the head the last ``sp verify`` saw (accepting an older copy restored on
    purpose). Returns what was done, for the user.

    :raises UsageError: the old files cannot be moved aside.
    """
    from sp.ledger import events as ev
    from sp.ledger.errors import LedgerDamagedError, UsageError

    try:
        known = read_marker(home.root)
    except LedgerWipedError:
        known = None  # a damaged marker: replaced below
    try:
        home.open().close()
    except (LedgerWipedError, LedgerDamagedError) as e:
        found = str(e)
    else:
        if known is not None and known.verified is not None:
            write_marker(home.root, msgspec.structs.replace(known, verified=None))
            return f"ledger {home.ledger_path} is intact; the head sp verify saw is forgotten"
        return f"ledger {home.ledger_path} is intact; nothing to do"
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved: list[str] = []
    try:
        for suffix in ("", "-wal", "-shm"):
            old = Path(f"{home.ledger_path}{suffix}")
            if old.exists():
                target = old.with_name(f"{old.name}.replaced-{stamp}")
                os.replace(old, target)
                moved.append(str(target))
        with contextlib.suppress(FileNotFoundError):
            marker_path(home.root).unlink()
    except OSError as e:
        raise UsageError(f"cannot move the old ledger aside: {e}") from None
    with home.open(fresh=True) as store:
        seen = known.verified if known is not None else None
        store.append("ledger", [ev.LedgerReinitialised(
            previous_id=known.ledger_id if known is not None else "", found=found,
            moved_to=moved, previous_verified_seq=seen.seq if seen else 0,
            previous_verified_hash=seen.hash if seen else "")], None)
    kept = f"; old files kept as {', '.join(moved)}" if moved else ""
    return f"started a new ledger at {home.ledger_path} (recorded as ledger.reinitialised){kept}"
