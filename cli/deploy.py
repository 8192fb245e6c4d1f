"""``sp deploy status``: follow a ``deploy`` / ``generate_preview`` action's preview."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import msgspec

from sp.cli.main import App, echo_json, format_option, pass_app


@click.group()
def deploy() -> None:
    """Previews published by deploy / generate_preview actions, served on 127.0.0.1.

    \b
    Example:
      sp deploy status 3f2a
      sp deploy status 3f2a --format json
    """


def deployment(store: Any, home_root: str | Path, ref: str) -> dict[str, Any]:
    """What the action's last checkpoint says, plus what is true now: the version ``current``
    points at, the server's pid and port, and the HTTP status of a GET on the URL."""
    from sp.actions import preview
    from sp.commands import actions
    from sp.ledger.errors import UsageError
    from sp.projections import queries

    action_id = actions.resolve(store, ref)
    found = queries.last_checkpoint_json(store, action_id)
    state = queries.action_state(store, action_id)
    if found is None or not isinstance(data := msgspec.json.decode(found), dict) \
            or "url" not in data:
        raise UsageError(f"action {action_id} has recorded no deployment (is it a deploy or "
                         "generate_preview action that has run?)")
    home = Path(home_root)
    site = preview.previews_dir(home) / str(data["name"])
    current = preview._current(site)
    pid, port = preview.server_info(home)
    live_port = preview.running_port(home)
    url = preview.url_of(live_port, str(data["name"])) if live_port else data["url"]
    return {"action_id": action_id, "state": state,
            "name": data["name"], "url": url, "version": data.get("version"),
            "current": None if current is None else int(current[1:]),
            "server": {"pid": pid, "port": port, "running": live_port is not None,
                       "http_status": preview.answers(url) if live_port else None},
            "files": data.get("files", []), "manifest_sha256": data.get("manifest_sha256")}


@deploy.command("status")
@click.argument("action_id")
@format_option()
@pass_app
def deploy_status(app: App, action_id: str, fmt: str) -> None:
    """Show a deployment: its URL, version, whether the server answers, its files.

    \b
    Example:
      sp deploy status 3f2a
    """
    doc = deployment(app.store(write=False), app.home.root, action_id)
    if fmt == "json":
        echo_json(doc)
        return
    server = doc["server"]
    answer = (f"answers HTTP {server['http_status']}" if server["running"]
              else "not running")
    click.echo(f"deployment {doc['action_id']} ({doc['state']}): {doc['name']}")
    click.echo(f"url:      {doc['url']}")
    click.echo(f"version:  v{doc['version']} (serving: "
               f"{'none' if doc['current'] is None else 'v' + str(doc['current'])})")
    click.echo(f"server:   {answer} (pid {server['pid']}, port {server['port']})")
    click.echo(f"manifest: sha256 {doc['manifest_sha256']}")
    click.echo(f"files:    {len(doc['files'])}")
    for name in doc["files"]:
        click.echo(f"  {name}")


COMMANDS = [deploy]
