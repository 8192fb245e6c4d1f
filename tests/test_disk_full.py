"""Disk full is one line saying so, exit 1, with or without --debug; a worker that hits it
stops, and what it left is recovered once there is space again.

The home lives on a real, small tmpfs mounted for the test (tests run as root here); an
action of the test's own fills it, as a runaway action would.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sp.commands.home import Home
from tests.conftest import Sp

SIZE = "4m"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0755", "tmpfs",
                           str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def full_sp(small_fs: Path) -> Sp:
    return Sp(Home(small_fs / "home"))


def _fill(path: Path) -> None:
    """Write until the file system says ENOSPC."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == 28, e
    finally:
        os.close(fd)


def _disk_full_line(done: subprocess.CompletedProcess[str], home: Home) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.startswith("Error: disk full: no space left for "), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr


def _events(home: Home, type_: str) -> list[str]:
    conn = sqlite3.connect(home.ledger_path)
    try:
        return [r[0] for r in conn.execute("SELECT stream FROM events WHERE type = ?",
                                           (type_,))]
    finally:
        conn.close()


@pytest.mark.parametrize("debug", [(), ("--debug",)])
def test_submit_on_a_full_disk_is_one_line(full_sp: Sp, small_fs: Path,
                                           debug: tuple[str, ...]) -> None:
    full_sp("submit", "--name", "first", "--", "true")
    _fill(small_fs / "filler")
    done = full_sp.proc(*debug, "submit", "--name", "x", "--", "true")
    _disk_full_line(done, full_sp.home)
    (small_fs / "filler").unlink()
    assert full_sp("verify").stdout == "ok: 2 events\n"  # nothing half-written


def test_a_worker_that_fills_the_disk_stops_and_its_work_is_recovered(full_sp: Sp,
                                                                      small_fs: Path) -> None:
    once, filler = small_fs / "once", small_fs / "filler"
    # The first attempt fills the disk (its output has nowhere to go, nor has the worker's
    # record of it); a later one just succeeds.
    script = f"test -e {once} || {{ touch {once}; cat /dev/zero > {filler}; }}; echo ok"
    hog = full_sp("submit", "--name", "hog", "--retries", "2", "--", "sh", "-c",
                  script).stdout.strip()
    after = full_sp("submit", "--name", "after", "--", "echo", "after").stdout.strip()
    done = full_sp.proc("worker", "--until-idle", timeout=120)
    _disk_full_line(done, full_sp.home)
    assert filler.exists()

    filler.unlink()  # the operator frees space
    assert full_sp("verify").stdout.startswith("ok: ")
    # No sp replay: the next worker's recovery sweep puts back the attempt the full disk cut
    # short (its worker is gone), then runs it.
    full_sp("worker", "--until-idle")
    states = {a["action_id"]: a["state"] for a in json.loads(
        full_sp("status", "--format", "json").stdout)["actions"]}
    assert states == {hog: "completed", after: "completed"}
    completed = _events(full_sp.home, "action.completed")
    assert sorted(completed) == sorted([hog, after])  # each exactly once
    assert full_sp("verify").stdout.startswith("ok: ")
    assert not os.path.exists(filler)
