"""The gaps ``sp archive`` leaves in the chain, as ``sp verify`` crosses them.

A gap is accepted only where ``ledger.archived`` events account for exactly its seqs (their
``runs`` tile it). When the archive file is reachable (the path recorded in the event, or one
given with ``sp verify --archive``) every archived row is checked as if it were still in the
log: its hash, its decoding, its stream version and its link to the row before; the merged
chain must link end to end. Otherwise the runs' recorded ``prev_hash``/``last_hash`` still
prove the rows on both sides of the gap link through it (the runs are themselves in the
hash-chained log).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from sp.ledger import events as ev
from sp.ledger.archive import ArchiveReader, ArchiveRow, claims, digest, reader
from sp.ledger.errors import UsageError
from sp.ledger.store import EventStore

# (seq, expected_seq, stream, version, versions, type, ts, data, prev, stored_prev, stored_hash)
RowCheck = Callable[..., str]


class Bad(Exception):
    """A gap that is not accounted for, or an archived row that does not check out."""

    def __init__(self, seq: int | None, reason: str) -> None:
        super().__init__(reason)
        self.seq, self.reason = seq, reason


class _Run:
    def __init__(self, run: ev.ArchivedRun, claim_seq: int, claim: ev.LedgerArchived) -> None:
        self.run, self.claim_seq, self.claim = run, claim_seq, claim
        self.used = False


class Gaps:
    """The runs every ``ledger.archived`` accounts for, and the archives that hold them."""

    def __init__(self, store: EventStore, archives: Sequence[str | Path] = ()) -> None:
        self.claims = claims(store)
        self.runs: dict[int, _Run] = {}
        for claim_seq, claim in self.claims:
            for run in claim.runs:
                if run.first_seq in self.runs or run.last_seq >= claim_seq:
                    raise Bad(claim_seq, f"ledger.archived claims seqs {run.first_seq}-"
                                         f"{run.last_seq} twice or after itself")
                self.runs[run.first_seq] = _Run(run, claim_seq, claim)
        self.readers: list[ArchiveReader] = []
        self.unreachable: list[str] = []
        self.archived = 0  # rows accounted for by ledger.archived
        self.checked = 0  # of them, re-checked from an archive file
        self._digests: dict[int, list[str]] = {}  # claim seq -> hashes read, in seq order
        given = [Path(a).resolve() for a in archives]
        for path in given:
            self.readers.append(reader(store, path))  # UsageError: missing or foreign
        recorded = sorted({claim.file for _, claim in self.claims})
        for file in recorded:
            path = Path(file)
            if path in given:
                continue
            if path.is_file():
                try:
                    self.readers.append(reader(store, path))
                except UsageError:
                    self.unreachable.append(file)
            else:
                self.unreachable.append(file)

    def close(self) -> None:
        for r in self.readers:
            r.close()

    def __bool__(self) -> bool:
        return bool(self.runs)

    def cross(self, start: int, end: int, prev_hash: str, versions: dict[str, int],
              check: RowCheck) -> str:
        """Walk the missing seqs ``start .. end - 1``; return the hash the next row links to.

        :raises Bad: the seqs are not exactly accounted for, or an archived row is bad.
        """
        pos = start
        while pos < end:
            entry = self.runs.get(pos)
            if entry is None:
                return self._unaccounted(pos, end)
            run = entry.run
            if run.last_seq >= end:
                raise Bad(end, f"ledger.archived at seq {entry.claim_seq} says seqs "
                               f"{run.first_seq}-{run.last_seq} moved, but seq {end} is still "
                               "in the log")
            rows = self._rows(run.first_seq, run.last_seq)
            if rows is None:
                if run.prev_hash != prev_hash:
                    raise Bad(run.first_seq, "archived run does not link to the previous row "
                                             f"(ledger.archived at seq {entry.claim_seq})")
            else:
                self._check_rows(entry, rows, prev_hash, versions, check)
            prev_hash = run.last_hash
            entry.used = True
            self.archived += run.last_seq - run.first_seq + 1
            pos = run.last_seq + 1
        return prev_hash

    def _unaccounted(self, pos: int, end: int) -> str:
        raise Bad(end, f"expected seq {pos}, found {end} (rows deleted or renumbered)")

    def _rows(self, first: int, last: int) -> list[ArchiveRow] | None:
        partial: tuple[ArchiveReader, list[ArchiveRow]] | None = None
        for r in self.readers:
            rows = r.rows(first, last)
            if len(rows) == last - first + 1:
                return rows
            if rows and partial is None:
                partial = (r, rows)
        if partial is not None:
            r, rows = partial
            have = {row[0] for row in rows}
            missing = next(s for s in range(first, last + 1) if s not in have)
            raise Bad(missing, f"archive {r.path} lacks seq {missing} (deleted from the archive)")
        return None

    def _check_rows(self, entry: _Run, rows: list[ArchiveRow], prev_hash: str,
                    versions: dict[str, int], check: RowCheck) -> None:
        expected = entry.run.first_seq
        if entry.run.prev_hash != prev_hash:
            raise Bad(expected, "archived run does not link to the previous row "
                                f"(ledger.archived at seq {entry.claim_seq})")
        for seq, stream, version, type_, ts, data, stored_prev, stored_hash in rows:
            bad = check(seq, expected, stream, version, versions, type_, ts, data, prev_hash,
                        stored_prev, stored_hash)
            if bad:
                raise Bad(seq, f"archived row: {bad}")
            versions[stream] = version
            prev_hash = stored_hash
            expected = seq + 1
            self.checked += 1
            self._digests.setdefault(entry.claim_seq, []).append(stored_hash)
        if prev_hash != entry.run.last_hash:
            raise Bad(entry.run.last_seq, "archived run ends on another hash than "
                                          f"ledger.archived at seq {entry.claim_seq} recorded")

    def finish(self) -> None:
        """Every claimed run was crossed; every fully read claim matches its sha256 and count.

        :raises Bad: a claim names seqs still in the log, or its digest differs.
        """
        for entry in self.runs.values():
            if not entry.used:
                raise Bad(entry.run.first_seq,
                          f"ledger.archived at seq {entry.claim_seq} says seqs "
                          f"{entry.run.first_seq}-{entry.run.last_seq} moved, but they are "
                          "still in the log")
        for claim_seq, claim in self.claims:
            hashes = self._digests.get(claim_seq)
            if hashes is None:
                continue  # not reachable: the links were checked through the runs
            if len(hashes) != claim.count:
                raise Bad(claim_seq, f"the archive holds {len(hashes)} of the {claim.count} "
                                     "rows ledger.archived recorded")
            if digest(hashes) != claim.sha256:
                raise Bad(claim_seq, "the archived rows' sha256 differs from the one "
                                     "ledger.archived recorded")
