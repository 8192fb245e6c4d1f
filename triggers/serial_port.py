"""Serial-device triggers (pyserial): each line from the device that matches a pattern becomes
an action.

```yaml
agent: iot-001
triggers:
  hardware:
    - device: /dev/ttyUSB0          # or a pyserial URL (socket://host:port, rfc2217://...)
      event: data_available
      baud: 9600
      pattern: 'TEMP=(?P<celsius>\\d+(\\.\\d+)?)'
      action: read_sensor_data
      reopen: 1s                    # how often to try again while the device is away
```

Lines end with ``\\n`` (a trailing ``\\r`` is dropped) and are decoded as UTF-8 (bad bytes
replaced); blank lines are ignored. A line that matches ``pattern`` (``re.search``) fires the
task with payload ``{"line", "groups": {named groups}, "device"}`` (``trigger.fired`` kind
``serial``, stream ``trigger:<name>``, by default ``trigger:serial:<device>``); other lines
fire nothing.

When the device goes away (unplugged: a read error, or it cannot be opened), the source tries
to open it again every ``reopen`` until it is back, logging once when it goes and once when it
returns. A line cut short by the unplugging is dropped.
"""

from __future__ import annotations

import contextlib
import re
import threading
from typing import Any

from sp.agents import trigger_names
from sp.agents.trigger_file import SerialTrigger, TriggerFile
from sp.ledger.errors import SpError
from sp.triggers.sources import Source, SourceContext

READ_TIMEOUT_S = 0.25  # how long one read waits: bounds how late the source sees stop
MAX_LINE = 64 * 1024  # a "line" longer than this without a newline is taken as it is


class SerialSource:
    """One device, read in its own thread."""

    def __init__(self, trigger: SerialTrigger) -> None:
        self.trigger = trigger
        self.name = trigger_names.serial(trigger)
        self.pattern = re.compile(trigger.pattern)
        self.opens = 0
        self.failed_opens = 0
        self.lines = 0
        self.fired = 0
        self._fire_error: str | None = None

    def handle_line(self, ctx: SourceContext, line: str) -> str | None:
        """Fire for one line if it matches; returns the action id."""
        if not line.strip():
            return None
        self.lines += 1
        m = self.pattern.search(line)
        if m is None:
            return None
        payload: dict[str, Any] = {"line": line, "groups": m.groupdict(),
                                   "device": self.trigger.device}
        try:
            action_id = ctx.fire(self.name, trigger_names.SERIAL, self.trigger.action, payload,
                                 detail=line[:200])
        except SpError as e:  # e.g. the task was removed from the agent: keep reading
            if str(e) != self._fire_error:
                ctx.log(f"{self.name}: cannot fire: {e}")
            self._fire_error = str(e)
            return None
        self._fire_error = None
        self.fired += 1
        return action_id

    def _open(self) -> Any:
        import serial

        return serial.serial_for_url(self.trigger.device, baudrate=self.trigger.baud,
                                     timeout=READ_TIMEOUT_S)

    def _read(self, port: Any, ctx: SourceContext, stop: threading.Event) -> None:
        """Read lines until ``stop``. :raises serial.SerialException, OSError: device gone."""
        buf = b""
        while not stop.is_set():
            chunk = port.read(port.in_waiting or 1)
            if not chunk:
                continue
            buf += chunk
            while b"\n" in buf or len(buf) > MAX_LINE:
                raw, sep, rest = buf.partition(b"\n")
                if not sep:
                    raw, rest = buf[:MAX_LINE], buf[MAX_LINE:]
                buf = rest
                self.handle_line(ctx, raw.rstrip(b"\r").decode("utf-8", "replace"))

    def run(self, ctx: SourceContext, stop: threading.Event) -> None:
        import serial

        device = self.trigger.device
        every = int(self.trigger.reopen)
        away = False
        while not stop.is_set():
            try:
                port = self._open()
            except (serial.SerialException, OSError, ValueError) as e:
                self.failed_opens += 1
                if not away:
                    ctx.log(f"{self.name}: cannot open {device}: {e}; trying again every "
                            f"{every} ms")
                away = True
                stop.wait(every / 1000)
                continue
            self.opens += 1
            ctx.log(f"{self.name}: {device} {'is back' if away else 'open'}")
            away = False
            try:
                self._read(port, ctx, stop)
            except (serial.SerialException, OSError) as e:
                ctx.log(f"{self.name}: {device} went away ({e}); trying again every "
                        f"{every} ms")
                away = True
                stop.wait(every / 1000)
            finally:
                with contextlib.suppress(serial.SerialException, OSError):
                    port.close()


def build(doc: TriggerFile, ctx: SourceContext) -> list[Source]:
    return [SerialSource(t) for t in doc.triggers.hardware]
