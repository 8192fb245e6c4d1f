"""Apply events to every projection, live (in the append transaction) or as a full rebuild."""

from __future__ import annotations

import gc
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from sp.ledger import codec
from sp.ledger import events as ev
from sp.ledger.errors import CorruptEventError

# The concrete SQLite classes, not the Protocols (sp.ledger.interface), on purpose: the engine is
# the store's projection machinery -- it installs itself as an append hook (EventStore.hooks),
# runs the projections' DDL scripts (Transaction.executescript_safe, _split_sql) and folds the
# log from raw undecoded rows (read_all_raw, read_chain_raw) for speed. Those members are how
# THIS backend applies projections inside its append transaction; a second backend would wire
# its own (the Protocol promises "applied to every projection before the commit", not how), so
# they are not added to the Protocol.
from sp.ledger.store import EventStore, Recorded, Transaction, _split_sql
from sp.machines.action import FOLD, ActionState
from sp.projections import (
    actions,
    alerts,
    blobs,
    checkpoints,
    control,
    maintenance,
    metrics,
    plans,
    queue,
    rollback,
    schedules,
    triggers,
    views,
)
from sp.projections.rows import RowDict, Rows, Table
from sp.projections.version import PROJECTION_VERSION

if TYPE_CHECKING:
    from sp.ledger.verify import ChainCheck

TABLES: dict[str, Table] = {
    t.name: t
    for t in (actions.TABLE, *queue.TABLES, *metrics.TABLES, *rollback.TABLES,
              *checkpoints.TABLES, *control.TABLES, *schedules.TABLES, *plans.TABLES,
              *triggers.TABLES, *alerts.TABLES, *blobs.TABLES)
}
DDL = "\n".join([actions.DDL, queue.DDL, metrics.DDL, rollback.DDL, checkpoints.DDL,
                 control.DDL, schedules.DDL, plans.DDL, triggers.DDL, alerts.DDL,
                 blobs.DDL])
TRACKING_DDL = (
    "CREATE TABLE IF NOT EXISTS projection_tracking (name TEXT PRIMARY KEY, seq INTEGER NOT NULL)"
    " WITHOUT ROWID"
)

_SUBMITTED = ev.tag_of(ev.ActionSubmitted)
_CHECKPOINTED = ev.tag_of(ev.ActionCheckpointed)
_BLOB_STORED = ev.tag_of(ev.ActionBlobStored)
_FAILED = ev.tag_of(ev.ActionFailed)
_ATTEMPT_ENDS = frozenset(
    ev.tag_of(c) for c in (ev.ActionCompleted, ev.ActionFailed, ev.ActionSkipped,
                           ev.ActionRetryScheduled,
                           ev.ActionInterrupted, ev.ActionCancelled)
)
_EXECUTING = ActionState.EXECUTING
_PENDING = ActionState.PENDING

Handler = Callable[[RowDict, Recorded, Any], None]

# Events that are not about one action, by type.
_OTHER: dict[str, Callable[[Rows, Recorded], None]] = {
    **control.HANDLERS, **schedules.HANDLERS, **plans.HANDLERS, **triggers.HANDLERS,
    **alerts.HANDLERS, **maintenance.HANDLERS,
}


class _Step(NamedTuple):
    """What one event type does to an action in one state, compiled from machines.FOLD."""

    new_value: str
    old: ActionState
    new: ActionState
    handler: Handler
    moves: bool  # the state changes
    ends_attempt: bool  # leaves EXECUTING: an attempt ended
    change: int  # index of (old, new) in _CHANGES


# Every state change an action can make; index 0 is its creation.
_CHANGES: list[tuple[ActionState | None, ActionState]] = [
    (None, _PENDING), *sorted({(old, new) for (old, _), new in FOLD.items() if new is not old},
                              key=lambda c: (c[0].value, c[1].value)),
]
_CHANGE_INDEX = {c: i for i, c in enumerate(_CHANGES)}

# (current state's value, event tag) -> step; absent pairs are illegal.
_STEPS: dict[tuple[str, str], _Step] = {
    (old.value, tag): _Step(new.value, old, new, actions.HANDLERS[tag], new is not old,
                            old is _EXECUTING and new is not old and tag in _ATTEMPT_ENDS,
                            _CHANGE_INDEX.get((old, new), -1))
    for (old, tag), new in FOLD.items()
}


