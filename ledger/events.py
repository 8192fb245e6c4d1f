"""Every event sp records, as msgspec Structs in one tagged union.

Rules (msgspec schema evolution): each event has an explicit, permanent ``tag``; new fields get
defaults; a field's type never changes and a tag is never reused. A breaking change adds a new
Struct (``...V2``) plus an upcaster in :mod:`sp.ledger.codec`.

The stream of an action's events is its ``action_id``.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Attributed(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The audit field every event has: ``by`` names who or what caused it.

    A base of its own (not declared in :class:`Event`) so that :class:`ActionFields` can have
    it too: msgspec lets a Struct have two Struct bases only when one's fields extend the
    other's (:class:`ActionSubmitted` is both an ``Event`` and ``ActionFields``).
    """

    by: str = ""


class Event(Attributed, frozen=True, kw_only=True, tag_field="type", omit_defaults=True):
    """Base of all events. ``by`` names who or what caused the event (audit).

    Fields equal to their default are not stored (decoding fills them in), so a new field with a
    default costs old rows nothing and keeps new rows small.
    """


class ActionFields(Attributed, frozen=True, omit_defaults=True):
    """Every field of an action, declared once: the submitted event is exactly these fields
    (:class:`ActionSubmitted`); a request to run one is these fields with a few read
    differently (``commands.actions.SubmitSpec``); the ``actions`` projection row and an
    agent's task defaults are taken from them.

    These are the names, types and order of the stored ``action.submitted`` event: a new field
    needs a default, none is renamed or retyped. Not ``kw_only`` (unlike :class:`Event`), as the
    event never was: msgspec places a base's keyword-only ``by`` after these fields, which is
    where every stored ``action.submitted`` has it.
    """

    name: str
    action_type: str = "shell"
    agent: str | None = None
    task: str | None = None
    command: list[str] = []
    shell: bool = False
    cwd: str | None = None
    env: dict[str, str] = {}
    payload: dict[str, Any] = {}
    priority: int = 0
    timeout_ms: int | None = None
    max_attempts: int = 1
    backoff: str = "exponential"
    depends_on: list[str] = []
    not_before_ms: int | None = None
    group: str | None = None
    compensation: list[str] | None = None
    key: str | None = None
    # Task settings, fixed at submission so the audit shows exactly what ran:
    steps: list[dict[str, Any]] = []  # {"name", "command": [...], "shell": bool}
    failure_patterns: list[str] = []
    resources: dict[str, Any] = {}  # agents.config.Resources in the seed's units
    limits_required: bool = False
    notify: dict[str, Any] | None = None  # agents.config.Notify
    on_interrupt: str = "resume"  # resume | rerun | hold
    checkpoint_enabled: bool = False  # checkpoint each finished step automatically
    retry_max_delay_ms: int = 300_000
    retry_jitter: bool = False
    non_retryable_exit_codes: list[int] = []
    recovery: str = "retry"  # retry | fallback | skip | abort: what follows the last attempt
    fallback: dict[str, Any] | None = None  # {"agent", "task"} to submit on failure
    # Run with what the machine can enforce when the agent's policy needs more (else refused).
    allow_unsandboxed: bool = False


class ActionSubmitted(ActionFields, Event, frozen=True, tag="action.submitted"):
    """An action was submitted: everything needed to run it, fixed at submission (the fields
    of :class:`ActionFields`)."""


class ActionValidationStarted(Event, frozen=True, tag="action.validation_started"):
    checks: list[str] = []


class ActionQueued(Event, frozen=True, tag="action.queued"):
    """Validation passed; the action waits in the queue (for its dependencies and not-before)."""

    checks: list[str] = []


class ActionRejected(Event, frozen=True, tag="action.rejected"):
    reason: str


class ActionStarted(Event, frozen=True, tag="action.started"):
    """Recorded write-ahead: committed before the process is spawned."""

    attempt: int
    owner: str
    pid: int
    host: str = ""
    resume_step: int | None = None
    # What was actually enforced, read back from the kernel (rlimits, nice, cgroup files).
    limits: dict[str, Any] = {}
    # The capability sandbox applied before exec (security.sandbox.plan): Landlock rules,
    # no_new_privs, namespaces, quotas, and what the machine could not enforce.
    sandbox: dict[str, Any] = {}


