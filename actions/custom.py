"""Custom action types: a decorated Python function (the seed's ``@action_type``), and types
that other packages add through the entry point group ``sp.action_types``.

```python
import msgspec
from sp.actions.custom import action_type

class Greet(msgspec.Struct):
    who: str

def forget(payload: Greet, rollback: None) -> None:
    ...                                   # the compensation (optional)

@action_type("greet", payload=Greet, undo=forget)
def greet(payload: Greet) -> dict[str, str]:
    return {"greeting": f"hello {payload.who}"}   # recorded as the action's checkpoint
```

A plan step ``{type: greet, payload: {who: world}}`` then runs as a real process like every
action: ``python -P -m sp.actions.custom apply greet MODULE PAYLOAD_JSON`` imports the function's
module (so it must be importable: not ``__main__``), decodes the payload, calls the function,
records a result other than None with :func:`sp.runner.api.checkpoint`, and fails (exit 1, the
traceback in the log) when the function raises. ``undo`` runs the same way with ``undo``.

A package adds types with an entry point::

    [project.entry-points."sp.action_types"]
    greet = "mypkg.sp_types"              # a module whose import registers types, or
    deploy_k8s = "mypkg.k8s:K8S_TYPE"     # an ActionType object (registered as loaded)

Entry points are loaded once, with the built-ins; one that fails to load is reported on
stderr and skipped.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from sp.actions import ActionType, Command, Requirement, register

F = TypeVar("F", bound=Callable[..., Any])


class NoRollback(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The ``rollback:`` of a custom type whose undo takes no parameters."""


@dataclass(frozen=True)
class _Function:
    name: str
    module: str
    payload: type[msgspec.Struct]
    rollback: type[msgspec.Struct] | None
    run: Callable[[Any], Any]
    undo: Callable[[Any, Any], Any] | None


_FUNCTIONS: dict[str, _Function] = {}


def _argv(verb: str, fn: _Function, *docs: Any) -> list[str]:
    return [sys.executable, "-P", "-m", "sp.actions.custom", verb, fn.name, fn.module,
            *(msgspec.json.encode(d).decode() for d in docs)]


def action_type(name: str, *, payload: type[msgspec.Struct],
                rollback: type[msgspec.Struct] | None = None,
                undo: Callable[[Any, Any], Any] | None = None,
                requires: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Register the decorated function as the action type ``name``.

    ``payload`` is the Struct a step's ``payload:`` decodes into; ``undo(payload, rollback)``
    is the compensation, with ``rollback`` the decoded ``rollback:`` (a ``rollback`` Struct,
    else always None). ``requires`` names programs the type needs on this machine.

    :raises ValueError: the function is defined in ``__main__`` (a worker could not import it),
        or ``name`` is not a name (:mod:`sp.agents.names`: it reaches argv, logs and plans).
    """
    from sp.agents.names import problem

    why = problem(name) if isinstance(name, str) else "is not text"
    if why is not None:
        raise ValueError(f"action type {name!r} {why}; use letters, digits, '.', '_' and '-'")

    def decorate(func: F) -> F:
        if func.__module__ == "__main__":
            raise ValueError(f"action type {name!r}: {func.__qualname__} is defined in "
                             "__main__; a worker must be able to import its module")
        fn = _Function(name=name, module=func.__module__, payload=payload,
                       rollback=rollback if rollback is not None or undo is None else NoRollback,
                       run=func, undo=undo)
        _FUNCTIONS[name] = fn

        def compensation(p: Any, r: Any) -> Command | None:
            if fn.undo is None:
                return None
            return Command(argv=_argv("undo", fn, p, r))

        register(ActionType(
            name=name, payload=payload, rollback=fn.rollback,
            command=lambda p: Command(argv=_argv("apply", fn, p)),
            compensation=compensation,
            requires=lambda p, r: [Requirement(f"type {name}", prog) for prog in requires],
            check=lambda p, r: [],
        ))
        return func

    return decorate


def main(args: list[str]) -> int:
    if len(args) < 4 or args[0] not in ("apply", "undo"):
        print("usage: python -m sp.actions.custom apply|undo NAME MODULE PAYLOAD_JSON "
              "[ROLLBACK_JSON]", file=sys.stderr)
        return 2
    verb, name, module = args[:3]
    from sp.runner import api

    importlib.import_module(module)
    fn = _FUNCTIONS.get(name)
    if fn is None:
        print(f"sp.actions.custom: importing {module} registered no action type {name!r}",
              file=sys.stderr)
        return 2
    payload = msgspec.json.decode(args[3], type=fn.payload)
    if verb == "apply":
        result = fn.run(payload)
    else:
        assert fn.undo is not None
        raw = args[4] if len(args) > 4 else "null"
        undo_doc = None if raw == "null" or fn.rollback is None else msgspec.json.decode(
            raw, type=fn.rollback)
        result = fn.undo(payload, undo_doc)
    if result is not None:
        data = msgspec.to_builtins(result)
        print(json.dumps(data), flush=True)
        if api.current_action() is not None:
            api.checkpoint(data)
    return 0


if __name__ == "__main__":
    from sp.actions import custom  # the registry the imported module's decorator fills

    sys.exit(custom.main(sys.argv[1:]))
