"""The trigger file, in the seed's shape, decoded into msgspec Structs (errors name paths).

```yaml
agent: iot-001                    # default agent for `action:` names without one
triggers:
  filesystem:
    - path: /data/incoming
      events: [create, modify]
      action: process_new_file    # a task of `agent`, or "agent/task"
      glob: "*.csv"
      debounce: 2s
  network:
    - port: 8080
      protocol: webhook
      name: github                # POST /hooks/github
      action: handle_webhook
      secret_env: GITHUB_SECRET   # or secret: ..., with auth: token | hmac
  hardware:
    - device: /dev/ttyUSB0
      event: data_available
      baud: 9600
      pattern: 'TEMP=(?P<celsius>\\d+)'
      action: read_sensor_data
conditions:
  disk_space_low:
    trigger: disk_usage > 90%
    action: cleanup_old_files
    cooldown: 1h
continuous:
  monitor_temperature_sensor:
    interval: 5s
    action: check_temperature
```
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from sp.agents import names
from sp.agents.config import _rename_path, load_document
from sp.agents.units import Duration, Size, dec_hook
from sp.ledger.errors import UsageError


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True,
              omit_defaults=True):
    pass


class FileTrigger(_Strict, frozen=True):
    path: str
    action: str
    events: list[Literal["create", "modify", "delete", "close_write", "moved_to"]] = (
        msgspec.field(default_factory=lambda: ["create", "close_write"]))
    glob: str = "*"
    recursive: bool = False
    debounce: Duration = Duration(1000)
    name: str | None = None


class WebhookTrigger(_Strict, frozen=True):
    port: int
    action: str
    protocol: Literal["webhook"] = "webhook"
    name: str | None = None          # the path is /hooks/<name>
    host: str = "127.0.0.1"
    auth: Literal["token", "hmac"] = "token"
    secret: str | None = None
    secret_env: str | None = None
    max_body: Size = Size(1 << 20)


class SerialTrigger(_Strict, frozen=True):
    device: str
    action: str
    event: Literal["data_available", "line"] = "data_available"
    baud: int = 9600
    pattern: str = ".*"
    name: str | None = None
    reopen: Duration = Duration(1000)


class Triggers(_Strict, frozen=True):
    filesystem: list[FileTrigger] = []
    network: list[WebhookTrigger] = []
    hardware: list[SerialTrigger] = []


class Condition(_Strict, frozen=True):
    trigger: str                      # "disk_usage > 90%", "cpu_temp > 80C", "internet_connected"
    action: str
    cooldown: Duration = Duration(300_000)
    interval: Duration = Duration(30_000)
    command: list[str] | None = None  # for "command_succeeds" / "command_fails"


class Continuous(_Strict, frozen=True):
    interval: Duration | None = None  # required with action:; python: may take the decorator's
    action: str | None = None         # a task to submit each interval
    python: str | None = None         # or "module:function" called with a context
    settings: dict[str, Any] = {}     # what the function reads as context.<key>


class TriggerFile(_Strict, frozen=True):
    agent: str | None = None
    triggers: Triggers = Triggers()
    conditions: dict[str, Condition] = {}
    continuous: dict[str, Continuous] = {}
    load_samples: bool = True         # the daemon records load for adaptive schedules


def decode_triggers(raw: Any, source: str) -> TriggerFile:
    """:raises UsageError: the first problem, with its path."""
    if not isinstance(raw, dict):
        raise UsageError(f"{source}: $: expected a mapping with triggers:, conditions: or "
                         "continuous:")
    try:
        doc = msgspec.convert(raw, TriggerFile, dec_hook=dec_hook)
    except msgspec.ValidationError as e:
        raise UsageError(_rename_path(str(e), f"{source}: $")) from None
    named: list[tuple[str, int, str]] = [
        *(("filesystem", i, t.action) for i, t in enumerate(doc.triggers.filesystem)),
        *(("network", i, t.action) for i, t in enumerate(doc.triggers.network)),
        *(("hardware", i, t.action) for i, t in enumerate(doc.triggers.hardware)),
    ]
    _check_names(doc, source)
    for kind, i, action in named:
        _check_action(doc, action, f"{source}: $.triggers.{kind}[{i}].action")
    for i, serial in enumerate(doc.triggers.hardware):
        try:
            re.compile(serial.pattern)
        except re.error as e:
            raise UsageError(f"{source}: $.triggers.hardware[{i}].pattern: not a regular "
                             f"expression: {e}") from None
    from sp.agents.condition_syntax import parse_condition

    for name, cond in doc.conditions.items():
        _check_action(doc, cond.action, f"{source}: $.conditions.{name}.action")
        parse_condition(cond, f"{source}: $.conditions.{name}")
    for name, cont in doc.continuous.items():
        if (cont.action is None) == (cont.python is None):
            raise UsageError(f"{source}: $.continuous.{name}: needs exactly one of action or "
                             "python")
        if cont.action:
            _check_action(doc, cont.action, f"{source}: $.continuous.{name}.action")
            if cont.interval is None:
                raise UsageError(f"{source}: $.continuous.{name}.interval: required with action")
        if cont.python is not None:
            check_python(doc, cont.python, f"{source}: $.continuous.{name}")
        if cont.interval is not None and cont.interval <= 0:
            raise UsageError(f"{source}: $.continuous.{name}.interval: must be positive")
    return doc


def _check_names(doc: TriggerFile, source: str) -> None:
    """Every name the file gives (agent, ``name:``, condition and continuous keys) obeys
    :mod:`sp.agents.names`: they reach streams, logs and webhook paths.

    :raises UsageError: the first that does not, with its path.
    """
    names.check_optional(doc.agent, "agent id", f"{source}: $.agent")
    given: list[tuple[str, int, str | None]] = [
        *(("filesystem", i, t.name) for i, t in enumerate(doc.triggers.filesystem)),
        *(("network", i, t.name) for i, t in enumerate(doc.triggers.network)),
        *(("hardware", i, t.name) for i, t in enumerate(doc.triggers.hardware)),
    ]
    for kind, i, name in given:
        names.check_optional(name, "trigger name", f"{source}: $.triggers.{kind}[{i}].name")
    for section, keys in (("conditions", doc.conditions), ("continuous", doc.continuous)):
        for key in keys:
            names.check(key, "trigger name", f"{source}: $.{section}")


def _check_action(doc: TriggerFile, action: str, where: str) -> None:
    """``task`` or ``agent/task``, each part a name.

    :raises UsageError: not such a name, or a task without an agent.
    """
    names.check_qualified(action, "action", where)
    if action.count("/") > 1:
        raise UsageError(f"{where}: {names.shown(action)} is not a task or agent/task")
    if "/" not in action and not doc.agent:
        raise UsageError(f"{where}: {action!r} names no agent: write agent/task or set agent:")


PYTHON_TARGET = re.compile(r"(?P<module>[^:\s]+):(?P<func>[A-Za-z_][A-Za-z0-9_]*"
                     r"(?:\.[A-Za-z_][A-Za-z0-9_]*)*)")


def check_python(doc: TriggerFile, target: str, where: str) -> None:
    """The form of ``python:`` (nothing is imported before the daemon starts).

    :raises UsageError: not ``module:function`` / ``file.py:function``, or no ``agent:`` (the
        function's memory and triggered tasks belong to the file's agent).
    """
    if PYTHON_TARGET.fullmatch(target) is None:
        raise UsageError(f"{where}.python: expected module:function or path/file.py:function, "
                         f"got {target!r}")
    if not doc.agent:
        raise UsageError(f"{where}.python: a Python continuous action belongs to an agent: set "
                         "agent: at the top of the file")


def split_action(doc_agent: str | None, action: str) -> tuple[str, str]:
    """``agent/task`` or ``task`` (of the file's agent) -> (agent, task)."""
    if "/" in action:
        agent, _, task = action.partition("/")
        return agent, task
    assert doc_agent is not None
    return doc_agent, action


def load_triggers(path: str) -> tuple[TriggerFile, Any]:
    raw = load_document(path)
    return decode_triggers(raw, path), raw