class ActionProgressed(Event, frozen=True, tag="action.progressed"):
    percent: float | None = None
    message: str = ""


class ActionCheckpointed(Event, frozen=True, tag="action.checkpointed"):
    step: int | None = None
    data: Any = None


class ActionCompleted(Event, frozen=True, tag="action.completed"):
    exit_code: int = 0
    duration_ms: int = 0
    result: dict[str, Any] = {}
    # Resource use of the attempt: cpu_user_ms, cpu_sys_ms, peak_rss_bytes, io_read_bytes,
    # io_write_bytes (the same keys on every event that ends an attempt).
    usage: dict[str, int] = {}


class ActionRetryScheduled(Event, frozen=True, tag="action.retry_scheduled"):
    """An attempt failed and attempts remain: wait until ``retry_at_ms``, then run again."""

    exit_code: int | None = None
    error_kind: str = "exit_code"
    error: str = ""
    duration_ms: int = 0
    retry_at_ms: int = 0
    usage: dict[str, int] = {}


class ActionFailed(Event, frozen=True, tag="action.failed"):
    """Failed for good: no attempts left, or not retryable."""

    exit_code: int | None = None
    error_kind: str = "exit_code"
    error: str = ""
    duration_ms: int = 0
    usage: dict[str, int] = {}
    # Recovery: "fallback" names the action submitted in its place (dependents now wait for
    # it); "abort" says the remaining attempts were given up.
    recovery: str = ""
    fallback: str | None = None


class ActionSecurityDenied(Event, frozen=True, tag="action.security_denied"):
    """The action's policy refused something: before running (an executable or a path the
    policy denies, a sandbox the machine cannot build) or while running (the kernel refused an
    access: each denial as Landlock's audit record names it). Recorded before the outcome."""

    attempt: int = 0
    stage: str = "run"  # "validation" (refused before spawning) | "run" (the kernel refused)
    denials: list[dict[str, Any]] = []  # {"access": "fs.write_file", "path": ..., "port": ...}
    dropped: int = 0  # denials beyond the recorded ones (a loop can produce millions)


class ActionBlobStored(Event, frozen=True, tag="action.blob_stored"):
    """The worker stored a file of a sandboxed action as ``blobs/<sha256>``: the action, the
    action compensating it and the actions of its plan may fetch it back through the broker;
    no other sandboxed action may (``blob_owners``)."""

    sha256: str
    size: int = 0


class ActionSkipped(Event, frozen=True, tag="action.skipped"):
    """Failed for good, but the task's recovery strategy is ``skip``: dependents go ahead."""

    exit_code: int | None = None
    error_kind: str = "exit_code"
    error: str = ""
    duration_ms: int = 0
    usage: dict[str, int] = {}


class ActionInterrupted(Event, frozen=True, tag="action.interrupted"):
    """The attempt stopped without an outcome (owner gone, worker shut down).

    ``then`` is the task's ``on_interrupt``: ``resume`` from the last checkpoint, ``rerun``
    from the start, or ``hold`` until a person restarts it.
    """

    reason: str
    owner: str = ""
    duration_ms: int = 0
    then: str = "resume"
    usage: dict[str, int] = {}


class ActionCancelRequested(Event, frozen=True, tag="action.cancel_requested"):
    reason: str = ""


class ActionCancelled(Event, frozen=True, tag="action.cancelled"):
    reason: str = ""
    usage: dict[str, int] = {}


class ActionRestarted(Event, frozen=True, tag="action.restarted"):
    from_step: int | None = None


class ActionRollbackStarted(Event, frozen=True, tag="action.rollback_started"):
    compensation: list[str] | None = None


class ActionRolledBack(Event, frozen=True, tag="action.rolled_back"):
    exit_code: int | None = None


class ActionRollbackFailed(Event, frozen=True, tag="action.rollback_failed"):
    error: str = ""
    exit_code: int | None = None


