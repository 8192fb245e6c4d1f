"""Continuous actions and the IoT Python API: a function run on its interval by ``schedule``,
trigger_action, send_alert, and agent memory that outlives the process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sp.agents.trigger_file import TriggerFile, decode_triggers
from sp.commands import actions, agents
from sp.commands.actions import SubmitSpec
from sp.commands.home import Home
from sp.ledger import events as ev
from sp.ledger.clock import ManualClock
from sp.ledger.errors import UsageError
from sp.ledger.store import EventStore
from sp.runner import iot
from sp.runner.memory import AgentMemory
from sp.triggers.continuous import ContinuousSource, build
from sp.triggers.sources import SourceContext
from tests.conftest import REPO
from tests.triggerkit import payload_of, running, wait_for

AGENT = """\
id: iot-001
actions:
  cooling_system_activate:
    command: ["true"]
  compress_historical_data:
    command: ["true"]
  health_check:
    command: ["true"]
"""

# The seed's IoT Sensor Monitor, with a fake sensor whose temperature rises 5 degrees a run.
SENSORS = """\
from sp.runner.iot import continuous_action, parse_reading, send_alert, trigger_action

CALLS = []


@continuous_action(interval="{interval}")
def monitor_temperature_sensor(context):
    reading = parse_reading(f"temperature={{70 + 5 * context.run}} unit=C")
    CALLS.append(context.run)
    if reading.temperature > context.threshold:
        trigger_action("cooling_system_activate", {{"temperature": reading.temperature}})
        send_alert(f"High temperature: {{reading.temperature}}°C")
    context.memory.record_reading(reading)
    context.memory["last"] = reading.temperature
    if len(context.memory.recent_readings) > 3:
        trigger_action("compress_historical_data")
