"""Condition triggers: strict parsing, each measure on this machine, a cooldown that fires once
per period (on a manual clock), and the source's thread."""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sp.agents.trigger_file import Condition, TriggerFile, decode_triggers
from sp.commands import agents
from sp.commands.home import Home
from sp.ledger.clock import ManualClock
from sp.ledger.errors import UsageError
from sp.ledger.store import EventStore
from sp.triggers import conditions
from sp.triggers.conditions import ConditionSource, Cooldown, parse_condition
from sp.triggers.sources import SourceContext
from tests.triggerkit import payload_of, running, wait_for

MIN = 60_000

AGENT = """\
id: ops
actions:
  cleanup_old_files:
    command: ["true"]
  sync_remote_data:
    command: ["true"]
"""


@pytest.fixture
def agent(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "ops.yaml"
    path.write_text(AGENT)
    agents.apply(store, path)


def doc_with(**conds: dict[str, Any]) -> TriggerFile:
    return decode_triggers({"agent": "ops", "conditions": conds}, "test")


def source_of(doc: TriggerFile, name: str) -> ConditionSource:
    cond = doc.conditions[name]
    return ConditionSource(name, cond, parse_condition(cond, name))


@pytest.fixture
def ctx(home: Home, clock: ManualClock) -> Iterator[tuple[SourceContext, list[str]]]:
    logs: list[str] = []
    context = SourceContext(home, TriggerFile(agent="ops"), clock, logs.append)
    yield context, logs
    context.close()


def fires(store: EventStore, trigger: str) -> list[str]:
    return [str(r[0]) for r in store.query(
        "SELECT action_id FROM trigger_fires WHERE trigger = ? ORDER BY seq", (trigger,))]


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "parsed"), [
    ("disk_usage > 90%", ("disk_usage", None, ">", 90.0, False, "%")),
    ("disk_usage(/data) >= 95.5%", ("disk_usage", "/data", ">=", 95.5, False, "%")),
    ("cpu_temp > 80C", ("cpu_temp", None, ">", 80.0, False, "C")),
    ("cpu_temp>80°C", ("cpu_temp", None, ">", 80.0, False, "C")),
    ("internet_connected", ("internet_connected", None, None, None, False, "")),
    ("not internet_connected(10.0.0.1:80)",
     ("internet_connected", "10.0.0.1:80", None, None, True, "")),
    ("load > 2.5", ("load", None, ">", 2.5, False, "")),
    ("memory_usage < 20%", ("memory_usage", None, "<", 20.0, False, "%")),
])
def test_expressions_parse(text: str, parsed: tuple[Any, ...]) -> None:
    assert tuple(parse_condition(Condition(trigger=text, action="a"), "c")) == parsed


@pytest.mark.parametrize(("text", "command", "message"), [
    ("disk_usage > 90", None, "disk_usage is compared with a percentage like \"90%\""),
    ("cpu_temp > 80%", None, "cpu_temp is compared with degrees Celsius like \"80C\""),
    ("load > 2.5%", None, "load is compared with a plain number like \"2.5\""),
    ("disk_usage > 120%", None, "a percentage is between 0% and 100%"),
    ("disk_usage", None, "disk_usage needs a comparison"),
    ("disk_space > 90%", None, "unknown measure 'disk_space'"),
    ("internet_connected > 1", None, "internet_connected is true or false"),
    ("not load > 1", None, "not goes with a true-or-false measure"),
    ("disk_usage(data) > 9%", None, "disk_usage(PATH) needs an absolute path"),
    ("internet_connected(nohost)", None, "expected HOST:PORT"),
    ("load(5) > 1", None, "load takes no argument"),
    ("disk_usage > 90% and load > 1", None, "cannot parse"),
    ("command_fails", None, "command_fails needs the command to run"),
    ("load > 1", ["true"], "only command_succeeds and command_fails run a command"),
])
def test_bad_expressions_are_refused_naming_the_condition(text: str, command: list[str] | None,
                                                          message: str) -> None:
    raw: dict[str, Any] = {"trigger": text, "action": "cleanup_old_files"}
    if command is not None:
        raw["command"] = command
    with pytest.raises(UsageError) as e:
        decode_triggers({"agent": "ops", "conditions": {"disk_space_low": raw}}, "t.yaml")
    assert str(e.value).startswith("t.yaml: $.conditions.disk_space_low.")
    assert message in str(e.value)


# -- the cooldown, pure ---------------------------------------------------------------------------


def test_cooldown_fires_once_per_period_while_the_condition_stays_true() -> None:
    clock = ManualClock()
    cool = Cooldown(60 * MIN)
    fired_at: list[int] = []
    for _ in range(24 * 60):  # the condition holds every minute for a day
        if cool.ready(clock.now_ms()):
            cool.fired(clock.now_ms())
            fired_at.append(clock.now_ms())
        clock.advance(MIN)
    assert len(fired_at) == 24
    assert {b - a for a, b in itertools.pairwise(fired_at)} == {60 * MIN}


def test_cooldown_counts_a_clock_stepped_back_as_ready() -> None:
    cool = Cooldown(60 * MIN, last_ms=10 * MIN)
    assert not cool.ready(10 * MIN + 59 * MIN)
    assert cool.ready(10 * MIN + 60 * MIN)
    assert cool.ready(5 * MIN)


# -- firing, on a manual clock --------------------------------------------------------------------


