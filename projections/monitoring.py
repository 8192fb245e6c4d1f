"""Read-only queries behind the monitoring commands (``sp action watch``, ``sp metrics``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from sp.ledger import events as ev
from sp.ledger.interface import Ledger
from sp.ledger.store import Recorded
from sp.machines.states import ActionState
from sp.projections.queries import details_of

DAY_MS = 86_400_000


@dataclass
class WatchLine:
    """One appended action event, with the states it moved between."""

    seq: int
    ts: int
    action_id: str
    agent: str | None
    event: str
    from_state: str | None
    to_state: str
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "ts": self.ts, "action_id": self.action_id, "agent": self.agent,
            "event": self.event, "from": self.from_state, "to": self.to_state,
            "details": self.details,
        }


@dataclass
class Follower:
    """Follows the ledger from ``after_seq``: each :meth:`poll` returns what was appended since.

    Only action streams are reported; ``agent`` (when set) keeps that agent's actions only.
    """

    store: Ledger
    after_seq: int = 0
    agent: str | None = None
    _states: dict[str, ActionState | None] = field(default_factory=dict)
    _agents: dict[str, str | None] = field(default_factory=dict)

    def _agent_of(self, stream: str) -> str | None:
        if stream not in self._agents:
            row = self.store.query_one("SELECT agent FROM actions WHERE action_id = ?", (stream,))
            self._agents[stream] = None if row is None else row[0]
        return self._agents[stream]

    def _state_before(self, stream: str, seq: int) -> ActionState | None:
        from sp.machines.action import FOLD

        state: ActionState | None = None
        for rec in self.store.read_stream(stream):
            if rec.seq >= seq:
                break
            state = _next(FOLD, state, rec)
        return state

    def poll(self) -> list[WatchLine]:
        from sp.machines.action import FOLD

        out: list[WatchLine] = []
        for rec in self.store.read_all(self.after_seq):
            self.after_seq = rec.seq
            if not rec.type.startswith("action."):
                continue
            agent = self._agent_of(rec.stream)
            if self.agent is not None and agent != self.agent:
                continue
            if rec.stream not in self._states:
                self._states[rec.stream] = self._state_before(rec.stream, rec.seq)
            before = self._states[rec.stream]
            after = _next(FOLD, before, rec)
            self._states[rec.stream] = after
            out.append(WatchLine(
                seq=rec.seq, ts=rec.ts, action_id=rec.stream, agent=agent, event=rec.type,
                from_state=None if before is None else before.value,
                to_state="?" if after is None else after.value,
                details=details_of(rec.event),
            ))
        return out


def _next(fold: Any, state: ActionState | None, rec: Recorded) -> ActionState | None:
    if isinstance(rec.event, ev.ActionSubmitted):
        return ActionState.PENDING
    if state is None:
        return None
    result: ActionState = fold.get((state, rec.type), state)
    return result


def _pct(values: list[int], p: float) -> int | None:
    """Nearest-rank percentile (as in ``v_metrics``)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def metrics(store: Ledger, *, agent: str | None = None, task: str | None = None,
            since_ms: int | None = None) -> dict[str, Any]:
    """Success metrics over finished attempts (``metrics_attempts``) and actions.

    ``since_ms`` is a window length back from ``store.clock``; None means everything.
    The shape is documented in README.md (Monitoring) and kept stable.
    """
    now = store.clock.now_ms()
    start = None if since_ms is None else now - since_ms
    where, params = ["1"], []
    if agent is not None:
        where.append("agent = ?")
        params.append(agent)
    if task is not None:
        where.append("task = ?")
        params.append(task)
    a_where = " AND ".join([*where, *([] if start is None else ["submitted_ms >= ?"])])
    a_params: list[Any] = [*params, *([] if start is None else [start])]
    m_where = " AND ".join([*where, *([] if start is None else ["finished_ms >= ?"])])
    m_params: list[Any] = [*params, *([] if start is None else [start])]

    states: dict[str, int] = {
        str(k): int(n) for k, n in store.query(
            f"SELECT state, COUNT(*) FROM actions WHERE {a_where} GROUP BY state", a_params)
    }
    total = sum(states.values())
    completed = states.get("completed", 0)
    failed = states.get("failed", 0)
    finished = sum(states.get(s, 0) for s in ("completed", "failed", "cancelled", "skipped",
                                                   "rolled_back"))
    attempts = store.query(
        f"SELECT outcome, error_kind, duration_ms, finished_ms FROM metrics_attempts"
        f" WHERE {m_where} ORDER BY finished_ms", m_params)
    retries = sum(1 for a in attempts if a[0] == "retry")
    errors: dict[str, int] = {}
    for outcome, kind, _d, _f in attempts:
        if outcome in ("failed", "retry", "interrupted"):
            key = str(kind or outcome)
            errors[key] = errors.get(key, 0) + 1
    durations = [int(a[2]) for a in attempts if a[0] == "completed" and a[2] is not None]
    days: dict[str, dict[str, Any]] = {}
    for outcome, _k, duration, finished_ms in attempts:
        if outcome not in ("completed", "failed"):
            continue
        from datetime import UTC, datetime

        day = datetime.fromtimestamp(int(finished_ms) / 1000, UTC).strftime("%Y-%m-%d")
        d = days.setdefault(day, {"runs": 0, "ok": 0, "durations": []})
        d["runs"] += 1
        if outcome == "completed":
            d["ok"] += 1
            if duration is not None:
                d["durations"].append(int(duration))
    trend = [
        {"day": day, "runs": d["runs"], "success_rate": round(d["ok"] / d["runs"], 4),
         "p50_ms": _pct(d["durations"], 50)}
        for day, d in sorted(days.items())
    ]
    return {
        "filter": {"agent": agent, "task": task, "since_ms": since_ms, "from_ms": start,
                   "to_ms": now},
        "actions": {"total": total, "finished": finished, "completed": completed,
                    "failed": failed, "by_state": states},
        "completion_rate": round(completed / finished, 4) if finished else None,
        "attempts": len(attempts),
        "retries": retries,
        "errors_by_kind": dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        "duration_ms": {"p50": _pct(durations, 50), "p95": _pct(durations, 95),
                        "count": len(durations)},
        "trend": trend,
    }


