"""An action's fields are declared once (ledger.events.ActionFields); the submitted event, the
submit request, the projection row and the task defaults are derived from that declaration.

``action.submitted`` is a stored event: these tests also pin that deriving it changed nothing
of what is written (names, types, defaults, key order, bytes).
"""

from __future__ import annotations

import msgspec
import pytest

from sp.commands import actions
from sp.commands.actions import SubmitSpec
from sp.ledger import events as ev
from sp.ledger.store import EventStore
from sp.projections import actions as actions_projection

# Every field of action.submitted, in stored order, with ``by`` last where msgspec has always
# placed it (the base Event's keyword-only field after the event's own).
STORED_ORDER = (
    "name", "action_type", "agent", "task", "command", "shell", "cwd", "env", "payload",
    "priority", "timeout_ms", "max_attempts", "backoff", "depends_on", "not_before_ms", "group",
    "compensation", "key", "steps", "failure_patterns", "resources", "limits_required", "notify",
    "on_interrupt", "checkpoint_enabled", "retry_max_delay_ms", "retry_jitter",
    "non_retryable_exit_codes", "recovery", "fallback", "allow_unsandboxed", "by",
)
FULL = dict(
    by="cli:me", name="n", action_type="noop", agent="a1", task="t", command=["x", "y"],
    shell=True, cwd="/w", env={"A": "1"}, payload={"p": [1]}, priority=3, timeout_ms=5,
    max_attempts=4, backoff="linear", depends_on=["d1"], not_before_ms=9, group="g",
    compensation=["undo"], key="k", steps=[{"name": "s", "command": ["c"], "shell": False}],
    failure_patterns=["ERR"], resources={"cpu": 1}, limits_required=True,
    notify={"on": ["failed"]}, on_interrupt="hold", checkpoint_enabled=True,
    retry_max_delay_ms=1000, retry_jitter=True, non_retryable_exit_codes=[2],
    recovery="fallback", fallback={"agent": "a", "task": "t"}, allow_unsandboxed=True,
)
# Written by the sp before ActionFields existed (ActionSubmitted declared its fields itself).
FULL_BYTES = (
    b'{"type":"action.submitted","name":"n","action_type":"noop","agent":"a1","task":"t",'
    b'"command":["x","y"],"shell":true,"cwd":"/w","env":{"A":"1"},"payload":{"p":[1]},'
    b'"priority":3,"timeout_ms":5,"max_attempts":4,"backoff":"linear","depends_on":["d1"],'
    b'"not_before_ms":9,"group":"g","compensation":["undo"],"key":"k","steps":[{"name":"s",'
    b'"command":["c"],"shell":false}],"failure_patterns":["ERR"],"resources":{"cpu":1},'
    b'"limits_required":true,"notify":{"on":["failed"]},"on_interrupt":"hold",'
    b'"checkpoint_enabled":true,"retry_max_delay_ms":1000,"retry_jitter":true,'
    b'"non_retryable_exit_codes":[2],"recovery":"fallback","fallback":{"agent":"a","task":"t"},'
    b'"allow_unsandboxed":true,"by":"cli:me"}'
)
# What a request reads differently from the event (see SubmitSpec's docstring).
REQUEST_ONLY = {"retries", "delay_ms"}
RECORDED_BY_SP = {"by", "max_attempts", "not_before_ms"}
READ_DIFFERENTLY = {"name", "command"}  # optional / required in a request


def _fields(cls: type) -> dict[str, msgspec.structs.FieldInfo]:
    return {f.name: f for f in msgspec.structs.fields(cls)}


def test_the_submitted_event_is_the_declared_fields_as_stored() -> None:
    assert issubclass(ev.ActionSubmitted, ev.Event)
    assert issubclass(ev.ActionSubmitted, ev.ActionFields)
    assert ev.ActionSubmitted.__struct_fields__ == STORED_ORDER
    assert _fields(ev.ActionSubmitted) == _fields(ev.ActionFields)
    assert ev.tag_of(ev.ActionSubmitted) == "action.submitted"


def test_the_submitted_event_encodes_byte_for_byte_as_before() -> None:
    event = ev.ActionSubmitted(**FULL)  # type: ignore[arg-type]
    assert msgspec.json.encode(event) == FULL_BYTES
    assert msgspec.json.decode(FULL_BYTES, type=ev.AnyEvent) == event
    assert msgspec.json.encode(ev.ActionSubmitted(name="q")) == (
        b'{"type":"action.submitted","name":"q"}')


def test_a_request_is_the_declared_fields_plus_retries_and_delay() -> None:
    request, declared = _fields(SubmitSpec), _fields(ev.ActionFields)
    assert set(request) == set(declared) | REQUEST_ONLY
    for name, field in declared.items():
        if name not in READ_DIFFERENTLY:
            assert request[name] == field, name
    assert request["command"].required and request["name"].default is None


@pytest.mark.parametrize("field", sorted(RECORDED_BY_SP))
def test_a_request_may_not_set_what_sp_records(field: str) -> None:
    value = {"by": "me", "max_attempts": 3, "not_before_ms": 1}[field]
    with pytest.raises(ValueError, match="recorded by sp"):
        SubmitSpec(command=["true"], **{field: value})  # type: ignore[arg-type]
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"command": ["true"], field: value}, SubmitSpec)


def test_submit_records_every_shared_field_as_given(store: EventStore) -> None:
    shared = {k: v for k, v in FULL.items()
              if k not in RECORDED_BY_SP | {"depends_on", "name", "key"}}
    spec = SubmitSpec(retries=2, delay_ms=10, key="k1", **shared)  # type: ignore[arg-type]
    with store.transaction() as tx:
        (action_id,) = actions.submit_in(tx, [spec], "cli:me", ["here"], 1_000)
    event = store.read_stream(action_id)[0].event
    assert isinstance(event, ev.ActionSubmitted)
    for name, value in shared.items():
        assert getattr(event, name) == value, name
    assert (event.by, event.name, event.max_attempts, event.not_before_ms, event.key) == (
        "cli:me", "t", 3, 1_010, "k1")


def test_every_declared_field_is_projected_or_read_from_the_event() -> None:
    """A new field of ActionFields must be placed: a column of the actions row (copied or
    mapped), or one of the settings the runner reads from the event itself."""
    from_event = {
        "command", "shell", "cwd", "env", "payload", "backoff", "steps", "failure_patterns",
        "resources", "limits_required", "notify", "on_interrupt", "checkpoint_enabled",
        "retry_max_delay_ms", "retry_jitter", "non_retryable_exit_codes", "recovery",
        "fallback", "allow_unsandboxed", "by",
    }
    projected = set(actions_projection.COPIED_FIELDS) | set(
        actions_projection.MAPPED_FIELDS.values())
    assert projected | from_event == set(ev.ActionFields.__struct_fields__)
    assert not projected & from_event
    assert set(actions_projection.COPIED_FIELDS) <= set(actions_projection.TABLE.columns)
    assert set(actions_projection.MAPPED_FIELDS) <= set(actions_projection.TABLE.columns)


def test_a_task_without_settings_keeps_the_declared_defaults() -> None:
    from sp.agents.config import AgentConfig
    from sp.commands.agents import task_spec

    agent = msgspec.convert({"id": "a1", "tasks": {"t": {"command": "true"}}}, AgentConfig)
    spec = task_spec(agent, "t")
    declared = _fields(SubmitSpec)
    for name in ("retries", "backoff", "retry_max_delay_ms", "retry_jitter",
                 "non_retryable_exit_codes", "recovery", "fallback", "resources", "notify"):
        field = declared[name]
        default = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
        assert getattr(spec, name) == default, name