def test_a_true_condition_fires_once_per_cooldown(store: EventStore, agent: None,
                                                  clock: ManualClock,
                                                  ctx: tuple[SourceContext, list[str]]) -> None:
    context, _ = ctx
    doc = doc_with(always={"trigger": "command_succeeds", "command": ["true"],
                           "action": "cleanup_old_files", "cooldown": "1h", "interval": "1m"})
    source = source_of(doc, "always")
    ids = []
    for _ in range(150):  # two and a half hours of checks, a minute apart
        found = source.check(context)
        if found:
            ids.append(found)
        clock.advance(MIN)
    assert len(ids) == 3 == len(fires(store, "always"))
    payload = payload_of(store, ids[0])
    assert payload == {"condition": "always", "expression": "command_succeeds", "value": 0,
                       "threshold": None}
    # A restarted daemon remembers the last fire: no early fire after a restart.
    again = source_of(doc, "always")
    assert again.check(context) is None  # 30 minutes after the last fire
    clock.advance(30 * MIN)
    assert again.check(context) is not None


def test_a_false_condition_never_fires(store: EventStore, agent: None, clock: ManualClock,
                                       ctx: tuple[SourceContext, list[str]]) -> None:
    context, _ = ctx
    doc = doc_with(
        never={"trigger": "disk_usage > 100%", "action": "cleanup_old_files"},
        idle={"trigger": "load > 100000", "action": "cleanup_old_files"},
        fails={"trigger": "command_fails", "command": ["true"], "action": "cleanup_old_files"},
    )
    for name in ("never", "idle", "fails"):
        source = source_of(doc, name)
        for _ in range(3):
            assert source.check(context) is None
            clock.advance(10 * MIN)
    assert store.query("SELECT count(*) FROM actions") == [(0,)]


def test_measures_of_this_machine(store: EventStore, agent: None, tmp_path: Path,
                                  ctx: tuple[SourceContext, list[str]]) -> None:
    context, _ = ctx
    doc = doc_with(
        disk={"trigger": f"disk_usage({tmp_path}) > 0%", "action": "cleanup_old_files"},
        mem={"trigger": "memory_usage > 0%", "action": "cleanup_old_files"},
        load={"trigger": "load >= 0", "action": "cleanup_old_files"},
        broken={"trigger": "command_fails", "command": ["false"], "action": "cleanup_old_files"},
        missing={"trigger": "command_fails", "command": [str(tmp_path / "nope")],
                 "action": "cleanup_old_files"},
    )
    for name in doc.conditions:
        assert source_of(doc, name).check(context), name
    values = {p["condition"]: p["value"] for p in
              (payload_of(store, a) for (a,) in store.query("SELECT action_id FROM actions"))}
    assert 0 < values["disk"] <= 100 and 0 < values["mem"] <= 100 and values["load"] >= 0
    assert values["broken"] == 1 and values["missing"] == 127


def test_internet_connected_against_a_local_listener(
        store: EventStore, agent: None, clock: ManualClock,
        ctx: tuple[SourceContext, list[str]]) -> None:
    context, _ = ctx
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    doc = doc_with(
        up={"trigger": f"internet_connected(127.0.0.1:{port})", "action": "sync_remote_data"},
        down={"trigger": f"not internet_connected(127.0.0.1:{port})",
              "action": "sync_remote_data"},
    )
    up, down = source_of(doc, "up"), source_of(doc, "down")
    try:
        assert up.check(context) is not None
        assert down.check(context) is None
    finally:
        listener.close()
    clock.advance(60 * MIN)
    assert up.check(context) is None  # nothing listens any more
    action_id = down.check(context)
    assert action_id is not None
    assert payload_of(store, action_id)["value"] is False


def test_no_temperature_sensor_is_reported_once_and_never_fires(
        store: EventStore, agent: None, clock: ManualClock,
        ctx: tuple[SourceContext, list[str]]) -> None:
    try:
        conditions.cpu_temp()
    except conditions.Unavailable:
        pass
    else:
        pytest.skip("this machine has a temperature sensor")
    context, logs = ctx
    doc = doc_with(hot={"trigger": "cpu_temp > -50C", "action": "cleanup_old_files"})
    source = source_of(doc, "hot")
    for _ in range(5):
        assert source.check(context) is None
        clock.advance(60 * MIN)
    assert logs == ["hot: unavailable: no temperature sensor (psutil reports none on this "
                    "machine); it will not fire while so"]


def test_a_missing_path_is_unavailable_until_it_exists(
        store: EventStore, agent: None, clock: ManualClock, tmp_path: Path,
        ctx: tuple[SourceContext, list[str]]) -> None:
    context, logs = ctx
    data = tmp_path / "data"
    doc = doc_with(full={"trigger": f"disk_usage({data}) > 0%", "action": "cleanup_old_files"})
    source = source_of(doc, "full")
    assert source.check(context) is None
    assert source.check(context) is None
    data.mkdir()
    assert source.check(context) is not None
    assert len(logs) == 2
    assert logs[0].startswith(f"full: unavailable: disk_usage({data}): ")
    assert logs[1] == "full: available again"


def test_the_source_checks_on_its_interval_and_stops_promptly(
        store: EventStore, agent: None, home: Home) -> None:
    doc = doc_with(often={"trigger": "command_fails", "command": ["false"],
                          "action": "cleanup_old_files", "interval": "20ms", "cooldown": "1h"})
    source = source_of(doc, "often")
    with running(source, home, doc):
        wait_for(lambda: source.checks >= 5)
    assert len(fires(store, "often")) == 1  # the cooldown holds across the checks


def test_a_running_command_is_killed_when_the_daemon_stops() -> None:
    stop = threading.Event()
    stop.set()
    assert conditions.run_command(["sleep", "30"], 60_000, stop) == "stopped"
    assert conditions.run_command(["sleep", "30"], 300, None) == "timeout"
