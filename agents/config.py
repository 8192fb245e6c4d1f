"""The agent file, in the seed's shape, decoded into msgspec Structs.

```yaml
id: research-001
resources: {cpu_quota: 50%, memory_limit: 2G, tasks_max: 100, nice: 10}
actions:                      # "tasks:" is accepted too
  daily_arxiv_scan:
    schedule: "0 9 * * *"
    timeout: 2h
    command: [python3, scan.py]
    steps: [fetch_new_papers, extract_abstracts, classify_relevance]
    retry: {max_attempts: 3, backoff: exponential}
    notify: {on: [completion, failure], command: [notify-send, done]}
```

Every error names its path: ``$.actions.daily_arxiv_scan.timeout: expected a duration like
"30s", "10m" or "2h", got 7``.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from sp.agents import documents, names
from sp.agents.units import Duration, Percent, Size, dec_hook
from sp.ledger import configfile
from sp.ledger.errors import UsageError


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True,
              omit_defaults=True):
    pass


class Resources(_Strict, frozen=True):
    """The seed's systemd-style limits, in its units."""

    cpu_quota: Percent | None = None
    memory_limit: Size | None = None
    tasks_max: int | None = None
    nice: int | None = None
    io_weight: int | None = None


class Retry(_Strict, frozen=True):
    max_attempts: int = 1
    backoff: Literal["exponential", "linear"] = "exponential"
    max_delay: Duration = Duration(300_000)
    jitter: bool = True
    non_retryable_exit_codes: list[int] = []


class Recovery(_Strict, frozen=True):
    """What happens when retries are exhausted (the seed's RecoveryStrategy)."""

    strategy: Literal["retry", "fallback", "skip", "abort"] = "retry"
    fallback: str | None = None


class Notify(_Strict, frozen=True):
    on: list[Literal["completion", "failure"]] = msgspec.field(
        default_factory=lambda: ["completion", "failure"]
    )
    command: list[str] | None = None
    url: str | None = None


class Step(_Strict, frozen=True):
    name: str
    command: list[str] | str | None = None
    shell: bool = False


class Task(_Strict, frozen=True):
    command: list[str] | str | None = None
    shell: bool = False
    steps: list[Step | str] = []
    schedule: str | None = None
    timeout: Duration | None = None
    priority: Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)] = 0
    cwd: str | None = None
    env: dict[str, str] = {}
    resources: Resources | None = None
    retry: Retry | None = None
    recovery: Recovery | None = None
    on_interrupt: Literal["resume", "rerun", "hold"] = "resume"
    failure_patterns: list[str] = []
    notify: Notify | None = None
    checkpoint_enabled: bool = True


class Quotas(_Strict, frozen=True):
    """The seed's storage quotas: space an agent's actions may use (None: unlimited)."""

    temp_space: Size | None = None
    output_space: Size | None = None
    log_space: Size | None = None


class Cleanup(_Strict, frozen=True):
    """The seed's retention: how long ``sp gc`` keeps things (temp 24h, completed 7d, failed
    30d)."""

    temp_files: Duration = Duration(86_400_000)
    completed_actions: Duration = Duration(7 * 86_400_000)
    failed_actions: Duration = Duration(30 * 86_400_000)


class Storage(_Strict, frozen=True):
    quotas: Quotas | None = None
    cleanup: Cleanup | None = None
    # Folders whose growth counts against output_space (besides the action's cwd when set).
    output_dirs: list[str] = []


class Capabilities(_Strict, frozen=True):
    """The seed's capability policy: ``allowed`` / ``denied`` lists of single-key mappings,
    ``- read: [paths]``, ``- write: [paths]``, ``- network: [urls or host:port]``,
    ``- execute: [names or paths]``; ``user:``/``group:`` to run its actions as, and the
    ``linux_capabilities:`` a root action keeps. Normalised and checked by
    :mod:`sp.security.policy`."""

    allowed: list[dict[str, Any]] | None = None
    denied: list[dict[str, Any]] = []
    user: str | int | None = None
    group: str | int | None = None
    linux_capabilities: list[str] = []


class AgentConfig(_Strict, frozen=True):
    id: str
    description: str = ""
    resources: Resources | None = None
    capabilities: Capabilities | None = None
    storage: Storage | None = None
    limits: Literal["required", "best_effort"] = "best_effort"
    actions: dict[str, Task] = {}
    tasks: dict[str, Task] = {}

    def all_tasks(self) -> dict[str, Task]:
        return {**self.tasks, **self.actions}


