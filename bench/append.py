"""Benchmark: appending events through sp's EventStore against raw sqlite3 inserts.

Ours: ``commands.home.Home(dir).open()`` — the ledger with every projection installed, so each
append also updates actions, queue, metrics, rollback plans and checkpoints in the same
transaction — with the right expected versions. Raw: plain ``sqlite3`` inserts of the very same
rows (precomputed: same JSON, same hash chain) into the same ``events`` schema, WAL,
``synchronous=FULL``, in transactions of the same size. Both at the same durability: every
commit is fsync'd.

Two event mixes:

* lifecycle: per action submitted, queued, started, 2 progress, 2 checkpoints, completed;
* progress: pure progress/checkpoint events on 50 running actions (set up untimed).

Two transaction sizes: one event per transaction, and 100 events per transaction.

Prints events/s of ours and raw (median of interleaved rounds) and the ratio; target >= 0.7.

    python bench/append.py [--rounds 3] [--single 3000] [--batched 100000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _common import (
    INSERT,
    TS0,
    Chain,
    Plan,
    Row,
    fmt_rate,
    grouped,
    lifecycle_mix,
    median,
    progress_mix,
    raw_connect,
    running_setup,
    timed,
    verdict,
)

from sp.commands.home import Home
from sp.ledger import events as ev
from sp.ledger.clock import ManualClock

TARGET = 0.7
Txn = list[tuple[str, list[ev.Event], int]]


def transactions(setup: Plan, plan: Plan, size: int) -> list[Txn]:
    """The timed plan cut into transactions of ``size`` events, with expected versions."""
    versions: dict[str, int] = {}
    for stream, _ in setup:
        versions[stream] = versions.get(stream, 0) + 1
    out: list[Txn] = []
    for start in range(0, len(plan), size):
        txn: Txn = []
        for stream, events in grouped(plan[start:start + size]):
            v = versions.get(stream, 0)
            txn.append((stream, events, v))
            versions[stream] = v + len(events)
        out.append(txn)
    return out


def run_ours(root: Path, setup: Plan, txns: list[Txn]) -> float:
    store = Home(root).open(clock=ManualClock(TS0))
    try:
        if setup:
            with store.transaction() as tx:
                tx.append_many([(s, evs, 0) for s, evs in grouped(setup)])

        def go() -> None:
            if all(len(t) == 1 and len(t[0][1]) == 1 for t in txns):
                for ((stream, events, version),) in txns:
                    store.append(stream, events, version)
            else:
                for txn in txns:
                    with store.transaction() as tx:
                        tx.append_many(txn)

        return timed(go)
    finally:
        store.close()


def run_raw(root: Path, setup_rows: list[Row], row_txns: list[list[Row]]) -> float:
    root.mkdir(parents=True, exist_ok=True)
    conn = raw_connect(root / "ledger.db")
    try:
        if setup_rows:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT, setup_rows)
            conn.execute("COMMIT")
        execute, executemany = conn.execute, conn.executemany

        def go() -> None:
            if all(len(t) == 1 for t in row_txns):
                for (row,) in row_txns:
                    execute("BEGIN IMMEDIATE")
                    execute(INSERT, row)
                    execute("COMMIT")
            else:
                for rows in row_txns:
                    execute("BEGIN IMMEDIATE")
                    executemany(INSERT, rows)
                    execute("COMMIT")

        return timed(go)
    finally:
        conn.close()


def same_events(a: Path, b: Path) -> bool:
    import sqlite3

    q = "SELECT seq, stream, version, type, ts, data, prev_hash, hash FROM events ORDER BY seq"
    with sqlite3.connect(a) as ca, sqlite3.connect(b) as cb:
        return ca.execute(q).fetchall() == cb.execute(q).fetchall()


def case(tmp: Path, label: str, setup: Plan, plan: Plan, size: int, rounds: int) -> float:
    chain = Chain()
    setup_rows = chain.rows(setup)
    rows = chain.rows(plan)
    row_txns = [rows[i:i + size] for i in range(0, len(rows), size)]
    txns = transactions(setup, plan, size)
    ours: list[float] = []
    raw: list[float] = []
    for r in range(rounds):
        # Interleave, alternating who goes first, so disk noise hits both alike.
        order = ("raw", "ours") if r % 2 == 0 else ("ours", "raw")
        for who in order:
            d = tmp / f"{label}-{who}-{r}"
            if who == "raw":
                raw.append(run_raw(d, setup_rows, row_txns))
            else:
                ours.append(run_ours(d, setup, txns))
        if r == 0 and not same_events(tmp / f"{label}-raw-0" / "ledger.db",
                                      tmp / f"{label}-ours-0" / "ledger.db"):
            raise SystemExit(f"{label}: ours and raw wrote different events rows")
        for who in order:
            shutil.rmtree(tmp / f"{label}-{who}-{r}")
    n = len(plan)
    ours_rate, raw_rate = n / median(ours), n / median(raw)
    ratio = ours_rate / raw_rate
    print(f"{label:<34}{fmt_rate(ours_rate)}{fmt_rate(raw_rate)}{ratio:>8.2f}x  "
          f"{verdict(ratio >= TARGET)}")
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--single", type=int, default=3000, help="events, one per transaction")
    p.add_argument("--batched", type=int, default=100_000, help="events, 100 per transaction")
    p.add_argument("--running", type=int, default=50, help="running actions (progress mix)")
    p.add_argument("--only", default="", help="run only the cases whose label contains this")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sp-bench-append-"))
    try:
        print(f"append: events/s, median of {args.rounds} interleaved rounds; WAL, "
              "synchronous=FULL for both; raw = sqlite3 inserts of the same rows")
        print(f"{'case':<34}{'ours ev/s':>12}{'raw ev/s':>12}{'ratio':>9}  target >= {TARGET}x")
        setup = running_setup(args.running)
        cases = [
            ("lifecycle, 1 event/txn", [], lifecycle_mix(args.single), 1),
            ("lifecycle, 100 events/txn", [], lifecycle_mix(args.batched), 100),
            ("progress, 1 event/txn", setup, progress_mix(args.single, args.running), 1),
            ("progress, 100 events/txn", setup, progress_mix(args.batched, args.running), 100),
        ]
        ratios = [case(tmp, label, su, plan, size, args.rounds)
                  for label, su, plan, size in cases if args.only in label]
        print(f"append: {'all targets met' if min(ratios) >= TARGET else 'target missed'} "
              f"(worst ratio {min(ratios):.2f}x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