class _Counting:
    """Stands in for Rows while :func:`metrics.on_state` is asked which counters it moves."""

    def __init__(self) -> None:
        self.added: list[tuple[str, Any, int]] = []

    def add(self, table: str, key: Any, delta: int) -> None:
        self.added.append((table, key, delta))

    def __getattr__(self, name: str) -> Any:
        raise TypeError(f"metrics.on_state may only count (rows.add), not call rows.{name}")


# (action type, agent, index of the state change in _CHANGES)
_Change = tuple[str, str | None, str | None, int]
_COUNTS: dict[_Change, list[tuple[str, Any, int]]] = {}


def _counts_of(change: _Change) -> list[tuple[str, Any, int]]:
    """The counter deltas of one state change of an action of a type and agent (memoized).

    metrics.on_state is a function of the action's type and agent and of the two states only
    (it reads nothing else: the row it is shown holds nothing else), so it is asked once per
    distinct change instead of once per event.
    """
    found = _COUNTS.get(change)
    if found is None:
        counting = _Counting()
        action_type, agent, task, index = change
        old, new = _CHANGES[index]
        metrics.on_state(counting,  # type: ignore[arg-type]
                         {"action_type": action_type, "agent": agent, "task": task}, old, new)
        found = _COUNTS[change] = counting.added
    return found


class ProjectionRows(Rows):
    """Rows of every projection, plus the state changes to count at flush time."""

    def __init__(self, tx: Transaction, *, full: bool, prefix: str = "") -> None:
        super().__init__(tx, TABLES, full=full, prefix=prefix)
        # metrics.on_state, deferred: each distinct change is counted once, at flush time.
        self.changes: dict[_Change, int] = {}

    def flush(self) -> None:
        deltas = self.deltas
        for change, n in self.changes.items():
            for table, key, delta in _counts_of(change):
                deltas[table][key] += delta * n
        self.changes.clear()
        super().flush()


def _count(rows: Rows, a: RowDict, change: int) -> None:
    changes = getattr(rows, "changes", None)
    if changes is None:  # a plain Rows: count at once
        old, new = _CHANGES[change]
        metrics.on_state(rows, a, old, new)
        return
    key = (a["action_type"], a["agent"], a["task"], change)
    changes[key] = changes.get(key, 0) + 1


_ABSENT: Any = object()


def apply_event(rows: Rows, rec: Recorded) -> None:
    """Fold one event into every projection.

    :raises CorruptEventError: the event is illegal in the action's current state (a log that
        was written around the lifecycle machine).
    """
    type_ = rec.type
    stream = rec.stream
    other = _OTHER.get(type_)
    if other is not None:
        other(rows, rec)
        return
    if type_ == _SUBMITTED:
        e = rec.event
        assert isinstance(e, ev.ActionSubmitted)
        if rows.get("actions", stream) is not None:
            raise CorruptEventError(rec.seq, f"action {stream} submitted twice")
        unmet = queue.on_submitted(rows, stream, e.depends_on)
        created = actions.on_submitted(rows, rec, e, unmet)
        _count(rows, created, 0)
        return
    # The actions cache directly (what rows.get would do first): this runs once per event.
    a = rows.cache["actions"].get(stream, _ABSENT)
    if a is _ABSENT:
        a = rows.get("actions", stream)
    if a is None:
        raise CorruptEventError(rec.seq, f"{type_} for unknown action {stream}")
    step = _STEPS.get((a["state"], type_))
    if step is None:
        raise CorruptEventError(rec.seq, f"{type_} is illegal for an action that is {a['state']}")
    new_value, old, new, handler, moves, ends_attempt, change = step
    handler(a, rec, rec.event)
    if type_ == _FAILED:
        failed = rec.event
        assert isinstance(failed, ev.ActionFailed)
        if failed.fallback:
            queue.move_dependents(rows, stream, failed.fallback)
    a["state"] = new_value
    a["updated_ms"] = rec.ts
    a["version"] = rec.version
    a["last_seq"] = rec.seq
    if not rows.full:  # a rebuild writes every cached row anyway
        rows.dirty["actions"].add(stream)
    if type_ == _CHECKPOINTED:
        checkpoints.on_checkpoint(rows, rec, a)
    elif type_ == _BLOB_STORED:
        blobs.on_stored(rows, rec, a)
    if moves:
        if ends_attempt:
            metrics.on_attempt_end(rows, a, rec)
        _count(rows, a, change)
        queue.on_state(rows, a, old, new)
        rollback.on_state(rows, a, old, new, rec)


