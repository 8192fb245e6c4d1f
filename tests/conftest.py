"""Shared fixtures: real SQLite files under tmp_path, a manual clock, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sp.cli.main import cli
from sp.commands.home import Home
from sp.ledger.clock import ManualClock
from sp.ledger.store import EventStore

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_default_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests run as root here: never let one fall back to /var/lib/systemprompt-os."""
    monkeypatch.setenv("SP_HOME", str(tmp_path / "default-home-must-not-be-used"))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A real SQLite file (WAL mode once opened): locking and crash behaviour need a file."""
    return tmp_path / "ledger.db"


@pytest.fixture
def store(home: Home, clock: ManualClock) -> Iterator[EventStore]:
    """A migrated ledger with every projection installed, on a manual clock."""
    s = home.open(clock=clock)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def bare_store(db_path: Path, clock: ManualClock) -> Iterator[EventStore]:
    """A migrated ledger with no projection hooks (ledger-level tests)."""
    s = EventStore(db_path, clock=clock)
    try:
        yield s
    finally:
        s.close()


class Sp:
    """Run the CLI against one home, in-process (CliRunner) or as a real subprocess."""

    def __init__(self, home: Home) -> None:
        self.home = home

    def __call__(self, *args: str, input: str | None = None, ok: bool = True) -> Result:
        runner = CliRunner()
        result = runner.invoke(cli, ["--home", str(self.home.root), *args], input=input,
                               catch_exceptions=not ok)
        if ok:
            assert result.exit_code == 0, (result.output, result.stderr)
        return result

    def proc(self, *args: str, input: str | None = None, timeout: float = 60,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sp.cli", "--home", str(self.home.root), *args],
            input=input, capture_output=True, text=True, timeout=timeout, cwd=REPO,
            env={**os.environ, **(env or {})},
        )

    def popen(self, *args: str, **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            [sys.executable, "-m", "sp.cli", "--home", str(self.home.root), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, **kw,
        )


@pytest.fixture
def sp(home: Home) -> Sp:
    return Sp(home)
