"""Benchmark: 1,000 no-op actions through sp's worker, against xargs -P2, Huey and DBOS.

All in one run, sp's ledger at ``synchronous=FULL`` (the default), everything in temporary
folders (the peers' venv is cached under the bench cache, never in the project's venv):

1. sp: 1,000 actions running ``true`` submitted in one transaction, then ``sp worker -c 2
   --until-idle`` as a subprocess, timed from its start to its exit; also two ``sp worker -c 1``
   processes side by side, and the same 1,000 as shell lines (``sp submit --each FILE``).
   The main figure uses argv ``["true"]`` with ``shell=False``: Huey's and DBOS's tasks run
   ``subprocess.run(["true"])``, no shell either. The shell variant (``/bin/sh -c true`` per
   action) is the like-for-like of ``xargs -n1 sh -c true``.
2. The floor: ``xargs -P2 -n1 sh -c true`` (and ``xargs -P2 -I{} true``) on 1,000 lines.
3. Huey: SqliteHuey, ``huey_consumer -w 2`` (thread workers), a task running
   ``subprocess.run(["true"])``; 1,000 enqueued, then timed from the consumer's start until
   every result is in. Twice: ``fsync=False`` (synchronous=OFF: what the reference figure
   measured) and Huey's default (SQLite's default synchronous, FULL here).
4. DBOS: SQLite system database, a queue with worker concurrency 2 polled every 10 ms (the
   default 1 s poll would cap it near 2/s), a workflow with one step running
   ``subprocess.run(["true"])``; 1,000 enqueued by another process, then timed from the worker
   process's start until none is left queued or pending.
5. Submit-to-start latency with an idle ``sp worker`` (waiting on its wake-up pipe): 50
   submits, one transaction each, 50 ms apart; ``started.ts - queued.ts`` from the ledger.
   Beside it, a bare fork+exec (``subprocess.run(["true"])``) for context.
6. The worker's peak RSS (VmHWM, polled from /proc until it exits, and ru_maxrss from wait4).

Targets: sp >= 0.5x xargs -P2, >= 1.5x Huey, submit-to-start median < 10 ms, peak RSS < 60 MB.

    python bench/workers.py [--actions 1000] [--rounds 3] [--latency 50] [--no-peers]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from _common import CACHE, child_env, median, sp_argv, verdict

from sp.commands import actions
from sp.commands.home import Home

XARGS_TARGET = 0.5
HUEY_TARGET = 1.5
LATENCY_TARGET_MS = 10.0
RSS_TARGET_MB = 60.0
PEERS = CACHE / "venv-peers"
PEER_PACKAGES = ("huey", "dbos")


# -- sp ---------------------------------------------------------------------------------------
def make_home(root: Path, n: int, shell: bool = False) -> float:
    """A home with ``n`` queued no-op actions; returns the seconds the submit took."""
    if shell:
        lines = root.parent / f"{root.name}.lines"
        lines.write_text("true\n" * n)
        # A fresh home is made by `sp init` (a writing command on a home without a ledger
        # creates it too, but says so on stderr: noise in the bench's output).
        subprocess.run([*sp_argv(), "--home", str(root), "init"], env=child_env(), check=True,
                       stdout=subprocess.DEVNULL)
        t = time.perf_counter()
        subprocess.run([*sp_argv(), "--home", str(root), "submit", "--each", str(lines)],
                       env=child_env(), check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t
    store = Home(root).open()
    try:
        (sync,) = store.query_one("PRAGMA synchronous") or (None,)
        assert sync == 2, f"the ledger should be at synchronous=FULL, found {sync}"
        t = time.perf_counter()
        actions.submit(store, [actions.SubmitSpec(command=["true"]) for _ in range(n)],
                       by="bench")
        return time.perf_counter() - t
    finally:
        store.close()


def vm_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Run(NamedTuple):
    """Worker processes run to exit: wall seconds, peak RSS (largest of them, KiB), and the
    span in the ledger from the first start to the last completion."""

    seconds: float
    hwm_kb: int
    maxrss_kb: int
    span_s: float


def run_workers(root: Path, n: int, procs: int, concurrency: int) -> Run:
    argv = [*sp_argv(), "--home", str(root), "worker", "-c", str(concurrency), "--until-idle"]
    env = child_env()
    t0 = time.perf_counter()
    ps = [subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
          for _ in range(procs)]
    hwm = dict.fromkeys((p.pid for p in ps), 0)
    maxrss = dict.fromkeys((p.pid for p in ps), 0)
    left = {p.pid: p for p in ps}
    end = t0
    while left:
        for pid, p in list(left.items()):
            now_hwm = vm_hwm_kb(pid)  # VmHWM only grows: the last read before exit is the peak
            if now_hwm:
                hwm[pid] = max(hwm[pid], now_hwm)
            got, status, usage = os.wait4(pid, os.WNOHANG)
            if got:
                end = time.perf_counter()
                p.returncode = os.waitstatus_to_exitcode(status)
                maxrss[pid] = usage.ru_maxrss
                del left[pid]
        time.sleep(0.005)
    seconds = end - t0
    for p in ps:
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        if p.returncode != 0:
            raise SystemExit(f"sp worker exited with {p.returncode}: {err}")
    with sqlite3.connect(root / "ledger.db") as db:
        (done,) = db.execute("SELECT count(*) FROM actions WHERE state = 'completed'").fetchone()
        first, last = db.execute(
            "SELECT min(ts) FILTER (WHERE type = 'action.started'),"
            " max(ts) FILTER (WHERE type = 'action.completed') FROM events").fetchone()
    if done != n:
        raise SystemExit(f"sp: {done} of {n} actions completed")
    return Run(seconds, max(hwm.values()), max(maxrss.values()), (last - first) / 1000)


# -- xargs ------------------------------------------------------------------------------------
XARGS = {
    "xargs -P2 -n1 sh -c true": ["xargs", "-P2", "-n1", "sh", "-c", "true"],
    "xargs -P2 -I{} true": ["xargs", "-P2", "-I{}", "true"],
}


def run_xargs(argv: list[str], n: int) -> float:
    lines = "".join(f"{i}\n" for i in range(n)).encode()
    t = time.perf_counter()
    subprocess.run(argv, input=lines, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


# -- the peers: Huey and DBOS, in their own venv ----------------------------------------------
HUEY_TASKS = """
import os, subprocess
from huey import SqliteHuey

