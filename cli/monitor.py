"""Monitoring commands: ``sp action watch`` (follow the ledger) and ``sp metrics``."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import click

from sp.cli.agent import action as action_group
from sp.cli.main import App, echo_json, echo_table, format_option, pass_app

POLL_S = 0.2


def use_colour() -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _hms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]


_STATE_COLOURS = {"completed": "green", "failed": "red", "executing": "cyan",
                  "retrying": "yellow", "cancelled": "magenta", "interrupted": "yellow"}


def _watch_line(line: Any, colour: bool) -> str:
    keys = ("exit_code", "error_kind", "error", "attempt", "progress", "message", "name")
    details = " ".join(
        f"{k}={str(line.details[k]).replace(chr(10), ' ')[:60]}"
        for k in keys if k in line.details
    )
    to = line.to_state
    if colour and to in _STATE_COLOURS:
        to = click.style(to, fg=_STATE_COLOURS[to])
    move = f"{line.from_state or '-'}→{to}"
    return (f"{_hms(line.ts)}  {line.action_id}  {line.agent or '-'}  {line.event:<22} "
            f"{move}  {details}").rstrip()


@action_group.command("watch")
@click.option("--agent", help="Only this agent's actions.")
@click.option("--all", "everything", is_flag=True, help="Every agent's actions.")
@click.option("--since-seq", type=click.IntRange(0, 2**63 - 1), default=None,
              help="Start after this event seq (default: the current end of the ledger).")
@format_option("text", "json")
@pass_app
def action_watch(app: App, agent: str | None, everything: bool, since_seq: int | None,
                 fmt: str) -> None:
    """Follow actions' events as they are appended, like ``tail -f`` over the ledger.

    One line per event: time (UTC), action id, agent, event, from→to state and key details.
    Polls every 0.2 s; Ctrl-C stops. ``--format json`` prints one JSON object per line.

    \b
    Example:
      sp action watch --agent backup
      sp action watch --all --since-seq 0 --format json
    """
    from sp.projections.monitoring import Follower

    if not agent and not everything:
        raise click.UsageError("give --agent A or --all")
    store = app.store(write=False)
    start = since_seq if since_seq is not None else store.head()[0]
    follower = Follower(store, after_seq=start, agent=None if everything else agent)
    colour = use_colour()
    try:
        while True:
            for line in follower.poll():
                if fmt == "json":
                    echo_json(line.as_dict())
                else:
                    click.echo(_watch_line(line, colour))
            sys.stdout.flush()
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        return


@click.command("metrics")
@click.option("--agent", help="Only this agent's actions.")
@click.option("--task", help="Only this task's actions.")
@click.option("--since", default="7d", show_default=True,
              help='Window back from now, e.g. "24h", "7d"; "all" for everything.')
@format_option()
@pass_app
def metrics_cmd(app: App, agent: str | None, task: str | None, since: str, fmt: str) -> None:
    """Success metrics: completion rate, retries, errors by kind, p50/p95, per-day trend.

    \b
    Example:
      sp metrics --since 7d
      sp metrics --agent backup --task nightly --format json
    """
    from sp.agents.durations import parse_duration_ms
    from sp.projections.monitoring import metrics

    since_ms = None if since == "all" else parse_duration_ms(since, "--since")
    m = metrics(app.store(write=False), agent=agent, task=task, since_ms=since_ms)
    if fmt == "json":
        echo_json(m)
        return
    rate = m["completion_rate"]
    d = m["duration_ms"]
    echo_table(["metric", "value"], [
        ["actions", m["actions"]["total"]],
        ["finished", m["actions"]["finished"]],
        ["completion rate", "-" if rate is None else f"{rate * 100:.1f}%"],
        ["attempts", m["attempts"]],
        ["retries", m["retries"]],
        ["duration p50", _ms(d["p50"])],
        ["duration p95", _ms(d["p95"])],
    ])
    if m["errors_by_kind"]:
        click.echo()
        echo_table(["error kind", "count"], list(m["errors_by_kind"].items()))
    if m["trend"]:
        click.echo()
        echo_table(["day", "runs", "success", "p50"], [
            [t["day"], t["runs"], f"{t['success_rate'] * 100:.1f}%", _ms(t["p50_ms"])]
            for t in m["trend"]
        ])


def _ms(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value} ms" if value < 1000 else f"{value / 1000:.2f} s"


COMMANDS = [metrics_cmd]


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


@action_group.command("resources")
@format_option()
@pass_app
def action_resources(app: App, fmt: str) -> None:
    """CPU, memory and IO of running actions and per agent, now and at peak, plus the machine.

    "now" sums each running action's process tree (psutil, sampled over 0.2 s); "peak" also
    takes the attempts already finished (metrics_attempts).

    \b
    Example:
      sp action resources
      sp action resources --format json
    """
    from sp.projections.monitoring import resources

    r = resources(app.store(write=False))
    if fmt == "json":
        echo_json(r)
        return
    echo_table(["action", "agent", "task", "procs", "cpu", "rss", "peak rss", "read", "write"], [
        [a["action_id"], a["agent"], a["task"], a["processes"], f"{a['now']['cpu_pct']:.1f}%",
         _bytes(a["now"]["rss_bytes"]), _bytes(a["peak"]["rss_bytes"]),
         _bytes(a["now"]["io_read_bytes"]), _bytes(a["now"]["io_write_bytes"])]
        for a in r["actions"]
    ])
    click.echo()
    echo_table(["agent", "running", "cpu", "rss", "peak rss"], [
        [g["agent"], g["running"], f"{g['cpu_pct']:.1f}%", _bytes(g["rss_bytes"]),
         _bytes(g["peak_rss_bytes"])]
        for g in r["agents"]
    ])
    m = r["machine"]
    click.echo(f"\nmachine: cpu {m['cpu_pct']:.1f}% of {m['cpus']} cpus, memory "
               f"{_bytes(m['memory_used_bytes'])} / {_bytes(m['memory_total_bytes'])} "
               f"({m['memory_pct']:.1f}%), load {' '.join(str(x) for x in m['load'])}")


def render_timeline(doc: dict[str, Any], width: int = 60) -> list[str]:
    """A text Gantt chart: ``.`` waiting, ``#`` running, ``x`` a failed attempt."""
    times = [t for s in doc["steps"] for sp in s["spans"] for t in (sp["from_ms"], sp["to_ms"])]
    if not times:
        return ["(no action of this plan has started yet)"]
    t0, t1 = min(times), max(times)
    scale = max(1, t1 - t0) / width
    name_w = max(4, *(len(s["step"]) for s in doc["steps"]))
    out = [f"{'step'.ljust(name_w)}  |{'time →'.ljust(width)}|  start     end       retries",
           ]
    for s in doc["steps"]:
        bar = [" "] * width
        for sp in s["spans"]:
            a = min(width - 1, int((sp["from_ms"] - t0) / scale))
            b = max(a + 1, min(width, round((sp["to_ms"] - t0) / scale)))
            ch = "." if sp["kind"] == "wait" else (
                "x" if sp.get("outcome") in ("failed", "retry_scheduled", "interrupted",
                                             "timed_out") else "#")
            for i in range(a, b):
                bar[i] = ch
        start = "-" if s["start_ms"] is None else f"+{(s['start_ms'] - t0) / 1000:.2f}s"
        end = "-" if s["end_ms"] is None else f"+{(s['end_ms'] - t0) / 1000:.2f}s"
        out.append(f"{s['step'].ljust(name_w)}  |{''.join(bar)}|  {start:<9} {end:<9} "
                   f"{s['retries']}  {s['state'] or 'not submitted'}")
    out.append(f"{' ' * name_w}   0s{' ' * (width - 10)}{(t1 - t0) / 1000:>7.2f}s")
    out.append("legend: . waiting  # running  x failed/retried attempt")
    return out
