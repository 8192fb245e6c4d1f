"""The ``http_request`` action type: one HTTP call, with timeouts and retries (urllib).

```yaml
- id: ping
  type: http_request
  payload:
    method: POST
    url: http://127.0.0.1:8080/api/items
    headers: {Authorization: "Bearer x"}
    json: {name: demo}          # or body: "raw text"
    timeout: 10s                # per attempt: "500ms", "10s", "2m" or seconds
    retries: 3                  # further attempts on a connection error or a 5xx
    expect_status: [200, 201]
```

Runs as ``python -m sp.actions.run http_request apply '<payload JSON>'``. A connection error,
a timeout or a 5xx status not in ``expect_status`` is retried ``retries`` times with an
exponential backoff (0.2 s, 0.4 s, ... at most 5 s). The response is recorded as a checkpoint
``{status, url, headers (a subset), body_size, body_sha256, body (the first 64 KiB, as text),
body_truncated, attempts}``; a final status not in ``expect_status`` fails the action (exit 1)
after recording it. There is no undo: a request cannot be taken back (a plan can give a
``shell`` step as the compensation of the call that needs one).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.error
import urllib.request
from typing import Any

import msgspec

from sp.actions import ActionType, Command, Requirement, blobs, register
from sp.actions.run import argv_for
from sp.ledger.errors import UsageError

BODY_LIMIT = 64 * 1024
KEPT_HEADERS = ("content-type", "content-length", "content-encoding", "etag", "last-modified",
                "location", "retry-after", "date", "server")


class HttpPayload(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    url: str
    method: str = "GET"
    headers: dict[str, str] = {}
    body: str | None = None
    json: Any = msgspec.UNSET  # a JSON body (sent with Content-Type: application/json)
    timeout: str | float = "10s"
    retries: int = 3
    expect_status: list[int] = msgspec.field(default_factory=lambda: [200])


def parse_timeout(value: str | float) -> float:
    """``"500ms"``, ``"10s"``, ``"2m"`` or a number of seconds."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", value)
        if not m:
            raise ValueError(f"not a duration: {value!r}")
        seconds = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"not a positive duration: {value!r}")
    return seconds


def command(payload: HttpPayload) -> Command:
    return Command(argv=argv_for("http_request", "apply", payload))


def compensation(payload: HttpPayload, rollback: None) -> Command | None:
    return None


def requires(payload: HttpPayload, rollback: None) -> list[Requirement]:
    return []


def check(payload: HttpPayload, rollback: None) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if not re.match(r"https?://[^/\s]+", payload.url):
        found.append(("payload.url", f"not an http(s) URL: {payload.url!r}"))
    if not re.fullmatch(r"[A-Za-z]+", payload.method):
        found.append(("payload.method", f"not an HTTP method: {payload.method!r}"))
    if payload.body is not None and payload.json is not msgspec.UNSET:
        found.append(("payload.json", "give body or json, not both"))
    try:
        parse_timeout(payload.timeout)
    except ValueError as e:
        found.append(("payload.timeout", str(e)))
    if payload.retries < 0:
        found.append(("payload.retries", "must be 0 or more"))
    for i, status in enumerate(payload.expect_status):
        if not 100 <= status <= 599:
            found.append((f"payload.expect_status[{i}]", f"not an HTTP status: {status}"))
    return found


def _request(payload: HttpPayload) -> urllib.request.Request:
    headers = dict(payload.headers)
    data: bytes | None = None
    if payload.json is not msgspec.UNSET:
        data = json.dumps(payload.json).encode()
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
    elif payload.body is not None:
        data = payload.body.encode()
    return urllib.request.Request(payload.url, data=data, headers=headers,
                                  method=payload.method.upper())


def apply(payload: HttpPayload) -> dict[str, Any]:
    problems = check(payload, None)
    if problems:
        raise UsageError("; ".join(f"{w}: {m}" for w, m in problems))
    timeout = parse_timeout(payload.timeout)
    errors: list[str] = []
    attempt = 0
    while True:
        attempt += 1
        status: int | None = None
        try:
            with urllib.request.urlopen(_request(payload), timeout=timeout) as resp:
                status, headers, data = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, headers, data = e.code, e.headers, e.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            errors.append(f"attempt {attempt}: {reason}")
        retry = status is None or (status >= 500 and status not in payload.expect_status)
        if not retry or attempt > payload.retries:
            break
        if status is not None:
            errors.append(f"attempt {attempt}: status {status}")
        time.sleep(min(0.2 * 2 ** (attempt - 1), 5.0))
    if status is None:
        blobs.report({"url": payload.url, "status": None, "attempts": attempt,
                      "errors": errors}, step=0)
        raise SystemExit(f"error: {payload.method} {payload.url}: no response after "
                         f"{attempt} attempt(s): {errors[-1]}")
    result: dict[str, Any] = {
        "url": payload.url, "method": payload.method.upper(), "status": status,
        "headers": {k: headers[k] for k in KEPT_HEADERS if headers.get(k) is not None},
        "body_size": len(data), "body_sha256": hashlib.sha256(data).hexdigest(),
        "body": data[:BODY_LIMIT].decode("utf-8", errors="replace"),
        "body_truncated": len(data) > BODY_LIMIT, "attempts": attempt, "errors": errors,
    }
    blobs.report(result, step=0)
    if status not in payload.expect_status:
        raise SystemExit(f"error: {payload.method} {payload.url}: status {status}, expected "
                         f"{', '.join(map(str, payload.expect_status))}")
    return result


def undo(payload: HttpPayload, original: str | None) -> dict[str, Any]:
    raise UsageError("http_request has no undo")


TYPE = register(ActionType(
    name="http_request", payload=HttpPayload, rollback=None, command=command,
    compensation=compensation, requires=requires, check=check,
))