_fsync = {"default": None, "on": True, "off": False}[os.environ["HUEY_FSYNC"]]
huey = SqliteHuey("spbench", filename=os.environ["HUEY_DB"], fsync=_fsync)


@huey.task()
def run_true():
    return subprocess.run(["true"]).returncode
"""

HUEY_RUN = """
import json, os, signal, subprocess, sys, time
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
from huey_tasks import huey, run_true

n = int(sys.argv[1])
for _ in range(n):
    run_true()
sync = huey.storage.conn.execute("PRAGMA synchronous").fetchone()[0]
consumer = os.path.join(os.path.dirname(sys.executable), "huey_consumer")
t0 = time.perf_counter()
p = subprocess.Popen([sys.executable, consumer, "huey_tasks.huey", "-w", "2", "-k", "thread",
                      "-q"], cwd=here)
while huey.storage.result_store_size() < n:
    if p.poll() is not None:
        sys.exit("huey_consumer exited early")
    time.sleep(0.002)
seconds = time.perf_counter() - t0
p.send_signal(signal.SIGINT)
p.wait()
print(json.dumps({"seconds": seconds, "synchronous": sync}))
"""

DBOS_RUN = """
import json, subprocess, sys, time
t0 = time.perf_counter()
from dbos import DBOS

mode, db, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
DBOS(config={"name": "spbench", "system_database_url": f"sqlite:///{db}",
             "log_level": "WARNING"})


@DBOS.step()
def run_true() -> int:
    return subprocess.run(["true"]).returncode


@DBOS.workflow()
def job(i: int) -> int:
    return run_true()


if mode == "enqueue":
    DBOS.listen_queues([])  # this process only enqueues
    DBOS.launch()
    q = DBOS.register_queue("bench", worker_concurrency=2, polling_interval_sec=0.01)
    for i in range(n):
        q.enqueue(job, i)
    DBOS.destroy()
