"""``deploy`` / ``generate_preview`` with real processes: versions under the home, a real
static server on 127.0.0.1 (real HTTP GETs), rollback serving the previous version,
``sp deploy status``, and the server restarted when it died."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sp.actions import preview
from sp.commands import plans
from sp.commands.home import Home
from sp.ledger.store import EventStore
from sp.runner.worker import Worker
from tests.conftest import Sp

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _stop_server(home: Home) -> Iterator[None]:
    yield
    preview.stop_server(Path(home.root))


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def _build(tmp_path: Path, name: str, text: str) -> Path:
    d = tmp_path / name
    (d / "css").mkdir(parents=True)
    (d / "index.html").write_text(text)
    (d / "css" / "site.css").write_text(f"/* {name} */")
    return d


def _deploy(store: EventStore, home: Home, tmp_path: Path, build: str,
            type_: str = "deploy") -> tuple[str, dict[str, Any]]:
    path = tmp_path / f"plan-{build}.yaml"
    path.write_text(f"name: site\nactions:\n  - {{id: publish, type: {type_}, "
                    f"payload: {{build_dir: {build}, name: site}}}}\n")
    plan_id = plans.apply(store, path)
    Worker(store, home, concurrency=1).run(until_idle=True)
    (action,) = plans.status(store, plan_id)["actions"]
    assert action["state"] == "completed", action
    row = store.query_one("SELECT data FROM checkpoints WHERE action_id = ?",
                          (action["action_id"],))
    assert row is not None
    return plan_id, {"action_id": action["action_id"], **json.loads(row[0])}


def test_preview_is_served_and_rollback_serves_the_previous_version(
        store: EventStore, home: Home, tmp_path: Path, sp: Sp) -> None:
    _build(tmp_path, "build1", "<h1>one</h1>")
    _build(tmp_path, "build2", "<h1>two</h1>")
    _, first = _deploy(store, home, tmp_path, "build1")
    assert first["version"] == 1 and first["files"] == ["css/site.css", "index.html"]
    assert first["url"] == f"http://127.0.0.1:{first['port']}/site/current/"
    assert _get(first["url"]) == "<h1>one</h1>"
    assert _get(first["url"] + "css/site.css") == "/* build1 */"

    plan_id, second = _deploy(store, home, tmp_path, "build2", "generate_preview")
    assert second["version"] == 2 and second["url"] == first["url"]
    assert second["server_pid"] == first["server_pid"]  # the running server was reused
    assert second["manifest_sha256"] != first["manifest_sha256"]
    assert _get(second["url"]) == "<h1>two</h1>"
    assert _get(f"http://127.0.0.1:{first['port']}/site/v1/") == "<h1>one</h1>"
    site = Path(home.root) / "previews" / "site"
    assert os.readlink(site / "current") == "v2"

    status = json.loads(sp("deploy", "status", second["action_id"][:8], "--format",
                           "json").stdout)
    assert status["url"] == second["url"] and status["version"] == 2
    assert status["current"] == 2 and status["server"]["running"] is True
    assert status["server"]["http_status"] == 200
    assert status["files"] == ["css/site.css", "index.html"]
    table = sp("deploy", "status", second["action_id"]).stdout
    assert "answers HTTP 200" in table and "v2 (serving: v2)" in table

    plans.rollback(store, plan_id)
    Worker(store, home, concurrency=1).run(until_idle=True)
    assert plans.status(store, plan_id)["state"] == "rolled_back"
    assert os.readlink(site / "current") == "v1"
    assert _get(second["url"]) == "<h1>one</h1>"
    table = sp("deploy", "status", second["action_id"]).stdout
    assert "v2 (serving: v1)" in table


def test_a_dead_server_is_restarted_on_the_same_port(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    _build(tmp_path, "build1", "one")
    _build(tmp_path, "build2", "two")
    _, first = _deploy(store, home, tmp_path, "build1")
    os.kill(first["server_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while preview.running_port(Path(home.root)) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert preview.running_port(Path(home.root)) is None
    _, second = _deploy(store, home, tmp_path, "build2")
    assert second["server_pid"] != first["server_pid"]
    assert second["port"] == first["port"] and _get(second["url"]) == "two"


def test_preview_plan_validation(tmp_path: Path) -> None:
    from sp.plans.errors import PlanInvalidError

    path = tmp_path / "plan.yaml"
    path.write_text("name: t\nactions:\n  - {id: a, type: deploy, payload: {build_dir: '',"
                    " name: ../x}}\n  - {id: b, type: generate_preview, payload: {name: y}}\n")
    with pytest.raises(PlanInvalidError) as err:
        plans.validate(path)
    text = "\n".join(str(p) for p in err.value.problems)
    assert "$.actions[0].payload.build_dir: the build directory is empty" in text
    assert "$.actions[0].payload.name: not a usable preview name" in text
    assert "$.actions[1].payload" in text and "build_dir" in text


def test_deploy_status_of_an_action_without_a_deployment(sp: Sp) -> None:
    action_id = sp("submit", "--", "true").stdout.strip()
    result = sp("deploy", "status", action_id, ok=False)
    assert result.exit_code != 0 and "has recorded no deployment" in result.output
