"""Shared helpers of the benchmark scripts: event mixes, raw rows, the cached big ledger.

Not a test and not part of the package: the scripts in bench/ import it from their own folder.
Nothing here writes into the repository; every file goes to a temporary or cache folder.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the repository from the benchmarks either
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sp.ledger import codec  # noqa: E402
from sp.ledger import events as ev  # noqa: E402
from sp.ledger.schema import MIGRATIONS, SCHEMA_VERSION  # noqa: E402

CACHE = Path(os.environ.get("SP_BENCH_CACHE", "/tmp/sp-bench"))
TS0 = 1_767_225_600_000  # a fixed clock: ours and raw write byte-identical rows

Plan = list[tuple[str, ev.Event]]
Row = tuple[int, str, int, str, int, str, str, str]

INSERT = (
    "INSERT INTO events (seq, stream, version, type, ts, data, prev_hash, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


# -- sp as a user runs it ------------------------------------------------------------------------


def sp_argv() -> list[str]:
    """``sp`` as cron runs it: the console script, with this venv's python."""
    script = Path(sys.executable).parent / "sp"
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "sp.cli"]


def child_env() -> dict[str, str]:
    """Bytecode cached outside the repository (as an installed sp has it); no inherited home;
    the default durability."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(CACHE / "pycache")
    for k in ("SP_HOME", "SP_SYNCHRONOUS"):
        env.pop(k, None)
    return env


# -- event mixes --------------------------------------------------------------------------------
AGENTS = ("research-001", "ops-002", None, "backup-003")


def action_id(i: int) -> str:
    return f"{i:016x}"


def submitted(i: int) -> ev.ActionSubmitted:
    return ev.ActionSubmitted(
        by=f"cli:root pid {4000 + i % 997}", name=f"daily_arxiv_scan {i}",
        agent=AGENTS[i % len(AGENTS)], task="daily_arxiv_scan" if i % 2 else None,
        command=["sh", "-c", f"python3 scan.py --since 2d --batch {i % 50}"], shell=False,
        priority=i % 3, timeout_ms=3_600_000, max_attempts=3,
        group=f"plan-{i // 10}" if i % 5 == 0 else None,
        compensation=["rm", "-rf", f"/tmp/out-{i}"] if i % 5 == 0 else None,
    )


def started(i: int, attempt: int = 1, resume: int | None = None) -> ev.ActionStarted:
    owner = f"worker:{2000 + i % 7}:a1b2c3"
    return ev.ActionStarted(by=owner, attempt=attempt, owner=owner, pid=2000 + i % 7,
                            host="bench-host", resume_step=resume)


def checkpointed(i: int, step: int) -> ev.ActionCheckpointed:
    return ev.ActionCheckpointed(by="action:root pid 31337", step=step,
                                 data={"cursor": step * 1000 + i % 1000, "file": f"part-{step}"})


def progressed(i: int, step: int) -> ev.ActionProgressed:
    return ev.ActionProgressed(by="action:root pid 31337", percent=float(min(99, step * 25)),
                               message=f"classified {step * 40} of 160 papers")


def lifecycle(i: int) -> Plan:
    """One action's whole life: submitted, queued, started, 2 checkpoints and 2 progress
    reports, completed (8 events)."""
    aid = action_id(i)
    return [
        (aid, submitted(i)),
        (aid, ev.ActionQueued(by=f"cli:root pid {4000 + i % 997}",
                              checks=["command present", "attempts 3"])),
        (aid, started(i)),
        (aid, progressed(i, 1)),
        (aid, checkpointed(i, 1)),
        (aid, progressed(i, 2)),
        (aid, checkpointed(i, 2)),
        (aid, ev.ActionCompleted(by=f"worker:{2000 + i % 7}:a1b2c3", exit_code=0,
                                 duration_ms=1500 + i % 1000,
                                 result={"papers": 160, "tail": "done\n"})),
    ]


def lifecycle_mix(n_events: int, first: int = 0) -> Plan:
    plan: Plan = []
    i = first
    while len(plan) < n_events:
        plan.extend(lifecycle(i))
        i += 1
    return plan[:n_events]


def running_setup(n_actions: int) -> Plan:
    """Actions that are submitted, queued and started: the stage for the progress mix."""
    plan: Plan = []
    for i in range(n_actions):
        plan.extend(lifecycle(i)[:3])
    return plan


def progress_mix(n_events: int, n_actions: int) -> Plan:
    """Pure progress and checkpoint events on running actions, round robin."""
    plan: Plan = []
    for k in range(n_events):
        i = k % n_actions
        step = k // n_actions + 1
        plan.append((action_id(i), checkpointed(i, step) if k % 2 else progressed(i, step)))
    return plan


def varied_lifecycle(i: int) -> Plan:
    """Like :func:`lifecycle`, with some variety: every 10th action fails once and is retried,
    every 25th fails for good, every 50th is cancelled while queued."""
    aid = action_id(i)
    by = f"worker:{2000 + i % 7}:a1b2c3"
    if i % 50 == 7:
        return [*lifecycle(i)[:2], (aid, ev.ActionCancelled(by="cli:root pid 1", reason="no"))]
    if i % 25 == 3:
        return [*lifecycle(i)[:4], (aid, ev.ActionFailed(
            by=by, exit_code=2, error="exit code 2: scan.py: no such file", duration_ms=800))]
    if i % 10 == 1:
        return [*lifecycle(i)[:4], (aid, ev.ActionRetryScheduled(
            by=by, exit_code=1, error="exit code 1", duration_ms=700, retry_at_ms=TS0 + 2000)),
            (aid, started(i, attempt=2, resume=None)), *lifecycle(i)[4:]]
    return lifecycle(i)


def big_plan(n_events: int) -> Iterator[Plan]:
    """About ``n_events`` events of varied action lifecycles, one action's plan at a time."""
    total = 0
    i = 0
    while total < n_events:
        plan = varied_lifecycle(i)
        plan = plan[: n_events - total]
        total += len(plan)
        i += 1
        yield plan


