"""Where sp keeps its files, and opening the ledger with its projections installed."""

from __future__ import annotations

import os
from pathlib import Path

from sp.commands import ledger_marker
from sp.ledger.clock import Clock
from sp.ledger.errors import LedgerWipedError, UsageError

# Home.open constructs the store, so it names (and returns) the concrete EventStore; code
# handed a store types it as sp.ledger.interface.Ledger.
from sp.ledger.store import EventStore
from sp.projections.version import PROJECTION_VERSION


def default_home() -> Path:
    """``SP_HOME``, else ``/var/lib/systemprompt-os`` for root, else the XDG data dir."""
    env = os.environ.get("SP_HOME")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/systemprompt-os")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "systemprompt-os"


class Home:
    """The home folder: ``ledger.db``, ``logs/``, ``previews/``, ``tmp/``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_home()

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log_path(self, action_id: str) -> Path:
        return self.logs / f"{action_id}.log"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def tmp_path(self, action_id: str) -> Path:
        """The action's private temporary folder (its ``TMPDIR`` in the sandbox)."""
        return self.tmp / action_id

    def ensure(self) -> None:
        """Create the home and its folders (idempotent).

        :raises UsageError: the home cannot be created.
        """
        try:
            for sub in (self.root, self.logs, self.root / "previews", self.root / "tmp"):
                sub.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create home {self.root}: {e.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise UsageError(f"home {self.root} is not writable")

    def _check_marker(self, fresh: bool) -> ledger_marker.Marker | None:
        """Refuse to create a ledger where the home had one (:mod:`sp.commands.ledger_marker`)."""
        known = ledger_marker.read_marker(self.root)
        if known is not None:
            ledger_marker.refuse_if_gone(self.ledger_path, known)
        elif not fresh:
            why = ledger_marker.new_ledger_refused(self.root, self.ledger_path)
            if why is not None:
                raise LedgerWipedError(str(self.ledger_path), why)
        return known

    def open(self, clock: Clock | None = None, write: bool = True, *,
             fresh: bool = False, projections: bool = True) -> EventStore:
        """Open (creating on first use) the ledger with every projection current.

        ``write=False`` skips loading the projection code unless a rebuild is due, which keeps
        read-only commands (``sp status``) quick to start from cron. ``fresh``: a new ledger
        is wanted even though logs/ remembers actions (``sp init --force``).
        ``projections=False``: the log alone (``sp verify`` must not fold a damaged log).

        :raises LedgerWipedError: the home had a ledger and this is not it (gone, empty,
            another one): see :mod:`sp.commands.ledger_marker`.
        """
        self.ensure()
        known = self._check_marker(fresh)
        store = EventStore(self.ledger_path, clock=clock)
        try:
            meta = {str(k): str(v) for k, v in store.query(
                "SELECT key, value FROM meta WHERE key IN ('projection_version', 'ledger_id')")}
            ledger_marker.settle(store, self.root, known, meta.get("ledger_id"))
            found = meta.get("projection_version")
            due = found is None or int(found) != PROJECTION_VERSION
            if projections and (write or due):
                from sp.projections import engine

                engine.install(store)
        except BaseException:
            store.close()
            raise
        return store
