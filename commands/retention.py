"""``sp gc`` and ``sp archive``: retention of files (security.retention) and of streams
(security.archivable picks them, ledger.archive moves them)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from sp.agents.durations import parse_duration_ms
from sp.commands.home import Home
from sp.ledger import archive as ledger_archive
from sp.ledger import events as ev
from sp.ledger.errors import ActionNotFoundError, UsageError
from sp.ledger.interface import Ledger
from sp.ledger.store import EventStore, Transaction
from sp.security import archivable as selection
from sp.security import retention


class GcReport(msgspec.Struct, kw_only=True):
    dry_run: bool
    removed: list[retention.Removal]
    files: int
    bytes_freed: int
    actions: list[str]
    seq: int | None  # of maintenance.gc_completed (None: dry run, or nothing to remove)
    retention: retention.Rules


def gc(store: Ledger, home: Home, *, temp: str | None = None,
       completed: str | None = None, failed: str | None = None, dry_run: bool = False,
       by: str = "") -> GcReport:
    """Remove what is past its retention (see :mod:`sp.security.retention`).

    Rules: the seed's defaults, overridden for an agent's actions by its ``storage.cleanup``,
    overridden for everything by the flags given.

    :raises UsageError: a flag is not a duration (nothing written, nothing removed).
    """
    flags = (_flag(temp, "--temp"), _flag(completed, "--completed"), _flag(failed, "--failed"))
    rules = retention.DEFAULT_RULES.override(*flags)
    agents: dict[str | None, retention.Rules] = {None: rules}

    def rules_for(agent: str | None) -> retention.Rules:
        found = agents.get(agent)
        if found is None:
            found = agents[agent] = _agent_rules(store, agent).override(*flags)
        return found

    removals = retention.plan(store, home.root, rules, rules_for)
    seq = None if dry_run else _record_and_remove(store, home.root, removals, rules, by)
    return GcReport(
        dry_run=dry_run, removed=removals, files=len(removals),
        bytes_freed=sum(r.bytes for r in removals),
        actions=retention.actions_of(removals), seq=seq,
        retention=rules)


def gc_event(removals: list[retention.Removal], rules: retention.Rules,
             by: str) -> ev.GcCompleted:
    """Decide ``maintenance.gc_completed``: every removal by kind, and the rules applied."""
    return ev.GcCompleted(
        by=by,
        logs=[r.path[len("logs/"):-len(".log")] for r in removals if r.kind == "log"],
        tmp=[r.path[len("tmp/"):] for r in removals if r.kind == "tmp"],
        previews=[r.path[len("previews/"):] for r in removals if r.kind == "preview"],
        blobs=[r.path[len("blobs/"):] for r in removals if r.kind == "blob"],
        actions=retention.actions_of(removals),
        files=len(removals), bytes_freed=sum(r.bytes for r in removals),
        retention={"temp_ms": rules.temp_ms, "completed_ms": rules.completed_ms,
                   "failed_ms": rules.failed_ms},
    )


def _record_and_remove(store: Ledger, home: Path, removals: list[retention.Removal],
                       rules: retention.Rules, by: str) -> int | None:
    """Record ``maintenance.gc_completed`` naming every removal, then remove the files (the
    record first: see :func:`sp.security.retention.remove_files`). Re-running gc is
    idempotent: with nothing left to remove it records nothing. Returns the event's seq."""
    if not removals:
        return None
    with store.transaction() as tx:
        (rec,) = tx.append(retention.STREAM, [gc_event(removals, rules, by)], None)
    retention.remove_files(home, removals, rules, store.clock.now_ms())
    return rec.seq


def _flag(value: str | None, where: str) -> int | None:
    return None if value is None else parse_duration_ms(value, where)


def _agent_rules(store: Ledger, agent: str | None) -> retention.Rules:
    from sp.commands.agents import get

    if agent is None:
        return retention.DEFAULT_RULES
    try:
        config = get(store, agent)
    except UsageError:  # not applied (or removed): the defaults
        return retention.DEFAULT_RULES
    cleanup = config.storage.cleanup if config.storage is not None else None
    return retention.DEFAULT_RULES if cleanup is None else retention.Rules.of(cleanup)


# -- archive ------------------------------------------------------------------------------------


class ArchiveReport(msgspec.Struct, kw_only=True):
    file: str
    before_ms: int
    streams: int
    actions: int
    plans: int
    held: int
    events: int
    seq: int | None  # of ledger.archived (None: nothing moved)


_DURATION = re.compile(r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d|w)\b", re.IGNORECASE)


