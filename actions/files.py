"""The ``modify_files`` action type: the seed's FileChange list, each change atomic, undoable.

```yaml
- id: edit
  type: modify_files
  payload:
    changes:
      - {path: src/app.py, content: "print('hi')\\n", operation: modify}
      - {path: NEW.md, content: "# new\\n", operation: create, mode: "755"}
      - {path: old.txt, operation: delete}
```

Runs as ``python -m sp.actions.run modify_files apply '<payload JSON>'``. Before touching anything
it stores each path's before-image (bytes and mode) under ``$SP_HOME/blobs/<sha256>`` and
records the hashes in a checkpoint (``{"before": [...]}``); each file is then written to a
temporary file and renamed over (a modified file keeps its mode). A retried attempt reuses the
recorded before-images, so a re-run after a crash neither loses the original nor fails on a
file already in its target state. The compensation (``undo``) restores every modified or
deleted file byte for byte, modes included, and deletes the created ones (with the
directories made for them, when left empty).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

import msgspec

from sp.actions import ActionType, Command, Requirement, blobs, register
from sp.actions.run import argv_for
from sp.ledger.errors import UsageError


class FileChange(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    path: str
    operation: Literal["create", "modify", "delete"]
    content: str | None = None
    mode: int | str | None = None  # 420, or octal text: "644", "0o644"

    def file_mode(self) -> int | None:
        if self.mode is None or isinstance(self.mode, int):
            return self.mode
        return int(self.mode.removeprefix("0o"), 8)


class FilesPayload(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    changes: list[FileChange]


class NoRollback(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Nothing to say: the compensation restores the recorded before-images."""


def command(payload: FilesPayload) -> Command:
    return Command(argv=argv_for("modify_files", "apply", payload))


def compensation(payload: FilesPayload, rollback: NoRollback | None) -> Command:
    return Command(argv=argv_for("modify_files", "undo", payload))


def requires(payload: FilesPayload, rollback: NoRollback | None) -> list[Requirement]:
    return []


def check(payload: FilesPayload, rollback: NoRollback | None) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if not payload.changes:
        found.append(("payload.changes", "no change to make"))
    seen: set[str] = set()
    for i, c in enumerate(payload.changes):
        where = f"payload.changes[{i}]"
        if not c.path.strip():
            found.append((f"{where}.path", "the path is empty"))
        if c.operation != "delete" and c.content is None:
            found.append((f"{where}.content", f"required to {c.operation} a file"))
        try:
            mode = c.file_mode()
        except ValueError:
            mode = -1
        if mode is not None and not 0 <= mode <= 0o7777:
            found.append((f"{where}.mode", f"not a file mode: {c.mode!r}"))
        if c.path in seen:
            found.append((f"{where}.path", f"{c.path!r} is changed twice"))
        seen.add(c.path)
    return found


def apply(payload: FilesPayload) -> dict[str, Any]:
    from sp.runner import api

    problems = check(payload, None)
    if problems:
        raise UsageError("; ".join(f"{w}: {m}" for w, m in problems))
    previous = api.last_checkpoint()
    if isinstance(previous, dict) and "before" in previous:
        before: list[dict[str, Any]] = previous["before"]  # a retry: the originals are kept
    else:
        before = []
        for c in payload.changes:
            path = blobs.resolve(c.path)
            image = blobs.image_of(path)
            if c.operation == "create" and image["blob"] is not None:
                raise UsageError(f"{path}: cannot create, it exists")
            if c.operation == "modify" and image["blob"] is None:
                raise UsageError(f"{path}: cannot modify, it does not exist")
            missing = [str(d) for d in path.parents if not d.exists()]
            before.append({"path": str(path), "operation": c.operation, **image,
                           "made_dirs": missing})  # parents the change creates
        blobs.report({"before": before}, step=0)
    after = []
    for c, image in zip(payload.changes, before, strict=True):
        path = Path(image["path"])
        if c.operation == "delete":
            path.unlink(missing_ok=True)
            after.append({"path": str(path), "sha256": None})
            continue
        assert c.content is not None
        data = c.content.encode()
        mode = c.file_mode() if c.mode is not None else image.get("mode")
        if mode is None:
            mode = 0o644
        blobs.atomic_write(path, data, mode)
        after.append({"path": str(path), "sha256": blobs.sha_of(path)})
    done = {"before": before, "after": after}
    blobs.report(done, step=1)
    return done


def undo(payload: FilesPayload, original: str | None) -> dict[str, Any]:
    action_id = blobs.compensated_action(original)
    found = blobs.recorded(action_id, "before")
    if found is None:
        return {"restored": [], "note": f"{action_id} recorded no before-images: nothing done"}
    restored = []
    for image in reversed(found["before"]):
        blobs.restore(Path(image["path"]), image)
        restored.append(image["path"])
        for d in image.get("made_dirs", []):  # deepest first, and only when left empty
            with contextlib.suppress(OSError):
                Path(d).rmdir()
    return {"restored": restored, "compensates": action_id}


TYPE = register(ActionType(
    name="modify_files", payload=FilesPayload, rollback=NoRollback, command=command,
    compensation=compensation, requires=requires, check=check,
))