class ActionNotified(Event, frozen=True, tag="action.notified"):
    """A completion/failure notification was delivered (or not): a command or a URL."""

    channel: str  # command | url
    ok: bool
    detail: str = ""


class WorkPaused(Event, frozen=True, tag="control.paused"):
    """Stop claiming actions (of one agent, or all when ``agent`` is empty)."""

    agent: str = ""


class WorkResumed(Event, frozen=True, tag="control.resumed"):
    agent: str = ""


class PolicySet(Event, frozen=True, tag="policy.set"):
    """An agent's capability policy and storage quotas (stream ``policy:<agent_id>``), normalised
    by :mod:`sp.security.policy`; ``policy`` empty means the agent has no policy any more."""

    agent_id: str
    policy: dict[str, Any] = {}
    source: str = ""
    sha256: str = ""


class AgentConfigured(Event, frozen=True, tag="agent.configured"):
    """An agent file was applied: the document as written, and where it came from."""

    agent_id: str
    config: dict[str, Any]
    source: str = ""
    sha256: str = ""


# -- time-based schedules: stream "schedule:<name>" ----------------------------------------------


class ScheduleDefined(Event, frozen=True, tag="schedule.defined"):
    """A schedule was added, or redefined (``--replace``, or an agent file's ``schedule:``).

    Slots (the times the cron expression names) are counted from this event's time on.
    ``missed`` is the missed-run policy: skip | run_once | backfill (at most ``backfill_max``)
    | catchup (only within ``catchup_window_ms``); ``--persistent`` is run_once. ``overlap`` is
    what a fire does while the previous run still goes: skip | queue | allow.
    """

    name: str
    cron: str
    agent: str
    task: str
    timezone: str = "UTC"
    jitter_ms: int = 0
    missed: str = "skip"
    backfill_max: int = 0
    catchup_window_ms: int = 0
    overlap: str = "skip"
    source: str = ""  # "" typed by a person; "agent:<id>" from an agent file
    enabled: bool = True
    # Adaptive (``--window 01:00-05:00 --adaptive``): once a day inside the window (local
    # time in ``timezone``), at the minute of lowest recorded load; ``cron`` is then the
    # window's start, daily (the fallback, and what exports run).
    window: str = ""
    adaptive: bool = False


class ScheduleRemoved(Event, frozen=True, tag="schedule.removed"):
    reason: str = ""


class ScheduleEnabled(Event, frozen=True, tag="schedule.enabled"):
    """Slots count again from this event's time on (those while disabled are not missed)."""


class ScheduleDisabled(Event, frozen=True, tag="schedule.disabled"):
    reason: str = ""


class ScheduleFired(Event, frozen=True, tag="schedule.fired"):
    """One slot fired; its action was submitted in the same transaction (key
    ``schedule:<name>:<slot_ms>``)."""

    slot_ms: int  # the scheduled time this run is for, epoch ms UTC
    action_id: str
    late_ms: int = 0  # how long after the slot the tick ran
    jitter_ms: int = 0  # the RandomizedDelaySec drawn: not before slot_ms + jitter_ms
    missed: bool = False  # a catch-up run of a missed slot (the missed-run policy)
    cause: str = ""  # why it was missed: no_tick | suspended | restarted
    running: str | None = None  # overlap queue/allow: the previous run, still going
    # An adaptive schedule's choice of slot_ms: {"basis": "load_history" | "window_start",
    # "minute", "load1", "cpu_pct", "samples", "days", "window"}
    adaptive: dict[str, Any] = {}


class ScheduleSkipped(Event, frozen=True, tag="schedule.skipped"):
    """Slots that did not fire, and why: ``missed`` (policy skip), ``backfill_limit``,
    ``outside_window``, ``overlap`` (the previous run ``running`` still goes), ``error``."""

    slot_ms: int  # the first slot skipped
    reason: str
    last_slot_ms: int | None = None  # the last one, when several
    count: int = 1
    more: bool = False  # count is a lower bound (too many slots to count in one tick)
    cause: str = ""
    detail: str = ""
    running: str | None = None


# -- plans: stream "plan:<id>" ----------------------------------------------------------------


