"""The ``deploy`` and ``generate_preview`` action types: publish a build directory as a
versioned preview, served on 127.0.0.1.

```yaml
- id: preview
  type: deploy                       # or generate_preview: the same thing
  payload: {build_dir: dist, name: site}
```

The action runs as a real process, ``python -m sp.actions.preview apply '<payload JSON>'``:

* the build directory is copied to ``$SP_HOME/previews/<name>/v<N>/`` (N one more than the
  highest so far) and made current by an atomic symlink ``current -> vN``;
* a static HTTP server for ``$SP_HOME/previews/`` is ensured: ``python -m sp.actions.preview
  serve``, detached, its pid and port in ``$SP_HOME/preview-server/``; started when not
  running, restarted when dead (on the same port when it is free);
* the result is recorded as a checkpoint: ``url`` (``http://127.0.0.1:PORT/<name>/current/``),
  ``version``, ``files`` and the ``manifest_sha256`` of the files' hashes.

The compensation (``undo``) serves the previous version again: ``current`` goes back to the
version it pointed at before this one (or is removed when there was none). Which version
that was is kept outside the served tree, in ``$SP_HOME/deploy/<name>/vN.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from sp.actions import ActionType, Command, Requirement, register

HOST = "127.0.0.1"


class PreviewPayload(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    build_dir: str
    name: str


class PreviewRollback(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Nothing to say: the compensation always serves the previous version."""


def _argv(verb: str, payload: PreviewPayload) -> list[str]:
    # -P: the working directory's modules must not shadow sp's own packages
    return [sys.executable, "-P", "-m", "sp.actions.preview", verb,
            msgspec.json.encode(payload).decode()]


def command(payload: PreviewPayload) -> Command:
    return Command(argv=_argv("apply", payload))


def compensation(payload: PreviewPayload, rollback: PreviewRollback | None) -> Command:
    return Command(argv=_argv("undo", payload))


def requires(payload: PreviewPayload, rollback: PreviewRollback | None) -> list[Requirement]:
    return []


def check(payload: PreviewPayload, rollback: PreviewRollback | None) -> list[tuple[str, str]]:
    found = []
    if not payload.build_dir.strip():
        found.append(("payload.build_dir", "the build directory is empty"))
    name = payload.name
    if not name or name.startswith(".") or "/" in name or name != name.strip():
        found.append(("payload.name", f"not a usable preview name: {name!r}"))
    return found


for _name in ("deploy", "generate_preview"):
    register(ActionType(
        name=_name, payload=PreviewPayload, rollback=PreviewRollback, command=command,
        compensation=compensation, requires=requires, check=check,
    ))


# -- where things are ---------------------------------------------------------------------------


def home_root() -> Path:
    raw = os.environ.get("SP_HOME")
    if not raw:
        raise SystemExit("sp.actions.preview: $SP_HOME is not set")
    return Path(raw)


def previews_dir(home: Path) -> Path:
    return home / "previews"


def server_dir(home: Path) -> Path:
    return home / "preview-server"


def _meta_dir(home: Path, name: str) -> Path:
    return home / "deploy" / name


def url_of(port: int, name: str) -> str:
    return f"http://{HOST}:{port}/{name}/current/"


# -- publishing ---------------------------------------------------------------------------------


def _versions(site: Path) -> list[int]:
    found = []
    for entry in site.iterdir() if site.is_dir() else []:
        if entry.name.startswith("v") and entry.name[1:].isdigit() and entry.is_dir():
            found.append(int(entry.name[1:]))
    return sorted(found)


def _current(site: Path) -> str | None:
    link = site / "current"
    return os.readlink(link) if link.is_symlink() else None


def _point(site: Path, target: str | None) -> None:
    """Make ``current`` point at ``target`` atomically (rename over it), or remove it."""
    link = site / "current"
    if target is None:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        return
    tmp = site / f".current.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def manifest(root: Path) -> tuple[list[str], str]:
    """The files below ``root`` (sorted, relative) and the sha256 of ``sha256  path`` lines."""
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    lines = "".join(f"{hashlib.sha256((root / f).read_bytes()).hexdigest()}  {f}\n"
                    for f in files)
    return files, hashlib.sha256(lines.encode()).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def publish(home: Path, payload: PreviewPayload, build_dir: Path) -> dict[str, Any]:
    """Copy ``build_dir`` as the next version of the preview and make it current."""
    if not build_dir.is_dir():
        raise SystemExit(f"sp.actions.preview: no build directory {build_dir}")
    site = previews_dir(home) / payload.name
    site.mkdir(parents=True, exist_ok=True)
    with _locked(_meta_dir(home, payload.name) / ".lock"):
        versions = _versions(site)
        version = (versions[-1] + 1) if versions else 1
        staging = site / f".v{version}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(build_dir, staging, symlinks=False)
        os.rename(staging, site / f"v{version}")
        previous = _current(site)
        meta = _meta_dir(home, payload.name) / f"v{version}.json"
        meta.write_text(json.dumps({"previous": previous}))
        _point(site, f"v{version}")
    files, digest = manifest(site / f"v{version}")
    return {"name": payload.name, "version": version, "previous": previous,
            "path": str(site / f"v{version}"), "files": files, "manifest_sha256": digest}


