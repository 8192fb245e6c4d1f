"""The entry point of the built-in file types, run as a process like any action::

    python -m sp.actions.run <type> apply '<payload JSON>'
    python -m sp.actions.run <type> undo  '<payload JSON>' [ORIGINAL_ACTION_ID]

``<type>`` is ``modify_files`` (:mod:`sp.actions.files`), ``configure_tooling``
(:mod:`sp.actions.tooling`) or ``clone_template`` (:mod:`sp.actions.template`). The home is
``$SP_HOME``, the action ``$SP_ACTION_ID``; what ``apply`` did is recorded as checkpoints, and
``undo`` reads them from the ledger: the original action is the argument, or else the
``compensates`` of the running compensation (a plan's rollback sets it). Exit 0 on success,
2 on a bad payload or a refused change, 1 on any other error.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from sp.ledger.errors import UsageError

TYPES = ("modify_files", "configure_tooling", "clone_template", "compress", "decompress",
         "http_request", "sqlite_query", "install_dependencies")


def argv_for(type_name: str, verb: str, payload: msgspec.Struct) -> list[str]:
    # -P: the action's working directory must not shadow sp's own packages
    return [sys.executable, "-P", "-m", "sp.actions.run", type_name, verb,
            msgspec.json.encode(payload).decode()]


def _module(type_name: str) -> Any:
    if type_name == "modify_files":
        from sp.actions import files
        return files
    if type_name == "configure_tooling":
        from sp.actions import tooling
        return tooling
    if type_name == "clone_template":
        from sp.actions import template
        return template
    if type_name in ("compress", "decompress"):
        from sp.actions import compression
        return compression.RUNNERS[type_name]
    if type_name == "http_request":
        from sp.actions import http
        return http
    if type_name == "sqlite_query":
        from sp.actions import sqlitedb
        return sqlitedb
    if type_name == "install_dependencies":
        from sp.actions import deps
        return deps
    raise UsageError(f"unknown built-in type {type_name!r} (known: {', '.join(TYPES)})")


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4) or argv[1] not in ("apply", "undo"):
        print("usage: python -m sp.actions.run TYPE apply|undo PAYLOAD_JSON [ORIGINAL_ID]",
              file=sys.stderr)
        return 2
    try:
        module = _module(argv[0])
        t = module.TYPE
        payload = msgspec.json.decode(argv[2].encode(), type=t.payload)
        if argv[1] == "apply":
            result = module.apply(payload)
        else:
            result = module.undo(payload, argv[3] if len(argv) == 4 else None)
    except (UsageError, msgspec.ValidationError, msgspec.DecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(msgspec.json.encode(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