class PlanApplied(Event, frozen=True, tag="plan.applied"):
    """A plan file was validated and recorded: its resolved graph.

    ``steps`` are the flattened actions (sub-plans expanded) in a topological order, each a
    ``sp.plans.model.Step`` as builtins; everything a rollback needs later is in them.
    """

    plan_id: str
    name: str
    source: str = ""
    sha256: str = ""
    description: str = ""
    on_failure: str = "stop"  # rollback | stop | continue
    rollback_order: str = "reverse"  # reverse | forward
    rollback_strategy: str = "all-or-nothing"  # all-or-nothing | best-effort
    steps: list[dict[str, Any]] = []


class PlanStarted(Event, frozen=True, tag="plan.started"):
    """The plan's actions were submitted (same transaction): step id -> action id."""

    actions: dict[str, str] = {}


class PlanStopRequested(Event, frozen=True, tag="plan.stop_requested"):
    """An action failed for good and ``on_failure`` is stop or rollback: the rest is cancelled
    (running ones are asked to stop); ``then`` says what follows once nothing runs."""

    action_id: str
    step: str = ""
    error: str = ""
    then: str = "stop"  # stop | rollback
    cancelled: list[str] = []


class PlanCompleted(Event, frozen=True, tag="plan.completed"):
    """Every action of the plan completed (or was skipped by its recovery strategy)."""


class PlanFailed(Event, frozen=True, tag="plan.failed"):
    """Every action finished and not all completed (failed, cancelled, or never ran)."""

    reason: str = ""
    failed: list[str] = []
    cancelled: list[str] = []


class PlanRollbackStarted(Event, frozen=True, tag="plan.rollback_started"):
    """A rollback run began: its compensating actions were submitted, chained in ``steps``
    order (each ``{"action_id", "step", "compensation_id"}``); ``without`` lists completed
    actions that have no compensation (left as they are)."""

    run: int
    order: str = "reverse"
    strategy: str = "all-or-nothing"
    reason: str = ""  # on_failure | manual
    steps: list[dict[str, Any]] = []
    without: list[str] = []


class PlanRolledBack(Event, frozen=True, tag="plan.rolled_back"):
    run: int
    rolled_back: list[str] = []


class PlanRollbackFailed(Event, frozen=True, tag="plan.rollback_failed"):
    """A compensation failed: ``failed`` (their originals are ``rollback_failed``);
    ``not_attempted`` stayed completed (all-or-nothing stopped before them)."""

    run: int
    rolled_back: list[str] = []
    failed: list[str] = []
    not_attempted: list[str] = []


class PlanCancelRequested(Event, frozen=True, tag="plan.cancel_requested"):
    """``sp plan cancel``: every unfinished action was cancelled (running ones asked to stop,
    listed in ``cancelled``); once nothing runs, the plan is cancelled, or rolled back when
    ``rollback`` (``--rollback``)."""

    reason: str = ""
    rollback: bool = False
    cancelled: list[str] = []


class PlanCancelled(Event, frozen=True, tag="plan.cancelled"):
    """A cancelled plan's actions have all ended: which completed and which were cancelled."""

    completed: list[str] = []
    cancelled: list[str] = []
    failed: list[str] = []


class PlanReopened(Event, frozen=True, tag="plan.reopened"):
    """An action of a finished plan was restarted (``action_id``, its ``step``): the plan runs
    again; ``requeued`` are the cancelled actions restarted with it (its dependents, and what
    the plan's stop had cancelled when that action caused it)."""

    action_id: str
    step: str = ""
    requeued: list[str] = []


class TriggersApplied(Event, frozen=True, tag="trigger.applied"):
    """A trigger file was applied: the document as written (it replaces the previous one)."""

    config: dict[str, Any]
    source: str = ""
    sha256: str = ""


class TriggerFired(Event, frozen=True, tag="trigger.fired"):
    """A trigger saw something and submitted an action for it (stream ``trigger:<name>``)."""

    trigger: str
    kind: str  # filesystem | webhook | serial | condition | continuous
    action_id: str
    agent: str
    task: str
    payload: dict[str, Any] = {}
    detail: str = ""