def _rename_path(message: str, prefix: str) -> str:
    """Turn msgspec's ``- at `$.x``` suffix into our ``$.x: message`` form."""
    text, sep, where = message.rpartition(" - at `")
    if not sep:
        return f"{prefix}: {message}"
    where = where.rstrip("`")
    if "` in `" in where:  # a mapping key is wrong: "key` in `$.notify"
        where = where.split("` in `", 1)[1]
        text = f"a key: {text}"
    return f"{prefix}{where[1:]}: {text}"


def _yaml_keys(doc: Any) -> Any:
    """YAML 1.1 reads the keys ``on``/``off``/``yes``/``no`` as booleans (``notify: {on: ...}``
    is the seed's own shape); give such keys back their words."""
    if isinstance(doc, dict):
        return {("on" if k is True else "off" if k is False else k): _yaml_keys(v)
                for k, v in doc.items()}
    if isinstance(doc, list):
        return [_yaml_keys(v) for v in doc]
    return doc


def decode_agent(raw: Any, source: str = "agent") -> AgentConfig:
    """Validate a loaded YAML/TOML document as an agent.

    Tasks are decoded one by one so that errors name the task: ``$.actions.scan.timeout``.

    :raises UsageError: the first problem, with its path.
    """
    if not isinstance(raw, dict):
        raise UsageError(f"{source}: $: expected a mapping with an id and actions")
    top = {k: v for k, v in raw.items() if k not in ("actions", "tasks")}
    try:
        agent = msgspec.convert(top, AgentConfig, dec_hook=dec_hook)
    except msgspec.ValidationError as e:
        raise UsageError(_rename_path(str(e), f"{source}: $")) from None
    tasks: dict[str, dict[str, Task]] = {"actions": {}, "tasks": {}}
    for section in ("actions", "tasks"):
        body = raw.get(section)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise UsageError(f"{source}: $.{section}: expected a mapping of task names")
        for name, spec in body.items():
            if not isinstance(name, str) or not name:
                raise UsageError(f"{source}: $.{section}: task names must be text")
            names.check(name, "task name", f"{source}: $.{section}")
            where = f"{source}: $.{section}.{name}"
            try:
                task = msgspec.convert(spec, Task, dec_hook=dec_hook)
            except msgspec.ValidationError as e:
                raise UsageError(_rename_path(str(e), where)) from None
            _check_task(task, where, body)
            tasks[section][name] = task
    if not agent.id.strip():
        raise UsageError(f"{source}: $.id: must not be empty")
    names.check(agent.id, "agent id", f"{source}: $.id")
    agent = msgspec.structs.replace(agent, actions=tasks["actions"], tasks=tasks["tasks"])
    if not agent.all_tasks():
        raise UsageError(f"{source}: $.actions: the agent has no tasks")
    return agent


def _exec_texts(task: Task, where: str) -> list[tuple[str, str]]:
    """Every text that reaches exec (argv, environment, directory), with its path."""
    def argv(command: list[str] | str | None, at: str) -> list[tuple[str, str]]:
        if isinstance(command, str):
            return [(at, command)]
        return [(f"{at}[{i}]", a) for i, a in enumerate(command or [])]

    found = argv(task.command, f"{where}.command")
    for i, step in enumerate(task.steps):
        if isinstance(step, Step):
            found += argv(step.command, f"{where}.steps[{i}].command")
    if task.notify is not None:
        found += argv(task.notify.command, f"{where}.notify.command")
    found += [(f"{where}.env.{k}", f"{k}={v}") for k, v in task.env.items()]
    if task.cwd is not None:
        found.append((f"{where}.cwd", task.cwd))
    return found


