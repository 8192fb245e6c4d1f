"""The ledger's interface (sp.ledger.interface) is what the SQLite store offers, and the seam
holds: nothing above ledger/ names the driver.

mypy --strict proves the signatures (``_implements`` in ledger/store.py assigns an EventStore
to a ``Ledger``); these tests prove the members exist at run time, and keep ``sqlite3`` inside
the ledger, so that a PostgreSQL backend can stand behind the same Protocols.
"""

from __future__ import annotations

import ast
import contextlib
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


# Where code above ledger/ may still name the concrete SQLite classes in an annotation: the
# constructor, and operations on the SQLite file itself (quick_check, archive files, chain
# verification, the projection engine's hooks/raw scans/DDL scripts). Everything else types
# against sp.ledger.interface (Ledger, LedgerTransaction). module -> functions ("*": all).
CONCRETE_ALLOWED: dict[str, set[str]] = {
    "commands/home.py": {"open"},
    "commands/replay.py": {"refuse_damaged", "replay", "check"},
    "commands/retention.py": {"archive", "_record_archived", "_rebuild_projections",
                              "audit_archived"},
    "commands/ledger_marker.py": {"verify_home"},
    "projections/engine.py": {"*"},
}
CONCRETE = {"EventStore", "Transaction"}


def _annotations(tree: ast.AST) -> Iterator[tuple[str, ast.expr]]:
    """(enclosing function or "", annotation) for every annotation in the module."""
    def walk(node: ast.AST, func: str) -> Iterator[tuple[str, ast.expr]]:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is not None and arg.annotation is not None:
                    yield func, arg.annotation
            if node.returns is not None:
                yield func, node.returns
        elif isinstance(node, ast.AnnAssign):
            yield func, node.annotation
        for child in ast.iter_child_nodes(node):
            yield from walk(child, func)
    yield from walk(tree, "")


def _names_in(annotation: ast.expr) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(annotation):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):  # "EventStore"
            with contextlib.suppress(SyntaxError):
                names |= _names_in(ast.parse(node.value, mode="eval").body)
    return names


def test_code_above_the_ledger_types_against_the_protocols() -> None:
    found = []
    for rel, path in _modules_above_ledger():
        allowed = CONCRETE_ALLOWED.get(rel, set())
        if "*" in allowed:
            continue
        for func, annotation in _annotations(ast.parse(path.read_text(), str(path))):
            if func not in allowed and (hit := _names_in(annotation) & CONCRETE):
                found.append(f"{rel}:{annotation.lineno} {func or '<module>'}: {sorted(hit)}")
    assert not found, ("annotate with sp.ledger.interface.Ledger / LedgerTransaction, not the "
                       f"SQLite classes (or extend CONCRETE_ALLOWED, saying why): {found}")
    for rel in CONCRETE_ALLOWED:  # each exception still exists (else drop it from the list)
        assert (REPO / rel).is_file()