def _track(tx: Transaction, seq: int, prefix: str = "") -> None:
    # An update in place where the row exists (every append but the first): cheaper than
    # REPLACE, which deletes and inserts it again.
    if prefix or not tx.execute(_TRACK_UPDATE, (seq,)):
        tx.execute(
            f"INSERT OR REPLACE INTO {prefix}projection_tracking (name, seq) VALUES ('all', ?)",
            (seq,),
        )


_TRACK_UPDATE = "UPDATE projection_tracking SET seq = ? WHERE name = 'all'"


# Tables keyed by the action id alone, whose rows only the action's own events create: a
# stream that starts in this append has none yet.
_OWN_ROWS = tuple(name for name, t in TABLES.items() if t.key == ("action_id",))


def live_hook(tx: Transaction, recorded: list[Recorded]) -> None:
    """The append hook: apply freshly appended events inside the append transaction."""
    if not recorded:
        return
    rows = ProjectionRows(tx, full=False)
    new: set[str] = set()
    known: set[str] = set()
    checkpointed: set[str] = set()
    for rec in recorded:
        stream = rec.stream
        if rec.version == 1:
            new.add(stream)
        elif stream not in new:
            known.add(stream)
            if rec.type == _CHECKPOINTED:
                checkpointed.add(stream)
    for stream in new:
        for name in _OWN_ROWS:
            rows.absent(name, stream)
    if known:
        rows.prefetch("actions", known)
    if checkpointed:
        rows.prefetch("checkpoints", checkpointed)
    for rec in recorded:
        apply_event(rows, rec)
    rows.flush()
    _track(tx, recorded[-1].seq)


def install(store: EventStore) -> None:
    """Register the live hook and make sure the projection tables exist and are current."""
    if live_hook not in store.hooks:
        store.hooks.append(live_hook)
    found = store.query_one("SELECT value FROM meta WHERE key = 'projection_version'")
    if found is None or int(found[0]) != PROJECTION_VERSION:
        rebuild(store)


def drop_all(tx: Transaction, prefix: str = "") -> None:
    for view in views.NAMES:
        tx.execute(f"DROP VIEW IF EXISTS {view}")
    for name in TABLES:
        tx.execute(f"DROP TABLE IF EXISTS {prefix}{name}")
    tx.execute(f"DROP TABLE IF EXISTS {prefix}projection_tracking")


def _is_index(stmt: str) -> bool:
    return stmt.lstrip().upper().startswith(("CREATE INDEX", "CREATE UNIQUE INDEX"))


def create_tables(tx: Transaction) -> None:
    """The projection tables without their secondary indexes (see :func:`create_indexes`)."""
    for stmt in _split_sql(DDL + ";\n" + TRACKING_DDL + ";"):
        if not _is_index(stmt):
            tx.execute(stmt)


def create_indexes(tx: Transaction) -> None:
    """The secondary indexes and the views: built after a bulk load, it costs a sort rather
    than an index update per row."""
    for stmt in _split_sql(DDL):
        if _is_index(stmt):
            tx.execute(stmt)
    tx.executescript_safe(views.DDL)


def create_all(tx: Transaction) -> None:
    create_tables(tx)
    create_indexes(tx)


def create_scratch(tx: Transaction, prefix: str) -> None:
    """Empty temporary copies of every projection table (same columns and affinities)."""
    for name in [*TABLES, "projection_tracking"]:
        tx.execute(f"DROP TABLE IF EXISTS temp.{prefix}{name}")
        tx.execute(f"CREATE TEMP TABLE {prefix}{name} AS SELECT * FROM main.{name} WHERE 0")


