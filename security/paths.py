"""The paths (and hosts) a built-in action type's payload names, with the access each needs.

The policy checks them before anything is written (``sp submit``, ``sp plan apply``) and again
when an attempt is claimed; while the action runs, the kernel sandbox enforces the same policy
on whatever the type's process actually opens, so a symlink swapped in after the check is
still refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

Access = str  # "read" | "write" | "network" ("host:port")
PathList = list[tuple[str, str, Access]]


def _files(p: Any) -> PathList:
    return [(f"changes[{i}].path", c.path, "write") for i, c in enumerate(p.changes)]


def _template(p: Any) -> PathList:
    return [("source", p.source, "read"), ("path", p.path, "write")]


def _tooling(p: Any) -> PathList:
    return [("path", p.path, "write")]


def _archive(p: Any) -> PathList:
    out = [("src", p.src, "write" if p.remove_source else "read"), ("dest", p.dest, "write")]
    return out


def _sqlite(p: Any) -> PathList:
    return [("database", p.database, "write")]


def _preview(p: Any) -> PathList:
    return [("build_dir", p.build_dir, "read")]


def _http(p: Any) -> PathList:
    parts = urlsplit(p.url)
    try:
        port = parts.port
    except ValueError:
        return []
    port = port or (443 if parts.scheme == "https" else 80)
    return [("url", f"{(parts.hostname or '').lower()}:{port}", "network")]


def _tests(p: Any) -> PathList:
    cwd = getattr(p, "cwd", None) or getattr(p, "path", None)
    return [("cwd", cwd, "read")] if isinstance(cwd, str) and cwd else []


def _install(p: Any) -> PathList:
    project = getattr(p, "project", None)
    return [("project", project, "write")] if isinstance(project, str) and project else []


PATHS: dict[str, Callable[[Any], PathList]] = {
    "modify_files": _files,
    "clone_template": _template,
    "configure_tooling": _tooling,
    "compress": _archive,
    "decompress": _archive,
    "sqlite_query": _sqlite,
    "deploy": _preview,
    "generate_preview": _preview,
    "http_request": _http,
    "run_tests": _tests,
    "install_dependencies": _install,
}


def of(type_name: str, payload: Any) -> PathList:
    """``(where in the payload, path or host:port, access)`` for a decoded payload."""
    fn = PATHS.get(type_name)
    return fn(payload) if fn is not None else []
