"""The ``run_tests`` action type: run a project's tests and record the outcome.

```yaml
- id: test
  type: run_tests
  payload: {cwd: ., command: [python, -m, pytest, -q]}
```

The action runs as a real process, ``python -m sp.actions.tests_type apply '<payload JSON>'``,
which runs the test command in ``cwd``, echoes its output, and parses the outcome from
pytest's own summary line (``== 2 passed, 1 failed in 0.12s ==``) and from JUnit XML (written
by the command at ``junit_xml``; for pytest a ``--junitxml`` file is added automatically).
The result (passed, failed, skipped, errors, duration, failing test names) is recorded as a
checkpoint of the action, and the process exits 1 when a test failed, so the action fails
with kind ``exit_code``. Nothing to undo: the type has no rollback.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import msgspec

from sp.actions import ActionType, Command, Requirement, register


class RunTestsPayload(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    command: list[str] | None = None  # default: [<this python>, -m, pytest]
    cwd: str | None = None
    junit_xml: str | None = None
    env: dict[str, str] = {}


def command(payload: RunTestsPayload) -> Command:
    raw = msgspec.json.encode(payload).decode()
    # -P: it runs in the project's directory, whose modules (a runner.py, an actions/) must
    # not shadow sp's own packages
    return Command(argv=[sys.executable, "-P", "-m", "sp.actions.tests_type", "apply", raw],
                   cwd=payload.cwd, env=dict(payload.env))


def compensation(payload: RunTestsPayload, rollback: None) -> Command | None:
    return None


def requires(payload: RunTestsPayload, rollback: None) -> list[Requirement]:
    if not payload.command:
        return []
    return [Requirement("payload.command[0]", payload.command[0], payload.cwd, payload.env)]


def check(payload: RunTestsPayload, rollback: None) -> list[tuple[str, str]]:
    if payload.command is not None and (not payload.command or not payload.command[0].strip()):
        return [("payload.command", "the command is empty")]
    return []


RUN_TESTS = register(ActionType(
    name="run_tests", payload=RunTestsPayload, rollback=None, command=command,
    compensation=compensation, requires=requires, check=check,
))


# -- parsing ------------------------------------------------------------------------------------

_SUMMARY = re.compile(r"^=*\s*(?P<body>.*?\d+ \w+.*?) in (?P<secs>[\d.]+)s(?: \([^)]*\))?\s*=*$")
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected|"
                    r"warnings?|rerun)")
_FAILED_LINE = re.compile(r"^(FAILED|ERROR) (\S+)")


def parse_pytest_output(text: str) -> dict[str, Any] | None:
    """Counts, duration and failing node ids from pytest's terminal output; None if no summary
    line was found."""
    found: dict[str, Any] | None = None
    for line in reversed(text.splitlines()):
        m = _SUMMARY.match(line.strip())
        if m and _COUNT.search(m["body"]):
            counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
            for n, word in _COUNT.findall(m["body"]):
                key = "errors" if word.startswith("error") else word
                if key in counts:
                    counts[key] += int(n)
            found = {**counts, "duration_s": float(m["secs"])}
            break
    if found is None:
        return None
    failing: list[str] = []
    for line in text.splitlines():
        fm = _FAILED_LINE.match(line)
        if fm and fm[2] not in failing:
            failing.append(fm[2])
    found["failing"] = failing
    return found


def parse_junit(path: Path) -> dict[str, Any] | None:
    """Counts, duration and failing tests (``classname::name``) from a JUnit XML file; None
    when it is missing or not XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = failed = errors = skipped = 0
    duration = 0.0
    failing: list[str] = []
    for suite in suites:
        for case in suite.iter("testcase"):
            total += 1
            tags = {child.tag for child in case}
            name = "::".join(p for p in (case.get("classname", ""), case.get("name", "")) if p)
            if "failure" in tags:
                failed += 1
                failing.append(name)
            elif "error" in tags:
                errors += 1
                failing.append(name)
            elif "skipped" in tags:
                skipped += 1
        with contextlib.suppress(ValueError):
            duration += float(suite.get("time", "0") or 0)
    return {"passed": total - failed - errors - skipped, "failed": failed, "skipped": skipped,
            "errors": errors, "duration_s": duration, "failing": failing}


def _is_pytest(argv: list[str]) -> bool:
    return any(os.path.basename(a).startswith(("pytest", "py.test")) for a in argv[:3])


def run(payload: RunTestsPayload) -> tuple[dict[str, Any], int]:
    """Run the tests in the current directory; the result and the exit code to leave with."""
    argv = list(payload.command) if payload.command else [sys.executable, "-m", "pytest"]
    junit = Path(payload.junit_xml).resolve() if payload.junit_xml else None
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if _is_pytest(argv) and not any(a.startswith("--junitxml") for a in argv):
        if junit is None:
            tmp = tempfile.TemporaryDirectory(prefix="sp-junit-")
            junit = Path(tmp.name) / "junit.xml"
        argv.append(f"--junitxml={junit}")
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append(line)
        code = proc.wait()
        sys.stdout.flush()
        summary = parse_pytest_output("".join(lines))
        report = parse_junit(junit) if junit is not None else None
    finally:
        if tmp is not None:
            tmp.cleanup()
    best = report or summary or {"passed": 0, "failed": 0, "skipped": 0, "errors": 0,
                                 "duration_s": None, "failing": []}
    failing = summary["failing"] if summary and summary["failing"] else best["failing"]
    result = {"passed": best["passed"], "failed": best["failed"], "skipped": best["skipped"],
              "errors": best["errors"], "duration_s": best["duration_s"], "failing": failing,
              "exit_code": code, "command": argv,
              "source": "junit" if report else "summary" if summary else "none",
              "summary": summary, "junit": report}
    bad = best["failed"] + best["errors"] > 0
    return result, (1 if bad and code == 0 else code)


def main(args: list[str]) -> int:
    if len(args) != 2 or args[0] != "apply":
        print("usage: python -m sp.actions.tests_type apply PAYLOAD_JSON", file=sys.stderr)
        return 2
    from sp.runner import api

    payload = msgspec.json.decode(args[1], type=RunTestsPayload)
    result, code = run(payload)
    print("sp run_tests: " + json.dumps({k: result[k] for k in (
        "passed", "failed", "skipped", "errors", "duration_s", "failing")}), flush=True)
    if api.current_action() is not None:
        api.checkpoint(result)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