def unpublish(home: Path, payload: PreviewPayload) -> dict[str, Any]:
    """Serve the version that was current before the current one."""
    site = previews_dir(home) / payload.name
    with _locked(_meta_dir(home, payload.name) / ".lock"):
        current = _current(site)
        previous: str | None = None
        if current is not None:
            meta = _meta_dir(home, payload.name) / f"{current}.json"
            with contextlib.suppress(OSError, ValueError):
                previous = json.loads(meta.read_text())["previous"]
        _point(site, previous)
    out: dict[str, Any] = {"name": payload.name, "rolled_back_from": current,
                           "version": None if previous is None else int(previous[1:])}
    if previous is not None:
        out["files"], out["manifest_sha256"] = manifest(site / previous)
    return out


# -- the server ---------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def server_info(home: Path) -> tuple[int | None, int | None]:
    """The recorded ``(pid, port)`` of the preview server (either may be None)."""
    d = server_dir(home)
    return _read_int(d / "pid"), _read_int(d / "port")


def answers(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of a GET on ``url``, None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, ValueError):
        return None


def running_port(home: Path) -> int | None:
    """The port of a live preview server that answers, None otherwise."""
    pid, port = server_info(home)
    if pid is None or port is None or not _alive(pid):
        return None
    return port if answers(f"http://{HOST}:{port}/") is not None else None


def ensure_server(home: Path, timeout: float = 10.0) -> int:
    """Start the preview server unless a live one answers; its port."""
    d = server_dir(home)
    with _locked(d / "lock"):
        port = running_port(home)
        if port is not None:
            return port
        pid, old_port = server_info(home)
        if pid is not None and _alive(pid):  # alive but not answering: replace it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for stale in ("pid", "port"):
            with contextlib.suppress(FileNotFoundError):
                (d / stale).unlink()
        previews_dir(home).mkdir(parents=True, exist_ok=True)
        with open(d / "server.log", "ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-P", "-m", "sp.actions.preview", "serve", str(home),
                 str(old_port or 0)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                close_fds=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, port = server_info(home)
            if pid == child.pid and port is not None:
                return port
            if child.poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit(f"sp.actions.preview: the preview server did not start "
                         f"(see {d / 'server.log'})")


def stop_server(home: Path, timeout: float = 5.0) -> bool:
    """Stop the preview server of ``home`` (tests, ``sp`` shutdown); whether one was running."""
    pid, _ = server_info(home)
    if pid is None or not _alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(home: Path, port: int) -> None:
    """Serve ``$SP_HOME/previews/`` on 127.0.0.1 until SIGTERM; writes port, then pid."""
    root = previews_dir(home)
    root.mkdir(parents=True, exist_ok=True)

    def handler(*args: Any) -> _Quiet:
        return _Quiet(*args, directory=str(root))

    try:
        httpd = http.server.ThreadingHTTPServer((HOST, port), handler)
    except OSError:
        httpd = http.server.ThreadingHTTPServer((HOST, 0), handler)
    httpd.daemon_threads = True
    d = server_dir(home)
    d.mkdir(parents=True, exist_ok=True)
    for name, value in (("port", httpd.server_address[1]), ("pid", os.getpid())):
        tmp = d / f".{name}.{os.getpid()}"
        tmp.write_text(f"{value}\n")
        os.replace(tmp, d / name)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        if _read_int(d / "pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                (d / "pid").unlink()


# -- the entry point ----------------------------------------------------------------------------


def main(args: list[str]) -> int:
    if len(args) == 3 and args[0] == "serve":
        serve(Path(args[1]), int(args[2]))
        return 0
    if len(args) != 2 or args[0] not in ("apply", "undo"):
        print("usage: python -m sp.actions.preview apply|undo PAYLOAD_JSON\n"
              "       python -m sp.actions.preview serve HOME PORT", file=sys.stderr)
        return 2
    from sp.runner import api

    payload = msgspec.json.decode(args[1], type=PreviewPayload)
    home = home_root()
    if args[0] == "apply":
        result = publish(home, payload, Path(payload.build_dir).resolve())
    else:
        result = unpublish(home, payload)
    port = ensure_server(home)
    result["url"] = url_of(port, payload.name)
    result["port"] = port
    result["server_pid"] = server_info(home)[0]
    print(json.dumps(result), flush=True)
    if api.current_action() is not None:
        api.checkpoint(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
