"""Monitoring: ``sp action watch`` follows a real ledger, ``sp metrics`` computes over it."""

from __future__ import annotations

import json
import os
import selectors
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sp.commands.home import Home
from sp.ledger.clock import ManualClock
from sp.projections.monitoring import metrics
from tests.conftest import Sp

DAY = 86_400_000


def _read_until(proc: Any, needle: str, timeout: float = 30) -> str:
    """Read the watcher's stdout (bounded polling of a real pipe) until ``needle`` shows."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        if sel.select(timeout=0.2):
            chunk = os.read(proc.stdout.fileno(), 65536).decode()
            if not chunk:
                break
            seen += chunk
    return seen


def test_watch_prints_events_appended_by_another_process(sp: Sp) -> None:
    sp("init")
    watcher = sp.popen("action", "watch", "--agent", "a1", env={**os.environ, "NO_COLOR": "1"})
    try:
        other = sp.proc("submit", "--agent-create", "--agent", "other", "--", "true")
        assert other.returncode == 0, other.stderr
        mine = sp.proc("submit", "--agent-create", "--agent", "a1", "--name", "mine", "--", "sh",
                       "-c", "exit 3")
        assert mine.returncode == 0, mine.stderr
        aid = mine.stdout.strip()
        worker = sp.proc("worker", "--until-idle")
        assert worker.returncode == 0, worker.stderr
        out = _read_until(watcher, "action.failed")
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
    lines = [line for line in out.splitlines() if line.strip()]
    assert all(aid in line for line in lines), out
    assert "action.submitted" in out and "executing→failed" in out and "exit_code=3" in out
    assert other.stdout.strip() not in out


def test_watch_json_from_a_seq(sp: Sp) -> None:
    aid = sp("submit", "--agent-create", "--agent", "a1", "--", "true").stdout.strip()
    sp("worker", "--until-idle")
    proc = sp.popen("action", "watch", "--all", "--since-seq", "0", "--format", "json")
    try:
        out = _read_until(proc, "action.completed")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [r["event"] for r in rows][-1] == "action.completed"
    assert set(rows[0]) == {"seq", "ts", "action_id", "agent", "event", "from", "to", "details"}
    assert rows[-1] == rows[-1] | {"action_id": aid, "from": "executing", "to": "completed"}


def test_watch_needs_agent_or_all(sp: Sp) -> None:
    result = sp("action", "watch", ok=False)
    assert result.exit_code == 2


def test_metrics_over_a_real_ledger(sp: Sp, home: Home) -> None:
    sp("submit", "--agent-create", "--agent", "a1", "--task", "t", "--", "true")
    sp("submit", "--agent-create", "--agent", "a1", "--task", "t", "--", "sh", "-c", "exit 3")
    sp("submit", "--agent-create", "--agent", "a1", "--task", "t", "--retries", "1",
       "--backoff", "linear", "--", "false")
    sp("submit", "--agent-create", "--agent", "a2", "--", "true")
    sp("worker", "--until-idle")  # waits out the retry backoff

    now = int(time.time() * 1000)
    with home.open(clock=ManualClock(now)) as store:
        m = metrics(store, agent="a1", task="t", since_ms=DAY)
        assert m["actions"]["total"] == 3 and m["actions"]["completed"] == 1
        assert m["completion_rate"] == round(1 / 3, 4)
        assert m["attempts"] == 4 and m["retries"] == 1
        assert m["errors_by_kind"] == {"exit_code": 3}
        assert m["duration_ms"]["count"] == 1 and m["duration_ms"]["p50"] is not None
        assert len(m["trend"]) == 1 and m["trend"][0]["runs"] == 3
    # Ten days later nothing is in a 7-day window.
    with home.open(clock=ManualClock(now + 10 * DAY)) as store:
        late = metrics(store, since_ms=7 * DAY)
        assert late["actions"]["total"] == 0 and late["completion_rate"] is None
        assert late["trend"] == [] and late["duration_ms"]["p50"] is None
        assert metrics(store)["actions"]["total"] == 4

    doc = json.loads(sp("metrics", "--format", "json").stdout)
    assert set(doc) == {"filter", "actions", "completion_rate", "attempts", "retries",
                        "errors_by_kind", "duration_ms", "trend"}
    table = sp("metrics", "--agent", "a1").stdout
    assert "completion rate" in table and "exit_code" in table


def test_monitoring_help_has_examples(sp: Sp) -> None:
    for args in (["action", "watch"], ["metrics"]):
        assert "Example:" in sp(*args, "--help").stdout
    assert "sp metrics" in Path(__file__).resolve().parent.parent.joinpath(
        "README.md").read_text()


def test_resources_of_a_real_running_action(sp: Sp) -> None:
    aid = sp("submit", "--agent-create", "--agent", "busy", "--task", "spin", "--",
             sys.executable, "-c", "while True: pass").stdout.strip()
    worker = sp.popen("worker", "--grace", "0")
    try:
        deadline = time.monotonic() + 30
        doc: dict[str, Any] = {}
        while time.monotonic() < deadline:  # bounded polling of the real worker's state
            doc = json.loads(sp("action", "resources", "--format", "json").stdout)
            if doc["actions"] and doc["actions"][0]["processes"] >= 1 \
                    and doc["actions"][0]["now"]["cpu_pct"] > 0:
                break
            time.sleep(0.1)
        assert set(doc) == {"actions", "agents", "machine"}
        row = doc["actions"][0]
        assert row["action_id"] == aid and row["agent"] == "busy" and row["task"] == "spin"
        assert row["processes"] >= 1 and row["now"]["cpu_pct"] > 0
        assert row["now"]["rss_bytes"] > 0 and row["peak"]["rss_bytes"] >= row["now"]["rss_bytes"]
        assert doc["agents"][0]["agent"] == "busy" and doc["agents"][0]["running"] == 1
        machine = doc["machine"]
        assert machine["cpus"] >= 1 and machine["memory_total_bytes"] > 0
        assert len(machine["load"]) == 3
        table = sp("action", "resources").stdout
        assert aid in table and "machine: cpu" in table
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_plan_status_timeline_from_events(sp: Sp, tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("""
name: gantt
actions:
  - id: first
    type: shell
    payload: {command: "sleep 0.2", shell: true}
  - id: flaky
    type: shell
    payload: {command: "exit 1", shell: true}
    retry: {max_attempts: 2, backoff: linear, max_delay: 0.1s}
    depends_on: [first]
