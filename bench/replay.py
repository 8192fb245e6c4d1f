"""Benchmark: rebuilding every projection from 1,000,000 events against a raw scan + decode.

Ours: ``projections.engine.rebuild(store)`` — drop every projection table and fold the whole
log into them again, in one transaction (``synchronous=FULL``, the default), as ``sp replay``
does. Raw: ``SELECT data FROM events`` and ``msgspec.json.Decoder(AnyEvent)`` on each row: the
same rows decoded into the same Structs, and nothing else. Target: ours >= 0.3x raw.

The ledger is made once (rows written directly with a correct hash chain) and cached in
$SP_BENCH_CACHE (default /tmp/sp-bench) for bench/cli.py.

    python bench/replay.py [--events 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sqlite3

import msgspec
from _common import big_home, fmt_rate, median, timed, verdict

from sp.commands.replay import refuse_damaged
from sp.ledger.events import AnyEvent
from sp.ledger.store import EventStore
from sp.projections import engine

TARGET = 0.3


def replaying(store: EventStore) -> int:
    """``sp replay``'s rebuild, without the recovery sweep (nothing to recover here)."""
    refuse_damaged(store)
    return engine.rebuild(store, verify=True)


def raw_scan(path: str) -> int:
    decode = msgspec.json.Decoder(AnyEvent).decode
    conn = sqlite3.connect(path)
    n = 0
    try:
        for (data,) in conn.execute("SELECT data FROM events"):
            decode(data)
            n += 1
    finally:
        conn.close()
    return n


def envelope_scan(path: str) -> int:
    """What a rebuild must read before folding anything: the envelope columns as well as the
    data, decoded (a floor for ours, printed for information; not the baseline)."""
    decode = msgspec.json.Decoder(AnyEvent).decode
    conn = sqlite3.connect(path)
    n = 0
    try:
        for row in conn.execute(
            "SELECT seq, stream, version, type, ts, data FROM events ORDER BY seq"
        ):
            decode(row[5])
            n += 1
    finally:
        conn.close()
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    home = big_home(args.events)
    path = str(home / "ledger.db")
    raw_scan(path)  # warm the OS page cache for both
    raws: list[float] = []
    ours: list[float] = []
    checked: list[float] = []
    envelopes: list[float] = []
    counts: list[int] = []
    for _ in range(args.rounds):
        raws.append(timed(lambda: counts.append(raw_scan(path))))
        envelopes.append(timed(lambda: counts.append(envelope_scan(path))))
        store = EventStore(path)
        try:
            ours.append(timed(lambda s=store: counts.append(engine.rebuild(s))))  # type: ignore[misc]
            # What sp replay does: quick_check, then the rebuild walking the hash chain in the
            # same scan (it refuses a log that sp verify flags).
            checked.append(timed(lambda s=store: counts.append(replaying(s))))  # type: ignore[misc]
        finally:
            store.close()
    n = counts[0]
    assert all(c == n for c in counts), counts
    raw_rate, our_rate = n / median(raws), n / median(ours)
    ratio = our_rate / raw_rate
    print(f"replay: {n:,} events, median of {args.rounds} rounds")
    print(f"{'case':<40}{'events/s':>12}{'seconds':>9}")
    print(f"{'raw: SELECT data + msgspec decode':<40}{fmt_rate(raw_rate)}{median(raws):>9.2f}")
    print(f"{'(info) envelope + data scan + decode':<40}{fmt_rate(n / median(envelopes))}"
          f"{median(envelopes):>9.2f}")
    print(f"{'ours: engine.rebuild (every projection)':<40}{fmt_rate(our_rate)}"
          f"{median(ours):>9.2f}")
    print(f"{'ours: + chain walk + quick_check (replay)':<40}{fmt_rate(n / median(checked))}"
          f"{median(checked):>9.2f}")
    print(f"replay: ratio {ratio:.2f}x (target >= {TARGET}x)  {verdict(ratio >= TARGET)}")


if __name__ == "__main__":
    main()
