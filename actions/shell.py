"""The ``shell`` action type: run a command (argv, or one line through ``/bin/sh -c``).

```yaml
- id: build
  type: shell
  payload: {command: [make, -j4], cwd: src, env: {CC: clang}}
  rollback: {command: "make clean", shell: true}
```

A string ``command`` without ``shell: true`` is split like a shell would split it (no
expansion, no redirection); with ``shell: true`` it runs through ``/bin/sh -c`` as written.
"""

from __future__ import annotations

import shlex

import msgspec

from sp.actions import ActionType, Command, Requirement, register


class ShellPayload(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    command: list[str] | str
    shell: bool = False
    cwd: str | None = None
    env: dict[str, str] = {}


def _argv(payload: ShellPayload) -> list[str]:
    command = payload.command
    if payload.shell:
        return [command if isinstance(command, str) else " ".join(command)]
    return shlex.split(command) if isinstance(command, str) else list(command)


def command(payload: ShellPayload) -> Command:
    return Command(argv=_argv(payload), shell=payload.shell, cwd=payload.cwd,
                   env=dict(payload.env))


def compensation(payload: ShellPayload, rollback: ShellPayload | None) -> Command | None:
    """The rollback command, in the action's directory and environment unless it says else."""
    if rollback is None:
        return None
    return Command(argv=_argv(rollback), shell=rollback.shell,
                   cwd=rollback.cwd if rollback.cwd is not None else payload.cwd,
                   env={**payload.env, **rollback.env})


def _requirement(where: str, payload: ShellPayload, cwd: str | None,
                 env: dict[str, str]) -> Requirement | None:
    if payload.shell:
        return Requirement(f"{where}.shell", "/bin/sh")
    try:
        argv = _argv(payload)
    except ValueError:
        return None  # reported by check()
    if not argv:
        return None
    suffix = "[0]" if isinstance(payload.command, list) else ""
    return Requirement(f"{where}.command{suffix}", argv[0], cwd, env)


def requires(payload: ShellPayload, rollback: ShellPayload | None) -> list[Requirement]:
    found = [_requirement("payload", payload, payload.cwd, payload.env)]
    if rollback is not None:
        undo = compensation(payload, rollback)
        assert undo is not None
        found.append(_requirement("rollback", rollback, undo.cwd, undo.env))
    return [r for r in found if r is not None]


def _check_one(where: str, payload: ShellPayload) -> list[tuple[str, str]]:
    try:
        argv = _argv(payload)
    except ValueError as e:
        return [(f"{where}.command", f"cannot split the command: {e}")]
    if not argv or not argv[0].strip():
        return [(f"{where}.command", "the command is empty")]
    return []


def check(payload: ShellPayload, rollback: ShellPayload | None) -> list[tuple[str, str]]:
    """An empty command, or a string that does not split (an unclosed quote)."""
    found = _check_one("payload", payload)
    if rollback is not None:
        found += _check_one("rollback", rollback)
    return found


SHELL = register(ActionType(
    name="shell", payload=ShellPayload, rollback=ShellPayload, command=command,
    compensation=compensation, requires=requires, check=check,
))