else:
    DBOS.launch()
    t1 = time.perf_counter()
    while DBOS.list_workflows(status=["ENQUEUED", "PENDING"], queue_name="bench",
                              load_input=False, load_output=False):
        time.sleep(0.01)
    t2 = time.perf_counter()
    done = len(DBOS.list_workflows(status="SUCCESS", queue_name="bench", load_input=False,
                                   load_output=False))
    print(json.dumps({"seconds": t2 - t0, "launch": t1 - t0, "done": done}), flush=True)
    DBOS.destroy()
"""


def peer_python() -> tuple[Path | None, str]:
    """The peers' venv (made and cached if missing): its python, or None and why not."""
    py = PEERS / "bin" / "python"
    check = [str(py), "-c", "import huey, dbos"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py, ""
    base = shutil.which("python3") or sys.executable
    print(f"making the peers' venv {PEERS} (once; cached): pip install "
          f"{' '.join(PEER_PACKAGES)}...", flush=True)
    for argv in ([base, "-m", "venv", str(PEERS)],
                 [str(py), "-m", "pip", "install", "-q", *PEER_PACKAGES]):
        p = subprocess.run(argv, capture_output=True, text=True)
        if p.returncode != 0:
            return None, f"{' '.join(argv[:4])}... failed: {_tail(p.stderr or p.stdout)}"
    if subprocess.run(check, capture_output=True).returncode != 0:
        return None, "huey or dbos does not import in the peers' venv"
    return py, ""


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:])


