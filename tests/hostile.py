"""Shared parts of the hostile-input tests: the ledger fingerprint, the one-line-error check,
document writers (YAML, TOML) and hypothesis strategies for bad documents and bytes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from click.testing import Result
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from sp.commands.home import Home

# Fast enough for ~40 s over every format on two cores; failures print the example and a blob
# for @reproduce_failure (no example database: nothing is remembered between runs).
FUZZ = settings(max_examples=150, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])

# Where in the file: a `$.path` (or `$:` for the whole document), a line (`file:3:` too),
# a position or a byte.
PLACE = re.compile(r"^:\d+:|\$(?=[.\[:]|$|\s)|\bline \d+|\bposition \d+|\bbyte \d+|end of document")


def ledger_state(home: Home) -> dict[str, str]:
    """SHA-256 of ledger.db and of its -wal and -shm side files when present."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(home.root.glob("ledger.db*")) if not p.name.endswith("-shm")}


def assert_one_line_error(output: str, file: str, exit_code: int) -> None:
    """Exit 2 and exactly one ``Error:`` line naming ``file`` and a place in it."""
    assert exit_code == 2, (exit_code, output)
    assert "Traceback" not in output, output
    assert output.startswith("Error: ") and output.endswith("\n"), output
    assert output.count("\n") == 1, output
    assert file in output, (file, output)
    rest = output.split(file, 1)[1]
    assert PLACE.search(rest), f"no place named in {output!r}"


def assert_rejected(result: Result, file: str) -> None:
    assert_one_line_error(result.output, file, result.exit_code)


def assert_robust(result: Result, file: str) -> bool:
    """Either accepted (exit 0) or rejected as :func:`assert_rejected` says; True if accepted."""
    if result.exit_code == 0:
        return True
    assert_rejected(result, file)
    return False


# -- writers -----------------------------------------------------------------------------------

# What YAML lets a file hold as it is (its "printable" set); anything else is written \\uXXXX.
# (NEL and the Unicode line separators too: YAML 1.1 folds them inside quotes.)
_YAML_RAW = re.compile(
    "[^\t\n\r\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def yaml_text(doc: Any) -> str:
    """JSON is YAML (flow style), and it writes every string escaped: the safest writer."""
    text = json.dumps(doc, ensure_ascii=False)
    return _YAML_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def _toml_str(s: str) -> str:
    out = json.dumps(s, ensure_ascii=False)
    return out.replace("\x7f", "\\u007f")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v) if isinstance(v, float) else str(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_str(str(k))} = {_toml_value(x)}"
                               for k, x in v.items()) + "}"
    raise TypeError(f"no TOML for {v!r}")


def toml_text(doc: dict[str, Any]) -> str:
    """Top-level keys one a line, everything below as inline tables and arrays."""
    return "".join(f"{_toml_str(str(k))} = {_toml_value(v)}\n" for k, v in doc.items())


def toml_ok(doc: Any) -> bool:
    """Whether TOML can say it at all (no nulls; top level a table; floats finite)."""
    if isinstance(doc, float):
        return doc == doc and doc not in (float("inf"), float("-inf"))
    if isinstance(doc, dict):
        return all(isinstance(k, str) and toml_ok(v) for k, v in doc.items())
    if isinstance(doc, list):
        return all(toml_ok(v) for v in doc)
    return doc is not None


def write(path: Path, doc: Any, fmt: str) -> Path:
    target = path.with_suffix(".toml" if fmt == "toml" else ".yaml")
    target.write_text(toml_text(doc) if fmt == "toml" else yaml_text(doc), encoding="utf-8")
    return target


# -- strategies --------------------------------------------------------------------------------

ident = st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True)
# Any text a person could type, unicode included (no lone surrogates: no file can hold one).
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=16)
plain_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=16)
arg = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
              max_size=12)
