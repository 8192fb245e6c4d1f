"""The ``configure_tooling`` action type: set keys in a JSON, TOML, YAML or INI file.

```yaml
- id: lint
  type: configure_tooling
  payload: {path: pyproject.toml, set: {"tool.ruff.line-length": 100}}
```

``format`` is inferred from the suffix (``.json``, ``.toml``, ``.yaml``/``.yml``,
``.ini``/``.cfg``) unless given. A dotted key names nested tables (for INI: ``section.key``,
values written as text). A missing file is created. TOML is read with :mod:`tomllib` and
written by a small writer here (tables, arrays, strings, numbers, booleans): no dependency for
one file format; comments of a rewritten TOML, YAML or JSON file are not kept.

The before-image (bytes and mode, or "absent") is stored under ``$SP_HOME/blobs`` and
recorded in a checkpoint before the file is rewritten (atomically); the compensation puts the
exact bytes back, or removes a file the action created.
"""

from __future__ import annotations

import configparser
import io
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from sp.actions import ActionType, Command, Requirement, blobs, register
from sp.actions.run import argv_for
from sp.ledger.errors import UsageError

Format = Literal["json", "toml", "yaml", "ini"]
SUFFIXES: dict[str, Format] = {".json": "json", ".toml": "toml", ".yaml": "yaml",
                               ".yml": "yaml", ".ini": "ini", ".cfg": "ini"}


class ToolingPayload(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    path: str
    set: dict[str, Any]
    format: Format | None = None


class NoRollback(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Nothing to say: the compensation restores the recorded before-image."""


def format_of(payload: ToolingPayload) -> Format | None:
    return payload.format or SUFFIXES.get(Path(payload.path).suffix.lower())


def command(payload: ToolingPayload) -> Command:
    return Command(argv=argv_for("configure_tooling", "apply", payload))


def compensation(payload: ToolingPayload, rollback: NoRollback | None) -> Command:
    return Command(argv=argv_for("configure_tooling", "undo", payload))


def requires(payload: ToolingPayload, rollback: NoRollback | None) -> list[Requirement]:
    return []


def check(payload: ToolingPayload, rollback: NoRollback | None) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if not payload.path.strip():
        found.append(("payload.path", "the path is empty"))
    if format_of(payload) is None:
        found.append(("payload.format", f"cannot infer the format of {payload.path!r}: say "
                                        "json, toml, yaml or ini"))
    if not payload.set:
        found.append(("payload.set", "no key to set"))
    for key in payload.set:
        parts = key.split(".")
        if any(not p for p in parts):
            found.append((f"payload.set.{key}", "a key part is empty"))
        elif format_of(payload) == "ini" and len(parts) != 2:
            found.append((f"payload.set.{key}", "an INI key is section.key"))
    return found


def _set(doc: dict[str, Any], key: str, value: Any) -> None:
    *tables, last = key.split(".")
    node = doc
    for t in tables:
        child = node.get(t)
        if not isinstance(child, dict):
            child = node[t] = {}
        node = child
    node[last] = value


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    raise UsageError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(doc: dict[str, Any]) -> str:
    """A TOML document for ``doc``: plain keys first, then each table as ``[a.b]``."""
    out: list[str] = []

    def table(node: dict[str, Any], prefix: list[str]) -> None:
        plain = {k: v for k, v in node.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in node.items() if isinstance(v, dict)}
        if prefix and (plain or not tables):
            out.append(f"[{'.'.join(_toml_key(p) for p in prefix)}]")
        for k, v in plain.items():
            out.append(f"{_toml_key(k)} = {_toml_value(v)}")
        if plain:
            out.append("")
        for k, v in tables.items():
            table(v, [*prefix, k])

    table(doc, [])
    return "\n".join(out).rstrip("\n") + "\n"


def _load(fmt: Format, text: str) -> Any:
    if fmt == "json":
        return json.loads(text) if text.strip() else {}
    if fmt == "toml":
        return tomllib.loads(text)
    if fmt == "yaml":
        return yaml.safe_load(text) or {}
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string(text)
    return parser


def _dump(fmt: Format, doc: Any) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if fmt == "toml":
        return dump_toml(doc)
    if fmt == "yaml":
        return str(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    out = io.StringIO()
    doc.write(out)
    return out.getvalue()


def configured(fmt: Format, text: str, keys: dict[str, Any]) -> str:
    """``text`` with ``keys`` set."""
    doc = _load(fmt, text)
    if fmt == "ini":
        for key, value in keys.items():
            section, name = key.split(".", 1)
            if not doc.has_section(section):
                doc.add_section(section)
            doc.set(section, name, value if isinstance(value, str) else json.dumps(value))
        return _dump(fmt, doc)
    if not isinstance(doc, dict):
        raise UsageError(f"the document is a {type(doc).__name__}, not a mapping")
    for key, value in keys.items():
        _set(doc, key, value)
    return _dump(fmt, doc)


def apply(payload: ToolingPayload) -> dict[str, Any]:
    from sp.runner import api

    problems = check(payload, None)
    if problems:
        raise UsageError("; ".join(f"{w}: {m}" for w, m in problems))
    fmt = format_of(payload)
    assert fmt is not None
    path = blobs.resolve(payload.path)
    previous = api.last_checkpoint()
    if isinstance(previous, dict) and "before" in previous:
        image: dict[str, Any] = previous["before"]  # a retry: the original is kept
        original = b"" if image["blob"] is None else blobs.get_blob(image["blob"])
    else:
        image = {"path": str(path), **blobs.image_of(path)}
        original = path.read_bytes() if image["blob"] is not None else b""
        blobs.report({"before": image}, step=0)
    try:
        text = configured(fmt, original.decode(), payload.set)
    except (ValueError, yaml.YAMLError, configparser.Error) as e:
        raise UsageError(f"{path}: not valid {fmt}: {e}") from None
    mode = image.get("mode")
    blobs.atomic_write(path, text.encode(), 0o644 if mode is None else mode)
    done = {"before": image, "after": {"path": str(path), "sha256": blobs.sha_of(path)},
            "format": fmt, "keys": sorted(payload.set)}
    blobs.report(done, step=1)
    return done


def undo(payload: ToolingPayload, original: str | None) -> dict[str, Any]:
    action_id = blobs.compensated_action(original)
    found = blobs.recorded(action_id, "before")
    if found is None:
        return {"restored": [], "note": f"{action_id} recorded no before-image: nothing done"}
    image = found["before"]
    blobs.restore(Path(image["path"]), image)
    return {"restored": [image["path"]], "compensates": action_id}


TYPE = register(ActionType(
    name="configure_tooling", payload=ToolingPayload, rollback=NoRollback, command=command,
    compensation=compensation, requires=requires, check=check,
))