def _check_task(task: Task, where: str, siblings: dict[str, Any]) -> None:
    for i, step in enumerate(task.steps):
        # A step's name reaches its argv, its checkpoint and the log's markers.
        names.check(step.name if isinstance(step, Step) else step, "step name",
                    f"{where}.steps[{i}]" + (".name" if isinstance(step, Step) else ""))
    for at, text in _exec_texts(task, where):
        if "\x00" in text:
            raise UsageError(f"{at}: contains a NUL character (no program can be given one)")
    for name in task.env:
        if not name or "=" in name:
            raise UsageError(f"{where}.env: {name!r} cannot be an environment variable name")
    for at, command in [(f"{where}.command", task.command), *(
            (f"{where}.steps[{i}].command", s.command) for i, s in enumerate(task.steps)
            if isinstance(s, Step))]:
        if command is not None and not (command[0] if command else "").strip():
            raise UsageError(f"{at}: the command is empty")
    for i, pattern in enumerate(task.failure_patterns):
        try:
            re.compile(pattern)
        except re.error as e:
            raise UsageError(f"{where}.failure_patterns[{i}]: not a regular expression: {e}"
                             ) from None
    if task.command is None and not task.steps:
        raise UsageError(f"{where}: needs a command or steps")
    for i, step in enumerate(task.steps):
        if isinstance(step, Step) and step.command is None and task.command is None:
            raise UsageError(f"{where}.steps[{i}]: needs a command (the task has none)")
        if isinstance(step, str) and task.command is None:
            raise UsageError(f"{where}.steps[{i}]: a named step needs the task's command")
    if task.retry and not 1 <= task.retry.max_attempts <= 1000:
        raise UsageError(f"{where}.retry.max_attempts: must be between 1 and 1000")
    if task.recovery and task.recovery.strategy == "fallback":
        fb = task.recovery.fallback
        if not fb:
            raise UsageError(f"{where}.recovery.fallback: required when strategy is fallback")
        if fb not in siblings:
            raise UsageError(f"{where}.recovery.fallback: no task {fb!r} in this agent")
    if task.notify and not (task.notify.command or task.notify.url):
        raise UsageError(f"{where}.notify: needs a command or a url")
    if task.notify and task.notify.url and not task.notify.url.startswith(("http://",
                                                                           "https://")):
        raise UsageError(f"{where}.notify.url: must be an http(s) URL")


def load_document(path: str | Path) -> Any:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file into plain data.

    :raises UsageError: unreadable, not a regular file, over the size cap
        (:mod:`sp.ledger.configfile`), or not well-formed; the message names the file and the
        line, never the file's text.
    """
    return load_document_marked(path)[0]


def load_document_marked(path: str | Path) -> tuple[Any, documents.Marks]:
    """:func:`load_document`, with where each value starts (:data:`documents.Marks`; empty
    for TOML, which tomllib does not place).

    :raises UsageError: as :func:`load_document`.
    """
    p = Path(path)
    text = configfile.read_config(p)
    if p.suffix.lower() == ".toml":
        return _toml(p, text), {}
    try:
        data, marks = documents.safe_load_marked(text)
    except yaml.YAMLError as e:
        raise UsageError(f"{p}: not valid YAML{_yaml_error(e)}") from None
    return _yaml_keys(data), marks


def _toml(p: Path, text: bytes) -> Any:
    """:raises UsageError: not UTF-8, not TOML, or nested too deeply."""
    try:
        body = text.decode()
        return tomllib.loads(body)
    except UnicodeDecodeError as e:
        raise UsageError(f"{p}: not valid TOML: not UTF-8 at byte {e.start}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{p}: not valid TOML: {documents.redact(str(e))}") from None
    except RecursionError:  # tomllib recurses once per nesting level
        line = documents.toml_deep_line(body)
        where = f" at line {line}" if line else ""
        raise UsageError(f"{p}: not valid TOML{where}: nested too deeply") from None


def _yaml_error(e: yaml.YAMLError) -> str:
    """`` at line L, column C: problem``, without the file's text: PyYAML's ``str(e)`` quotes
    the offending line (its mark's snippet), and its problems quote keys, aliases and tags;
    a file that is not configuration at all (a secret) must not be echoed into a log."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    if isinstance(e, yaml.reader.ReaderError):  # bad encoding or a control character
        where, problem = f" at position {e.position}", e.reason
    else:
        problem = getattr(e, "problem", None) or "malformed"
    return f"{where}: {documents.redact(' '.join(str(problem).split()))}"


def load_agent(path: str | Path) -> tuple[AgentConfig, Any]:
    """Load and validate an agent file; return the config and the plain document."""
    raw = load_document(path)
    return decode_agent(raw, str(path)), raw
