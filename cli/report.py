"""``sp report --html FILE``: one self-contained HTML page (inline SVG and CSS, no scripts)."""

from __future__ import annotations

import html
import os
from datetime import UTC, datetime
from pathlib import Path

import click

from sp.cli.main import App, pass_app

_CSS = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}h1{font-size:1.4em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
pre{background:#f6f6f6;padding:4px;margin:0;white-space:pre-wrap}svg{background:#fafafa}"""
_COLOURS = {"completed": "#2a9d4b", "failed": "#d33", "cancelled": "#999", "executing": "#27c"}


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _bars(title: str, items: list[tuple[str, float]], unit: str, colour: str) -> str:
    if not items:
        return f"<h2>{html.escape(title)}</h2><p>none</p>"
    top = max(v for _, v in items) or 1.0
    h = 18 * len(items) + 10
    rows = []
    for i, (label, value) in enumerate(items):
        w = 400 * value / top
        rows.append(
            f'<text x="0" y="{18 * i + 16}" font-size="11">{html.escape(label[:30])}</text>'
            f'<rect x="200" y="{18 * i + 5}" width="{w:.1f}" height="14" fill="{colour}"/>'
            f'<text x="{205 + w:.1f}" y="{18 * i + 16}" font-size="11">{value:g} {unit}</text>')
    return (f"<h2>{html.escape(title)}</h2><svg width='700' height='{h}' role='img'>"
            + "".join(rows) + "</svg>")


def build(app: App, since_ms: int | None) -> str:
    from sp.projections import queries

    store = app.store(write=False)
    now = store.clock.now_ms()
    start = 0 if since_ms is None else now - since_ms
    acts = queries.actions_since(store, start, 500)
    parts = [f"<h1>sp report</h1><p>{len(acts)} actions since {_day(start)} UTC "
             f"(generated {_day(now)} UTC)</p>"]
    # Timeline: one lane per action.
    spans = [(a, a[5] or a[4], a[6] or now) for a in acts]
    if spans:
        t0 = min(s for _, s, _ in spans)
        t1 = max(e for _, _, e in spans)
        scale = 500 / max(1, t1 - t0)
        lanes = []
        for i, (a, s, e) in enumerate(spans):
            x = 200 + (s - t0) * scale
            w = max(2.0, (e - s) * scale)
            lanes.append(
                f'<text x="0" y="{14 * i + 12}" font-size="10">'
                f"{html.escape(str(a[1])[:32])}</text>"
                f'<rect x="{x:.1f}" y="{14 * i + 3}" width="{w:.1f}" height="10" '
                f'fill="{_COLOURS.get(a[3], "#e90")}"><title>{html.escape(a[0])} {a[3]}'
                "</title></rect>")
        parts.append(f"<h2>Timeline</h2><svg id='timeline' width='720' "
                     f"height='{14 * len(spans) + 10}' role='img'>" + "".join(lanes) + "</svg>")
    attempts = queries.attempts_since(store, start, 500)
    names = {str(a[0]): str(a[1]) for a in acts}
    parts.append(_bars("Durations (ms)", [
        (f"{names.get(str(r[0]), r[0])} #{r[1]}", float(r[3] or 0)) for r in attempts[-40:]
    ], "ms", "#27c"))
    per_day: dict[str, float] = {}
    for r in attempts:
        if r[2] in ("failed", "retry", "interrupted"):
            day = _day(int(r[4]))[:10]
            per_day[day] = per_day.get(day, 0) + 1
    parts.append(_bars("Failures per day", sorted(per_day.items()), "", "#d33"))
    parts.append(_bars("Peak memory per attempt (MiB)", [
        (f"{names.get(str(r[0]), r[0])} #{r[1]}", round((r[5] or 0) / 2**20, 1))
        for r in attempts[-40:]
    ], "MiB", "#7a4"))
    failing = [a for a in acts if a[3] == "failed"]
    rows = []
    for a in failing:
        try:
            tail = app.home.log_path(str(a[0])).read_text(errors="replace").splitlines()[-5:]
        except OSError:
            tail = []
        rows.append(f"<tr><td>{html.escape(a[0])}</td><td>{html.escape(str(a[1]))}</td>"
                    f"<td>{html.escape(str(a[7] or ''))}</td>"
                    f"<td><pre>{html.escape(chr(10).join(tail))}</pre></td></tr>")
    parts.append("<h2>Failing actions</h2>" + (
        "<table><tr><th>id</th><th>name</th><th>error</th><th>last log lines</th></tr>"
        + "".join(rows) + "</table>" if rows else "<p>none</p>"))
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>sp report</title>"
            f"<style>{_CSS}</style></head><body>" + "".join(parts) + "</body></html>\n")


@click.command("report")
@click.option("--html", "out", required=True, type=click.Path(dir_okay=False),
              help="Write the report to this file.")
@click.option("--since", default="7d", show_default=True, help='Window, e.g. "24h"; "all".')
@pass_app
def report(app: App, out: str, since: str) -> None:
    """Write one self-contained HTML report: timeline, durations, failures, memory, failing logs.

    The file needs no network to view: inline CSS and SVG, no scripts.

    \b
    Example:
      sp report --html /tmp/sp-report.html --since 7d
    """
    from sp.agents.durations import parse_duration_ms

    since_ms = None if since == "all" else parse_duration_ms(since, "--since")
    fd, tmp = _writable(out)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(build(app, since_ms))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    click.echo(out)


def _writable(out: str) -> tuple[int, str]:
    """A new file beside ``out``, created before the report is built (so that a path that
    cannot be written is said up front) and renamed over ``out`` once it is complete.

    :raises UsageError: the folder is missing, not writable, or ``out`` is a directory.
    """
    import tempfile

    from sp.ledger.errors import UsageError

    if os.path.isdir(out):
        raise UsageError(f"--html {out}: is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".sp-report-", suffix=".tmp",
                                   dir=os.path.dirname(os.path.abspath(out)))
    except OSError as e:
        raise UsageError(f"--html {out}: cannot write there: {e.strerror}") from None
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # as a plain open() would (mkstemp makes it 0600)
    return fd, tmp


COMMANDS = [report]
