"""Retention: what ``sp gc`` removes from the home, and when (the seed's ``storage.cleanup``).

Ages are measured with the injected clock from when an action finished: the ``ts`` of its
terminal event (``actions.finished_ms``), never a file's mtime. Only files of an action no
longer known to the ledger (archived, or never recorded) fall back to their mtime.

* ``logs/<id>.log``: a finished action's log, after ``completed_actions`` for a completed one
  and ``failed_actions`` for any other final outcome (failed, skipped, cancelled, rolled back,
  rollback failed: what someone may still want to investigate is kept longer). A log whose
  action is unknown goes after ``failed_actions`` by its mtime.
* ``tmp/<id>/``: a finished action's private temporary folder, after ``temp_files`` whatever
  the outcome; an unknown entry of ``tmp/`` after ``temp_files`` by its mtime.
* Rollback artefacts, kept while any rollback could still need them:
  ``blobs/<sha256>`` (before-images recorded in checkpoints) and superseded preview versions
  ``previews/<name>/v<N>/`` (with ``deploy/<name>/v<N>.json``). An action's artefacts expire
  only when the action *and every action of its group* (a plan's actions and their
  compensations count as one group) has expired by the rules above, and no unfinished action
  compensates it. A blob goes when every action that recorded it has expired that way (a blob
  nobody records goes after ``failed_actions`` by its mtime) and was not written or reused within
  ``temp_files`` (an action between storing a blob and recording it); a preview version goes
  when it is not ``current``, its deploy and the deploy that replaced it (whose undo serves it
  again) have expired, and no deploy of that preview is unfinished.

Nothing of an unfinished action (queued, running, retrying, interrupted, rolling back) is
touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from sp.agents.config import Cleanup
from sp.ledger import events as ev
from sp.ledger.interface import Ledger
from sp.machines.states import FINAL, ActionState

STREAM = "maintenance"
_FINAL = frozenset(s.value for s in FINAL)
_ROLLBACK_GROUP = "rollback:"  # commands.rollback.ROLLBACK_GROUP: a plan's compensations
_PREVIEW_TYPES = ("deploy", "generate_preview")
_DAY = 86_400_000


class Rules(msgspec.Struct, frozen=True, kw_only=True):
    """Retention in milliseconds."""

    temp_ms: int
    completed_ms: int
    failed_ms: int

    def keep_ms(self, state: str) -> int:
        return self.completed_ms if state == ActionState.COMPLETED.value else self.failed_ms

    @staticmethod
    def of(cleanup: Cleanup) -> Rules:
        return Rules(temp_ms=int(cleanup.temp_files),
                     completed_ms=int(cleanup.completed_actions),
                     failed_ms=int(cleanup.failed_actions))

    def override(self, temp_ms: int | None, completed_ms: int | None,
                 failed_ms: int | None) -> Rules:
        return Rules(temp_ms=self.temp_ms if temp_ms is None else temp_ms,
                     completed_ms=self.completed_ms if completed_ms is None else completed_ms,
                     failed_ms=self.failed_ms if failed_ms is None else failed_ms)


DEFAULT_RULES = Rules.of(Cleanup())


class Removal(msgspec.Struct, frozen=True, kw_only=True):
    kind: str  # log | tmp | preview | blob
    path: str  # relative to the home
    bytes: int
    action_id: str | None  # whose it was (None: no action the ledger knows)
    reason: str
    shared_with: list[str] = []  # other actions that recorded the same blob


class _Action(msgspec.Struct, frozen=True):
    action_id: str
    state: str
    agent: str | None
    group: str | None
    finished_ms: int | None
    action_type: str


def _unit(group: str | None) -> str | None:
    if group is None:
        return None
    return group[len(_ROLLBACK_GROUP):] if group.startswith(_ROLLBACK_GROUP) else group


class _Ledger:
    """What gc needs to know about actions, loaded for the ids it meets."""

    def __init__(self, store: Ledger, now: int, rules_for: Callable[[str | None], Rules]):
        self.store, self.now, self.rules_for = store, now, rules_for
        self.actions: dict[str, _Action | None] = {}
        self._units: dict[str, list[_Action]] = {}
        self._compensated: set[str] | None = None

    def load(self, ids: Iterable[str]) -> None:
        todo = [i for i in dict.fromkeys(ids) if i not in self.actions]
        for i in range(0, len(todo), 5000):
            chunk = todo[i:i + 5000]
            found = self._select("action_id IN (SELECT value FROM json_each(?))",
                                 msgspec.json.encode(chunk).decode())
            for a in found:
                self.actions[a.action_id] = a
            for action_id in chunk:
                self.actions.setdefault(action_id, None)

    def _select(self, where: str, *params: Any) -> list[_Action]:
        rows = self.store.query(
            "SELECT action_id, state, agent, group_id, finished_ms, action_type FROM actions"
            f" WHERE {where}", params)
        return [_Action(*r) for r in rows]

    def get(self, action_id: str) -> _Action | None:
        self.load([action_id])
        return self.actions[action_id]

    def age_ms(self, a: _Action) -> int | None:
        """How long ago the action finished; None while it is not finished."""
        if a.state not in _FINAL or a.finished_ms is None:
            return None
        return self.now - a.finished_ms

    def expired(self, a: _Action) -> bool:
        age = self.age_ms(a)
        return age is not None and age >= self.rules_for(a.agent).keep_ms(a.state)

    def artefacts_expired(self, a: _Action) -> bool:
        """No rollback can need the action's artefacts any more (see the module docstring)."""
        if not self.expired(a) or a.action_id in self.compensated():
            return False
        unit = _unit(a.group)
        if unit is None:
            return True
        members = self._units.get(unit)
        if members is None:
            members = self._units[unit] = self._select(
                "group_id IN (?, ?)", unit, _ROLLBACK_GROUP + unit)
        return all(self.expired(m) and m.action_id not in self.compensated() for m in members)

    def compensated(self) -> set[str]:
        """Actions an unfinished compensation undoes (it reads their before-images)."""
        if self._compensated is None:
            marks = ", ".join(f"'{s}'" for s in sorted(_FINAL))
            rows = self.store.query(
                "SELECT json_extract(e.data, '$.payload.compensates') FROM actions a"
                " JOIN events e ON e.stream = a.action_id AND e.version = 1"
                f" WHERE a.state NOT IN ({marks})")
            self._compensated = {str(r[0]) for r in rows if r[0] is not None}
        return self._compensated

    def busy_previews(self) -> set[str]:
        """Preview names an unfinished deploy publishes (or undoes)."""
        marks = ", ".join(f"'{s}'" for s in sorted(_FINAL))
        types = ", ".join(f"'{t}'" for t in _PREVIEW_TYPES)
        rows = self.store.query(
            "SELECT json_extract(e.data, '$.payload.name') FROM actions a"
            " JOIN events e ON e.stream = a.action_id AND e.version = 1"
            f" WHERE a.state NOT IN ({marks}) AND a.action_type IN ({types})")
        return {str(r[0]) for r in rows if r[0] is not None}


