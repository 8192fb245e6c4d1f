"""The ledger's interface (sp.ledger.interface) is what the SQLite store offers, and the seam
holds: nothing above ledger/ names the driver.

mypy --strict proves the signatures (``_implements`` in ledger/store.py assigns an EventStore
to a ``Ledger``); these tests prove the members exist at run time, and keep ``sqlite3`` inside
the ledger, so that a PostgreSQL backend can stand behind the same Protocols.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sp.ledger import events as ev
from sp.ledger.errors import LedgerBusyError, LedgerDamagedError, LedgerError
from sp.ledger.interface import Ledger, LedgerTransaction
from sp.ledger.store import EventStore, Transaction

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "sp"

# The one module above ledger/ allowed to use sqlite3: the sqlite_query action opens a USER's
# database (the action's target, named in its payload), never the ledger; it is the driver for
# that file as subprocess is for a shell command.
SQLITE_ALLOWED = {"actions/sqlitedb.py"}


def _members(proto: type) -> set[str]:
    """A Protocol's declared members: its methods, properties and annotated attributes."""
    names = {n for n, v in vars(proto).items()
             if not n.startswith("_") and (callable(v) or isinstance(v, property))}
    return names | {n for n in getattr(proto, "__annotations__", {}) if not n.startswith("_")}


def test_the_protocols_name_what_the_brief_lists() -> None:
    assert {"transaction", "append", "query", "query_one", "read_stream", "read_all", "head",
            "close"} <= _members(Ledger)
    assert {"append", "append_many", "query", "query_one", "execute", "executemany",
            "read_stream"} <= _members(LedgerTransaction)


def test_event_store_has_every_member_of_the_ledger(store: EventStore) -> None:
    for name in sorted(_members(Ledger)):
        assert hasattr(store, name), f"EventStore lacks Ledger.{name}"
        _same_parameters(getattr(Ledger, name, None), getattr(store, name), name)


def test_transaction_has_every_member_of_a_ledger_transaction(store: EventStore) -> None:
    with store.transaction() as tx:
        assert isinstance(tx, Transaction)
        for name in sorted(_members(LedgerTransaction)):
            assert hasattr(tx, name), f"Transaction lacks LedgerTransaction.{name}"
            _same_parameters(getattr(LedgerTransaction, name, None), getattr(tx, name), name)


def _same_parameters(declared: Any, implemented: Any, name: str) -> None:
    if not inspect.isfunction(declared) or not callable(implemented):
        return
    want = [p for p in inspect.signature(declared).parameters if p != "self"]
    got = list(inspect.signature(implemented).parameters)
    assert got == want, f"{name}: the interface declares {want}, the store takes {got}"


def test_the_interface_names_no_driver_type() -> None:
    """The seam a PostgreSQL backend implements: no sqlite3 in its signatures or imports."""
    source = (REPO / "ledger" / "interface.py").read_text()
    assert "sqlite3" not in {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    assert not _sqlite_uses(ast.parse(source))


def _sqlite_uses(tree: ast.AST) -> list[int]:
    """Lines that import sqlite3 or name it in code (comments and docstrings do not count)."""
    return [node.lineno for node in ast.walk(tree) if _names_sqlite3(node)]


def _names_sqlite3(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "sqlite3" for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] == "sqlite3"
    if isinstance(node, ast.Name):
        return node.id == "sqlite3"
    # importlib.import_module("sqlite3") and the like
    return isinstance(node, ast.Constant) and node.value == "sqlite3"


def _modules_above_ledger() -> Iterator[tuple[str, Path]]:
    """Every module of sp outside ledger/ (subpackages found from sp/'s links, so a package
    added or renamed is scanned too)."""
    yield "sp/__init__.py", PACKAGE / "__init__.py"
    for link in sorted(PACKAGE.iterdir()):
        if not link.is_symlink() or link.name == "ledger":
            continue
        folder = link.resolve()
        for path in sorted(folder.rglob("*.py")):
            yield f"{link.name}/{path.relative_to(folder)}", path


def test_nothing_above_the_ledger_names_sqlite3() -> None:
    found = {rel: lines for rel, path in _modules_above_ledger()
             if rel not in SQLITE_ALLOWED
             and (lines := _sqlite_uses(ast.parse(path.read_text(), str(path))))}
    assert not found, f"sqlite3 used above ledger/ (go through sp.ledger.interface): {found}"
    for rel in SQLITE_ALLOWED:  # the exception still exists (else drop it from the list)
        assert (REPO / rel).is_file()


def test_one_transaction_manager_opens_begin_immediate() -> None:
    """Appends, side-table writes and migrations share one BEGIN IMMEDIATE and one error
    translation (the archive file, another database, has its own connection)."""
    source = (REPO / "ledger" / "store.py").read_text()
    code = [n.value for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and n.value.strip().upper().startswith("BEGIN")]
    assert code == ["BEGIN IMMEDIATE"]


def test_a_migration_failure_is_translated_and_rolled_back(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Migrations run in the same transaction manager as appends: a driver error inside one
    leaves as a domain error, and nothing of the half-applied migration stays."""
    from sp.ledger import schema
    from sp.ledger import store as store_mod

    db = tmp_path / "ledger.db"
    EventStore(db).close()
    broken = [*schema.MIGRATIONS, "CREATE TABLE extra (x);\nCREATE TABLE extra (x);"]
    monkeypatch.setattr(store_mod, "MIGRATIONS", broken)
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", len(broken))
    with pytest.raises(LedgerError) as info:
        EventStore(db)
    assert not isinstance(info.value, (LedgerBusyError, LedgerDamagedError))
    assert "already exists" in str(info.value)
    monkeypatch.undo()
    with EventStore(db) as again:
        assert again.query("SELECT name FROM sqlite_master WHERE name = 'extra'") == []
        assert again.query_one("PRAGMA user_version") == (schema.SCHEMA_VERSION,)


def test_the_store_works_through_the_interface_alone(db_path: Path) -> None:
    ledger: Ledger = EventStore(db_path)  # no projection hooks: any event on any stream
    with ledger.transaction() as tx:
        recorded = tx.append("s1", [ev.ActionQueued()], 0)
        assert tx.stream_version("s1") == 1
    assert ledger.head()[0] == recorded[0].seq
    assert [r.seq for r in ledger.read_all(0)] == [recorded[0].seq]
    assert [r.version for r in ledger.read_stream("s1")] == [1]
    ledger.close()