program = st.sampled_from(["echo", "true", "/bin/sh", "python3", "ls"])
command = st.builds(lambda p, rest: [p, *rest], program, st.lists(arg, max_size=3))
huge = st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30, 10**400, 1e308, -1e308])
odd_float = st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e-320, -0.0])
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), any_text, huge)
junk = st.recursive(scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(any_text, inner, max_size=3)), max_leaves=8)

# A value no typed field takes (only an untyped ``Any`` would): a mapping with a key that is
# no field's name, holding a list of a float. Wrong for text, numbers, booleans, lists, Structs
# (unknown field), dict[str, str] and dict[str, list[str]] alike.
poison = st.builds(lambda k, x: {f"zz{k}": [x]}, any_text,
                   st.floats(allow_nan=False, allow_infinity=False))


def paths_of(doc: Any, skip: tuple[str, ...] = (),
             at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in ``doc`` (not the root), except below keys named in ``skip``."""
    out: list[tuple[Any, ...]] = []
    items: list[tuple[Any, Any]] = []
    if isinstance(doc, dict):
        items = [(k, v) for k, v in doc.items() if k not in skip]
    elif isinstance(doc, list):
        items = list(enumerate(doc))
    for k, v in items:
        out.append((*at, k))
        out.extend(paths_of(v, skip, (*at, k)))
    return out


def replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of ``doc`` with the value at ``path`` replaced."""
    if not path:
        return value
    head, *rest = path
    if doc is None:  # a missing mapping is made
        doc = {}
    if isinstance(doc, dict):  # a missing key is added
        return {**doc, head: replaced(doc.get(head), tuple(rest), value)}
    return [replaced(v, tuple(rest), value) if i == head else v for i, v in enumerate(doc)]


@st.composite
def poisoned(draw: st.DrawFn, docs: st.SearchStrategy[dict[str, Any]],
             skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A valid document with one value somewhere replaced by :data:`poison`."""
    doc = draw(docs)
    path = draw(st.sampled_from(paths_of(doc, skip)))
    return replaced(doc, path, draw(poison))  # type: ignore[no-any-return]


@st.composite
def with_unknown_key(draw: st.DrawFn, docs: st.SearchStrategy[dict[str, Any]],
                     skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A valid document with an unknown key added to one of its Struct-like mappings.

    Only mappings whose keys are all identifiers are Structs here (task tables are too, but
    an extra entry there is a task, and it is poisoned so that it is still wrong)."""
    doc = draw(docs)
    targets = [()] + [p for p in paths_of(doc, skip) if isinstance(_at(doc, p), dict)]
    path = draw(st.sampled_from(targets))
    node = dict(_at(doc, path))
    node[f"zz_{draw(ident)}"] = draw(poison)
    return replaced(doc, path, node)  # type: ignore[no-any-return]


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def deep(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def laughs(levels: int, width: int) -> str:
    """A "billion laughs" YAML document: ``width ** levels`` values once aliases are expanded."""
    lines = ["id: bomb", f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


# Broken syntax, one sample of each way to get YAML or TOML wrong.
BAD_YAML = [
    "id: [unclosed\n", "id: {a: 1\n", "a: b: c\n", "- a\nb: c\n", "id: 'unterminated\n",
    "\tid: tab-indented\n", "id: x\n  bad: indent\n", "*undefined_alias\n",
    "id: !!python/object:os.system x\n",
    "id: !!binary '%%%'\n", "? [a, b]\n: c\n", "id: x\nid: y\n", "%YAML 9.9\n---\nid: x\n",
    "---\nid: a\n---\nid: b\n", "a: &x 1\nb: *y\n", "id: \"\\q\"\n",
]
BAD_TOML = [
    "id = \n", "id = 'x\n", "[actions\n", "id = \"x\"\nid = \"y\"\n", "a = [1, 2\n",
    "a = {b = 1,}\n", "= 1\n", "a.b = 1\na = 2\n", "a = 1979-13-45\n", "a = \"\\q\"\n",
    "a = 0x\n", "[[a]]\n[a]\n", "a = \"\x00\"\n",
]