def _tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def resources(store: Ledger, sample_s: float = 0.2) -> dict[str, Any]:
    """CPU, memory and IO of each running action's process tree now (psutil, sampled over
    ``sample_s``) and at peak (``metrics_attempts``), per agent, and the machine's totals.

    The shape is documented in README.md (Monitoring) and kept stable.
    """
    import time

    import psutil

    running = store.query(
        "SELECT a.action_id, a.name, a.agent, a.task, a.started_ms, l.child_pid"
        " FROM actions a LEFT JOIN leases l ON l.name = a.action_id"
        " WHERE a.state = 'executing' ORDER BY a.submitted_seq")
    trees = {str(r[0]): _tree(int(r[5])) if r[5] else [] for r in running}
    for procs in trees.values():
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.cpu_percent(None)
    psutil.cpu_percent(None)
    time.sleep(sample_s)
    peaks = {
        str(r[0]): (r[1], r[2], r[3], r[4]) for r in store.query(
            "SELECT action_id, MAX(peak_rss_bytes), MAX(cpu_user_ms + cpu_sys_ms),"
            " MAX(io_read_bytes), MAX(io_write_bytes) FROM metrics_attempts"
            " WHERE action_id IN (SELECT action_id FROM actions WHERE state = 'executing')"
            " GROUP BY action_id")
    }
    now = store.clock.now_ms()
    actions: list[dict[str, Any]] = []
    for action_id, name, agent, task, started_ms, child_pid in running:
        cpu, rss, rd, wr = 0.0, 0, 0, 0
        alive = 0
        for p in trees[str(action_id)]:
            try:
                cpu += p.cpu_percent(None)
                rss += p.memory_info().rss
                try:
                    io = p.io_counters()
                    rd += io.read_bytes
                    wr += io.write_bytes
                except (psutil.Error, AttributeError):
                    pass
                alive += 1
            except psutil.Error:
                continue
        peak = peaks.get(str(action_id), (None, None, None, None))
        actions.append({
            "action_id": action_id, "name": name, "agent": agent, "task": task,
            "pid": child_pid, "processes": alive,
            "elapsed_ms": None if started_ms is None else max(0, now - int(started_ms)),
            "now": {"cpu_pct": round(cpu, 1), "rss_bytes": rss, "io_read_bytes": rd,
                    "io_write_bytes": wr},
            "peak": {"rss_bytes": max(rss, int(peak[0] or 0)),
                     "io_read_bytes": max(rd, int(peak[2] or 0)),
                     "io_write_bytes": max(wr, int(peak[3] or 0))},
        })
    agents: dict[str, dict[str, Any]] = {}
    for a in actions:
        key = a["agent"] or "-"
        g = agents.setdefault(key, {"agent": a["agent"], "running": 0, "cpu_pct": 0.0,
                                    "rss_bytes": 0, "io_read_bytes": 0, "io_write_bytes": 0})
        g["running"] += 1
        g["cpu_pct"] = round(g["cpu_pct"] + a["now"]["cpu_pct"], 1)
        for k in ("rss_bytes", "io_read_bytes", "io_write_bytes"):
            g[k] += a["now"][k]
    for agent_name, peak_rss, peak_rd, peak_wr in store.query(
            "SELECT COALESCE(agent, '-'), MAX(peak_rss_bytes), MAX(io_read_bytes),"
            " MAX(io_write_bytes) FROM metrics_attempts GROUP BY COALESCE(agent, '-')"):
        if agent_name in agents:
            agents[agent_name]["peak_rss_bytes"] = max(
                int(peak_rss or 0), agents[agent_name]["rss_bytes"])
            agents[agent_name]["peak_io_read_bytes"] = int(peak_rd or 0)
            agents[agent_name]["peak_io_write_bytes"] = int(peak_wr or 0)
    for g in agents.values():
        g.setdefault("peak_rss_bytes", g["rss_bytes"])
        g.setdefault("peak_io_read_bytes", g["io_read_bytes"])
        g.setdefault("peak_io_write_bytes", g["io_write_bytes"])
    vm = psutil.virtual_memory()
    load = psutil.getloadavg()
    return {
        "actions": actions,
        "agents": sorted(agents.values(), key=lambda g: str(g["agent"] or "")),
        "machine": {"cpu_pct": psutil.cpu_percent(None), "cpus": psutil.cpu_count() or 1,
                    "memory_total_bytes": vm.total, "memory_used_bytes": vm.total - vm.available,
                    "memory_pct": vm.percent, "load": [round(x, 2) for x in load]},
    }


