"""Decoding plan documents field by field, so that validation reports every problem.

msgspec stops at the first error of a document; a plan's author wants them all. Each mapping
is checked key by key against its Struct: unknown keys, missing required fields and every
mistyped field are each a :class:`Problem` naming its path (``$.actions[2].timeout``).
"""

from __future__ import annotations

import difflib
from typing import Any, Literal, TypeVar, get_args, get_origin

import msgspec

from sp.agents.units import dec_hook

S = TypeVar("S", bound=msgspec.Struct)


class Problem(msgspec.Struct, frozen=True):
    """One thing wrong with a plan: which file, where in it, what."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message}"


class Problems:
    """Problems found so far, in the order they were found."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, file: str, path: str, message: str) -> None:
        self.items.append(Problem(file, path, message))

    def __len__(self) -> int:
        return len(self.items)


def split_error(message: str) -> tuple[str, str]:
    """msgspec's ``text - at `$.x[0]``` as (``.x[0]``, ``text``)."""
    text, sep, where = message.rpartition(" - at `")
    if not sep:
        return "", message
    where = where.rstrip("`")
    if "` in `" in where:  # a mapping key is wrong: "key` in `$.env"
        where = where.split("` in `", 1)[1]
        text = f"a key: {text}"
    return where[1:], text


def kind(value: Any) -> str:
    """A value's type as a plan's author would call it."""
    if value is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", str: "text", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def convert(value: Any, tp: Any, file: str, path: str, problems: Problems) -> tuple[bool, Any]:
    """``msgspec.convert`` with the error recorded at ``path``; returns (ok, value)."""
    try:
        return True, msgspec.convert(value, tp, dec_hook=dec_hook)
    except msgspec.ValidationError as e:
        sub, text = split_error(str(e))
        choices = _choices(tp)
        if choices and text.startswith("Invalid enum value"):
            text = f"expected one of {', '.join(choices)}, got {value!r}"
        problems.add(file, f"{path}{sub}", text)
        return False, None


def _choices(tp: Any) -> list[str]:
    """The words of a ``Literal[...]`` type (also inside ``X | None``)."""
    if get_origin(tp) is Literal:
        return [str(a) for a in get_args(tp)]
    return [c for arg in get_args(tp) for c in _choices(arg)] if get_args(tp) else []


def decode_fields(raw: Any, cls: type[S], file: str, path: str, problems: Problems,
                  skip: tuple[str, ...] = ()) -> S | None:
    """Decode a mapping into ``cls``, recording every problem; None if there was any.

    Keys in ``skip`` are left to the caller (they are decoded separately).
    """
    if not isinstance(raw, dict):
        problems.add(file, path, f"expected a mapping, got {kind(raw)}")
        return None
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    before = len(problems)
    good: dict[str, Any] = {}
    for key in raw:
        if key in skip:
            continue
        if not isinstance(key, str) or key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.add(file, f"{path}.{key}", f"unknown field{hint}")
    for name, field in fields.items():
        if name in skip:
            continue
        if name not in raw:
            if field.required:
                problems.add(file, f"{path}.{name}", "required field missing")
            continue
        if convert(raw[name], field.type, file, f"{path}.{name}", problems)[0]:
            good[name] = raw[name]
    if len(problems) != before:
        return None
    try:
        return msgspec.convert(good, cls, dec_hook=dec_hook)
    except msgspec.ValidationError as e:  # a rule across fields; none today
        sub, text = split_error(str(e))
        problems.add(file, f"{path}{sub}", text)
        return None
