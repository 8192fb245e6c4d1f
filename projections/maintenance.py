"""Maintenance events (``sp gc``, ``sp archive``) change no read model.

They are facts for ``sp audit`` and SQL (``type = 'maintenance.gc_completed'``); they still need
a handler here, or the fold would take them for events of an unknown action.
"""

from __future__ import annotations

from collections.abc import Callable

from sp.ledger import events as ev
from sp.ledger.store import Recorded
from sp.projections.rows import Rows


def _nothing(rows: Rows, rec: Recorded) -> None:
    return None


HANDLERS: dict[str, Callable[[Rows, Recorded], None]] = {
    ev.tag_of(ev.GcCompleted): _nothing,
    ev.tag_of(ev.LedgerArchived): _nothing,
    ev.tag_of(ev.LedgerReinitialised): _nothing,
}
