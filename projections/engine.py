"""Apply events to every projection, live (in the append transaction) or as a full rebuild."""

from __future__ import annotations

import msgspec

from ledger import codec
from ledger import events as ev
from ledger.errors import CorruptEventError
from ledger.store import EventStore, Recorded, Transaction
from machines.action import FOLD, ActionState

from . import actions, checkpoints, metrics, queue, rollback, views
from .rows import Rows, Table
from .version import PROJECTION_VERSION

TABLES: dict[str, Table] = {
    t.name: t
    for t in (actions.TABLE, *queue.TABLES, *metrics.TABLES, *rollback.TABLES,
              *checkpoints.TABLES)
}
DDL = "\n".join([actions.DDL, queue.DDL, metrics.DDL, rollback.DDL, checkpoints.DDL])
TRACKING_DDL = (
    "CREATE TABLE IF NOT EXISTS projection_tracking (name TEXT PRIMARY KEY, seq INTEGER NOT NULL)"
)

_STATE = {s.value: s for s in ActionState}
_SUBMITTED = ev.tag_of(ev.ActionSubmitted)
_CHECKPOINTED = ev.tag_of(ev.ActionCheckpointed)
_ATTEMPT_ENDS = frozenset(
    ev.tag_of(c) for c in (ev.ActionCompleted, ev.ActionFailed, ev.ActionRetryScheduled,
                           ev.ActionInterrupted, ev.ActionCancelled)
)
_EXECUTING = ActionState.EXECUTING


def apply_event(rows: Rows, rec: Recorded) -> None:
    """Fold one event into every projection.

    :raises CorruptEventError: the event is illegal in the action's current state (a log that
        was written around the lifecycle machine).
    """
    type_ = rec.type
    if type_ == _SUBMITTED:
        e = rec.event
        assert isinstance(e, ev.ActionSubmitted)
        if rows.get("actions", rec.stream) is not None:
            raise CorruptEventError(rec.seq, f"action {rec.stream} submitted twice")
        unmet = queue.on_submitted(rows, rec.stream, e.depends_on)
        created = actions.on_submitted(rows, rec, e, unmet)
        metrics.on_state(rows, created, None, ActionState.PENDING)
        return
    a = rows.get("actions", rec.stream)
    if a is None:
        raise CorruptEventError(rec.seq, f"{type_} for unknown action {rec.stream}")
    old = _STATE[a["state"]]
    new = FOLD.get((old, type_))
    if new is None:
        raise CorruptEventError(rec.seq, f"{type_} is illegal for an action that is {old.value}")
    actions.HANDLERS[type_](a, rec, rec.event)
    a["state"] = new.value
    a["updated_ms"] = rec.ts
    a["version"] = rec.version
    a["last_seq"] = rec.seq
    rows.touch("actions", rec.stream)
    if type_ == _CHECKPOINTED:
        checkpoints.on_checkpoint(rows, rec, rec.event, a["attempts"])  # type: ignore[arg-type]
    if new is not old:
        if old is _EXECUTING and type_ in _ATTEMPT_ENDS:
            metrics.on_attempt_end(rows, a, rec)
        metrics.on_state(rows, a, old, new)
        queue.on_state(rows, a, old, new)
        rollback.on_state(rows, a, old, new, rec)


def _track(tx: Transaction, seq: int, prefix: str = "") -> None:
    tx.execute(
        f"INSERT OR REPLACE INTO {prefix}projection_tracking (name, seq) VALUES ('all', ?)",
        (seq,),
    )


def live_hook(tx: Transaction, recorded: list[Recorded]) -> None:
    """The append hook: apply freshly appended events inside the append transaction."""
    rows = Rows(tx, TABLES, full=False)
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


def create_all(tx: Transaction) -> None:
    tx.executescript_safe(DDL + ";\n" + TRACKING_DDL + ";")
    tx.executescript_safe(views.DDL)


def create_scratch(tx: Transaction, prefix: str) -> None:
    """Empty temporary copies of every projection table (same columns and affinities)."""
    for name in [*TABLES, "projection_tracking"]:
        tx.execute(f"DROP TABLE IF EXISTS temp.{prefix}{name}")
        tx.execute(f"CREATE TEMP TABLE {prefix}{name} AS SELECT * FROM main.{name} WHERE 0")


def fold_all(store: EventStore, tx: Transaction, prefix: str = "") -> int:
    """Fold the whole log into ``prefix``-named tables (which must exist, empty). Returns count."""
    rows = Rows(tx, TABLES, full=True, prefix=prefix)
    decode = codec._decoder.decode
    count = 0
    last = 0
    for chunk in store.read_all_raw(0, 10000):
        for seq, stream, version, type_, ts, data in chunk:
            try:
                event = decode(data)
            except msgspec.DecodeError as e:
                raise CorruptEventError(seq, str(e)) from None
            apply_event(rows, Recorded(seq, stream, version, type_, ts, event))
        count += len(chunk)
        last = chunk[-1][0]
    rows.flush()
    if last:
        _track(tx, last, prefix)
    return count


def rebuild(store: EventStore) -> int:
    """Drop every projection and rebuild it from the log, in one transaction. Returns count."""
    with store.transaction() as tx:
        drop_all(tx)
        create_all(tx)
        count = fold_all(store, tx)
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('projection_version', ?)",
            (str(PROJECTION_VERSION),),
        )
    return count


class Difference(msgspec.Struct, frozen=True):
    table: str
    key: str
    detail: str


def check(store: EventStore) -> tuple[int, Difference | None]:
    """Rebuild into scratch (temporary) tables and compare with the live ones.

    Returns the event count and the first difference, or ``None`` when identical.
    """
    prefix = "scratch_"
    with store.transaction() as tx:
        try:
            create_scratch(tx, prefix)
            count = fold_all(store, tx, prefix)
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