_RUN_ENDS = ("action.completed", "action.failed", "action.retry_scheduled", "action.interrupted",
             "action.cancelled", "action.skipped", "action.timed_out")
_FINAL = ("action.completed", "action.failed", "action.cancelled", "action.skipped")


def timeline(store: Ledger, steps: list[tuple[str, str | None]]) -> dict[str, Any]:
    """Spans of each plan step drawn from its events: ``wait`` (submitted → first start, and
    retry backoffs), ``run`` (each attempt). ``steps`` is ``(step, action_id)`` in plan order.
    """
    now = store.clock.now_ms()
    rows: list[dict[str, Any]] = []
    for step, action_id in steps:
        if action_id is None:
            rows.append({"step": step, "action_id": None, "submitted_ms": None,
                         "start_ms": None, "end_ms": None, "retries": 0, "state": None,
                         "spans": []})
            continue
        spans: list[dict[str, Any]] = []
        submitted = start = end = None
        retries = 0
        wait_from: int | None = None
        run_from: int | None = None
        last = None
        for rec in store.read_stream(action_id):
            last = rec.type
            if rec.type == "action.submitted":
                submitted = wait_from = rec.ts
            elif rec.type == "action.started":
                if wait_from is not None and rec.ts > wait_from:
                    spans.append({"kind": "wait", "from_ms": wait_from, "to_ms": rec.ts})
                wait_from = None
                run_from = rec.ts
                start = rec.ts if start is None else start
            if rec.type in _RUN_ENDS and run_from is not None:
                spans.append({"kind": "run", "from_ms": run_from, "to_ms": rec.ts,
                              "outcome": rec.type.removeprefix("action.")})
                run_from = None
            if rec.type == "action.retry_scheduled":
                retries += 1
                wait_from = rec.ts
            if rec.type in _FINAL:
                end = rec.ts
                wait_from = None
        if run_from is not None:
            spans.append({"kind": "run", "from_ms": run_from, "to_ms": now, "outcome": None})
        elif wait_from is not None and end is None:
            spans.append({"kind": "wait", "from_ms": wait_from, "to_ms": now})
        state = store.query_one("SELECT state FROM actions WHERE action_id = ?", (action_id,))
        rows.append({"step": step, "action_id": action_id, "submitted_ms": submitted,
                     "start_ms": start, "end_ms": end, "retries": retries,
                     "state": None if state is None else state[0], "last_event": last,
                     "spans": spans})
    for r in rows:
        r.pop("last_event", None)
    return {"now_ms": now, "steps": rows}