# -- raw rows -----------------------------------------------------------------------------------
class Chain:
    """Seq, per-stream versions and the hash chain, as the ledger computes them."""

    def __init__(self) -> None:
        self.seq = 0
        self.prev = codec.GENESIS_HASH
        self.versions: dict[str, int] = {}

    def rows(self, plan: Plan, ts: int = TS0) -> list[Row]:
        out: list[Row] = []
        seq, prev, versions = self.seq, self.prev, self.versions
        for stream, event in plan:
            seq += 1
            version = versions.get(stream, 0) + 1
            versions[stream] = version
            type_ = ev.tag_of(type(event))
            data = codec.encode(event)
            h = codec.chain_hash(prev, seq, stream, version, type_, ts, data)
            out.append((seq, stream, version, type_, ts, data, prev, h))
            prev = h
        self.seq, self.prev = seq, prev
        return out


def raw_connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """A plain sqlite3 connection to a ledger with the same schema, WAL, same durability."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        conn.execute("BEGIN IMMEDIATE")
        for script in MIGRATIONS:
            for stmt in _statements(script):
                conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    return conn


def _statements(script: str) -> list[str]:
    out, buf = [], ""
    for line in script.splitlines():
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    return out


BIG_GENERATION = "1"  # bump when big_plan() changes: the cached ledger is made again


def big_home(n_events: int = 1_000_000, quiet: bool = False) -> Path:
    """A home whose ledger holds ``n_events`` events with a valid hash chain, cached under
    :data:`CACHE` (made once: rows written directly, ``synchronous=OFF``, big transactions).

    It has no projections until something rebuilds them (``bench/replay.py`` does; opening it
    with ``Home(...).open()`` does too).
    """
    import json
    import shutil

    from sp.ledger.store import EventStore

    home = CACHE / f"home-{n_events}"
    marker = home / "bench-ledger.json"
    want = {"generation": BIG_GENERATION, "events": n_events, "schema": SCHEMA_VERSION}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return home
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    if not quiet:
        print(f"making a ledger of {n_events:,} events in {home} (once; cached)...", flush=True)
    t = time.perf_counter()
    EventStore(home / "ledger.db").close()  # schema and migrations, as sp makes them
    conn = sqlite3.connect(str(home / "ledger.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    chain = Chain()
    pending: list[Row] = []
    conn.execute("BEGIN IMMEDIATE")
    for i, plan in enumerate(big_plan(n_events)):
        pending.extend(chain.rows(plan, TS0 + i * 997))
        if len(pending) >= 50_000:
            conn.executemany(INSERT, pending)
            pending.clear()
    conn.executemany(INSERT, pending)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    marker.write_text(json.dumps(want))
    if not quiet:
        print(f"  made in {time.perf_counter() - t:.1f}s", flush=True)
    return home


def grouped(plan: Plan) -> Iterator[tuple[str, list[ev.Event]]]:
    """Consecutive events of one stream, together (one append_many entry each)."""
    stream: str | None = None
    events: list[ev.Event] = []
    for s, e in plan:
        if s != stream and events:
            assert stream is not None
            yield stream, events
            events = []
        stream = s
        events.append(e)
    if events:
        assert stream is not None
        yield stream, events


# -- timing and printing ------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def fmt_rate(x: float) -> str:
    return f"{x:>12,.0f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
