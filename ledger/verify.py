"""Walk the hash chain and prove nothing was edited, deleted or reordered."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import msgspec

from sp.ledger import codec
from sp.ledger.archive_verify import Bad, Gaps
from sp.ledger.errors import CorruptEventError, LedgerDamagedError, LedgerTamperedError
from sp.ledger.integrity import sqlite_damage
from sp.ledger.store import EventStore, Row


class VerifyResult(msgspec.Struct, frozen=True):
    ok: bool
    events: int
    head: str
    bad_seq: int | None = None
    reason: str = ""
    # Rows ``sp archive`` moved out (accounted for by ledger.archived), how many of them were
    # re-checked from their archive file, and the recorded archives that could not be read.
    archived: int = 0
    archive_checked: int = 0
    unreachable: list[str] = []
    # SQLite's own check of the file (``quick_check``, or ``integrity_check`` with --full):
    # one finding per damaged table or index, empty when it says ok.
    sqlite_check: str = "quick_check"
    damage: list[str] = []


def verify(store: EventStore, archives: Sequence[str | Path] = (), *, sqlite: bool = True,
           full: bool = False) -> VerifyResult:
    """Check every row: contiguous seq, per-stream versions, prev_hash links, hashes, decoding;
    then, with ``sqlite``, the file itself (SQLite's ``quick_check``, ``integrity_check`` when
    ``full``): a damaged index passes the chain walk but not this.

    Stops at the first bad row and names its ``seq``. A gap in the seqs is accepted only where
    ``ledger.archived`` accounts for it; the archived rows are re-checked when their archive is
    reachable (recorded path, or ``archives``): see :mod:`sp.ledger.archive_verify`.

    :raises UsageError: a file in ``archives`` is missing or not an archive of this ledger.
    """
    try:
        gaps = Gaps(store, archives)
    except Bad as e:
        result = VerifyResult(False, 0, codec.GENESIS_HASH, e.seq, e.reason)
    except LedgerDamagedError as e:
        result = VerifyResult(False, 0, codec.GENESIS_HASH, e.seq, e.what)
    else:
        try:
            result = _walk(store, gaps)
        except LedgerDamagedError as e:  # a row that cannot even be read
            result = VerifyResult(False, 0, codec.GENESIS_HASH, e.seq, e.what)
        finally:
            gaps.close()
        if result.ok or gaps.archived:
            result = msgspec.structs.replace(
                result, archived=gaps.archived, archive_checked=gaps.checked,
                unreachable=gaps.unreachable)
    if not sqlite:
        return result
    name = "integrity_check" if full else "quick_check"
    damage = sqlite_damage(store, full)
    return msgspec.structs.replace(result, ok=result.ok and not damage, sqlite_check=name,
                                   damage=damage)


@contextmanager
def chain_guard(store: EventStore) -> Iterator[ChainCheck]:
    """A :class:`ChainCheck` for a scan the caller makes (``decode=False``); its first bad
    row, or :meth:`ChainCheck.finish`'s, leaves the block as :class:`LedgerTamperedError`.

    :raises LedgerTamperedError: the log fails the walk.
    """
    try:
        gaps = Gaps(store)
    except Bad as e:
        raise LedgerTamperedError(store.path, e.seq, e.reason) from None
    try:
        yield ChainCheck(store, gaps, decode=False)
    except Bad as e:
        raise LedgerTamperedError(store.path, e.seq, e.reason) from None
    finally:
        gaps.close()


def _walk(store: EventStore, gaps: Gaps) -> VerifyResult:
    check = ChainCheck(store, gaps)
    try:
        for chunk in _rows(store):
            check.feed(chunk)
        check.finish()
    except Bad as e:
        return VerifyResult(False, check.count, check.prev_hash, e.seq, e.reason)
    return VerifyResult(True, check.count, check.prev_hash)


class ChainCheck:
    """The chain walk, fed rows ``(seq, stream, version, type, ts, data, prev_hash, hash)``
    in seq order, chunk by chunk: ``sp verify`` feeds it alone, ``sp replay`` from the scan
    that rebuilds the projections (one pass over the log, not two).

    ``decode=False`` leaves decoding to the caller (the rebuild decodes every row anyway and
    names the seq of one that does not decode). :meth:`feed` and :meth:`finish` raise
    :class:`Bad` at the first bad row.
    """

    def __init__(self, store: EventStore, gaps: Gaps, decode: bool = True) -> None:
        self.store, self.gaps, self.decode = store, gaps, decode
        self.prev_hash = codec.GENESIS_HASH
        self.expected_seq = 1
        self.versions: dict[str, int] = {}
        self.count = 0
        # Read now: a rebuild drops the projections' tracking table before it is finished.
        self.tracked = _tracked_seq(store)

    def feed(self, chunk: Sequence[Row]) -> None:
        prev_hash, expected_seq, versions = self.prev_hash, self.expected_seq, self.versions
        get, chain_hash, decode, count = versions.get, codec.chain_hash, self.decode, 0
        try:
            for seq, stream, version, type_, ts, data, stored_prev, stored_hash in chunk:
                # The common case in one expression (a replay walks a million rows); any
                # doubt takes the slow path, which crosses archived gaps or names the fault.
                if (seq != expected_seq or version != get(stream, 0) + 1
                        or stored_prev != prev_hash or decode
                        or chain_hash(prev_hash, seq, stream, version, type_, ts, data)
                        != stored_hash):
                    if seq != expected_seq and self.gaps and seq > expected_seq:
                        prev_hash = self.gaps.cross(expected_seq, seq, prev_hash, versions,
                                                    _check_row)
                        expected_seq = seq
                    bad = (_check_row if decode else _check_link)(
                        seq, expected_seq, stream, version, versions, type_, ts, data,
                        prev_hash, stored_prev, stored_hash)
                    if bad:
                        raise Bad(seq, bad)
                versions[stream] = version
                prev_hash = stored_hash
                expected_seq = seq + 1
                count += 1
        finally:
            self.prev_hash, self.expected_seq = prev_hash, expected_seq
            self.count += count

    def finish(self) -> None:
        """The checks of the log's end: archived runs all crossed, nothing cut off the tail,
        the append-only triggers in place."""
        store, expected_seq = self.store, self.expected_seq
        if self.gaps:
            self.gaps.finish()
        last = store.query_one("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        if last is not None and int(last[0]) >= expected_seq:
            raise Bad(expected_seq, f"events from seq {expected_seq} to {last[0]} are missing "
                                    "(deleted at the tail)")
        if self.tracked is not None and self.tracked >= expected_seq:
            raise Bad(expected_seq,
                      f"the projections have seen events up to seq {self.tracked}, the log "
                      f"ends at {expected_seq - 1} (deleted at the tail)")
        triggers = {r[0] for r in
                    store.query("SELECT name FROM sqlite_master WHERE type='trigger'")}
        missing = {"events_no_update", "events_no_delete"} - triggers
        if missing:
            raise Bad(None, f"append-only guard triggers are missing: "
                            f"{', '.join(sorted(missing))}")


def _tracked_seq(store: EventStore) -> int | None:
    """The last seq the projections applied: a second witness of where the log ends."""
    exists = store.query_one(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'projection_tracking'"
    )
    if exists is None:
        return None
    row = store.query_one("SELECT max(seq) FROM projection_tracking")
    return None if row is None or row[0] is None else int(row[0])


def _check_row(
    seq: int, expected_seq: int, stream: str, version: int, versions: dict[str, int],
    type_: str, ts: int, data: str, prev_hash: str, stored_prev: str, stored_hash: str,
) -> str:
    bad = _check_link(seq, expected_seq, stream, version, versions, type_, ts, data,
                      prev_hash, stored_prev, stored_hash)
    if bad:
        return bad
    try:
        event = codec.decode(data, seq)
    except CorruptEventError as e:
        return str(e)
    if event.__struct_config__.tag != type_:
        return f"type column {type_!r} differs from the event's own type"
    return ""


def _check_link(
    seq: int, expected_seq: int, stream: str, version: int, versions: dict[str, int],
    type_: str, ts: int, data: str, prev_hash: str, stored_prev: str, stored_hash: str,
) -> str:
    """:func:`_check_row` without decoding (the caller decodes)."""
    if seq != expected_seq:
        return f"expected seq {expected_seq}, found {seq} (rows deleted or renumbered)"
    if version != versions.get(stream, 0) + 1:
        return f"stream {stream} jumps to version {version} (rows deleted or reordered)"
    if stored_prev != prev_hash:
        return "prev_hash does not link to the previous row (rows deleted or reordered)"
    if codec.chain_hash(prev_hash, seq, stream, version, type_, ts, data) != stored_hash:
        return "hash does not match the row's contents (row edited)"
    return ""


def _rows(store: EventStore) -> Iterator[list[Row]]:
    return store.read_chain_raw()