def _peer_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SP_", "PYTHON"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def run_huey(py: Path, d: Path, n: int, fsync: str) -> tuple[float | None, str]:
    d.mkdir(parents=True)
    (d / "huey_tasks.py").write_text(HUEY_TASKS)
    (d / "huey_run.py").write_text(HUEY_RUN)
    env = _peer_env(HUEY_DB=str(d / "huey.db"), HUEY_FSYNC=fsync)
    p = subprocess.run([str(py), str(d / "huey_run.py"), str(n)], env=env, cwd=d,
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        return None, f"Huey failed: {_tail(p.stderr or p.stdout)}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(out["synchronous"], "?")
    return float(out["seconds"]), f"synchronous={sync}"


def run_dbos(py: Path, tmp: Path, n: int) -> tuple[float | None, str]:
    d = tmp / "dbos"
    d.mkdir()
    (d / "dbos_run.py").write_text(DBOS_RUN)
    db = str(d / "dbos.sqlite")
    env = _peer_env()
    script = str(d / "dbos_run.py")
    p = subprocess.run([str(py), script, "enqueue", db, str(n)], env=env, cwd=d,
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        return None, f"DBOS could not enqueue: {_tail(p.stderr or p.stdout)}"
    p = subprocess.run([str(py), script, "work", db, str(n)], env=env, cwd=d,
                       capture_output=True, text=True, timeout=1200)
    if p.returncode != 0 or not p.stdout.strip():
        return None, f"DBOS could not run: {_tail(p.stderr or p.stdout)}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if out["done"] != n:
        return None, f"DBOS finished {out['done']} of {n} workflows"
    return float(out["seconds"]), (f"timed from process start; imports and launch took "
                                   f"{out['launch']:.2f}s")


# -- submit-to-start latency --------------------------------------------------------------------
def latency(root: Path, n: int, gap_s: float) -> list[int]:
    """``started.ts - queued.ts`` (ms) of ``n`` actions submitted one by one to an idle worker."""
    store = Home(root).open()
    worker = subprocess.Popen([*sp_argv(), "--home", str(root), "worker", "-c", "2"],
                              env=child_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (root / "wake.fifo").exists():  # the worker made its wake-up pipe
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit("sp worker did not start")
            time.sleep(0.01)
        time.sleep(0.5)  # and is asleep on it
        for _ in range(n):
            actions.submit(store, [actions.SubmitSpec(command=["true"])], by="bench")
            time.sleep(gap_s)
        while True:
            (done,) = store.query_one(
                "SELECT count(*) FROM actions WHERE state = 'completed'") or (0,)
            if done >= n:
                break
            if time.monotonic() > deadline + 60:
                raise SystemExit(f"latency: only {done} of {n} actions completed")
            time.sleep(0.01)
        rows = store.query(
            "SELECT stream, type, min(ts) FROM events WHERE type IN"
            " ('action.queued', 'action.started') GROUP BY stream, type")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        store.close()
    ts: dict[str, dict[str, int]] = {}
    for stream, type_, t in rows:
        ts.setdefault(stream, {})[type_] = int(t)
    return [v["action.started"] - v["action.queued"] for v in ts.values()]


def fork_exec_ms(runs: int = 200) -> float:
    subprocess.run(["true"])
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(["true"])
        times.append(time.perf_counter() - t)
    return median(times) * 1000


def file_create_ms(folder: Path, runs: int = 300) -> float:
    """Creating one empty file, as the worker does for each action's log (same filesystem)."""
    folder.mkdir(parents=True)
    times = []
    for i in range(runs):
        t = time.perf_counter()
        fd = os.open(folder / f"{i:016x}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.close(fd)
        times.append(time.perf_counter() - t)
    return median(times) * 1000


def commit_ms(path: Path, runs: int = 300) -> float:
    """One fsync'd commit of one small row (WAL, synchronous=FULL), as every turn of a worker
    ends with."""
    from _common import raw_connect

    conn = raw_connect(path)
    conn.execute("CREATE TABLE t (x)")
    times = []
    for i in range(runs):
        t = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?)", (i,))
        conn.execute("COMMIT")
        times.append(time.perf_counter() - t)
    conn.close()
    return median(times) * 1000


def pct(xs: list[int], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return float(s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))])


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--actions", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3, help="rounds of the sp, xargs, Huey runs")
    p.add_argument("--latency", type=int, default=50, help="submits of the latency test")
    p.add_argument("--gap", type=float, default=0.05, help="seconds between those submits")
    p.add_argument("--no-peers", action="store_true", help="skip Huey and DBOS")
    args = p.parse_args()
    n = args.actions
    ok = True

    tmp = Path(tempfile.mkdtemp(prefix="sp-bench-workers-"))
    try:
        py, why_not = (None, "skipped (--no-peers)") if args.no_peers else peer_python()
        create_before = file_create_ms(tmp / "files-before")
        print(f"workers: {n:,} no-op actions (`true`), actions/s, median of {args.rounds} "
              f"rounds (DBOS: one); sp's ledger WAL, synchronous=FULL; {os.cpu_count()} CPUs")
        sp_cases = {
            "sp worker -c 2 (argv true)": (1, 2, False),
            "sp 2 workers -c 1 (argv true)": (2, 1, False),
            "sp worker -c 2 (sh -c, submit --each)": (1, 2, True),
        }
        times: dict[str, list[float]] = {k: [] for k in [*sp_cases, *XARGS]}
        spans: dict[str, list[float]] = {k: [] for k in sp_cases}
        submits: dict[str, list[float]] = {k: [] for k in sp_cases}
        notes: dict[str, str] = {}
        runs: list[Run] = []
        for r in range(args.rounds):
            for label, (procs, conc, shell) in sp_cases.items():
                root = tmp / f"sp-{r}-{procs}-{conc}-{int(shell)}"
                submit_s = make_home(root, n, shell)
                run = run_workers(root, n, procs, conc)
                times[label].append(run.seconds)
                spans[label].append(run.span_s)
                submits[label].append(submit_s)
                notes[label] = (f"in the ledger, first start to last completion: "
                                f"{n / median(spans[label]):,.0f}/s; the submit took "
                                f"{median(submits[label]) * 1000:.0f} ms")
                if procs == 1 and not shell:
                    runs.append(run)
                # The homes are kept until the end: on some filesystems (ext4 here) creating
                # files right after deleting thousands is several times slower, and every
                # action creates its log file.
            for label, argv in XARGS.items():
                times[label].append(run_xargs(argv, n))
        huey_s: dict[str, float] = {}
        if py is not None:
            for fsync, label in (("off", "Huey -w 2 (fsync=False)"),
                                 ("default", "Huey -w 2 (default)")):
                for r in range(args.rounds):
                    secs, note = run_huey(py, tmp / f"huey-{fsync}-{r}", n, fsync)
                    if secs is None:
                        notes[label] = note
                        break
                    times.setdefault(label, []).append(secs)
                    notes[label] = note
                if times.get(label):
                    huey_s[label] = median(times[label])
            secs, note = run_dbos(py, tmp, n)
            notes["DBOS queue, concurrency 2"] = note
            if secs is not None:
                times["DBOS queue, concurrency 2"] = [secs]
        else:
            notes["Huey / DBOS"] = f"not run: {why_not}"

        rate = {k: n / median(v) for k, v in times.items() if v}
        print(f"{'case':<42}{'actions/s':>11}  notes")
        for label in [*times, *(k for k in notes if k not in times)]:
            shown = f"{rate[label]:>11,.0f}" if label in rate else f"{'-':>11}"
            print(f"{label:<42}{shown}  {notes.get(label, '')}")

        sp_main = rate["sp worker -c 2 (argv true)"]
        sp_two = rate["sp 2 workers -c 1 (argv true)"]
        sp_best = max(sp_main, sp_two)
        floor = rate["xargs -P2 -n1 sh -c true"]
        print("targets (sp: the better of the two argv variants):")
        ratio = sp_best / floor
        ok &= ratio >= XARGS_TARGET
        print(f"  sp / xargs -P2 -n1 sh -c true   {ratio:5.2f}x  (-c 2: {sp_main / floor:.2f}x, "
              f"2 workers: {sp_two / floor:.2f}x; sh -c: "
              f"{rate['sp worker -c 2 (sh -c, submit --each)'] / floor:.2f}x)"
              f"  target >= {XARGS_TARGET}x  {verdict(ratio >= XARGS_TARGET)}")
        if huey_s:
            label = "Huey -w 2 (fsync=False)" if "Huey -w 2 (fsync=False)" in rate else next(
                iter(huey_s))
            ratio = sp_best / rate[label]
            ok &= ratio >= HUEY_TARGET
            others = ", ".join(f"{k}: {sp_best / rate[k]:.2f}x" for k in huey_s if k != label)
            print(f"  sp / {label:<28}{ratio:5.2f}x  ({others})  target >= {HUEY_TARGET}x  "
                  f"{verdict(ratio >= HUEY_TARGET)}")
        else:
            print("  sp / Huey: not measured (no peers)")
        if "DBOS queue, concurrency 2" in rate:
            print(f"  sp / DBOS                       "
                  f"{sp_best / rate['DBOS queue, concurrency 2']:5.1f}x  (no target)")

        lat_root = tmp / "latency"
        lats = latency(lat_root, args.latency, args.gap)
        med, p95 = statistics.median(lats), pct(lats, 0.95)
        good = med < LATENCY_TARGET_MS
        ok &= good
        print(f"  submit-to-start, idle worker    median {med:.1f} ms, p95 {p95:.1f} ms, max "
              f"{max(lats)} ms ({len(lats)} submits {args.gap * 1000:.0f} ms apart; ledger ts "
              f"in ms)  target < {LATENCY_TARGET_MS:.0f} ms  {verdict(good)}")
        print(f"  for context (medians on this machine): bare fork+exec (subprocess.run(['true']))"
              f" {fork_exec_ms():.2f} ms; creating a file (each action's log) "
              f"{create_before:.2f} ms before the runs, {file_create_ms(tmp / 'files'):.2f} ms "
              f"after; a one-row fsync'd commit "
              f"{commit_ms(tmp / 'commit.db'):.2f} ms")
        hwm = max(r.hwm_kb for r in runs) / 1024
        maxrss = max(r.maxrss_kb for r in runs) / 1024
        good = hwm < RSS_TARGET_MB and maxrss < RSS_TARGET_MB
        ok &= good
        print(f"  worker peak RSS (-c 2, {n:,} actions)  VmHWM {hwm:.1f} MB, wait4 ru_maxrss "
              f"{maxrss:.1f} MB  target < {RSS_TARGET_MB:.0f} MB  {verdict(good)}")
        print(f"workers: {'all targets met' if ok else 'target missed'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