def parse_before(text: str, now_ms: int) -> int:
    """``--before``: an ISO date (``2026-01-31``, midnight UTC), an ISO datetime (UTC unless
    it names its offset) or a duration back from now (``30d``).

    :raises UsageError: none of those.
    """
    value = text.strip()
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00") if value else "-")
    except ValueError:
        when = None
    if when is not None:
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return int(when.timestamp() * 1000)
    if _DURATION.match(value):
        try:
            return now_ms - parse_duration_ms(value, "--before")
        except UsageError:
            pass
    raise UsageError(f"--before: expected an ISO date (2026-01-31), an ISO datetime "
                     f"(2026-01-31T12:00Z) or a duration back from now (30d), got {text!r}")


# archive and audit_archived keep the concrete SQLite classes (as do the two helpers below):
# sp.ledger.archive moves rows into, and reads them back from, an archive SQLite file, and the
# projections are rebuilt in that transaction by sp.projections.engine (concrete too) --
# operations on the SQLite ledger file itself, not part of the Protocol.
def archive(store: EventStore, before: str, file: str | Path, by: str = "") -> ArchiveReport:
    """Move every whole finished stream whose last event is before ``before`` into ``file``.

    :raises UsageError: a bad DATE, or ``file`` is not an archive of this ledger (nothing
        written to the ledger).
    """
    before_ms = parse_before(before, store.clock.now_ms())
    target = Path(file).resolve()
    if target == Path(store.path).resolve():
        raise UsageError(f"archive {target}: that is the ledger itself")
    if not target.parent.is_dir():
        raise UsageError(f"archive {target}: no folder {target.parent}")
    if target.exists():  # refuse a foreign file before choosing anything
        chain = ledger_archive.chain_id(store)
        if chain is not None:
            ledger_archive.reader(store, target).close()
    chosen = selection.select(store, before_ms)
    event = None
    if chosen.streams or target.exists():  # also finishes what a crashed run left staged
        event = ledger_archive.move(store, target, chosen.streams, before_ms,
                                    record=_record_archived,
                                    after_move=_rebuild_projections, by=by)
    seq = None
    if event is not None:
        row = store.query_one("SELECT seq FROM events WHERE type = ? AND"
                              " json_extract(data, '$.batch') = ?",
                              (ledger_archive.ARCHIVED, event.batch))
        seq = None if row is None else int(row[0])
    return ArchiveReport(
        file=str(target), before_ms=before_ms, streams=len(chosen.streams),
        actions=chosen.actions, plans=chosen.plans, held=chosen.held,
        events=0 if event is None else event.count, seq=seq)


def _record_archived(tx: Transaction, event: ev.LedgerArchived) -> None:
    """Append ``ledger.archived`` in the archive's transaction, before the rows go."""
    tx.append(ledger_archive.STREAM, [event], None)


def _rebuild_projections(tx: Transaction) -> None:
    """The projections as a rebuild computes them without the moved streams, in the archive's
    own transaction: live == rebuilt holds at once (``sp replay --check``)."""
    from sp.projections import engine

    engine.drop_all(tx)
    engine.create_tables(tx)
    engine.fold_all(tx.store, tx)
    engine.create_indexes(tx)


class ActionArchivedError(ActionNotFoundError):
    """The action's stream was moved to an archive file by ``sp archive``."""

    def __init__(self, action_id: str, file: str, seq: int) -> None:
        super().__init__(action_id)
        self.args = (f"action {action_id} was archived to {file} (ledger.archived at seq "
                     f"{seq}); sp audit {action_id} reads it from there",)
        self.file, self.seq = file, seq


def archived(store: Ledger, ref: str) -> ActionArchivedError | None:
    """The archive that holds the action ``ref`` (an id or a unique prefix), if any."""
    found = ledger_archive.where_archived(store, ref)
    exact = [f for f in found if f[0] == ref]
    if exact or len(found) == 1:
        stream, seq, file = (exact or found)[0]
        return ActionArchivedError(stream, file, seq)
    return None


def audit_archived(store: EventStore, err: ActionArchivedError) -> list[Any]:
    """The archived action's events, read from its archive file.

    :raises ActionArchivedError: the archive file is not reachable.
    """
    from sp.projections import queries

    path = Path(err.file)
    if not path.is_file():
        raise err
    r = ledger_archive.reader(store, path)
    try:
        history = r.stream(err.action_id)
    finally:
        r.close()
    if not history:
        raise err
    return queries.audit_entries(history)
