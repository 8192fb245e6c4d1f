"""Benchmark: the cost of a cron invocation of the CLI.

1. ``sp status`` on an empty home against ``python -c pass``, both with this venv's python,
   as whole subprocesses (median of many interleaved runs). Target: at most 6x.
2. ``sp status`` and ``sp audit ID`` on the 1,000,000-event ledger of bench/replay.py (made
   and cached if missing): wall time of the whole subprocess, and separately the in-process
   query time (the store already open). Target: under 100 ms each.

The subprocesses get bytecode caching (``PYTHONPYCACHEPREFIX`` under the bench cache, outside
the repository; ``PYTHONDONTWRITEBYTECODE`` unset), as an installed ``sp`` run by cron has.

    python bench/cli.py [--runs 21] [--events 1000000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import action_id, big_home, child_env, median, sp_argv, verdict

RATIO_TARGET = 6.0
MS_TARGET = 100.0


def wall(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def interleaved(cmds: dict[str, list[str]], runs: int, env: dict[str, str]) -> dict[str, float]:
    """Median wall seconds of each command, run in turn ``runs`` times (after a warm-up)."""
    for argv in cmds.values():
        wall(argv, env)
        wall(argv, env)
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(runs):
        for k, argv in cmds.items():
            times[k].append(wall(argv, env))
    return {k: median(v) for k, v in times.items()}


def in_process(fn: Callable[[], object], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=21)
    p.add_argument("--events", type=int, default=1_000_000)
    args = p.parse_args()
    env = child_env()
    sp = sp_argv()
    ok = True

    # -- 1. an empty home ------------------------------------------------------------------
    tmp = Path(tempfile.mkdtemp(prefix="sp-bench-cli-"))
    try:
        empty = tmp / "home"
        subprocess.run([*sp, "--home", str(empty), "init"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        t = interleaved({
            "python -c pass": [sys.executable, "-c", "pass"],
            "sp status (empty home)": [*sp, "--home", str(empty), "status"],
        }, args.runs, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base, ours = t["python -c pass"], t["sp status (empty home)"]
    ratio = ours / base
    ok &= ratio <= RATIO_TARGET
    print(f"cli: median wall time of {args.runs} runs, subprocesses of {sys.executable}")
    print(f"{'python -c pass':<40}{base * 1000:>9.1f} ms")
    print(f"{'sp status (empty home)':<40}{ours * 1000:>9.1f} ms  {ratio:.1f}x "
          f"(target <= {RATIO_TARGET:.0f}x)  {verdict(ratio <= RATIO_TARGET)}")

    # -- 2. the 1,000,000-event ledger -------------------------------------------------------
    home = big_home(args.events)
    from sp.commands.actions import resolve
    from sp.commands.home import Home
    from sp.projections import queries

    store = Home(home).open()  # rebuilds the projections if they are missing (untimed)
    store.close()
    store = Home(home).open(write=False)
    (events,) = store.query_one("SELECT count(*) FROM events") or (0,)
    (actions,) = store.query_one("SELECT count(*) FROM actions") or (0,)
    target = action_id(actions // 2)
    t = interleaved({
        "sp status": [*sp, "--home", str(home), "status"],
        "sp audit ID": [*sp, "--home", str(home), "audit", target],
    }, args.runs, env)

    def status() -> None:
        queries.list_actions(store)
        queries.counts(store)

    def audit() -> None:
        queries.audit(store, resolve(store, target))

    q_status = in_process(status, args.runs)
    q_audit = in_process(audit, args.runs)
    store.close()
    print(f"ledger of {events:,} events, {actions:,} actions; audit of {target}")
    for label, whole, query in (("sp status", t["sp status"], q_status),
                                ("sp audit ID", t["sp audit ID"], q_audit)):
        good = whole * 1000 < MS_TARGET and query * 1000 < MS_TARGET
        ok &= good
        print(f"{label:<40}{whole * 1000:>9.1f} ms whole process, {query * 1000:7.2f} ms query "
              f"(target < {MS_TARGET:.0f} ms)  {verdict(good)}")
    print(f"cli: {'all targets met' if ok else 'target missed'}")


if __name__ == "__main__":
    main()
