"""The action-type registry: what a plan's ``type:`` means.

A type is registered once, under its name, with

* ``payload``: the msgspec Struct its ``payload:`` decodes into (errors name their path);
* ``rollback``: the Struct its ``rollback:`` decodes into, or ``None`` when the type cannot be
  undone by a command;
* ``command(payload)``: the :class:`Command` that performs it (argv, shell, cwd, env);
* ``compensation(payload, rollback)``: the :class:`Command` that undoes it, or ``None``;
* ``requires(payload, rollback)``: the programs it needs on this machine (the seed's
  ``check_prerequisites``), each with the path in the plan that names it;
* ``check(payload, rollback)``: problems decoding cannot see (an empty command), each with
  its path below the step;
* ``check_files(payload, directory)`` (optional): problems only the files the step will read
  can show, relative to the step's directory (a template's file names after rendering).

Built in: ``shell``, ``modify_files``, ``configure_tooling``, ``clone_template``, ``run_tests``,
``deploy``/``generate_preview``, ``compress``/``decompress``, ``http_request``, ``sqlite_query``,
``install_dependencies``;
they live in :mod:`sp.actions` and register through the same ``sp.action_types`` entry point
group as other packages' types (``pyproject.toml``), so this registry, which plans and commands
consult, never imports the layer above it. Other packages add theirs through :func:`register`,
``@action_type`` (:mod:`sp.actions.custom`) or that entry point group.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import msgspec


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """A process to run: ``argv`` (or, with ``shell``, one line for ``/bin/sh -c``)."""

    argv: list[str]
    shell: bool = False
    cwd: str | None = None
    env: dict[str, str] = {}

    def as_argv(self) -> list[str]:
        """The argv that runs it, with the shell spelled out (a compensation is plain argv)."""
        return ["/bin/sh", "-c", " ".join(self.argv)] if self.shell else list(self.argv)


class Requirement(msgspec.Struct, frozen=True):
    """A program an action needs: ``where`` is its path below the step (``payload.command[0]``)."""

    where: str
    program: str
    cwd: str | None = None
    env: dict[str, str] = {}


@dataclass(frozen=True)
class ActionType:
    name: str
    payload: type[msgspec.Struct]
    rollback: type[msgspec.Struct] | None
    command: Callable[[Any], Command]
    compensation: Callable[[Any, Any], Command | None]
    requires: Callable[[Any, Any], list[Requirement]]
    check: Callable[[Any, Any], list[tuple[str, str]]]
    # Problems only the files can show (a template's rendered file names), given the step's
    # directory: checked by plan validation like ``check``.
    check_files: Callable[[Any, Path], list[tuple[str, str]]] | None = None


_TYPES: dict[str, ActionType] = {}


def register(action_type: ActionType) -> ActionType:
    """Add a type (a later registration of the same name replaces the earlier one)."""
    _TYPES[action_type.name] = action_type
    return action_type


def get(name: str) -> ActionType | None:
    _load_entry_points()
    return _TYPES.get(name)


def known() -> list[str]:
    _load_entry_points()
    return sorted(_TYPES)


GROUP = "sp.action_types"
_LOADED = False


def _load_entry_points() -> None:
    """Load the ``sp.action_types`` entry points once: sp's own (``sp.actions.*``) first, so that
    another package's type of the same name replaces the built-in, as it always could. An entry
    point is a module whose import registers types, or an :class:`ActionType` (registered here);
    one that fails to load is reported on stderr and skipped: a broken plugin must not break sp.
    """
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    found = sorted(entry_points(group=GROUP), key=lambda ep: not ep.value.startswith("sp."))
    for ep in found:
        try:
            obj = ep.load()
        except Exception as e:
            print(f"sp: warning: action type entry point {ep.name} ({ep.value}) failed to "
                  f"load: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        if isinstance(obj, ActionType):
            register(obj)


def find_program(program: str, cwd: str | None = None, env: dict[str, str] | None = None) -> bool:
    """Whether ``program`` can be executed here: a path (relative to ``cwd``) that is an
    executable file, or a name found on ``PATH`` (the action's own ``PATH`` when it sets one)."""
    if "/" in program:
        path = Path(program)
        if not path.is_absolute() and cwd:
            path = Path(cwd) / path
        return path.is_file() and os.access(path, os.X_OK)
    search = (env or {}).get("PATH", os.environ.get("PATH", os.defpath))
    return shutil.which(program, path=search) is not None
