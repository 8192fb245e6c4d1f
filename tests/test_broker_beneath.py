"""The root worker's file work in an action's folder (runner/beneath.py, runner/broker.py), on
real files: symlinks, ``..``, FIFOs, hard links and files of another owner are refused, with
``openat2`` and with the ``O_NOFOLLOW`` walk that stands in for it on older kernels; nothing
planted in the broker's folder makes the worker write or read outside it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sp.runner import beneath
from sp.runner.broker import Broker


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test once with openat2 (where the kernel has it) and once with the fallback walk."""
    monkeypatch.setattr(beneath, "_openat2_works", False if request.param == "walk" else None)
    return str(request.param)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[beneath.Folder]:
    f = beneath.Folder(str(tmp_path / "tmp"), "action")
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_bytes(b"outside secret\n")
    return d


def test_a_path_through_a_symlink_or_dotdot_is_refused(
        resolver: str, folder: beneath.Folder, outside: Path) -> None:
    root = Path(folder.path)
    (root / "real").mkdir()
    (root / "real" / "mine").write_bytes(b"mine")
    os.symlink(outside, root / "away")
    os.symlink("/proc/self/root" + str(outside), root / "magic")
    fd = beneath.open_dir(folder.fd, "real")
    os.close(fd)
    for rel in ("away", "magic", "real/../away"):
        with pytest.raises(beneath.Refused):
            os.close(beneath.open_dir(folder.fd, rel))
    for rel in ("", "/etc", "a//b", "./real", "real/..", "x\0y"):
        with pytest.raises(beneath.Refused):
            beneath.components(rel)
    with pytest.raises(beneath.Refused):
        folder.relative(str(root) + "/../action2/x")
    with pytest.raises(beneath.Refused, match="not a file in the action's own folder"):
        folder.relative("/etc/hostname")
    assert folder.relative(str(root / "real" / "mine")) == "real/mine"


def test_only_a_regular_file_with_one_name_owned_by_the_action_is_opened(
        resolver: str, folder: beneath.Folder, outside: Path) -> None:
    root = Path(folder.path)
    (root / "mine").write_bytes(b"mine")
    os.mkfifo(root / "fifo")
    os.link(root / "mine", root / "second")  # now two names
    (root / "theirs").write_bytes(b"theirs")
    os.chown(root / "theirs", 12345, 12345)
    os.symlink(outside / "secret", root / "link")
    uid = os.geteuid()
    for name, why in [("fifo", "not a regular file"), ("mine", "2 hard links"),
                      ("theirs", "not owned by the action"), ("link", "not a regular file")]:
        with pytest.raises(beneath.Refused, match=why):  # a FIFO refused without blocking
            os.close(beneath.open_file(folder.fd, name, uid, name))
    os.unlink(root / "second")
    fd = beneath.open_file(folder.fd, "mine", uid, "mine")
    try:
        assert beneath.read_capped(fd, 4, "mine") == b"mine"
        with pytest.raises(beneath.Refused, match="larger than 3 bytes"):
            beneath.read_capped(fd, 3, "mine")
    finally:
        os.close(fd)


def test_a_name_is_removed_only_while_it_names_what_was_read(
        folder: beneath.Folder) -> None:
    root = Path(folder.path)
    (root / "f").write_bytes(b"first")
    st = os.stat(root / "f")
    os.rename(root / "f", root / "moved")
    (root / "f").write_bytes(b"another file under the same name")
    assert beneath.unlink_same(folder.fd, "f", st) is False
    assert (root / "f").exists()
    assert beneath.unlink_same(folder.fd, "moved", st) is True
    assert not (root / "moved").exists()


def test_create_never_writes_through_a_planted_name(
        folder: beneath.Folder, outside: Path) -> None:
    os.symlink(outside / "secret", Path(folder.path) / "blob-x")
    with pytest.raises(FileExistsError):
        beneath.create_file(folder.fd, "blob-x", b"overwritten", os.geteuid())
    assert (outside / "secret").read_bytes() == b"outside secret\n"


def _broker(tmp_path: Path) -> Broker:
    home = tmp_path / "home"
    return Broker(None, str(home), "a1", "a0", str(home / "tmp" / "a1" / ".sp-broker"), None)


def _request(folder: Path, rid: str) -> None:
    with open(folder / "requests", "ab") as f:
        f.write(json.dumps({"id": rid, "op": "compensates"}).encode() + b"\n")


def test_planted_requests_and_responses_are_never_followed(
        tmp_path: Path, outside: Path) -> None:
    broker = _broker(tmp_path)
    try:
        folder = Path(broker.folder)
        (outside / "requests").write_text(json.dumps({"id": "x", "op": "compensates"}) + "\n")
        os.symlink(outside / "requests", folder / "requests")
        os.symlink(outside / "secret", folder / "responses")
        assert broker.serve() == 0  # a symlinked requests file is not read
        os.unlink(folder / "requests")
        _request(folder, "r1")
        assert broker.serve() == 1
        # the planted responses symlink was replaced, not written through
        assert (outside / "secret").read_bytes() == b"outside secret\n"
        assert not (folder / "responses").is_symlink()
        assert json.loads((folder / "responses").read_text()) == {"id": "r1", "result": "a0"}
        assert sorted(os.listdir(outside)) == ["requests", "secret"]
    finally:
        broker.close()


def test_a_broker_folder_swapped_for_a_symlink_is_not_followed(
        tmp_path: Path, outside: Path) -> None:
    broker = _broker(tmp_path)
    try:
        folder = Path(broker.folder)
        os.rename(folder, folder.with_name("kept"))
        os.symlink(outside, folder)
        (outside / "requests").write_text(json.dumps({"id": "x", "op": "compensates"}) + "\n")
        _request(folder.with_name("kept"), "r2")
        assert broker.serve() == 1  # served in the folder it holds, not through the symlink
        assert sorted(os.listdir(outside)) == ["requests", "secret"]
        assert "r2" in (folder.with_name("kept") / "responses").read_text()
    finally:
        broker.close()


def test_a_leftover_symlink_in_place_of_the_broker_folder_is_removed_not_followed(
        tmp_path: Path, outside: Path) -> None:
    tmpdir = tmp_path / "home" / "tmp" / "a1"
    tmpdir.mkdir(parents=True)
    (outside / "responses").write_bytes(b"must stay\n")
    os.symlink(outside, tmpdir / ".sp-broker")  # left by an earlier attempt's action
    broker = _broker(tmp_path)
    try:
        assert (outside / "responses").read_bytes() == b"must stay\n"
        assert not (tmpdir / ".sp-broker").is_symlink() and (tmpdir / ".sp-broker").is_dir()
    finally:
        broker.close()
