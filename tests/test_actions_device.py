"""The device-capability types with real processes: ``compress`` / ``decompress`` (real files),
``http_request`` (a real HTTP server on 127.0.0.1) and ``sqlite_query`` (real database files),
through plans and the worker; each applies and its undo restores."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import lzma
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sp.actions import blobs, compression
from sp.actions import run as actions_run
from sp.commands import plans
from sp.commands.home import Home
from sp.ledger.store import EventStore
from sp.runner.worker import Worker
from tests.conftest import Sp

pytestmark = pytest.mark.timeout(120)


def _step(step: str, type_: str, payload: dict[str, Any], deps: list[str] | None = None,
          ) -> dict[str, Any]:
    return {"id": step, "type": type_, "payload": payload, "depends_on": deps or []}


def _plan(tmp_path: Path, steps: list[dict[str, Any]], on_failure: str = "rollback") -> Path:
    path = tmp_path / "plan.yaml"  # JSON is YAML
    path.write_text(json.dumps({"name": "device", "on_failure": on_failure, "actions": steps}))
    return path


def _run(store: EventStore, home: Home, concurrency: int = 2) -> None:
    Worker(store, home, concurrency=concurrency).run(until_idle=True)


def _states(store: EventStore, plan_id: str) -> dict[str, str]:
    doc = plans.status(store, plan_id)
    return {"plan": doc["state"], **{s["step"]: s["state"] for s in doc["actions"]}}


def _checkpoint(store: EventStore, home: Home, plan_id: str, step: str,
                monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    doc = plans.status(store, plan_id)
    action_id = next(s["action_id"] for s in doc["actions"] if s["step"] == step)
    monkeypatch.setenv("SP_HOME", str(home.root))
    data = blobs.checkpoints(action_id)[-1]
    assert isinstance(data, dict)
    return data


def _snapshot(root: Path) -> dict[str, tuple[bytes | None, int]]:
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes(),
                                       stat.S_IMODE(p.lstat().st_mode))
            for p in sorted(root.rglob("*"))}


# -- compress / decompress -------------------------------------------------------------------

def test_compress_and_decompress_apply_and_roll_back(
        store: EventStore, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    log = data / "app.log"
    log.write_bytes(b"line\n" * 5000 + b"\xff\x00")
    log.chmod(0o640)
    packed = data / "old.json.gz"
    packed.write_bytes(gzip.compress(b'{"old": true}\n'))
    before = _snapshot(data)
    plan_id = plans.apply(store, _plan(tmp_path, [
        _step("xz", "compress", {"src": "data/app.log", "dest": "data/app.log.xz",
                                 "format": "xz", "remove_source": True}),
        _step("gz", "compress", {"src": "data/app.log.xz", "dest": "data/app.log.xz.gz",
                                 "format": "gzip"}, ["xz"]),
        _step("unpack", "decompress", {"src": "data/old.json.gz", "dest": "data/old.json",
                                       "format": "gzip"}),
    ]))
    _run(store, home)
    assert set(_states(store, plan_id).values()) == {"completed"}
    assert not log.exists()
    original = before["app.log"][0]
    assert lzma.decompress((data / "app.log.xz").read_bytes()) == original
    assert gzip.decompress((data / "app.log.xz.gz").read_bytes()) == (
        data / "app.log.xz").read_bytes()
    assert (data / "old.json").read_bytes() == b'{"old": true}\n'
    done = _checkpoint(store, home, plan_id, "xz", monkeypatch)
    assert done["dest_sha256"] == hashlib.sha256((data / "app.log.xz").read_bytes()).hexdigest()
    assert done["before"]["source"]["mode"] == 0o640

    plans.rollback(store, plan_id)
    _run(store, home, concurrency=1)
    states = _states(store, plan_id)
    assert states.pop("plan") == "rolled_back"
    assert set(states.values()) == {"rolled_back"}
    assert _snapshot(data) == before  # the removed source is back, byte for byte, mode too


def test_archive_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "a.txt"
    src.write_text("a")
    (tmp_path / "a.txt.gz").write_text("mine")
    payload = {"src": str(src), "dest": str(tmp_path / "a.txt.gz"), "format": "gzip"}
    assert actions_run.main(["compress", "apply", json.dumps(payload)]) == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "a.txt.gz").read_text() == "mine"
    bad = {"src": str(src), "dest": str(tmp_path / "out"), "format": "xz"}
    assert actions_run.main(["decompress", "apply", json.dumps(bad)]) == 2  # not xz data
    assert "cannot decompress" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.glob("*.sp-tmp")) == []


@pytest.mark.skipif(compression.zstd_available(), reason="zstandard is installed here")
def test_zstd_without_zstandard_is_refused_at_validation(sp: Sp, tmp_path: Path) -> None:
    path = _plan(tmp_path, [_step("z", "compress", {"src": "a", "dest": "a.zst",
                                                    "format": "zstd"})])
    p = sp.proc("plan", "validate", str(path))
    assert p.returncode == 2
    out = p.stdout + p.stderr
    assert "actions[0].payload.format" in out and "zstd is unavailable here" in out


@pytest.mark.skipif(not compression.zstd_available(), reason="zstandard is not installed")
def test_zstd_round_trip(tmp_path: Path) -> None:  # pragma: no cover - needs zstandard
    src = tmp_path / "a.txt"
    src.write_bytes(b"zstd " * 1000)
    z = {"src": str(src), "dest": str(tmp_path / "a.zst"), "format": "zstd"}
    assert actions_run.main(["compress", "apply", json.dumps(z)]) == 0
    u = {"src": str(tmp_path / "a.zst"), "dest": str(tmp_path / "b.txt"), "format": "zstd"}
    assert actions_run.main(["decompress", "apply", json.dumps(u)]) == 0
    assert (tmp_path / "b.txt").read_bytes() == src.read_bytes()


# -- http_request ----------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    hits: dict[str, int] = {}
    received: list[dict[str, Any]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        n = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.received.append({"method": self.command, "path": self.path, "body": body,
                              "type": self.headers.get("Content-Type"),
                              "auth": self.headers.get("Authorization")})
        if self.path == "/flaky" and n < 3:
            status, out = 503, b"busy"
        elif self.path == "/big":
            status, out = 200, b"x" * (100 * 1024)
        elif self.path == "/missing":
            status, out = 404, b"no"
        else:
            status, out = 201 if self.command == "POST" else 200, b'{"ok": true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Secret", "not recorded")
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _answer


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.hits, _Handler.received = {}, []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_http_request_calls_retries_and_records(
        store: EventStore, home: Home, tmp_path: Path, server: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    plan_id = plans.apply(store, _plan(tmp_path, [
        _step("post", "http_request", {"method": "POST", "url": f"{server}/items",
                                       "headers": {"Authorization": "Bearer t"},
                                       "json": {"name": "demo"}, "expect_status": [201]}),
        _step("flaky", "http_request", {"url": f"{server}/flaky", "retries": 3,
                                        "timeout": "5s"}),
        _step("big", "http_request", {"url": f"{server}/big", "timeout": 5}),
    ]))
    _run(store, home)
    assert set(_states(store, plan_id).values()) == {"completed"}
    post = next(r for r in _Handler.received if r["path"] == "/items")
    assert post["method"] == "POST" and json.loads(post["body"]) == {"name": "demo"}
    assert post["type"] == "application/json" and post["auth"] == "Bearer t"
    done = _checkpoint(store, home, plan_id, "post", monkeypatch)
    assert done["status"] == 201 and json.loads(done["body"]) == {"ok": True}
    assert done["headers"]["content-type"] == "application/json"
    assert "x-secret" not in {k.lower() for k in done["headers"]}
    flaky = _checkpoint(store, home, plan_id, "flaky", monkeypatch)
    assert flaky["status"] == 200 and flaky["attempts"] == 3 and _Handler.hits["/flaky"] == 3
    big = _checkpoint(store, home, plan_id, "big", monkeypatch)
    assert big["body_size"] == 100 * 1024 and big["body_truncated"]
    assert len(big["body"]) == 64 * 1024
    assert big["body_sha256"] == hashlib.sha256(b"x" * 100 * 1024).hexdigest()


def test_http_request_fails_on_an_unexpected_status_and_a_dead_port(
        tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="status 404"):
        actions_run.main(["http_request", "apply", json.dumps({"url": f"{server}/missing"})])
    assert _Handler.hits["/missing"] == 1  # a 4xx is not retried
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with pytest.raises(SystemExit, match="no response after 2 attempt"):
        actions_run.main(["http_request", "apply", json.dumps(
            {"url": f"http://127.0.0.1:{dead}/", "retries": 1, "timeout": "500ms"})])
    assert actions_run.main(["http_request", "apply", json.dumps(
        {"url": "ftp://x", "timeout": "soon"})]) == 2
    err = capsys.readouterr().err
    assert "payload.url" in err and "payload.timeout" in err


# -- sqlite_query ----------------------------------------------------------------------------

def test_sqlite_query_writes_reads_and_rolls_back_the_file(
        store: EventStore, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO users(name) VALUES (?)", [("ann",), ("bob",)])
    conn.close()
    original = db.read_bytes()
    plan_id = plans.apply(store, _plan(tmp_path, [
        _step("insert", "sqlite_query", {"database": "app.db",
                                         "sql": "INSERT INTO users(name) VALUES (?), (?)",
                                         "params": ["cy", "di"]}),
        _step("update", "sqlite_query", {"database": "app.db",
                                         "sql": "UPDATE users SET name = :n WHERE id = 1",
                                         "params": {"n": "ANN"}}, ["insert"]),
        _step("read", "sqlite_query", {"database": "app.db",
                                       "sql": "SELECT id, name FROM users ORDER BY id;"},
              ["update"]),
        _step("new", "sqlite_query", {"database": "new.db", "sql": "CREATE TABLE t(x)"}),
    ]))
    _run(store, home, concurrency=1)
    assert set(_states(store, plan_id).values()) == {"completed"}
    ins = _checkpoint(store, home, plan_id, "insert", monkeypatch)
    assert ins["write"] and ins["rows_affected"] == 2 and ins["before"]["blob"]
    read = _checkpoint(store, home, plan_id, "read", monkeypatch)
    assert not read["write"] and "before" not in read
    assert read["columns"] == ["id", "name"]
    assert read["rows"] == [[1, "ANN"], [2, "bob"], [3, "cy"], [4, "di"]]
    assert (tmp_path / "new.db").exists()

    plans.rollback(store, plan_id)
    _run(store, home, concurrency=1)
    states = _states(store, plan_id)
    assert states.pop("plan") == "rolled_back"
    assert set(states.values()) == {"rolled_back"}
    assert db.read_bytes() == original
    assert not (tmp_path / "new.db").exists()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name FROM users ORDER BY id").fetchall() == [
            ("ann",), ("bob",)]
    conn.close()


def test_a_failing_statement_changes_nothing_and_rolls_back_the_plan(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t(x UNIQUE)")
        conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    original = db.read_bytes()
    plan_id = plans.apply(store, _plan(tmp_path, [
        _step("ok", "sqlite_query", {"database": "app.db", "sql": "INSERT INTO t VALUES (2)"}),
        _step("dup", "sqlite_query", {"database": "app.db", "sql": "INSERT INTO t VALUES (1)"},
              ["ok"]),
    ]))
    _run(store, home, concurrency=1)
    assert _states(store, plan_id) == {"plan": "rolled_back", "ok": "rolled_back",
                                       "dup": "failed"}
    assert db.read_bytes() == original
