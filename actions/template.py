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
Every file name is rendered and checked before anything is written: a variable that would
make one ``..`` or put a ``/`` in it is refused (at ``sp plan validate`` for a local template,
else when the step runs), and nothing is written through a symlink (files are created with
``O_NOFOLLOW``, a folder merged over a symlink is refused, every folder is checked to resolve
inside the tree being built), so nothing lands outside the target.
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

from sp.actions import ActionType, Command, Requirement, blobs, register
from sp.actions.run import argv_for
from sp.ledger.errors import UsageError


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


def rendered_name(entry: Path, variables: dict[str, Any], source: Path) -> str:
    """``entry``'s name with the variables substituted: one path component, or refused.

    A variable's value lands in a file name: ``../../x`` or ``a/b`` there would put a file
    outside the target (where no rollback looks), so it must render to a plain name.

    :raises UsageError: the rendered name is empty, ``.``, ``..``, or holds ``/`` or NUL.
    """
    name = substitute(entry.name, variables)
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        where = entry.relative_to(source) if entry.is_relative_to(source) else entry
        raise UsageError(f"the template's {str(where)!r} renders to the file name {name!r}: "
                         "a variable in a file name must give one plain name (no '/', not "
                         "'..'), so that nothing lands outside the target")
    return name


_MAX_ENTRIES = 100_000  # a validation walk stops here; the copy checks every name anyway


def _trees(tree: Path, features: list[str]) -> list[tuple[Path, set[str]]]:
    """The folders copied into the target, each with what its top level skips."""
    return [(tree, {".git", "features"}),
            *((tree / "features" / f, {".git"}) for f in features)]


def check_names(tree: Path, payload: TemplatePayload) -> None:
    """Render every file name the copy will write, before anything is written.

    :raises UsageError: a name renders outside its folder (:func:`rendered_name`).
    """
    seen = 0
    for top, skip in _trees(tree, payload.features):
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(top):  # never follows symlinks
            here = Path(dirpath)
            if here == top:
                dirnames[:] = [d for d in dirnames if d not in skip]
                filenames = [f for f in filenames if f not in skip]
            for name in [*dirnames, *filenames]:
                rendered_name(here / name, payload.variables, tree)
                seen += 1
                if seen >= _MAX_ENTRIES:
                    return


def check_files(payload: TemplatePayload, directory: Path) -> list[tuple[str, str]]:
    """At validation: the template's names, rendered (a git template is checked when it is
    cloned, at run time)."""
    source = Path(os.path.expanduser(payload.source))
    source = source if source.is_absolute() else directory / source
    if not source.is_dir() or (not (source / ".git").exists() and _is_git(source)):
        return []  # missing: the run says so; a bare repository: checked once cloned
    try:
        check_names(source, payload)
    except UsageError as e:
        return [("payload.variables", str(e))]
    except OSError as e:
        return [("payload.source", f"cannot read the template: {e.strerror}")]
    return []


def _inside(path: Path, root: Path) -> None:
    """:raises UsageError: ``path``'s folder, symlinks resolved, is not inside ``root``."""
    real = Path(os.path.realpath(path.parent))
    if real != root and not real.is_relative_to(root):
        raise UsageError(f"{path}: its folder resolves to {real}, outside {root}: refusing "
                         "to write through a symlink")


def _copy_tree(src: Path, dst: Path, variables: dict[str, Any], skip_top: set[str],
               root: Path, source: Path) -> None:
    """Copy ``src`` into ``dst`` (inside ``root``, symlinks resolved), rendering names and
    text. Nothing is written through a symlink: a folder that is a symlink in the tree built
    so far is refused, and files are created with ``O_NOFOLLOW | O_EXCL`` after removing
    what was there.

    :raises UsageError: a name renders outside its folder, or a write would follow a symlink.
    """
    for entry in sorted(src.iterdir()):
        if entry.name in skip_top:
            continue
        target = dst / rendered_name(entry, variables, source)
        _inside(target, root)
        if entry.is_symlink():
            if target.is_dir() and not target.is_symlink():
                raise UsageError(f"{entry}: a symlink where the template has a folder")
            target.unlink(missing_ok=True)
            os.symlink(os.readlink(entry), target)  # copied as a link, never followed
        elif entry.is_dir():
            if target.is_symlink():
                raise UsageError(f"{entry}: a folder merged over a symlink "
                                 f"({os.readlink(target)}): refusing to write through it")
            target.mkdir(exist_ok=True)
            shutil.copymode(entry, target)
            _copy_tree(entry, target, variables, set(), root, source)
        else:
            data = entry.read_bytes()
            with contextlib.suppress(UnicodeDecodeError):  # binary: copied as is
                data = substitute(data.decode(), variables).encode()
            _write_new(target, data, entry.stat().st_mode & 0o7777)


def _write_new(target: Path, data: bytes, mode: int) -> None:
    """Replace ``target`` by a new file: whatever was there (a link too) is removed, and the
    file is created exclusively without following a symlink."""
    if target.is_dir() and not target.is_symlink():
        raise UsageError(f"{target}: a file where the template has a folder")
    target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        os.fchmod(f.fileno(), mode)


def _listing(root: Path) -> list[str]:
    """Every path below ``root``, relative, parents before children."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for name in sorted(dirnames) + sorted(filenames):
            out.append(str(rel / name) if str(rel) != "." else name)
    return sorted(out, key=lambda p: (p.count("/"), p))


def apply(payload: TemplatePayload) -> dict[str, Any]:
    from sp.runner import api

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
    if target.is_symlink():
        raise UsageError(f"{target} is a symlink: refusing to clone through it")
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
        check_names(tree, payload)  # every name, before anything is written
        built = work / "tree"
        built.mkdir()
        shutil.copymode(tree, built)
        root = Path(os.path.realpath(built))
        for top, skip in _trees(tree, payload.features):
            _copy_tree(top, built, payload.variables, skip, root, tree)
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
    root = Path(os.path.realpath(target))
    removed: list[str] = []
    kept: list[str] = []
    for rel in reversed(found["created"]):  # children before parents
        p = target / rel
        parent = Path(os.path.realpath(p.parent))
        if parent != root and not parent.is_relative_to(root):
            kept.append(rel)  # a folder replaced by a symlink since: never followed
            continue
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
    compensation=compensation, requires=requires, check=check, check_files=check_files,
))
