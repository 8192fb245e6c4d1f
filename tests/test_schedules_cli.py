"""``sp schedule`` and ``sp tick`` from the outside: errors, listings, exports, crontab install,
and two real ``sp tick`` processes racing for the same slots."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from sp.commands import agents, schedules
from sp.commands.schedule_export import script_path
from sp.ledger import events as ev
from sp.ledger.clock import ManualClock
from tests.conftest import Sp
from tests.waiting import asleep_in, holds_open, wait_until

AGENT = """\
id: research-001
resources: {cpu_quota: 50%, memory_limit: 2G, tasks_max: 100, nice: 10, io_weight: 50}
actions:
  daily_arxiv_scan:
    command: ["true"]
"""


@pytest.fixture
def applied(sp: Sp, tmp_path: Path) -> Path:
    path = tmp_path / "research.yaml"
    path.write_text(AGENT)
    sp("agent", "apply", str(path))
    return path


def add(sp: Sp, name: str, *args: str, ok: bool = True) -> object:
    return sp("schedule", "add", name, "--agent", "research-001", "--task", "daily_arxiv_scan",
              *args, ok=ok)


def event_count(sp: Sp) -> int:
    out = sp("sql", "SELECT count(*) AS n FROM events", "--format", "json").stdout
    return int(json.loads(out)[0]["n"])


@pytest.mark.parametrize(("args", "message"), [
    (["--cron", "61 * * * *"], "Error: --cron: '61 * * * *' is not a valid cron expression: "
                               "[61 * * * *] is not acceptable, out of range\n"),
    (["--cron", "0 9 * *"], "Error: --cron: '0 9 * *' has 4 field(s); expected 5 (minute hour "
                            "day-of-month month day-of-week) or a macro like @daily\n"),
    (["--cron", "0 9 * * *", "--timezone", "Mars/Olympus"],
     "Error: --timezone: unknown time zone 'Mars/Olympus' (an IANA name like Europe/Paris or "
     "UTC)\n"),
    (["--cron", "0 9 * * *", "--jitter", "soon"],
     "Error: --jitter: expected a duration like \"30s\", \"10m\" or \"2h\", got 'soon'\n"),
    (["--cron", "0 9 * * *", "--missed", "skip", "--persistent"],
     "Error: --missed: skip contradicts --persistent (which runs a missed slot once)\n"),
])
def test_bad_input_is_refused_with_exit_2_and_nothing_written(sp: Sp, applied: Path,
                                                             args: list[str],
                                                             message: str) -> None:
    before = event_count(sp)
    result = add(sp, "s", *args, ok=False)
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert result.stderr == message  # type: ignore[attr-defined]
    assert event_count(sp) == before


def test_add_list_show_disable_enable_rm(sp: Sp, applied: Path) -> None:
    assert add(sp, "daily", "--cron", "0 9 * * *", "--timezone", "Europe/Paris",
               "--jitter", "5m", "--persistent").stdout == "daily\n"  # type: ignore[attr-defined]
    rows = json.loads(sp("schedule", "list", "--format", "json").stdout)
    (row,) = rows
    assert (row["name"], row["cron"], row["timezone"], row["jitter_ms"], row["missed_policy"],
            row["overlap"], row["enabled"]) == ("daily", "0 9 * * *", "Europe/Paris", 300_000,
                                                "run_once", "skip", True)
    assert row["next_slot"].endswith(("T08:00:00Z", "T07:00:00Z"))  # 09:00 in Paris
    assert "daily" in sp("schedule", "list").stdout
    sp("schedule", "disable", "daily", "--reason", "maintenance")
    assert sp("schedule", "disable", "daily").stderr == "schedule daily: already disabled\n"
    sp("schedule", "enable", "daily")
    shown = json.loads(sp("schedule", "show", "daily", "--format", "json").stdout)
    assert [h["event"] for h in shown["history"]] == [
        "schedule.defined", "schedule.disabled", "schedule.enabled"]
    assert shown["history"][1]["details"] == {"reason": "maintenance"}
    assert shown["history"][0]["by"].startswith("cli:")
    assert len(shown["upcoming"]) == 5
    assert "schedule.disabled" in sp("schedule", "show", "daily").stdout
    sp("schedule", "rm", "daily")
    assert json.loads(sp("schedule", "list", "--format", "json").stdout) == []
    shown = json.loads(sp("schedule", "show", "daily", "--format", "json").stdout)
    assert shown["schedule"] is None and shown["history"][-1]["event"] == "schedule.removed"
    missing = sp("schedule", "rm", "daily", ok=False)
    assert missing.exit_code == 2
    assert missing.stderr == "Error: no schedule 'daily' (sp schedule list shows them)\n"
    dup = add(sp, "x", "--cron", "@daily")
    assert dup
    again = add(sp, "x", "--cron", "@daily", ok=False)
    assert again.stderr == ("Error: schedule 'x' exists; sp schedule add --replace "  # type: ignore[attr-defined]
                            "redefines it\n")


def test_schedule_history_is_plain_sql(sp: Sp, applied: Path) -> None:
    add(sp, "daily", "--cron", "0 9 * * *")
    rows = json.loads(sp("sql", "SELECT stream, type FROM events WHERE stream LIKE 'schedule:%'",
                         "--format", "json").stdout)
    assert rows == [{"stream": "schedule:daily", "type": "schedule.defined"}]


# -- exports -------------------------------------------------------------------------------------


def test_export_crontab_in_the_seeds_form(sp: Sp, applied: Path) -> None:
    from sp.schedules.cron import local_zone_name

    local = local_zone_name()
    add(sp, "daily", "--cron", "0 9 * * *", "--timezone", local)
    add(sp, "paris", "--cron", "*/5 * * * *", "--timezone", "Europe/Paris", "--jitter", "1m",
        "--overlap", "allow")
    add(sp, "off", "--cron", "0 2 * * *", "--timezone", local, "--disabled")
    root = sp.home.root.resolve()
    base = f"{script_path()} --home {root} action execute --agent research-001 --task " \
           "daily_arxiv_scan"
    assert Path(script_path()).name == "systemprompt-os" and Path(script_path()).exists()
    out = sp("schedule", "export", "--crontab").stdout
    assert out == (
        "# sp schedule daily\n"
        f"0 9 * * * {base}\n"
        "# sp schedule off (disabled)\n"
        f"# 0 2 * * * {base}\n"
        "# sp schedule paris\n"
        "# jitter 60s: cron has no RandomizedDelaySec; sp tick or the systemd export applies it\n"
        "# overlap allow: cron starts every run, whatever still runs\n"
        "CRON_TZ=Europe/Paris\n"
        f"*/5 * * * * {base}\n"
        f"CRON_TZ={local}\n"
    )
    tick = sp("schedule", "export", "--crontab", "--tick").stdout
    assert tick.splitlines()[-1] == f"* * * * * {script_path()} --home {root} tick --max-seconds 55"
    both = sp("schedule", "export", ok=False)
    assert both.exit_code == 2 and both.stderr == "Error: choose one: --crontab or --systemd DIR\n"


def test_export_systemd_units(sp: Sp, applied: Path, tmp_path: Path) -> None:
    add(sp, "daily", "--cron", "0 9 * * mon-fri", "--timezone", "Europe/Paris", "--jitter",
        "5m", "--persistent")
    add(sp, "research-001/hourly", "--cron", "@hourly", "--timezone", "UTC")
    out = tmp_path / "units"
    written = sp("schedule", "export", "--systemd", str(out)).stdout.split()
    names = sorted(Path(p).name for p in written)
    assert names == ["systemprompt-schedule-daily.service", "systemprompt-schedule-daily.timer",
                     "systemprompt-schedule-research-001-hourly.service",
                     "systemprompt-schedule-research-001-hourly.timer"]
    timer = (out / "systemprompt-schedule-daily.timer").read_text()
    assert "OnCalendar=Mon..Fri *-*-* 09:00:00 Europe/Paris\n" in timer
    assert "Persistent=true\n" in timer and "RandomizedDelaySec=300\n" in timer
    assert "Unit=systemprompt-schedule-daily.service\n" in timer
    assert "WantedBy=timers.target\n" in timer
    service = (out / "systemprompt-schedule-daily.service").read_text()
    root = sp.home.root.resolve()
    assert (f"ExecStart={script_path()} --home {root} action execute --agent research-001 "
            "--task daily_arxiv_scan\n") in service
    for setting in ("CPUQuota=50%", "MemoryMax=2147483648", "TasksMax=100", "IOWeight=50",
                    "Nice=10", "Type=oneshot"):
        assert f"\n{setting}\n" in service
    hourly = (out / "systemprompt-schedule-research-001-hourly.timer").read_text()
    assert "OnCalendar=*-*-* *:00:00 UTC\n" in hourly and "Persistent=false\n" in hourly
    if shutil.which("systemd-analyze"):
        units = sorted(str(p) for p in out.iterdir())
        verify = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True,
                                text=True, check=False)
        assert verify.returncode == 0, verify.stderr
        assert verify.stderr == ""


def test_export_systemd_refuses_what_oncalendar_cannot_say(sp: Sp, applied: Path,
                                                            tmp_path: Path) -> None:
    add(sp, "ok", "--cron", "0 9 * * *")
    add(sp, "either", "--cron", "0 0 1 * mon")
    out = tmp_path / "units"
    result = sp("schedule", "export", "--systemd", str(out), ok=False)
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "Error: schedule either: cron '0 0 1 * mon' restricts both day-of-month and "
        "day-of-week: cron runs when either matches")
    assert not out.exists()  # nothing written, not even the schedules that translate


def test_export_systemd_refuses_two_schedules_with_one_unit_name(sp: Sp, applied: Path,
                                                                   tmp_path: Path) -> None:
    add(sp, "a/b", "--cron", "@daily")
    add(sp, "a-b", "--cron", "@daily")
    result = sp("schedule", "export", "--systemd", str(tmp_path / "u"), ok=False)
    assert result.exit_code == 2
    assert "same unit name systemprompt-schedule-a-b" in result.stderr


# -- crontab install -----------------------------------------------------------------------------

FAKE_CRONTAB = """#!/bin/sh
case "$1" in
  -l) if [ -f "$FAKE_CRONTAB" ]; then cat "$FAKE_CRONTAB"; else
        echo "no crontab for $(id -un)" >&2; exit 1; fi ;;
  -) cat > "$FAKE_CRONTAB" ;;
  *) echo "usage: crontab [-l | -]" >&2; exit 1 ;;
