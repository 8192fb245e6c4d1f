"""SQLite's own check of the ledger file, its findings named by table or index.

The hash chain proves the rows of ``events`` are what sp wrote; it says nothing of the b-tree
pages around them. A flipped byte in an index page passes the chain walk (the walk reads the
table in rowid order, never the index) and then breaks the first writer with "database disk
image is malformed". ``PRAGMA quick_check`` finds that in O(N); ``integrity_check`` also
compares every index with its table, in O(N log N).
"""

from __future__ import annotations

import re

from sp.ledger.errors import LedgerDamagedError
from sp.ledger.store import EventStore

# At most this many objects are reported: a damaged page yields one line per cell.
MAX_FINDINGS = 10

_TREE = re.compile(r"\btree (\d+)", re.IGNORECASE)  # SQLite >= 3.41: "Tree 3 page 3 cell 0"
_PAGE = re.compile(r"\bpage (\d+)", re.IGNORECASE)
_INDEX = re.compile(r"\bindex (\S+)")


def sqlite_damage(store: EventStore, full: bool = False) -> list[str]:
    """SQLite's findings, one line per damaged table or index (``[]`` when it says ok).

    Each line names the object (``index sqlite_autoindex_events_1``, ``table events``, or a
    page when no object owns it), SQLite's first message about it, and how many more.
    """
    pragma = "integrity_check" if full else "quick_check"
    try:
        rows = store.query(f"PRAGMA {pragma}")
    except LedgerDamagedError as e:  # too damaged for the check itself to run
        return [f"{pragma} could not run: {e.what}"]
    # One row per problem, but a row may hold several lines (a database header, then one
    # line per damaged cell).
    lines = [line for r in rows for line in str(r[0]).splitlines()
             if line.strip() and not line.startswith("*** in database")]
    if lines == ["ok"] or not lines:
        return []
    return _grouped(store, lines)


def damage_error(store: EventStore) -> LedgerDamagedError | None:
    """SQLite's quick_check findings as one error (the first finding, and how many more), or
    None when it says ok."""
    damage = sqlite_damage(store)
    if not damage:
        return None
    more = f" (and {len(damage) - 1} more)" if len(damage) > 1 else ""
    return LedgerDamagedError(store.path, f"quick_check: {damage[0]}{more}")


def _grouped(store: EventStore, lines: list[str]) -> list[str]:
    names = _owners(store, lines)
    first: dict[str, str] = {}
    count: dict[str, int] = {}
    for line in lines:
        owner = _owner_of(line, names)
        first.setdefault(owner, line)
        count[owner] = count.get(owner, 0) + 1
    out = []
    for owner, line in list(first.items())[:MAX_FINDINGS]:
        more = f" (and {count[owner] - 1} more)" if count[owner] > 1 else ""
        out.append(f"{owner}: {line}{more}")
    if len(first) > MAX_FINDINGS:
        out.append(f"... and {len(first) - MAX_FINDINGS} more damaged objects")
    return out


def _owner_of(line: str, names: dict[int, str]) -> str:
    index = _INDEX.search(line)
    if index:
        return f"index {index.group(1)}"
    page = _TREE.search(line) or _PAGE.search(line)
    if page:
        number = int(page.group(1))
        return names.get(number, f"page {number}")
    return "file"


def _owners(store: EventStore, lines: list[str]) -> dict[int, str]:
    """The table or index owning each page the findings mention: root pages from the schema,
    others from the ``dbstat`` table when SQLite has it (only run on a damaged file)."""
    wanted = {int(m.group(1)) for line in lines for m in [*_TREE.finditer(line),
                                                           *_PAGE.finditer(line)]}
    names: dict[int, str] = {}
    try:
        for kind, name, root in store.query(
                "SELECT type, name, rootpage FROM sqlite_master WHERE rootpage > 0"):
            names[int(root)] = f"{kind} {name}"
    except LedgerDamagedError:
        return names
    rest = sorted(wanted - set(names))[:MAX_FINDINGS]
    if rest:
        marks = ", ".join("?" for _ in rest)
        try:
            found = store.query(
                f"SELECT DISTINCT name, pageno FROM dbstat WHERE pageno IN ({marks})", rest)
        except Exception:  # no dbstat in this SQLite, or the damage stops it: pages stay numbers
            found = []
        kinds = {n.split(" ", 1)[1]: n for n in names.values()}
        for name, pageno in found:
            names[int(pageno)] = kinds.get(str(name), f"table {name}")
    return names
