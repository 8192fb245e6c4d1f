"""Hostile trigger files (``sp trigger apply FILE``) and webhook bodies (a real HTTP server on
127.0.0.1): one line naming the place, exit 2 (or a 4xx with one JSON line), nothing recorded."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sp.commands.home import Home
from sp.ledger.store import EventStore
from sp.triggers import webhook
from tests import hostile as h
from tests.conftest import Sp
from tests.triggerkit import (
    AGENT,
    apply_agent,
    context,
    doc_of,
    event_count,
    fired,
    running,
    wait_for,
)

TOKEN = "fuzz-token-3b9e"

abs_path = st.builds(lambda p: "/" + "/".join(p), st.lists(h.ident, min_size=1, max_size=3))
duration = st.sampled_from(["2s", "1h", 30, "500ms"])


@st.composite
def triggers(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"agent": "watcher"}
    section: dict[str, Any] = {}
    if draw(st.booleans()):
        fs = {"path": draw(abs_path), "action": "process_new_file", "name": "fs1"}
        for key, value in (("events", st.lists(st.sampled_from(
                ["create", "modify", "delete", "close_write", "moved_to"]), min_size=1,
                max_size=3)), ("glob", st.sampled_from(["*", "*.csv"])),
                ("debounce", duration), ("recursive", st.booleans())):
            if draw(st.booleans()):
                fs[key] = draw(value)
        section["filesystem"] = [fs]
    if draw(st.booleans()):
        hook = {"port": draw(st.integers(1, 65535)), "action": "handle_webhook",
                "name": draw(st.from_regex(r"[a-z][a-z0-9._-]{0,8}", fullmatch=True)
                              .filter(lambda n: ".." not in n)),  # the name grammar
                "auth": draw(st.sampled_from(["token", "hmac"])),
                "secret_env": "SP_FUZZ_SECRET"}
        if draw(st.booleans()):
            hook["max_body"] = draw(st.sampled_from(["1M", 4096]))
        section["network"] = [hook]
    if draw(st.booleans()):
        section["hardware"] = [{"device": "/dev/ttyFUZZ0", "action": "process_new_file",
                                "name": "serial1", "baud": draw(st.sampled_from([9600, 115200])),
                                "pattern": draw(st.sampled_from([".*", r"TEMP=(?P<c>\d+)"]))}]
    if section or draw(st.booleans()):
        doc["triggers"] = section
    if draw(st.booleans()):
        doc["conditions"] = {"cond1": {
            "trigger": draw(st.sampled_from(["disk_usage > 90%", "internet_connected",
                                             "memory_usage > 80%"])),
            "action": "process_new_file", "cooldown": draw(duration)}}
    if draw(st.booleans()):
        doc["continuous"] = {"cont1": {"interval": draw(duration),
                                       "action": "watcher/handle_webhook"}}
    return doc


fmt = st.sampled_from(["yaml", "toml"])

WRONG: list[tuple[tuple[Any, ...], Any]] = [
    (("agent",), 5), (("triggers",), []), (("triggers", "filesystem"), {}),
    (("triggers", "filesystem"), [{"path": "/x", "action": "nope_task"}]),
    (("triggers", "filesystem"), [{"path": "/x", "action": "ghost/agent"}]),
    (("triggers", "filesystem"), [{"path": "/x", "action": "process_new_file",
                                   "events": ["explode"]}]),
    (("triggers", "filesystem"), [{"path": "/x", "action": "process_new_file", "events": []}]),
    (("triggers", "filesystem"), [{"path": "/x", "action": "process_new_file",
                                   "debounce": "1e999h"}]),
    (("triggers", "network"), [{"port": 0, "action": "handle_webhook", "secret_env": "X"}]),
    (("triggers", "network"), [{"port": 70000, "action": "handle_webhook",
                                "secret_env": "X"}]),
    (("triggers", "network"), [{"port": 2**64, "action": "handle_webhook",
                                "secret_env": "X"}]),
    (("triggers", "network"), [{"port": 8080, "action": "handle_webhook"}]),
    (("triggers", "network"), [{"port": 8080, "action": "handle_webhook", "secret": "s",
                                "secret_env": "X"}]),
    (("triggers", "network"), [{"port": 8080, "action": "handle_webhook", "secret_env": "X",
                                "name": "has space?"}]),
    (("triggers", "network"), [{"port": 8080, "action": "handle_webhook", "secret_env": "X",
                                "auth": "none"}]),
    (("triggers", "network"), [{"port": 8080, "action": "handle_webhook", "secret_env": "X",
                                "max_body": 0}]),
    (("triggers", "hardware"), [{"device": "/dev/x", "action": "process_new_file",
                                 "pattern": "(unclosed"}]),
    (("triggers", "hardware"), [{"device": "/dev/x", "action": "process_new_file",
                                 "baud": "fast"}]),
    (("conditions",), {"c": {"trigger": "disk_usage >> 90%", "action": "process_new_file"}}),
    (("conditions",), {"c": {"trigger": "flux_capacitor > 1", "action": "process_new_file"}}),
    (("conditions",), {"c": {"trigger": "disk_usage > 90%"}}),
    (("continuous",), {"c": {"action": "process_new_file"}}),
    (("continuous",), {"c": {"interval": "5s"}}),
    (("continuous",), {"c": {"interval": 0, "action": "process_new_file"}}),
    (("load_samples",), "often"),
]


@pytest.fixture
def ready(sp: Sp, tmp_path: Path) -> Sp:
    """The agent the trigger files name, applied; no connection left open (so that the ledger
    file is checkpointed and its bytes mean something)."""
    path = tmp_path / "watcher.yaml"
    path.write_text(AGENT)
    sp("agent", "apply", str(path))
    return sp


def _reject(sp: Sp, path: Path) -> None:
    before = h.ledger_state(sp.home)
    h.assert_rejected(sp("trigger", "apply", str(path), ok=False), str(path))
    assert h.ledger_state(sp.home) == before


@h.FUZZ
@given(doc=triggers(), fmt=fmt)
def test_valid_trigger_files_are_accepted(ready: Sp, tmp_path: Path, doc: dict[str, Any],
                                          fmt: str) -> None:
    path = h.write(tmp_path / "triggers", doc, fmt)
    result = ready("trigger", "apply", str(path), ok=False)
    assert result.exit_code == 0, result.output


@h.FUZZ
@given(doc=st.one_of(h.poisoned(triggers(), skip=("settings",)),
                     h.with_unknown_key(triggers(), skip=("settings",))), fmt=fmt)
def test_mistyped_trigger_files_are_refused(ready: Sp, tmp_path: Path, doc: dict[str, Any],
                                            fmt: str) -> None:
    _reject(ready, h.write(tmp_path / "triggers", doc, fmt))


CASES = [(f, w, v) for f in ("yaml", "toml") for w, v in WRONG if f == "yaml" or h.toml_ok(v)]


@pytest.mark.parametrize(("fmt", "where", "value"), CASES, ids=[
    f"{f}:{'.'.join(map(str, w))}={v!r}"[:60] for f, w, v in CASES])
def test_wrong_values_are_refused(ready: Sp, tmp_path: Path, fmt: str, where: tuple[Any, ...],
                                  value: Any) -> None:
    base = {"agent": "watcher", "conditions": {"low": {
        "trigger": "disk_usage > 90%", "action": "process_new_file"}}}
    _reject(ready, h.write(tmp_path / "triggers", h.replaced(base, where, value), fmt))


@h.FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".yaml", ".toml"]))
def test_random_bytes_never_crash(ready: Sp, tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"triggers{suffix}"
    path.write_bytes(data)
    before = h.ledger_state(ready.home)
    if not h.assert_robust(ready("trigger", "apply", str(path), ok=False), str(path)):
        assert h.ledger_state(ready.home) == before


@pytest.mark.parametrize("text", [*h.BAD_YAML, h.laughs(9, 9), "", "triggers: &t {x: *t}\n",
                                  "conditions: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n"])
def test_broken_trigger_yaml_is_refused(ready: Sp, tmp_path: Path, text: str) -> None:
    path = tmp_path / "triggers.yaml"
    path.write_text(text)
    _reject(ready, path)


@pytest.mark.slow
def test_a_bad_trigger_file_in_a_real_process(ready: Sp, tmp_path: Path) -> None:
    before = h.ledger_state(ready.home)
    path = tmp_path / "triggers.toml"
    path.write_text("agent = " + "[" * 3000 + "]" * 3000 + "\n")
    proc = ready.proc("trigger", "apply", str(path), timeout=30)
    h.assert_one_line_error(proc.stderr, str(path), proc.returncode)
    assert proc.stdout == "" and h.ledger_state(ready.home) == before


# -- webhook bodies ---------------------------------------------------------------------------

def _post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/hooks/fuzz", body=body,
                     headers={"X-SP-Token": TOKEN, **headers})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def hook(store: EventStore, home: Home, tmp_path: Path) -> Iterator[int]:
    apply_agent(store, tmp_path)
    port = webhook.free_port()
    doc = doc_of({"triggers": {"network": [
        {"port": port, "name": "fuzz", "secret": TOKEN, "max_body": 65536,
         "action": "handle_webhook"}]}})
    (server,) = webhook.build(doc, context(home, doc))
    assert isinstance(server, webhook.WebhookServer)
    with running(server, home, doc):
        wait_for(server.bound.is_set)
        yield port


json_like = st.one_of(
    st.binary(max_size=200),
    h.junk.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.integers(1, 20000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 20000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.sampled_from([b'{"a": 1e999}', b'{"a": NaN}', b'{"a": 1, "a": 2}', b'{"a": "\\ud800"}',
                     b'{"a": "\xff\xfe"}', b'{"a": "\\u0000"}', b"\xef\xbb\xbf{}", b"{}{}",
                     b'{"a": 123456789012345678901234567890}', b'{"a"', b" ", b"null"]),
)


@h.FUZZ
@given(body=json_like)
def test_webhook_bodies_never_crash_the_server(hook: int, store: EventStore,
                                               body: bytes) -> None:
    """Any body: 202 for a JSON object (recorded), else a 4xx with one JSON line, nothing
    recorded; the server keeps answering."""
    before = event_count(store)
    fires = len(fired(store))
    status, answer = _post(hook, body, {})
    if status == 202:
        assert len(fired(store)) == fires + 1
        return
    assert 400 <= status < 500, (status, answer)
    assert answer.endswith(b"\n") and answer.count(b"\n") == 1, answer
    assert set(json.loads(answer)) == {"error"}
    assert event_count(store) == before and len(fired(store)) == fires


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"a": [' * 5000])
def test_deep_json_is_a_400_not_a_dropped_connection(hook: int, store: EventStore,
                                                     body: bytes) -> None:
    before = event_count(store)
    status, answer = _post(hook, body[:65536], {})
    assert status == 400 and b"nested deeper" in answer, answer
    assert event_count(store) == before
