"""``demo.sh`` (what ``make run`` shows a newcomer) runs on a fresh home and does what it says.

It is run the way ``make run`` runs it (``SP_BIN`` the installed console script, ``DEMO_HOME``
a home of its own, here in ``tmp_path``), from the repository, since it applies
``examples/research-001.yaml`` by that relative path. The ledger it leaves is then read back
with ``sp sql``: each line the demo prints as a promise ("refused before anything is written",
"the kernel refused the write; the denial is on the record") is checked against the events.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sp.security.sandbox import probe

REPO = Path(__file__).resolve().parent.parent
# The console script of the installed sp: beside the interpreter in a venv (make test), else
# the one on PATH.
SP_BIN = Path(sys.executable).with_name("sp")
if not SP_BIN.exists():
    SP_BIN = Path(shutil.which("sp") or "sp")
TAMPER = Path("/etc/sp-demo-tamper")  # what the demo's `tamper` action tries to write

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _sql(home: Path, query: str) -> list[dict[str, Any]]:
    out = subprocess.run([str(SP_BIN), "--home", str(home), "sql", query, "--format", "json"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def test_the_demo_runs_on_a_fresh_home_and_records_what_it_says(tmp_path: Path) -> None:
    caps = probe()
    if caps.landlock_abi < 1:
        # Without Landlock the demo's `tamper` action (--allow-unsandboxed) would really write
        # into /etc: the demo promises a refusal only where the kernel can give one.
        pytest.skip(f"the demo's refused write needs Landlock: {caps.landlock_reason}")
    assert not TAMPER.exists(), f"{TAMPER} is left over from an earlier run: remove it"
    home = tmp_path / "demo-home"
    run = subprocess.run(["bash", str(REPO / "demo.sh")], cwd=REPO, capture_output=True,
                         text=True, timeout=540,
                         env={**os.environ, "SP_BIN": str(SP_BIN), "DEMO_HOME": str(home),
                              "NO_COLOR": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "projections identical" in run.stdout  # sp replay --check
    assert any(line.startswith("ok: ") and line.endswith(" events")
               for line in run.stdout.splitlines()), run.stdout  # sp verify

    states = {r["name"]: r["state"] for r in _sql(home, "SELECT name, state FROM actions")}
    assert states == {"daily_arxiv_scan": "completed", "summarize_findings": "completed",
                      "flaky_sync": "completed", "health_check": "completed",
                      "echo item-1": "completed", "echo item-2": "completed",
                      "echo item-3": "completed", "tamper": "failed"}
    events: dict[str, list[tuple[int, str]]] = {}
    for r in _sql(home, "SELECT a.name, e.seq, e.type FROM events e "
                        "JOIN actions a ON a.action_id = e.stream ORDER BY e.seq"):
        events.setdefault(r["name"], []).append((r["seq"], r["type"]))

    def types(name: str) -> list[str]:
        return [t for _, t in events[name]]

    # the seed's cron line: five checkpointed steps, each reporting progress
    assert types("daily_arxiv_scan").count("action.checkpointed") == 5
    assert types("daily_arxiv_scan").count("action.progressed") == 5
    # the summary waited for the scan it depends on (--after)
    scan_done = max(s for s, t in events["daily_arxiv_scan"] if t == "action.completed")
    summary_start = min(s for s, t in events["summarize_findings"] if t == "action.started")
    assert summary_start > scan_done
    # the flaky task failed once, was retried, and completed on its second attempt
    flaky = types("flaky_sync")
    assert flaky.count("action.retry_scheduled") == 1 and flaky.count("action.started") == 2
    assert flaky[-1] == "action.completed"
    # the passwd submit was refused before anything was written: no action of it exists
    assert not _sql(home, "SELECT stream FROM events WHERE type = 'action.submitted' "
                          "AND data LIKE '%passwd%'")
    # the kernel refused the tamper write, and the denial is on the record
    assert "action.security_denied" in types("tamper")
    (failed,) = _sql(home, "SELECT json_extract(e.data, '$.error_kind') AS kind FROM events e "
                           "JOIN actions a ON a.action_id = e.stream "
                           "WHERE a.name = 'tamper' AND e.type = 'action.failed'")
    assert failed["kind"] == "security_denied"
    denied = _sql(home, "SELECT target FROM v_security")
    assert {r["target"] for r in denied} == {"/etc"}
    assert not TAMPER.exists()