def plan(store: Ledger, home: Path, rules: Rules,
         rules_for: Callable[[str | None], Rules] | None = None) -> list[Removal]:
    """What ``sp gc`` would remove now, in a stable order. Reads only.

    :param rules: the rules for actions of no agent (and for files of unknown actions).
    :param rules_for: the rules of an agent's actions (default: ``rules``).
    """
    now = store.clock.now_ms()
    ledger = _Ledger(store, now, rules_for or (lambda agent: rules))
    out: list[Removal] = []
    out += _logs(ledger, home, rules)
    out += _tmp(ledger, home, rules)
    out += _previews(ledger, home)
    out += _blobs(ledger, home, rules)
    return out


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        return []


def _mtime_ms(entry: os.DirEntry[str] | Path) -> int:
    st = entry.stat(follow_symlinks=False)
    return st.st_mtime_ns // 1_000_000


def size_of(path: Path) -> int:
    """Bytes below ``path`` (not following symlinks)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            try:
                s = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(s.st_mode):
                total += s.st_size
    return total


def _days(ms: int) -> str:
    return f"{ms / _DAY:.1f}d" if ms >= _DAY else f"{ms / 3_600_000:.1f}h"


def _by_age(ledger: _Ledger, a: _Action, keep_ms: int, what: str) -> str | None:
    age = ledger.age_ms(a)
    if age is None or age < keep_ms:
        return None
    return f"{a.state} {_days(age)} ago, {what} kept {_days(keep_ms)}"


def _logs(ledger: _Ledger, home: Path, rules: Rules) -> list[Removal]:
    entries = [e for e in _entries(home / "logs") if e.name.endswith(".log") and e.is_file()]
    ledger.load(e.name[:-4] for e in entries)
    out = []
    for e in entries:
        action_id = e.name[:-4]
        a = ledger.actions[action_id]
        if a is None:
            age = ledger.now - _mtime_ms(e)
            reason = (f"unknown action, log unchanged for {_days(age)}"
                      if age >= rules.failed_ms else None)
        else:
            reason = _by_age(ledger, a, ledger.rules_for(a.agent).keep_ms(a.state), "logs")
        if reason:
            out.append(Removal(kind="log", path=f"logs/{e.name}", bytes=size_of(Path(e.path)),
                               action_id=None if a is None else action_id, reason=reason))
    return out


def _tmp(ledger: _Ledger, home: Path, rules: Rules) -> list[Removal]:
    entries = _entries(home / "tmp")
    ledger.load(e.name for e in entries)
    out = []
    for e in entries:
        a = ledger.actions[e.name]
        if a is None:
            age = ledger.now - _mtime_ms(e)
            reason = (f"unknown entry, unchanged for {_days(age)}"
                      if age >= rules.temp_ms else None)
        else:
            reason = _by_age(ledger, a, ledger.rules_for(a.agent).temp_ms, "temp files")
        if reason:
            out.append(Removal(kind="tmp", path=f"tmp/{e.name}", bytes=size_of(Path(e.path)),
                               action_id=None if a is None else e.name, reason=reason))
    return out


def _previews(ledger: _Ledger, home: Path) -> list[Removal]:
    sites = [e for e in _entries(home / "previews") if e.is_dir(follow_symlinks=False)]
    if not sites:
        return []
    types = ", ".join(f"'{t}'" for t in _PREVIEW_TYPES)
    # (name, version) -> the deploy that published it (the latest, should a number recur);
    # (name, "vN") -> the deploys whose undo serves vN again.
    creators: dict[tuple[str, int], str] = {}
    needers: dict[tuple[str, str], list[str]] = {}
    for stream, name, version, previous in ledger.store.query(
            "SELECT e.stream, json_extract(e.data, '$.data.name'),"
            " json_extract(e.data, '$.data.version'), json_extract(e.data, '$.data.previous')"
            " FROM events e JOIN actions a ON a.action_id = e.stream"
            f" WHERE e.type = 'action.checkpointed' AND a.action_type IN ({types})"
            " AND json_extract(e.data, '$.data.path') IS NOT NULL ORDER BY e.seq"):
        if isinstance(name, str) and isinstance(version, int):
            creators[(name, version)] = stream
            if isinstance(previous, str):
                needers.setdefault((name, previous), []).append(stream)
    busy = ledger.busy_previews()
    out = []
    for site in sites:
        name = site.name
        if name in busy:
            continue
        link = Path(site.path) / "current"
        current = os.readlink(link) if link.is_symlink() else None
        for e in _entries(Path(site.path)):
            if not (e.name[:1] == "v" and e.name[1:].isdigit() and
                    e.is_dir(follow_symlinks=False)) or e.name == current:
                continue
            creator = creators.get((name, int(e.name[1:])))
            if creator is None:
                continue  # published outside the ledger's knowledge: not ours to judge
            who = [creator, *needers.get((name, e.name), [])]
            ledger.load(who)
            actions = [ledger.actions[w] for w in who]
            if not all(a is not None and ledger.artefacts_expired(a) for a in actions):
                continue
            path = Path(site.path) / e.name
            meta = home / "deploy" / name / f"{e.name}.json"
            out.append(Removal(
                kind="preview", path=f"previews/{name}/{e.name}",
                bytes=size_of(path) + size_of(meta), action_id=creator,
                reason="superseded; its deploy and the one replacing it expired"))
    return out


def _blobs(ledger: _Ledger, home: Path, rules: Rules) -> list[Removal]:
    entries = [e for e in _entries(home / "blobs")
               if len(e.name) == 64 and e.is_file(follow_symlinks=False)]
    if not entries:
        return []
    refs: dict[str, set[str]] = {}
    for stream, sha in ledger.store.query(
            "SELECT DISTINCT e.stream, j.value FROM events e, json_tree(e.data) j"
            " WHERE e.type = 'action.checkpointed' AND j.key = 'blob' AND j.type = 'text'"):
        refs.setdefault(str(sha), set()).add(str(stream))
    ledger.load(s for e in entries for s in refs.get(e.name, ()))
    out = []
    for e in entries:
        age = ledger.now - _mtime_ms(e)
        if age < rules.temp_ms:
            continue  # just stored or reused: its action may not have recorded it yet
        users = sorted(refs.get(e.name, ()))
        if users:
            actions = [ledger.actions[u] for u in users]
            if not all(a is not None and ledger.artefacts_expired(a) for a in actions):
                continue
            reason = "every action that recorded it expired (with its group)"
        elif age >= rules.failed_ms:
            reason = f"recorded by no action, unchanged for {_days(age)}"
        else:
            continue
        out.append(Removal(kind="blob", path=f"blobs/{e.name}", bytes=size_of(Path(e.path)),
                           action_id=users[0] if users else None, reason=reason,
                           shared_with=users[1:]))
    return out


def remove_files(home: Path, removals: list[Removal], rules: Rules, now_ms: int) -> None:
    """Remove what ``removals`` name, once ``maintenance.gc_completed`` naming them committed
    (:func:`sp.commands.retention.gc` records it first).

    The order is deliberate: a file removed but never recorded would make an action's history
    lie (its log gone, nothing saying why), while a crash after the commit only leaves files
    that the next ``sp gc`` finds again, removes, and records once more. (A blob an action
    reuses between the plan and its removal is put back: the record then names one blob too
    many, never one too few.)
    """
    fresh_after = now_ms - rules.temp_ms
    for r in removals:
        if r.kind == "blob":
            _remove_blob(home / r.path, fresh_after)
            continue
        _remove(home / r.path)
        if r.kind == "preview":
            name, version = r.path[len("previews/"):].split("/", 1)
            _remove(home / "deploy" / name / f"{version}.json")


def actions_of(removals: list[Removal]) -> list[str]:
    """The actions whose log, temporary folder or artefacts go."""
    return sorted({a for r in removals for a in (r.action_id, *r.shared_with) if a})


def _remove_blob(path: Path, fresh_after_ms: int) -> None:
    """Remove a blob unless an action reused it since the plan (``put_blob`` touches it).

    Renamed aside first, then judged by its mtime: an action that reuses it meanwhile either
    touched it before the rename (it is put back) or finds it gone and writes it again.
    """
    aside = path.with_name(f".{path.name}.gc")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _mtime_ms(aside) >= fresh_after_ms:
        os.rename(aside, path)
    else:
        aside.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile: gone is gone
            shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def log_collected(store: Ledger, action_id: str) -> tuple[int, int] | None:
    """``(seq, ts)`` of the gc run that removed the action's log, if one did."""
    row = store.query_one(
        "SELECT seq, ts FROM events WHERE type = ? AND EXISTS"
        " (SELECT 1 FROM json_each(data, '$.logs') WHERE value = ?) ORDER BY seq DESC LIMIT 1",
        (ev.tag_of(ev.GcCompleted), action_id))
    return None if row is None else (int(row[0]), int(row[1]))