"""


@pytest.fixture
def agent(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "iot.yaml"
    path.write_text(AGENT)
    agents.apply(store, path)


def sensors(tmp_path: Path, interval: str = "5s") -> Path:
    (tmp_path / "sensors.py").write_text(SENSORS.format(interval=interval))
    return tmp_path / "triggers.yaml"  # where the trigger file would be


def doc_of(entry: dict[str, Any]) -> TriggerFile:
    return decode_triggers({"agent": "iot-001", "continuous": {"monitor": entry}}, "test")


@pytest.fixture
def ctx(home: Home, clock: ManualClock, tmp_path: Path) -> Iterator[SourceContext]:
    context = SourceContext(home, TriggerFile(agent="iot-001"), clock,
                            source=str(tmp_path / "triggers.yaml"))
    yield context
    context.close()


def tasks_fired(store: EventStore) -> list[tuple[str, str, str]]:
    return [(str(r[0]), str(r[1]), str(r[2])) for r in store.query(
        "SELECT trigger, kind, task FROM trigger_fires ORDER BY seq")]


def alerts(store: EventStore) -> list[ev.AlertSent]:
    found = [r.event for r in store.read_stream(iot.ALERT_STREAM)]
    assert all(isinstance(e, ev.AlertSent) for e in found)
    return found  # type: ignore[return-value]


# -- the Python function ---------------------------------------------------------------------


def test_the_seed_iot_monitor_runs_and_uses_the_api(store: EventStore, agent: None,
                                                    tmp_path: Path, ctx: SourceContext,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ctx.source = str(sensors(tmp_path))
    doc = doc_of({"python": "sensors.py:monitor_temperature_sensor",
                  "settings": {"threshold": 80, "max_readings": 3}})
    (source,) = build(doc, ctx)
    assert isinstance(source, ContinuousSource)
    assert source.interval_ms == 5000  # the decorator's
    for _ in range(4):  # readings 75, 80, 85, 90
        source.run_once(ctx)
    assert source.failures == 0, source._complaint
    assert tasks_fired(store) == [
        ("monitor", "continuous", "cooling_system_activate"),  # 85
        ("monitor", "continuous", "cooling_system_activate"),  # 90
    ]  # never compress: at most 3 readings are kept
    ids = [r[0] for r in store.query("SELECT action_id FROM trigger_fires ORDER BY seq")]
    assert payload_of(store, ids[0]) == {"temperature": 85}
    assert [(a.message, a.level, a.source, a.agent) for a in alerts(store)] == [
        ("High temperature: 85°C", "warning", "continuous:monitor", "iot-001"),
        ("High temperature: 90°C", "warning", "continuous:monitor", "iot-001"),
    ]
    assert "alert [warning] continuous:monitor: High temperature: 90°C" in capsys.readouterr().err
    memory = AgentMemory(ctx.store, "iot-001")
    assert memory["last"] == 90
    assert [r["temperature"] for r in memory.recent_readings] == [80, 85, 90]
    assert memory.recent_readings[-1] == {"line": "temperature=90 unit=C", "temperature": 90,
                                          "unit": "C"}


def test_the_function_runs_on_its_interval_with_schedule(store: EventStore, agent: None,
                                                         home: Home, tmp_path: Path) -> None:
    source_file = sensors(tmp_path, interval="50ms")
    doc = doc_of({"python": "sensors.py:monitor_temperature_sensor",
                  "settings": {"threshold": 1000}})
    (source,) = build(doc, SourceContext(home, doc, source=str(source_file)))
    assert isinstance(source, ContinuousSource)
    with running(source, home, doc, str(source_file)):
        wait_for(lambda: source.runs >= 4)
    calls = sys.modules["sp_continuous_sensors"].CALLS
    assert calls == list(range(1, source.runs + 1))
    assert source.failures == 0
    with AgentMemory(lambda: store, "iot-001") as memory:
        assert len(memory.recent_readings) == source.runs
    # More than 3 readings: the last runs asked to compress the history.
    assert ("monitor", "continuous", "compress_historical_data") in tasks_fired(store)


def test_a_failing_run_is_logged_once_and_the_next_runs(store: EventStore, agent: None,
                                                        tmp_path: Path,
                                                        clock: ManualClock) -> None:
    (tmp_path / "flaky.py").write_text(
        "def check(context):\n"
        "    if context.run < 3:\n"
        "        raise RuntimeError('sensor not ready')\n"
        "    context.memory['ok'] = context.run\n")
    logs: list[str] = []
    home = Home(tmp_path / "home")
    ctx = SourceContext(home, TriggerFile(agent="iot-001"), clock, logs.append,
                        source=str(tmp_path / "t.yaml"))
    doc = doc_of({"python": "flaky:check", "interval": "1s"})
    (source,) = build(doc, ctx)
    assert isinstance(source, ContinuousSource)
    for _ in range(3):
        source.run_once(ctx)
    assert source.failures == 2
    assert logs == ["monitor: run 1 failed: RuntimeError: sensor not ready"]
    assert AgentMemory(ctx.store, "iot-001")["ok"] == 3
    ctx.close()


def test_python_entries_are_checked(tmp_path: Path, home: Home) -> None:
    with pytest.raises(UsageError, match=r"\$\.continuous\.m\.python: expected module:function"):
        decode_triggers({"agent": "a", "continuous": {"m": {"python": "nofunction"}}}, "t")
    with pytest.raises(UsageError, match="set agent: at the top of the file"):
        decode_triggers({"continuous": {"m": {"python": "mod:f", "interval": "1s"}}}, "t")
    with pytest.raises(UsageError, match=r"\$\.continuous\.m\.interval: required with action"):
        decode_triggers({"agent": "a", "continuous": {"m": {"action": "t"}}}, "t")
    (tmp_path / "plain.py").write_text("def f(context):\n    pass\n")
    doc = decode_triggers({"agent": "a", "continuous": {"m": {"python": "plain.py:f"}}}, "t")
    ctx = SourceContext(home, doc, source=str(tmp_path / "t.yaml"))
    with pytest.raises(UsageError, match=r"\$\.continuous\.m\.interval: required \(or decorate"):
        build(doc, ctx)
    doc = decode_triggers({"agent": "a", "continuous": {"m": {"python": "plain.py:g"}}}, "t")
    with pytest.raises(UsageError, match=r"plain\.py has no g"):
        build(doc, ctx)
    doc = decode_triggers({"agent": "a", "continuous": {"m": {"python": "no_such_mod_x:g"}}},
                          "t")
    with pytest.raises(UsageError, match="cannot import no_such_mod_x: ModuleNotFoundError"):
        build(doc, ctx)


# -- action entries ------------------------------------------------------------------------------


def test_an_action_entry_submits_each_interval_unless_the_last_still_runs(
        store: EventStore, agent: None, ctx: SourceContext) -> None:
    doc = doc_of({"action": "health_check", "interval": "30s"})
    (source,) = build(doc, ctx)
    assert isinstance(source, ContinuousSource)
    source.run_once(ctx)
    source.run_once(ctx)  # the first is still queued: skipped
    assert source.skipped == 1
    ((first,),) = store.query("SELECT action_id FROM actions")
    assert payload_of(store, first) == {"continuous": "monitor", "run": 1}
    actions.cancel(store, first)
    source.run_once(ctx)
    assert len(store.query("SELECT action_id FROM actions")) == 2
    assert tasks_fired(store) == [("monitor", "continuous", "health_check")] * 2


# -- memory --------------------------------------------------------------------------------------


def test_memory_is_a_small_key_value_store(store: EventStore) -> None:
    memory = AgentMemory(lambda: store, "a1")
    other = AgentMemory(lambda: store, "a2")
    assert memory.get("threshold") is None and "threshold" not in memory
    memory["threshold"] = 80
    memory["calibration"] = {"offset": -1.5, "at": [1, 2]}
    other["threshold"] = 60
    assert memory["threshold"] == 80 and memory.get("calibration") == {"offset": -1.5,
                                                                       "at": [1, 2]}
    assert sorted(memory) == ["calibration", "threshold"] and len(memory) == 2
    del memory["calibration"]
    with pytest.raises(KeyError):
        del memory["calibration"]
    assert dict(memory) == {"threshold": 80} and dict(other) == {"threshold": 60}
    with pytest.raises(UsageError, match="cannot store object as JSON"):
        memory["bad"] = object()


def test_readings_are_bounded_to_the_newest(store: EventStore) -> None:
    memory = AgentMemory(lambda: store, "a1", max_readings=5)
    for i in range(12):
        memory.record_reading({"i": i})
    readings = memory.recent_readings
    assert len(readings) == 5
    assert [r["i"] for r in readings] == [7, 8, 9, 10, 11]
    assert readings[0] == {"i": 7} and readings[-1] == {"i": 11}
    assert readings[1:3] == [{"i": 8}, {"i": 9}]
    with pytest.raises(IndexError):
        readings[5]
    assert memory.clear_readings() == 5 and len(memory.recent_readings) == 0


def test_memory_persists_across_stores_and_processes(store: EventStore, home: Home) -> None:
    memory = AgentMemory(lambda: store, "iot-001")
    memory["threshold"] = 80
    memory.record_reading(21.5)
    memory.record_reading(22.0)
    store.close()
    again = home.open()  # a new connection: another run of the daemon
    try:
        memory = AgentMemory(lambda: again, "iot-001")
        assert memory["threshold"] == 80 and list(memory.recent_readings) == [21.5, 22.0]
        memory["seen_by"] = "second run"
    finally:
        again.close()
    code = ("from sp.runner import iot\n"
            "with iot.memory('iot-001') as m:\n"
            "    print(m['threshold'], m['seen_by'], list(m.recent_readings))\n"
            "    m.record_reading(23)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "SP_HOME": str(home.root)}, check=True)
    assert out.stdout == "80 second run [21.5, 22.0]\n"
    third = home.open()
    try:
        assert list(AgentMemory(lambda: third, "iot-001").recent_readings) == [21.5, 22.0, 23]
    finally:
        third.close()


# -- the API from inside an action (kind "api") ------------------------------------------------


def test_trigger_action_and_send_alert_from_inside_an_action(store: EventStore, agent: None,
                                                             home: Home) -> None:
    (own,) = actions.submit(store, [SubmitSpec(command=["true"], agent="iot-001",
                                               task="health_check")])
    code = ("from sp.runner import iot\n"
            "print(iot.trigger_action('cooling_system_activate', {'why': 'hot'}))\n"
            "iot.send_alert('fan stuck', level='error')\n")
    env = {**os.environ, "SP_HOME": str(home.root), "SP_ACTION_ID": own}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    new_id = out.stdout.strip()
    assert out.stderr == f"alert [error] action:{own}: fan stuck\n"
    assert tasks_fired(store) == [("api:iot-001", "api", "cooling_system_activate")]
    assert payload_of(store, new_id) == {"why": "hot"}
    (alert,) = alerts(store)
    assert (alert.level, alert.source, alert.agent, alert.by) == (
        "error", f"action:{own}", "iot-001", f"action:{own}")


def test_the_api_outside_sp_says_so(monkeypatch: pytest.MonkeyPatch, home: Home) -> None:
    monkeypatch.setenv("SP_HOME", str(home.root))
    monkeypatch.delenv("SP_ACTION_ID", raising=False)
    with pytest.raises(UsageError, match=r"\$SP_ACTION_ID is not set"):
        iot.trigger_action("x")
    with pytest.raises(UsageError, match=r"\$SP_ACTION_ID is not set"):
        iot.send_alert("x")


def test_alert_levels_are_checked(store: EventStore) -> None:
    with pytest.raises(UsageError, match="level must be one of info, warning, error, critical"):
        iot.record_alert(store, "x", "loud", "test", "a1")
    assert alerts(store) == []


def test_the_decorator_registers_with_its_interval() -> None:
    @iot.continuous_action(interval="250ms")
    def every_quarter(context: Any) -> None:
        pass

    @iot.continuous_action
    def default(context: Any) -> None:
        pass

    assert iot.interval_of(every_quarter) == 250 and iot.interval_of(default) == 5000
    assert iot.REGISTRY[f"{__name__}:{every_quarter.__qualname__}"] is every_quarter
    with pytest.raises(UsageError, match="continuous_action"):
        iot.continuous_action(interval="soon")


def test_read_sensor_parses_a_line_from_a_pty() -> None:
    master, slave = os.openpty()
    done = threading.Event()

    def sensor() -> None:  # a device that sends a line every 20 ms
        while not done.wait(0.02):
            os.write(master, b"temperature=81.5 humidity=40% status=ok\n")

    thread = threading.Thread(target=sensor, daemon=True)
    thread.start()
    try:
        reading = iot.read_sensor(os.ttyname(slave), timeout_s=5)
    finally:
        done.set()
        thread.join()
        os.close(master)
        os.close(slave)
    assert reading.temperature == 81.5 and reading.humidity == 40 and reading.status == "ok"
    with pytest.raises(AttributeError, match="the reading has no 'pressure'"):
        reading.pressure  # noqa: B018