class AlertSent(Event, frozen=True, tag="alert.sent"):
    """``send_alert(message)`` from a continuous action or an action's Python code
    (stream ``alerts``)."""

    message: str
    level: str = "warning"  # info | warning | error | critical
    source: str = ""  # "continuous:<name>", "action:<id>", ...
    agent: str = ""


# -- retention: stream "maintenance" (sp gc) and "ledger" (sp archive) ---------------------------


class GcCompleted(Event, frozen=True, tag="maintenance.gc_completed"):
    """``sp gc`` removed files past their retention (recorded before they are removed: a crash
    in between leaves files the next run removes and records again). Names are relative to the
    home; ``actions`` are the ids whose log, temporary folder or artefacts went."""

    logs: list[str] = []  # action ids whose logs/<id>.log went
    tmp: list[str] = []  # entries of tmp/ (an action id, or an unknown name)
    previews: list[str] = []  # "<name>/v<N>" preview versions (with deploy/<name>/v<N>.json)
    blobs: list[str] = []  # blobs/<sha256> no live action needs for a rollback any more
    actions: list[str] = []
    files: int = 0
    bytes_freed: int = 0
    retention: dict[str, int] = {}  # the defaults of this run: temp_ms, completed_ms, failed_ms


class ArchivedRun(msgspec.Struct, frozen=True, kw_only=True):
    """Consecutive seqs moved by one ``sp archive``: how they linked into the chain."""

    first_seq: int
    last_seq: int
    prev_hash: str  # the prev_hash of first_seq's row
    last_hash: str  # the hash of last_seq's row (the next row's prev_hash)


class LedgerArchived(Event, frozen=True, tag="ledger.archived"):
    """Whole finished streams were moved out of the log into an archive file (``sp archive``).

    ``runs`` account for exactly the seqs that left, so that ``sp verify`` accepts those gaps
    and only those; ``sha256`` is over the moved rows' hashes, one per line, in seq order."""

    file: str
    batch: str
    chain_id: str  # the hash of the chain's first row: which ledger the archive belongs to
    before_ms: int
    streams: list[str]
    runs: list[ArchivedRun]
    count: int
    sha256: str


class LedgerReinitialised(Event, frozen=True, tag="ledger.reinitialised"):
    """``sp init --force`` started a new ledger in a home whose ledger was gone, empty or
    another one: the first event of the new ledger says what was found and where it went."""

    previous_id: str  # the id the home's ledger.id remembered ("" if none)
    found: str  # what was wrong, as the refusal said it
    moved_to: list[str] = []  # the old files, kept beside the new ledger
    previous_verified_seq: int = 0  # the head the last clean sp verify saw (0: none)
    previous_verified_hash: str = ""


AnyEvent = (
    ActionSubmitted
    | ActionValidationStarted
    | ActionQueued
    | ActionRejected
    | ActionStarted
    | ActionProgressed
    | ActionCheckpointed
    | ActionCompleted
    | ActionRetryScheduled
    | ActionFailed
    | ActionSkipped
    | ActionSecurityDenied
    | ActionBlobStored
    | ActionInterrupted
    | ActionCancelRequested
    | ActionCancelled
    | ActionRestarted
    | ActionRollbackStarted
    | ActionRolledBack
    | ActionRollbackFailed
    | ActionNotified
    | WorkPaused
    | WorkResumed
    | AgentConfigured
    | PolicySet
    | TriggersApplied
    | TriggerFired
    | AlertSent
    | PlanApplied
    | PlanStarted
    | PlanStopRequested
    | PlanCompleted
    | PlanFailed
    | PlanRollbackStarted
    | PlanRolledBack
    | PlanRollbackFailed
    | PlanCancelRequested
    | PlanCancelled
    | PlanReopened
    | ScheduleDefined
    | ScheduleRemoved
    | ScheduleEnabled
    | ScheduleDisabled
    | ScheduleFired
    | ScheduleSkipped
    | GcCompleted
    | LedgerArchived
    | LedgerReinitialised
)

EVENT_TYPES: tuple[type[Event], ...] = AnyEvent.__args__  # type: ignore[attr-defined]


def tag_of(cls: type[Event]) -> str:
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag
