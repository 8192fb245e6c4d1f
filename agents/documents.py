"""Reading configuration documents (YAML or TOML) that may be hostile.

``yaml.safe_load`` builds no objects but it still trusts the document's shape:

* aliases are shared, not copied, so nine anchors of nine aliases each ("billion laughs") load
  in a millisecond, and then every walk over the result (our key fix-up, msgspec, hashing) visits
  10**9 nodes. :data:`MAX_NODES` caps the size of the document *as expanded*;
* an alias inside its own anchor (``&a [*a]``) makes a cycle that no walk ends;
* the composer recurses once per nesting level: 5000 ``[`` raise RecursionError, not a
  YAMLError. :data:`MAX_DEPTH` refuses that first, with the line of the too-deep node;
* a repeated key silently keeps the last value: the reader of the file sees one setting and
  sp would run another. It is refused (YAML 1.2 requires unique keys).

Every refusal is a :class:`yaml.MarkedYAMLError`, so that the caller reports a line and column.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

MAX_DEPTH = 64
MAX_NODES = 200_000
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                    self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class says so, with its mark
                    continue
                if duplicate:
                    raise ConstructorError("while constructing a mapping", node.start_mark,
                                           f"found duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _check_size(root: yaml.Node) -> None:
    """Count the nodes of the document with every alias expanded, without expanding it."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise ComposerError(None, None, "an alias refers to a node that contains it",
                                node.start_mark)
        open_.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        if total > MAX_NODES:
            raise ComposerError(None, None, f"expands to more than {MAX_NODES} values "
                                "(aliases included)", node.start_mark)
        open_.discard(key)
        sizes[key] = total
        return total

    size(root)


def safe_load(text: bytes | str) -> Any:
    """``yaml.safe_load`` within the limits above.

    :raises yaml.YAMLError: malformed, or over a limit (a MarkedYAMLError names the place).
    """
    return safe_load_marked(text)[0]


# Where each value of a document starts, by its path as the decoders name it (``$``,
# ``$.actions[0].payload``): (line, column), both from 1.
Marks = dict[str, tuple[int, int]]


def safe_load_marked(text: bytes | str) -> tuple[Any, Marks]:
    """:func:`safe_load`, and the :data:`Marks` of the document.

    :raises yaml.YAMLError: as :func:`safe_load`.
    """
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, {}
        _check_size(root)
        marks: Marks = {}
        _mark(root, "$", marks)
        return loader.construct_document(root), marks
    finally:
        loader.dispose()


def _mark(node: yaml.Node, path: str, marks: Marks) -> None:
    """Record where ``node`` and what it holds start (an alias's target is marked where the
    anchor is: the first path that reaches a shared node wins)."""
    if path in marks:
        return
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            _mark(child, f"{path}[{i}]", marks)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE:
                _mark(value, f"{path}.{key.value}", marks)


def place(marks: Marks, path: str) -> tuple[int, int] | None:
    """Where the value at ``path`` (or the nearest enclosing one that is marked) starts."""
    while path:
        if path in marks:
            return marks[path]
        cut = max(path.rfind("."), path.rfind("["))
        if cut <= 0:
            break
        path = path[:cut]
    return marks.get("$")


# A quoted piece of a parser's message: PyYAML and tomllib quote keys, aliases, tags and
# characters of the document. Kept: the token names and punctuation they quote as syntax.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_SYNTAX = re.compile(r"^['\"](?:<[a-z ]+>|[][{}(),:=?-]{1,2}|\\\\|\\)['\"]$")


def redact(problem: str) -> str:
    """A parser's problem without the document's own text (quoted pieces become ``'…'``)."""
    return _QUOTED.sub(lambda m: m.group() if _SYNTAX.match(m.group()) else "'…'", problem)


def toml_deep_line(text: str, limit: int = MAX_DEPTH) -> int | None:
    """The line on which brackets first nest deeper than ``limit`` (strings not parsed: only
    used to place an error that tomllib reports without a place)."""
    depth = 0
    for n, line in enumerate(text.splitlines(), 1):
        for ch in line:
            if ch in "[{":
                depth += 1
                if depth > limit:
                    return n
            elif ch in "]}":
                depth -= 1
    return None
