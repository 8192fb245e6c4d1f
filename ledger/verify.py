"""Walk the hash chain and prove nothing was edited, deleted or reordered."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec

from . import codec
from .archive_verify import Bad, Gaps
from .errors import CorruptEventError
from .store import EventStore


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


def verify(store: EventStore, archives: Sequence[str | Path] = ()) -> VerifyResult:
    """Check every row: contiguous seq, per-stream versions, prev_hash links, hashes, decoding.

    Stops at the first bad row and names its ``seq``. A gap in the seqs is accepted only where
    ``ledger.archived`` accounts for it; the archived rows are re-checked when their archive is
    reachable (recorded path, or ``archives``): see :mod:`ledger.archive_verify`.

    :raises UsageError: a file in ``archives`` is missing or not an archive of this ledger.
    """
    try:
        gaps = Gaps(store, archives)
    except Bad as e:
        return VerifyResult(False, 0, codec.GENESIS_HASH, e.seq, e.reason)
    try:
        result = _walk(store, gaps)
    finally:
        gaps.close()
    if result.ok or gaps.archived:
        result = msgspec.structs.replace(
            result, archived=gaps.archived, archive_checked=gaps.checked,
            unreachable=gaps.unreachable)
    return result


def _walk(store: EventStore, gaps: Gaps) -> VerifyResult:
    prev_hash = codec.GENESIS_HASH
    expected_seq = 1
    versions: dict[str, int] = {}
    count = 0
    for chunk in _rows(store):
        for seq, stream, version, type_, ts, data, stored_prev, stored_hash in chunk:
            if seq != expected_seq and gaps and seq > expected_seq:
                try:
                    prev_hash = gaps.cross(expected_seq, seq, prev_hash, versions, _check_row)
                except Bad as e:
                    return VerifyResult(False, count, prev_hash, e.seq, e.reason)
                expected_seq = seq
            bad = _check_row(
                seq, expected_seq, stream, version, versions, type_, ts, data, prev_hash,
                stored_prev, stored_hash,
            )
            if bad:
                return VerifyResult(False, count, prev_hash, seq, bad)
            versions[stream] = version
            prev_hash = stored_hash
            expected_seq = seq + 1
            count += 1
    if gaps:
        try:
            gaps.finish()
        except Bad as e:
            return VerifyResult(False, count, prev_hash, e.seq, e.reason)
    last = store.query_one("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
    if last is not None and int(last[0]) >= expected_seq:
        return VerifyResult(
            False, count, prev_hash, expected_seq,
            f"events from seq {expected_seq} to {last[0]} are missing (deleted at the tail)",
        )
    tracked = _tracked_seq(store)
    if tracked is not None and tracked >= expected_seq:
        return VerifyResult(
            False, count, prev_hash, expected_seq,
            f"the projections have seen events up to seq {tracked}, the log ends at "
            f"{expected_seq - 1} (deleted at the tail)",
        )
    triggers = {r[0] for r in store.query("SELECT name FROM sqlite_master WHERE type='trigger'")}
    missing = {"events_no_update", "events_no_delete"} - triggers
    if missing:
        return VerifyResult(
            False, count, prev_hash, None,
            f"append-only guard triggers are missing: {', '.join(sorted(missing))}",
        )
    return VerifyResult(True, count, prev_hash)


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
    if seq != expected_seq:
        return f"expected seq {expected_seq}, found {seq} (rows deleted or renumbered)"
    if version != versions.get(stream, 0) + 1:
        return f"stream {stream} jumps to version {version} (rows deleted or reordered)"
    if stored_prev != prev_hash:
        return "prev_hash does not link to the previous row (rows deleted or reordered)"
    if codec.chain_hash(prev_hash, seq, stream, version, type_, ts, data) != stored_hash:
        return "hash does not match the row's contents (row edited)"
    try:
        event = codec.decode(data, seq)
    except CorruptEventError as e:
        return str(e)
    if event.__struct_config__.tag != type_:
        return f"type column {type_!r} differs from the event's own type"
    return ""


def _rows(store: EventStore, batch: int = 10000):  # type: ignore[no-untyped-def]
    cur = store._conn.execute(
        "SELECT seq, stream, version, type, ts, data, prev_hash, hash FROM events ORDER BY seq"
    )
    while chunk := cur.fetchmany(batch):
        yield chunk