""")
    plan_id = sp("plan", "apply", str(path)).stdout.strip()
    sp("worker", "--until-idle")
    doc = json.loads(sp("plan", "status", plan_id, "--timeline", "--format", "json").stdout)
    steps = {s["step"]: s for s in doc["steps"]}
    assert steps["first"]["state"] == "completed" and steps["first"]["retries"] == 0
    assert [s["kind"] for s in steps["first"]["spans"]][-1] == "run"
    assert steps["flaky"]["state"] == "failed" and steps["flaky"]["retries"] == 1
    runs = [s for s in steps["flaky"]["spans"] if s["kind"] == "run"]
    assert [r["outcome"] for r in runs] == ["retry_scheduled", "failed"]
    assert steps["first"]["end_ms"] <= steps["flaky"]["start_ms"]
    text = sp("plan", "status", plan_id, "--timeline").stdout
    lines = text.splitlines()
    first = next(line for line in lines if line.startswith("first"))
    flaky = next(line for line in lines if line.startswith("flaky"))
    assert "#" in first and "x" in flaky and "legend" in text
    assert first.index("#") < flaky.index("x")


def test_live_monitor_in_a_real_pty_quits_on_q(sp: Sp) -> None:
    import pty
    import subprocess
    import termios

    aid = sp("submit", "--agent-create", "--agent", "busy", "--task", "tick", "--",
             sys.executable, "-c",
             "import time\nwhile True:\n print('tick-line', flush=True); time.sleep(0.1)",
             ).stdout.strip()
    worker = sp.popen("worker", "--grace", "0")
    master, slave = pty.openpty()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # bounded polling: wait until it runs
            rows = json.loads(sp("monitor", "--format", "json").stdout)
            if rows and rows[0]["state"] == "executing":
                break
            time.sleep(0.1)
        before = termios.tcgetattr(slave)
        env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
        mon = subprocess.Popen(
            [sys.executable, "-m", "sp.cli", "--home", str(sp.home.root), "monitor", "--live"],
            stdin=slave, stdout=slave, stderr=slave, cwd=Path(__file__).resolve().parent.parent,
            env={**env, "TERM": "xterm", "COLUMNS": "200", "LINES": "30"}, close_fds=True,
        )
        seen = ""
        deadline = time.monotonic() + 30
        while "tick-line" not in seen and time.monotonic() < deadline:
            ready = selectors.DefaultSelector()
            ready.register(master, selectors.EVENT_READ)
            if ready.select(timeout=0.2):
                seen += os.read(master, 65536).decode(errors="replace")
        os.write(master, b"q")
        assert mon.wait(timeout=15) == 0
        assert aid in seen and "executing" in seen and "busy" in seen and "tick-line" in seen
        assert termios.tcgetattr(slave) == before  # cbreak undone: the terminal as it was
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        os.close(master)
        os.close(slave)


def test_html_report_is_self_contained(sp: Sp, tmp_path: Path) -> None:
    from html.parser import HTMLParser

    sp("submit", "--agent-create", "--agent", "a1", "--name", "good", "--", "true")
    bad = sp("submit", "--agent-create", "--agent", "a1", "--name", "bad", "--", "sh", "-c",
             "echo last-words-here; exit 4").stdout.strip()
    sp("worker", "--until-idle")
    out = tmp_path / "r.html"
    sp("report", "--html", str(out), "--since", "7d")
    text = out.read_text()

    class Check(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.ids: list[str] = []
            self.external: list[str] = []
            self.tags: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.tags.append(tag)
            for k, v in attrs:
                if k == "id" and v:
                    self.ids.append(v)
                if k in ("src", "href") and v:
                    self.external.append(v)

    check = Check()
    check.feed(text)
    assert "timeline" in check.ids and check.external == [] and "script" not in check.tags
    assert text.count("<rect") >= 2 and "good" in text and bad in text
    assert "last-words-here" in text and "Failing actions" in text


@pytest.mark.slow
def test_html_report_opens_in_headless_chromium(sp: Sp, tmp_path: Path) -> None:
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sp("submit", "--agent-create", "--agent", "a1", "--name", "good", "--", "true")
    sp("submit", "--agent-create", "--agent", "a1", "--name", "bad", "--", "sh", "-c",
       "echo boom; exit 4")
    sp("worker", "--until-idle")
    out = tmp_path / "r.html"
    sp("report", "--html", str(out), "--since", "7d")
    p = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=0", "--dump-dom", out.as_uri()],
        capture_output=True, text=True, timeout=90,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "id=\"timeline\"" in p.stdout or "id='timeline'" in p.stdout
    assert "boom" in p.stdout  # the failing action's last log line is shown
    console = [ln for ln in p.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == []


def test_live_monitor_redraws_at_the_new_size_after_a_resize(sp: Sp) -> None:
    import fcntl
    import pty
    import re
    import signal
    import struct
    import subprocess
    import termios

    def winsize(fd: int, rows: int, cols: int) -> None:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def widest(text: str) -> int:
        # Cursor moves start a new line on screen; other escapes draw nothing.
        moved = re.sub(r"\x1b\[[0-9;]*[HfABEFG]", "\n", text)
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]", "", moved)
        return max((len(line) for line in re.split(r"[\r\n]", plain)), default=0)

    sp("submit", "--agent-create", "--agent", "wide", "--task", "t", "--", "sleep", "30")
    worker = sp.popen("worker", "--grace", "0")
    master, slave = pty.openpty()
    winsize(slave, 30, 160)
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    mon = subprocess.Popen(
        [sys.executable, "-m", "sp.cli", "--home", str(sp.home.root), "monitor", "--live"],
        stdin=slave, stdout=slave, stderr=slave, cwd=Path(__file__).resolve().parent.parent,
        env={**env, "TERM": "xterm"}, close_fds=True,
    )

    def read_for(seconds: float) -> str:
        out = ""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sel = selectors.DefaultSelector()
            sel.register(master, selectors.EVENT_READ)
            if sel.select(timeout=0.1):
                out += os.read(master, 65536).decode(errors="replace")
        return out

    try:
        first = read_for(3.0)
        assert widest(first) > 80  # drawn for 160 columns
        winsize(slave, 20, 60)
        mon.send_signal(signal.SIGWINCH)
        read_for(0.5)  # the frame in flight when the size changed
        after = read_for(2.5)
        assert after and widest(after) <= 60  # redrawn for the new width, nothing wider
        os.write(master, b"q")
        assert mon.wait(timeout=15) == 0
    finally:
        if mon.poll() is None:
            mon.kill()
        worker.terminate()
        worker.wait(timeout=30)
        os.close(master)
        os.close(slave)
