"""The ``compress`` and ``decompress`` action types: one file, gzip, xz or zstd, undoable.

```yaml
- id: pack
  type: compress
  payload: {src: logs/app.log, dest: logs/app.log.xz, format: xz, remove_source: true}
- id: unpack
  type: decompress
  payload: {src: data.json.gz, dest: data.json, format: gzip}
```

gzip (:mod:`gzip`) and xz (:mod:`lzma`) are the standard library's; zstd needs the
``zstandard`` module, and a plan asking for it where that module is missing is refused at
validation (``payload.format``). Runs as ``python -m sp.actions.run compress|decompress apply
'<payload JSON>'``. ``dest`` must not exist; it is written to a temporary file beside it and
renamed into place. With ``remove_source`` the source's before-image (bytes and mode) is
stored as a blob under ``$SP_HOME/blobs/`` before it is removed. The checkpoint
``{"before": {...}}`` records both; the undo removes the created ``dest`` and restores a
removed source byte for byte.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import lzma
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any, Literal

import msgspec

from sp.actions import ActionType, Command, Requirement, blobs, register
from sp.actions.run import argv_for
from sp.ledger.errors import UsageError

Format = Literal["gzip", "xz", "zstd"]


class ArchivePayload(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    src: str
    dest: str
    format: Format
    remove_source: bool = False


class NoRollback(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Nothing to say: the compensation removes ``dest`` and restores a removed source."""


def zstd_available() -> bool:
    return importlib.util.find_spec("zstandard") is not None


def requires(payload: ArchivePayload, rollback: NoRollback | None) -> list[Requirement]:
    return []


def check(payload: ArchivePayload, rollback: NoRollback | None) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if not payload.src.strip():
        found.append(("payload.src", "the path is empty"))
    if not payload.dest.strip():
        found.append(("payload.dest", "the path is empty"))
    if payload.src.strip() and os.path.abspath(payload.src) == os.path.abspath(payload.dest):
        found.append(("payload.dest", "the same path as payload.src"))
    if payload.format == "zstd" and not zstd_available():
        found.append(("payload.format",
                      "zstd is unavailable here (the zstandard module is not installed)"))
    return found


def _open_compressed(path: Path, fmt: str, mode: Literal["rb", "wb"]) -> IO[bytes]:
    if fmt == "gzip":
        return gzip.open(path, mode)  # type: ignore[return-value]
    if fmt == "xz":
        return lzma.open(path, mode)  # type: ignore[return-value]
    import zstandard  # type: ignore[import-not-found,unused-ignore]

    raw = open(path, mode)  # noqa: SIM115  (closed with the stream)
    z = zstandard.ZstdCompressor() if mode == "wb" else zstandard.ZstdDecompressor()
    if mode == "wb":
        return z.stream_writer(raw, closefd=True)  # type: ignore[no-any-return]
    return z.stream_reader(raw, closefd=True)  # type: ignore[no-any-return]


def _write(src: Path, dest: Path, fmt: str, compress: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".sp-tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        if compress:
            with open(src, "rb") as fin, _open_compressed(tmp_path, fmt, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        else:
            with _open_compressed(src, fmt, "rb") as fin, open(tmp_path, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, dest)
    except (OSError, EOFError, lzma.LZMAError) as e:
        tmp_path.unlink(missing_ok=True)
        raise UsageError(f"{src}: cannot {'compress' if compress else 'decompress'} "
                         f"as {fmt}: {e}") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _apply(payload: ArchivePayload, compress: bool) -> dict[str, Any]:
    from sp.runner import api

    problems = check(payload, None)
    if problems:
        raise UsageError("; ".join(f"{w}: {m}" for w, m in problems))
    src, dest = blobs.resolve(payload.src), blobs.resolve(payload.dest)
    previous = api.last_checkpoint() if api.current_action() else None
    if isinstance(previous, dict) and "before" in previous:
        before: dict[str, Any] = previous["before"]  # a retry: the originals are kept
        if "dest_sha256" in previous:
            return dict(previous)  # already done
    else:
        if not src.is_file():
            raise UsageError(f"{src}: no such file")
        if dest.exists():
            raise UsageError(f"{dest}: cannot create, it exists")
        source = blobs.image_of(src) if payload.remove_source else {"blob": None, "mode": None}
        before = {"src": str(src), "dest": str(dest), "removed_source": payload.remove_source,
                  "source": source}
        blobs.report({"before": before}, step=0)
    if src.is_file():
        _write(src, dest, payload.format, compress)
    elif not dest.is_file():
        raise UsageError(f"{src}: no such file")
    if payload.remove_source:
        src.unlink(missing_ok=True)
    data = dest.read_bytes()
    done = {"before": before, "dest": str(dest), "format": payload.format,
            "src_size": os.path.getsize(src) if src.exists() else None,
            "dest_size": len(data), "dest_sha256": hashlib.sha256(data).hexdigest()}
    blobs.report(done, step=1)
    return done


def _undo(payload: ArchivePayload, original: str | None) -> dict[str, Any]:
    action_id = blobs.compensated_action(original)
    found = blobs.recorded(action_id, "before")
    if found is None:
        return {"restored": [], "note": f"{action_id} recorded nothing: nothing done"}
    before = found["before"]
    Path(before["dest"]).unlink(missing_ok=True)
    restored = []
    if before.get("removed_source") and before["source"].get("blob") is not None:
        src = Path(before["src"])
        if not src.exists():
            blobs.restore(src, before["source"])
        restored.append(str(src))
    return {"removed": [before["dest"]], "restored": restored, "compensates": action_id}


def _make(name: str, compress: bool) -> SimpleNamespace:
    def command(payload: ArchivePayload) -> Command:
        return Command(argv=argv_for(name, "apply", payload))

    def compensation(payload: ArchivePayload, rollback: NoRollback | None) -> Command:
        return Command(argv=argv_for(name, "undo", payload))

    t = register(ActionType(
        name=name, payload=ArchivePayload, rollback=NoRollback, command=command,
        compensation=compensation, requires=requires, check=check,
    ))
    return SimpleNamespace(TYPE=t, apply=lambda p: _apply(p, compress), undo=_undo)


RUNNERS = {"compress": _make("compress", True), "decompress": _make("decompress", False)}