esac
"""


@pytest.fixture
def fake_crontab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "crontab"
    script.write_text(FAKE_CRONTAB)
    script.chmod(0o755)
    table = tmp_path / "crontab.txt"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_CRONTAB", str(table))
    return table


def test_install_crontab_is_idempotent_and_keeps_other_lines(sp: Sp, applied: Path,
                                                             fake_crontab: Path) -> None:
    add(sp, "daily", "--cron", "0 9 * * *")
    assert sp("schedule", "install", "--crontab").stderr == "crontab: installed\n"
    first = fake_crontab.read_text()
    root = sp.home.root.resolve()
    assert first.startswith(f"# >>> sp schedules home={root} ")
    assert f"0 9 * * * {script_path()} --home {root} action execute" in first
    assert sp("schedule", "install", "--crontab").stderr == "crontab: unchanged\n"
    assert fake_crontab.read_text() == first
    # the person's own lines, before and after our block, survive a change in place
    fake_crontab.write_text("MAILTO=me\n" + first + "15 3 * * * /usr/local/bin/mine\n")
    add(sp, "hourly", "--cron", "@hourly")
    assert sp("schedule", "install", "--crontab").stderr == "crontab: installed\n"
    lines = fake_crontab.read_text().splitlines()
    assert lines[0] == "MAILTO=me" and lines[-1] == "15 3 * * * /usr/local/bin/mine"
    assert sum(line.startswith("# >>> sp schedules") for line in lines) == 1
    assert any(line.startswith("@hourly ") for line in lines)
    # --tick swaps the block for the one `sp tick` line
    sp("schedule", "install", "--crontab", "--tick")
    text = fake_crontab.read_text()
    assert f"* * * * * {script_path()} --home {root} tick --max-seconds 55\n" in text
    assert "action execute" not in text and text.startswith("MAILTO=me\n")
    # with no schedules left, the block goes
    for name in ("daily", "hourly"):
        sp("schedule", "rm", name)
    sp("schedule", "install", "--crontab")
    assert fake_crontab.read_text() == "MAILTO=me\n15 3 * * * /usr/local/bin/mine\n"


def test_install_without_crontab_fails_clearly(sp: Sp, applied: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    add(sp, "daily", "--cron", "0 9 * * *")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = sp("schedule", "install", "--crontab", ok=False)
    assert result.exit_code == 2
    assert result.stderr == ("Error: crontab is not installed (no crontab command on PATH); "
                             "print the lines with sp schedule export --crontab instead\n")


# -- sp tick -------------------------------------------------------------------------------------


def _define_in_the_past(sp: Sp, tmp_path: Path, seconds: int, cron: str = "* * * * *") -> None:
    """Apply the agent and define the schedule ``seconds`` ago (a clock set back), so that a
    slot is due now without waiting for one."""
    clock = ManualClock(start_ms=time.time_ns() // 1_000_000 - seconds * 1000)
    store = sp.home.open(clock=clock)
    try:
        path = tmp_path / "research.yaml"
        path.write_text(AGENT)
        agents.apply(store, path)
        schedules.define(store, "every", cron, "research-001", "daily_arxiv_scan",
                         timezone="UTC")
    finally:
        store.close()


def _decisions(sp: Sp) -> list[ev.Event]:
    store = sp.home.open()
    try:
        return [r.event for r in store.read_stream("schedule:every")][1:]
    finally:
        store.close()


def test_sp_tick_fires_then_runs_the_work(sp: Sp, tmp_path: Path) -> None:
    _define_in_the_past(sp, tmp_path, 70)
    result = sp.proc("tick", "--max-seconds", "20")
    assert result.returncode == 0, result.stderr
    assert "schedules: fired" in result.stderr
    fired = [e for e in _decisions(sp) if isinstance(e, ev.ScheduleFired)]
    assert fired
    status = json.loads(sp("status", fired[-1].action_id, "--format", "json").stdout)
    assert status["state"] == "completed" and status["idem_key"].startswith("schedule:every:")
    again = sp.proc("tick", "--max-seconds", "5", "--no-schedules")
    assert again.returncode == 0 and "schedules:" not in again.stderr


@pytest.mark.slow
def test_two_overlapping_tick_processes_fire_each_slot_once(sp: Sp, tmp_path: Path) -> None:
    _define_in_the_past(sp, tmp_path, 150)  # two or three slots are due
    # Hold the write lock while both start, so that both are queued on it, deciding the same
    # slots, when it is released: each has the ledger open and sleeps in SQLite's busy handler.
    blocker = sp.home.open()
    try:
        with blocker.transaction():
            procs = [sp.popen("tick", "--max-seconds", "10") for _ in range(2)]

            def waiting(p: subprocess.Popen[str]) -> bool:
                return p.poll() is not None or (  # an early exit is reported just below
                    holds_open(p.pid, sp.home.ledger_path) and asleep_in(p.pid, "nanosleep"))

            wait_until(lambda: all(waiting(p) for p in procs),
                       what="both ticks to wait for the write lock")
            assert all(p.poll() is None for p in procs)
    finally:
        blocker.close()
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    decisions = _decisions(sp)
    slots = Counter(e.slot_ms for e in decisions
                    if isinstance(e, ev.ScheduleFired | ev.ScheduleSkipped))
    assert slots and all(n == 1 for n in slots.values())  # every slot decided exactly once
    fired = [e for e in decisions if isinstance(e, ev.ScheduleFired)]
    assert len(fired) >= 2
    keys = json.loads(sp("sql", "SELECT idem_key, state FROM actions", "--format",
                         "json").stdout)
    assert sorted(k["idem_key"] for k in keys) == sorted(
        f"schedule:every:{f.slot_ms}" for f in fired)  # one action per fired slot
    assert {k["state"] for k in keys} == {"completed"}
