"""``sp monitor --live`` and ``sp action monitor --live``: a full-screen table, every second."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import tty
from pathlib import Path
from typing import Any

import click

from sp.cli.agent import action as action_group
from sp.cli.main import App, echo_json, echo_table, format_option, pass_app

ACTIVE = ("pending", "validating", "queued", "executing", "retrying", "interrupted",
          "rolling_back")


def _last_line(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            lines = [x for x in f.read().decode(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1][-80:] if lines else ""


class Sampler:
    """Keeps psutil objects between refreshes so that CPU % is measured over the interval."""

    def __init__(self) -> None:
        self._procs: dict[int, Any] = {}

    def usage(self, pid: int | None) -> tuple[float | None, int | None]:
        import psutil

        if not pid:
            return None, None
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None, None
        cpu, rss = 0.0, 0
        for p in tree:
            known = self._procs.setdefault(p.pid, p)
            with contextlib.suppress(psutil.Error):
                cpu += known.cpu_percent(None)
                rss += known.memory_info().rss
        return cpu, rss


def snapshot(app: App, sampler: Sampler) -> list[dict[str, Any]]:
    store = app.store(write=False)
    now = store.clock.now_ms()
    from sp.projections.queries import active_actions

    rows = active_actions(store, ACTIVE, 200)
    out = []
    for aid, name, agent, task, state, progress, msg, started, pid in rows:
        cpu, rss = sampler.usage(pid) if state == "executing" else (None, None)
        out.append({
            "action_id": aid, "name": name, "agent": agent, "task": task, "state": state,
            "progress": progress, "progress_msg": msg,
            "elapsed_ms": max(0, now - int(started)) if started and state == "executing" else None,
            "cpu_pct": None if cpu is None else round(cpu, 1), "rss_bytes": rss,
            "last_log": _last_line(app.home.log_path(str(aid))) if state == "executing" else "",
        })
    return out


def render(rows: list[dict[str, Any]]) -> Any:
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    from sp.cli.monitor import _bytes

    table = Table(title=f"sp monitor — {len(rows)} active (q quits)", expand=True)
    for col in ("action", "agent", "task", "state", "progress", "elapsed", "cpu", "mem", "log"):
        table.add_column(col, overflow="ellipsis", no_wrap=True)
    for r in rows:
        bar: Any = "-"
        if r["progress"] is not None:
            bar = ProgressBar(total=1.0, completed=min(1.0, max(0.0, float(r["progress"]))),
                              width=12)
        table.add_row(
            f"{r['action_id']} {r['name']}", r["agent"] or "-", r["task"] or "-", r["state"], bar,
            "-" if r["elapsed_ms"] is None else f"{r['elapsed_ms'] / 1000:.0f}s",
            "-" if r["cpu_pct"] is None else f"{r['cpu_pct']:.0f}%",
            "-" if r["rss_bytes"] is None else _bytes(r["rss_bytes"]), r["last_log"] or "",
        )
    return table


def run_live(app: App) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console(no_color=bool(os.environ.get("NO_COLOR")))
    sampler = Sampler()
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    try:
        if saved is not None:
            tty.setcbreak(fd)
        with Live(render(snapshot(app, sampler)), console=console, screen=True,
                  auto_refresh=False) as live:
            while True:
                ready, _, _ = select.select([fd], [], [], 1.0)
                if ready:
                    key = os.read(fd, 32)
                    if not key or b"q" in key.lower() or b"\x03" in key:
                        return
                live.update(render(snapshot(app, sampler)), refresh=True)
    except KeyboardInterrupt:
        return
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _monitor(app: App, live: bool, fmt: str) -> None:
    if live:
        run_live(app)
        return
    rows = snapshot(app, Sampler())
    if fmt == "json":
        echo_json(rows)
        return
    echo_table(["id", "agent", "task", "state", "progress", "cpu", "log"], [
        [r["action_id"], r["agent"], r["task"], r["state"],
         None if r["progress"] is None else f"{r['progress'] * 100:.0f}%", r["cpu_pct"],
         r["last_log"]] for r in rows], wide=("log",))


@click.command("monitor")
@click.option("--live", is_flag=True, help="Full screen, refreshed every second; q quits.")
@format_option()
@pass_app
def monitor(app: App, live: bool, fmt: str) -> None:
    """Running and queued actions: agent, task, state, progress, elapsed, CPU, memory, log.

    Without --live, one snapshot (table or json) and exit.

    \b
    Example:
      sp monitor --live
      sp monitor --format json
    """
    _monitor(app, live, fmt)


@action_group.command("monitor")
@click.option("--live", is_flag=True, help="Full screen, refreshed every second; q quits.")
@format_option()
@pass_app
def action_monitor(app: App, live: bool, fmt: str) -> None:
    """Same as ``sp monitor``.

    \b
    Example:
      sp action monitor --live
    """
    _monitor(app, live, fmt)


COMMANDS = [monitor]