def fold_all(store: EventStore, tx: Transaction, prefix: str = "",
             chain: ChainCheck | None = None) -> int:
    """Fold the whole log into ``prefix``-named tables (which must exist, empty). Returns count.

    With ``chain``, each chunk of rows is also walked by the hash-chain check (``sp replay``
    refuses a log that ``sp verify`` flags, at the cost of hashing, not of a second scan).

    :raises CorruptEventError: a row does not decode.
    :raises Bad: ``chain`` found a bad row.
    """
    rows = ProjectionRows(tx, full=True, prefix=prefix)
    apply = apply_event
    decode = codec._decoder.decode
    count = 0
    last = 0
    # Millions of row dicts live until the flush and none of them is garbage: the cyclic
    # collector would walk them all again and again, for nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        scan = store.read_all_raw(0, 10000) if chain is None else store.read_chain_raw()
        for chunk in scan:
            if chain is not None:
                chain.feed(chunk)
            for seq, stream, version, type_, ts, data, *_ in chunk:
                try:
                    event = decode(data)
                except msgspec.DecodeError as e:
                    raise CorruptEventError(seq, str(e)) from None
                apply(rows, Recorded(seq, stream, version, type_, ts, event))
            count += len(chunk)
            last = chunk[-1][0]
        rows.flush()
    finally:
        if collecting:
            gc.enable()
    if last:
        _track(tx, last, prefix)
    return count


def rebuild(store: EventStore, verify: bool = False) -> int:
    """Drop every projection and rebuild it from the log, in one transaction. Returns count.

    ``verify``: walk the hash chain in the same scan; a bad row rolls everything back.

    :raises LedgerTamperedError: with ``verify``, the log fails ``sp verify``'s walk.
    :raises CorruptEventError: a row does not decode.
    """
    with _chain(store, verify) as chain, store.transaction() as tx:
        drop_all(tx)
        create_tables(tx)
        count = fold_all(store, tx, chain=chain)
        if chain is not None:
            chain.finish()
        create_indexes(tx)
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('projection_version', ?)",
            (str(PROJECTION_VERSION),),
        )
    return count


def _chain(store: EventStore, verify: bool) -> AbstractContextManager[ChainCheck | None]:
    if not verify:
        return nullcontext()
    from sp.ledger.verify import chain_guard

    return chain_guard(store)


class Difference(msgspec.Struct, frozen=True):
    table: str
    key: str
    detail: str


def check(store: EventStore, verify: bool = False) -> tuple[int, Difference | None]:
    """Rebuild into scratch (temporary) tables and compare with the live ones.

    Returns the event count and the first difference, or ``None`` when identical.

    :raises LedgerTamperedError: with ``verify``, the log fails ``sp verify``'s walk.
    """
    prefix = "scratch_"
    with _chain(store, verify) as chain, store.transaction() as tx:
        try:
            create_scratch(tx, prefix)
            count = fold_all(store, tx, prefix, chain)
            if chain is not None:
                chain.finish()
            diff = _first_difference(tx, prefix)
        finally:
            for name in [*TABLES, "projection_tracking"]:
                tx.execute(f"DROP TABLE IF EXISTS temp.{prefix}{name}")
    return count, diff


def _first_difference(tx: Transaction, prefix: str) -> Difference | None:
    for name, spec in TABLES.items():
        cols = ", ".join(spec.columns)
        order = ", ".join(spec.key)
        live = tx.query(f"SELECT {cols} FROM main.{name} ORDER BY {order}")
        scratch = tx.query(f"SELECT {cols} FROM temp.{prefix}{name} ORDER BY {order}")
        diff = _compare(name, spec, live, scratch)
        if diff:
            return diff
    return None


def _compare(name: str, spec: Table, live: list[tuple[object, ...]],
             scratch: list[tuple[object, ...]]) -> Difference | None:
    nkey = len(spec.key)
    live_by = {r[:nkey]: r for r in live}
    scratch_by = {r[:nkey]: r for r in scratch}
    for key in sorted(set(live_by) | set(scratch_by), key=repr):
        a, b = live_by.get(key), scratch_by.get(key)
        label = "/".join(str(k) for k in key)
        if a is None:
            return Difference(name, label, "row missing from the live table")
        if b is None:
            return Difference(name, label, "row in the live table but not in the rebuild")
        for col, x, y in zip(spec.columns, a, b, strict=True):
            if x != y or type(x) is not type(y):
                return Difference(name, label, f"{col}: live {x!r}, rebuilt {y!r}")
    return None
