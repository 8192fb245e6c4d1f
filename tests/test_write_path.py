"""The one write path, checked on the source so that it cannot drift (issue 12, item 3).

* Events are appended only in the commands layer: no ``.append(stream, events, version)`` or
  ``.append_many(...)`` call anywhere else (the ledger's own ``EventStore.append`` excepted:
  it is the implementation).
* SQL is executed only in the ledger and the projections: no ``.execute``/``.executemany``/
  ``.executescript`` call elsewhere, and no string that starts a writing or DDL statement
  (``INSERT``, ``UPDATE``, ``DELETE``, ``CREATE``, ...) either, so that a write cannot hide in
  a ``query()``; side tables are reached through :mod:`sp.ledger.side`.
* ``cli/`` runs no SQL at all: not even a read (it calls query functions and renders).

The scan reads every module of the package ``sp`` (its subpackages are the top-level folders
that ``sp/`` links to), with :mod:`ast`, so that comments, docstrings and a list's one-argument
``append`` do not count.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The layers that may do what the rules forbid elsewhere, as paths under ROOT.
APPENDERS = (
    "commands/",
    "ledger/store.py",  # the append itself, and EventStore.append's one-transaction shortcut
)
SQL_RUNNERS = ("ledger/", "projections/")
# Not the ledger: the built-in ``sqlite_query`` action type runs a user's statement on the
# user's own database file, which is what it is for.
SQL_ELSEWHERE = ("actions/sqlitedb.py",)
EXECUTE_NAMES = {"execute", "executemany", "executescript", "executescript_safe"}
QUERY_NAMES = {"query", "query_one"}
_WRITE_SQL = re.compile(
    r"\s*(INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER)\s+(OR\s+\w+\s+)?"
    r"(INTO|TABLE|FROM|INDEX|TRIGGER|VIEW|UNIQUE|TEMP|\w+\s+SET)\b", re.IGNORECASE)


def _modules() -> Iterator[tuple[str, ast.Module]]:
    """``(path relative to ROOT, parsed module)`` of every module of the package."""
    for link in sorted((ROOT / "sp").iterdir()):
        if not link.is_dir():
            continue
        folder = link.resolve()
        for path in sorted(folder.rglob("*.py")):
            rel = f"{folder.name}/{path.relative_to(folder).as_posix()}"
            yield rel, ast.parse(path.read_text(), filename=str(path))


MODULES = list(_modules())


def _calls(tree: ast.Module, names: set[str]) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in names:
            yield node


def _under(rel: str, prefixes: tuple[str, ...]) -> bool:
    return any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in prefixes)


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (prose, not SQL)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def test_the_scan_sees_the_package() -> None:
    found = {rel for rel, _ in MODULES}
    assert "commands/actions.py" in found and "cli/main.py" in found
    assert len(found) > 100


def test_events_are_appended_only_in_the_commands_layer() -> None:
    found = []
    for rel, tree in MODULES:
        if _under(rel, APPENDERS):
            continue
        for call in _calls(tree, {"append", "append_many"}):
            # list.append takes one argument; an event append takes (stream, events, version)
            if call.func.attr == "append_many" or len(call.args) + len(call.keywords) >= 2:  # type: ignore[attr-defined]
                found.append(f"{rel}:{call.lineno}")
    assert found == [], "events appended outside commands/: " + ", ".join(found)


def test_sql_is_executed_only_in_the_ledger_and_the_projections() -> None:
    found = []
    for rel, tree in MODULES:
        if _under(rel, SQL_RUNNERS + SQL_ELSEWHERE):
            continue
        found += [f"{rel}:{c.lineno}" for c in _calls(tree, EXECUTE_NAMES)]
    assert found == [], "SQL executed outside ledger/ and projections/: " + ", ".join(found)


def test_no_writing_sql_outside_the_ledger_and_the_projections() -> None:
    """A write (or DDL) cannot hide in a ``query()`` either: side tables have named functions
    in sp.ledger.side, and their DDL is in the ledger's migrations."""
    found = []
    for rel, tree in MODULES:
        if _under(rel, SQL_RUNNERS + SQL_ELSEWHERE):
            continue
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docs and _WRITE_SQL.match(node.value):
                found.append(f"{rel}:{node.lineno}: {node.value.strip()[:40]!r}")
    assert found == [], "writing SQL outside ledger/ and projections/: " + ", ".join(found)


def test_the_cli_runs_no_sql() -> None:
    found = []
    for rel, tree in MODULES:
        if rel.startswith("cli/"):
            found += [f"{rel}:{c.lineno}" for c in _calls(tree, EXECUTE_NAMES | QUERY_NAMES)]
    assert found == [], "SQL in cli/ (call a query function instead): " + ", ".join(found)


@pytest.mark.parametrize("source, rule", [
    ("tx.append('s', [e], 0)\n", "append"),
    ("store.append_many([])\n", "append"),
    ("tx.execute('DELETE FROM leases')\n", "execute"),
    ("tx.query_one('INSERT INTO t VALUES (1)')\n", "write"),
])
def test_the_rules_catch_what_they_forbid(source: str, rule: str) -> None:
    """The checks above are not vacuous: each finds its own kind of offence."""
    tree = ast.parse(source)
    if rule == "append":
        assert list(_calls(tree, {"append", "append_many"}))
    elif rule == "execute":
        assert list(_calls(tree, EXECUTE_NAMES))
    else:
        consts = [n for n in ast.walk(tree) if isinstance(n, ast.Constant)]
        assert any(_WRITE_SQL.match(str(n.value)) for n in consts)
    assert not list(_calls(ast.parse("rows.append(1)\n"), {"append_many"}))
