"""The plan file's shape (what people write) and the resolved plan (what is recorded).

```yaml
name: deploy-site
on_failure: rollback            # rollback | stop | continue
rollback: {order: reverse, strategy: all-or-nothing}   # forward | best-effort
actions:
  - id: fetch
    type: shell
    payload: {command: [git, pull]}
  - id: build
    type: shell
    payload: {command: make, cwd: site}
    depends_on: [fetch]
    timeout: 10m
    retry: {max_attempts: 3, backoff: exponential}
    recovery: retry             # retry | fallback | skip | abort
    rollback: {command: [make, clean], cwd: site}
  - id: publish                 # a sub-plan: inline, or `plan: publish.yaml`
    depends_on: [build]
    actions:
      - {id: copy, type: shell, payload: {command: [cp, -r, site/out, /srv/www]}}
```
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from sp.agents.config import Retry
from sp.agents.units import Duration

MAX_DEPTH = 5  # the seed's goal_decomposition max_depth


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


# -- the file, as written ------------------------------------------------------------------------


class RollbackSettings(_Strict, frozen=True, kw_only=True):
    order: Literal["reverse", "forward"] = "reverse"
    strategy: Literal["all-or-nothing", "best-effort"] = "all-or-nothing"
    retry: Retry | None = None  # default for every compensation
    timeout: Duration | None = None


class PlanDoc(_Strict, frozen=True, kw_only=True):
    """The top of a plan file; ``actions`` are decoded one by one (see plans.load)."""

    name: str | None = None
    description: str = ""
    agent: str | None = None  # whose capability policy and quotas the plan's actions run under
    on_failure: Literal["rollback", "stop", "continue"] = "stop"
    rollback: RollbackSettings = RollbackSettings()
    actions: list[Any] = []  # required: plans.load checks it


class ActionDoc(_Strict, frozen=True, kw_only=True):
    """One action step. ``payload``, ``rollback`` and ``fallback`` are decoded by its type."""

    id: str
    type: str
    description: str = ""
    payload: dict[str, Any]
    depends_on: list[str] = []
    priority: int = 0
    timeout: Duration | None = None
    retry: Retry | None = None
    recovery: Literal["retry", "fallback", "skip", "abort"] = "retry"
    fallback: dict[str, Any] | None = None
    rollback: Any = None


class SubPlanDoc(_Strict, frozen=True, kw_only=True):
    """A step that is itself a plan: inline ``actions:`` or another file, ``plan: FILE``."""

    id: str
    description: str = ""
    depends_on: list[str] = []
    actions: list[Any] | None = None
    plan: str | None = None


class FallbackDoc(_Strict, frozen=True, kw_only=True):
    type: str
    payload: dict[str, Any]


class RollbackCommon(_Strict, frozen=True, kw_only=True):
    """The keys of a step's ``rollback:`` that every type shares; the rest is the type's."""

    timeout: Duration | None = None
    retry: Retry | None = None


# -- the plan, resolved ---------------------------------------------------------------------------


class Compensation(msgspec.Struct, frozen=True, kw_only=True):
    """How to undo a step: a command (argv) and how to run it."""

    argv: list[str]
    cwd: str | None = None
    env: dict[str, str] = {}
    timeout_ms: int | None = None
    max_attempts: int = 1
    backoff: str = "exponential"


class Step(msgspec.Struct, frozen=True, kw_only=True):
    """One action of the plan, sub-plans flattened: ``id`` is qualified (``publish/copy``)."""

    id: str
    type: str
    description: str = ""
    payload: dict[str, Any] = {}
    command: list[str]
    shell: bool = False
    cwd: str | None = None
    env: dict[str, str] = {}
    depends_on: list[str] = []  # qualified step ids
    level: int = 1  # topological level: 1 + the highest level of its dependencies
    priority: int = 0
    timeout_ms: int | None = None
    max_attempts: int = 1
    backoff: str = "exponential"
    retry_max_delay_ms: int = 300_000
    retry_jitter: bool = False
    non_retryable_exit_codes: list[int] = []
    recovery: str = "retry"
    fallback: dict[str, Any] | None = None  # {"type", "argv", "shell", "cwd", "env"}
    rollback: Compensation | None = None
    where: str = ""  # "file: $.actions[1]", for messages


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str = ""
    source: str = ""
    sha256: str = ""
    agent: str | None = None
    on_failure: str = "stop"
    rollback_order: str = "reverse"
    rollback_strategy: str = "all-or-nothing"
    steps: list[Step]  # topological order: every step after its dependencies

    def levels(self) -> list[list[str]]:
        """Step ids by topological level; the steps of one level may run in parallel."""
        out: list[list[str]] = []
        for step in self.steps:
            while len(out) < step.level:
                out.append([])
            out[step.level - 1].append(step.id)
        return out

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)


def steps_from(raw: list[dict[str, Any]]) -> list[Step]:
    """The steps of a recorded ``plan.applied`` event."""
    return msgspec.convert(raw, list[Step])
