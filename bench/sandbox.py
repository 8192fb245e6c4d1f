"""Benchmark: the startup cost of the sandbox shim (``true`` wrapped vs not).

Runs ``true`` N times bare and under :func:`sp.security.sandbox.wrap` with several specs, and
prints the median and p90 wall time of one ``subprocess.run`` each; also times the 65,535
Landlock port rules a deny-only TCP spec needs (in-process, no sandbox applied).

    python bench/sandbox.py [--runs 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sp.security import landlock  # noqa: E402
from sp.security.sandbox import SandboxSpec, probe, wrap  # noqa: E402


def _real(name: str) -> str:
    return os.path.realpath(shutil.which(name) or name)


# unix_sockets exists since the seccomp filter (issue 11); the bench still runs on older trees
_NO_UNIX = {"unix_sockets": False} if "unix_sockets" in SandboxSpec.__struct_fields__ else {}


def _time(argv: list[str], runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, check=True)
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.9) - 1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    runs = ap.parse_args().runs
    print(f"capabilities: {probe()}")
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "bare true": ["true"],
            "shim, nothing restricted": wrap(SandboxSpec(fs=False, namespaces=False), ["true"]),
            "shim, namespaces only": wrap(SandboxSpec(fs=False), ["true"]),
            "shim, fs (read /, write tmp) + namespaces": wrap(
                SandboxSpec(read=["/"], write=[tmp]), ["true"]),
            "... + deny /etc/shadow, /usr/bin/su + audit log": wrap(
                SandboxSpec(read=["/"], write=[tmp], deny_read=["/etc/shadow"],
                            deny_execute=["/usr/bin/su"], denials_path=f"{tmp}/d.jsonl"),
                ["true"]),
            "... + no network": wrap(SandboxSpec(read=["/"], write=[tmp], network=False),
                                     ["true"]),
            "... + tcp deny-only (65,535 port rules)": wrap(
                SandboxSpec(read=["/"], write=[tmp], tcp_deny=[22]), ["true"]),
            "... + execute allow-list (true)": wrap(
                SandboxSpec(read=["/"], write=[tmp], execute=[_real("true")]), ["true"]),
            "... + no network, no unix sockets": wrap(
                SandboxSpec(read=["/"], write=[tmp], network=False, **_NO_UNIX), ["true"]),
            "... + tcp allow-list (2 port rules)": wrap(
                SandboxSpec(read=["/"], write=[tmp], tcp_connect=[80, 443]), ["true"]),
        }
        for name, argv in cases.items():
            med, p90 = _time(argv, runs)
            print(f"{name:50s} median {med:7.1f} ms   p90 {p90:7.1f} ms")
    if probe().landlock_abi >= 4:
        rs = landlock.Ruleset(4, 0, landlock.NET_CONNECT_TCP, 0)
        t = time.perf_counter()
        rs.add_ports(list(range(65536)), landlock.NET_CONNECT_TCP)
        print(f"65,536 landlock_add_rule(NET_PORT) calls from Python: "
              f"{(time.perf_counter() - t) * 1000:.0f} ms")
        rs.close()


if __name__ == "__main__":
    main()
