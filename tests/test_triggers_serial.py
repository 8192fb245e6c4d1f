"""Serial-device triggers on a real pty pair: matching lines enqueue, others don't, and the
device going away and coming back (a symlink moved to a fresh pty) is survived."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sp.agents.trigger_file import TriggerFile, decode_triggers
from sp.commands import agents
from sp.commands.home import Home
from sp.ledger.errors import UsageError
from sp.ledger.store import EventStore
from sp.triggers.serial_port import SerialSource, build
from sp.triggers.sources import SourceContext
from tests.triggerkit import payload_of, running, wait_for

AGENT = """\
id: iot-001
actions:
  read_sensor_data:
    command: ["true"]
"""


class Pty:
    """A pty pair: the test writes to the master; the source reads the slave's path."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)

    def write(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):  # closed already
                os.close(fd)


@pytest.fixture
def agent(store: EventStore, tmp_path: Path) -> None:
    path = tmp_path / "iot.yaml"
    path.write_text(AGENT)
    agents.apply(store, path)


@pytest.fixture
def pty() -> Iterator[Pty]:
    p = Pty()
    yield p
    p.close()


def point(link: Path, target: str) -> None:
    """Move the symlink atomically, as udev does for /dev/serial/by-id/..."""
    tmp = link.with_suffix(".new")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def serial_doc(device: str, **extra: object) -> TriggerFile:
    return decode_triggers({"agent": "iot-001", "triggers": {"hardware": [{
        "device": device, "action": "read_sensor_data",
        "pattern": r"TEMP=(?P<celsius>\d+(\.\d+)?)", "reopen": "50ms", **extra}]}}, "test")


def serial_fires(store: EventStore) -> list[tuple[str, str]]:
    return [(str(r[0]), str(r[1])) for r in store.query(
        "SELECT action_id, detail FROM trigger_fires WHERE kind = 'serial' ORDER BY seq")]


def test_matching_lines_enqueue_and_others_do_not(store: EventStore, home: Home, agent: None,
                                                  pty: Pty) -> None:
    doc = serial_doc(pty.path)
    (source,) = build(doc, SourceContext(home, doc))
    assert isinstance(source, SerialSource)
    assert source.name == f"serial:{pty.path}"
    with running(source, home, doc) as run:
        wait_for(lambda: source.opens == 1)
        pty.write("boot v1.2\r\nTEMP=21.5\r\nnoise\n\n")
        pty.write("TEMP=2")  # a line in two pieces
        pty.write("2\nHUM=40\n")
        wait_for(lambda: source.lines == 5)
        fires = serial_fires(store)
    assert [d for _, d in fires] == ["TEMP=21.5", "TEMP=22"]
    first = payload_of(store, fires[0][0])
    assert first == {"line": "TEMP=21.5", "groups": {"celsius": "21.5"}, "device": pty.path}
    queued = store.query("SELECT task, state FROM actions ORDER BY submitted_seq")
    assert queued == [("read_sensor_data", "queued")] * 2
    assert run.logs == [f"serial:{pty.path}: {pty.path} open"]


def test_unplugged_device_is_reopened_when_it_comes_back(store: EventStore, home: Home,
                                                         agent: None, tmp_path: Path) -> None:
    link = tmp_path / "ttyUSB0"
    first = Pty()
    os.symlink(first.path, link)
    doc = serial_doc(str(link), name="sensor")
    source = SerialSource(doc.triggers.hardware[0])
    second: Pty | None = None
    try:
        with running(source, home, doc) as run:
            wait_for(lambda: source.opens == 1)
            first.write("TEMP=30\n")
            wait_for(lambda: source.fired == 1)

            # Unplug: the pty goes away and the link dangles; reopening fails several times.
            link.unlink()
            first.close()
            wait_for(lambda: source.failed_opens >= 3)
            assert len(serial_fires(store)) == 1

            # Plug in again: a new pty behind the same path (often the first one's number).
            second = Pty()
            point(link, second.path)
            wait_for(lambda: source.opens == 2)
            second.write("TEMP=31\nnope\nTEMP=32\n")
            wait_for(lambda: source.fired == 3)
        # The source has stopped, so its log is complete. The second device is closed only
        # now: closed while the source still read it, it went away again and the source said
        # so, a third line that raced with reading the log (1 run in 4 under load).
        logs = list(run.logs)
    finally:
        first.close()
        if second is not None:
            second.close()
    assert [d for _, d in serial_fires(store)] == ["TEMP=30", "TEMP=31", "TEMP=32"]
    # One line when it went, one when it came back: not one per failed attempt.
    assert logs[0] == f"sensor: {link} open"
    assert logs[1].startswith(f"sensor: {link} went away (")
    assert logs[2:] == [f"sensor: {link} is back"]
    streams = {r[0] for r in store.query("SELECT stream FROM events WHERE type = 'trigger.fired'")}
    assert streams == {"trigger:sensor"}


def test_a_device_missing_at_start_is_waited_for(store: EventStore, home: Home, agent: None,
                                                  tmp_path: Path) -> None:
    link = tmp_path / "ttyACM0"
    doc = serial_doc(str(link))
    source = SerialSource(doc.triggers.hardware[0])
    pty = Pty()
    try:
        with running(source, home, doc) as run:
            wait_for(lambda: source.failed_opens >= 2)
            point(link, pty.path)
            wait_for(lambda: source.opens == 1)
            pty.write("TEMP=5\n")
            wait_for(lambda: source.fired == 1)
            logs = list(run.logs)
    finally:
        pty.close()
    assert len(logs) == 2
    assert logs[0].startswith(f"serial:{link}: cannot open {link}: ")
    assert logs[1] == f"serial:{link}: {link} is back"


def test_an_unknown_task_is_logged_once_and_reading_goes_on(store: EventStore, home: Home,
                                                            agent: None, pty: Pty) -> None:
    doc = decode_triggers({"agent": "iot-001", "triggers": {"hardware": [{
        "device": pty.path, "action": "no_such_task", "reopen": "50ms"}]}}, "test")
    source = SerialSource(doc.triggers.hardware[0])
    with running(source, home, doc) as run:
        wait_for(lambda: source.opens == 1)
        pty.write("a\nb\nc\n")
        wait_for(lambda: source.lines == 3)
        logs = list(run.logs)
    assert source.fired == 0
    assert len([m for m in logs if "cannot fire" in m]) == 1
    assert store.query("SELECT count(*) FROM actions") == [(0,)]


def test_a_bad_pattern_is_refused_when_the_file_is_read() -> None:
    with pytest.raises(UsageError) as e:
        decode_triggers({"agent": "a", "triggers": {"hardware": [
            {"device": "/dev/ttyUSB0", "action": "t", "pattern": "TEMP=("}]}}, "t.yaml")
    assert str(e.value).startswith("t.yaml: $.triggers.hardware[0].pattern: not a regular "
                                   "expression: ")
