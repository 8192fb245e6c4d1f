"""The ``clone_template`` action type: a new project from a local template (the seed's
TemplateConfig).

```yaml
- id: scaffold
  type: clone_template
  payload:
    source: ~/templates/webapp          # a directory, or a local git repository
    path: app                           # must not exist, or be empty
    variables: {name: demo, port: 8080} # {{name}} in file contents and file names
    features: [docker]                  # features/docker/ merged in; other features/ not
```

A git repository (a ``.git`` inside, or a bare one) is cloned first with
``git clone --depth 1 file://SOURCE``, and its ``.git`` is not copied. ``features/`` of the
template is never copied as such: each selected ``features/<name>/`` is merged over the base.
The tree is built in a temporary directory beside ``path`` and renamed into place, so a
crash leaves either nothing or the whole tree; a checkpoint records whether ``path`` existed
and every file and directory created. The compensation removes exactly those (a file added
there since is left, with the directories that hold it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import msgspec

from ledger.errors import UsageError

from . import ActionType, Command, Requirement, blobs, register
from .run import argv_for


class TemplatePayload(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    source: str
    path: str
    variables: dict[str, Any] = {}
    features: list[str] = []
    customizations: dict[str, Any] = {}  # the seed's field: kept, not interpreted


class NoRollback(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Nothing to say: the compensation removes what the action created."""


def command(payload: TemplatePayload) -> Command:
    return Command(argv=argv_for("clone_template", "apply", payload))


def compensation(payload: TemplatePayload, rollback: NoRollback | None) -> Command:
    return Command(argv=argv_for("clone_template", "undo", payload))


def _is_git(source: Path) -> bool:
    return (source / ".git").exists() or ((source / "HEAD").is_file()
                                          and (source / "objects").is_dir())


def requires(payload: TemplatePayload, rollback: NoRollback | None) -> list[Requirement]:
    source = Path(os.path.expanduser(payload.source))
    return [Requirement("payload.source", "git")] if source.is_absolute() and _is_git(
        source) else []


def check(payload: TemplatePayload, rollback: NoRollback | None) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if not payload.source.strip():
        found.append(("payload.source", "the source is empty"))
    if not payload.path.strip():
        found.append(("payload.path", "the path is empty"))
    for i, f in enumerate(payload.features):
        if not f or "/" in f or f in (".", ".."):
            found.append((f"payload.features[{i}]", f"not a feature name: {f!r}"))
    return found


def substitute(text: str, variables: dict[str, Any]) -> str:
    for name, value in variables.items():
        text = text.replace("{{" + name + "}}", str(value))
        text = text.replace("{{ " + name + " }}", str(value))
    return text


def _copy_tree(src: Path, dst: Path, variables: dict[str, Any], skip_top: set[str]) -> None:
    for entry in sorted(src.iterdir()):
        if entry.name in skip_top:
            continue
        target = dst / substitute(entry.name, variables)
        if entry.is_symlink():
            target.unlink(missing_ok=True)
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            target.mkdir(exist_ok=True)
            shutil.copymode(entry, target)
            _copy_tree(entry, target, variables, set())
        else:
            data = entry.read_bytes()
            with contextlib.suppress(UnicodeDecodeError):  # binary: copied as is
                data = substitute(data.decode(), variables).encode()
            target.unlink(missing_ok=True)
            target.write_bytes(data)
            shutil.copymode(entry, target)


def _listing(root: Path) -> list[str]:
    """Every path below ``root``, relative, parents before children."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for name in sorted(dirnames) + sorted(filenames):
            out.append(str(rel / name) if str(rel) != "." else name)
    return sorted(out, key=lambda p: (p.count("/"), p))


def apply(payload: TemplatePayload) -> dict[str, Any]:
    from runner import api

    problems = check(payload, None)
    if problems:
        raise UsageError("; ".join(f"{w}: {m}" for w, m in problems))
    source = blobs.resolve(os.path.expanduser(payload.source))
    target = blobs.resolve(payload.path)
    previous = api.last_checkpoint()
    if (isinstance(previous, dict) and "created" in previous and target.is_dir()
            and any(target.iterdir())):
        return dict(previous)  # a retry after the tree was put in place: already done
    if not source.is_dir():
        raise UsageError(f"{source}: the template is not a directory")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target} exists and is not empty: refusing to clone over it")
    existed = target.exists()
    blobs.report({"target": str(target), "existed": existed, "phase": "copying"}, step=0)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        work = Path(tmp)
        tree = source
        if _is_git(source):
            clone = work / "clone"
            p = subprocess.run(["git", "clone", "--quiet", "--depth", "1",
                                f"file://{source}", str(clone)],
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise UsageError(f"git clone of {source} failed: {p.stderr.strip()}")
            tree = clone
        missing = [f for f in payload.features if not (tree / "features" / f).is_dir()]
        if missing:
            raise UsageError(f"no such feature in {source}: {', '.join(missing)}")
        built = work / "tree"
        built.mkdir()
        shutil.copymode(tree, built)
        _copy_tree(tree, built, payload.variables, {".git", "features"})
        for f in payload.features:
            _copy_tree(tree / "features" / f, built, payload.variables, {".git"})
        done = {"target": str(target), "existed": existed, "created": _listing(built),
                "source": str(source), "features": list(payload.features)}
        blobs.report(done, step=1)  # before the rename: an undo never misses a path
        if existed:
            target.rmdir()  # empty: checked above
        os.rename(built, target)
    return done


def undo(payload: TemplatePayload, original: str | None) -> dict[str, Any]:
    action_id = blobs.compensated_action(original)
    found = blobs.recorded(action_id, "created")
    if found is None:
        return {"removed": [], "note": f"{action_id} created nothing: nothing done"}
    target = Path(found["target"])
    removed: list[str] = []
    kept: list[str] = []
    for rel in reversed(found["created"]):  # children before parents
        p = target / rel
        if p.is_symlink() or p.is_file():
            p.unlink()
            removed.append(rel)
        elif p.is_dir():
            try:
                p.rmdir()
                removed.append(rel)
            except OSError:
                kept.append(rel)  # holds something the action did not create
    if not found["existed"] and target.is_dir():
        try:
            target.rmdir()
        except OSError:
            kept.append(".")
    return {"removed": removed, "kept": kept, "compensates": action_id}


TYPE = register(ActionType(
    name="clone_template", payload=TemplatePayload, rollback=NoRollback, command=command,
    compensation=compensation, requires=requires, check=check,
))
