"""The seed's storage quotas, watched while an action runs.

``log_space``, ``temp_space`` and ``output_space`` are an agent's budgets: the space its actions'
logs, temporary folders (``<home>/tmp/<action_id>``, the action's ``TMPDIR``) and output folders
(``storage.output_dirs``, else the policy's allowed ``write`` paths) may take together. When an
attempt starts, what the agent's *other* actions already use is measured once; while it runs, its
own usage is measured — the log with one ``fstat`` of the shared log file at every worker turn
(20 ms), the folders by walking them at most every :data:`WALK_EVERY_S` — and the attempt is
stopped as soon as the total passes a budget: the log at once with SIGKILL (every further byte
would land on the disk), the folders with the usual SIGTERM then SIGKILL.

What a walk cannot see between two turns can overshoot a budget by what the program writes in
that time (a log by up to 20 ms of output); a program cannot hide usage from the walk except
inside files it opened and deleted.

Independently of quotas, every action's log is capped at :data:`LOG_CAP_BYTES` (``SP_LOG_MAX``
overrides it; 0 disables), so a runaway program cannot fill the disk through its log.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

WALK_EVERY_S = 0.5
LOG_CAP_BYTES = 1 << 30  # 1 GiB per action unless SP_LOG_MAX or a log_space quota says less


def log_cap() -> int:
    raw = os.environ.get("SP_LOG_MAX", "")
    if not raw:
        return LOG_CAP_BYTES
    from sp.agents.units import parse_size

    try:
        return parse_size(raw)
    except ValueError:
        return LOG_CAP_BYTES


def tree_bytes(path: str) -> int:
    """Disk space taken by the files below ``path`` (allocated blocks; hard links once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        here = stack.pop()
        try:
            entries = os.scandir(here)
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    continue
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1:
                    if key in seen:
                        continue
                    seen.add(key)
                total += max(st.st_blocks * 512, 0) if st.st_blocks else st.st_size
    return total


def _file_bytes(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


@dataclass
class Exceeded:
    quota: str  # "log_space" | "temp_space" | "output_space" | "log_cap"
    used: int
    limit: int
    kill_now: bool

    def text(self) -> str:
        what = "the log cap" if self.quota == "log_cap" else f"the {self.quota} quota"
        return (f"stopped: {what} was exceeded ({_fmt(self.used)} used of {_fmt(self.limit)})")


def _fmt(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


class QuotaWatch:
    """Budgets of one attempt: call :meth:`check` at every turn; it says when one is exceeded."""

    def __init__(self, *, log_fd: int, log_start: int, log_budget: int | None,
                 tmpdir: str | None, temp_budget: int | None,
                 output_dirs: list[str], output_budget: int | None) -> None:
        self.log_fd, self.log_start = log_fd, log_start
        self.log_limit = log_cap()
        self.log_quota = log_budget
        self.tmpdir, self.temp_budget = tmpdir, temp_budget
        self.output_dirs, self.output_budget = output_dirs, output_budget
        self.next_walk = 0.0

    def check(self, now: float) -> Exceeded | None:
        try:
            size = os.fstat(self.log_fd).st_size
        except OSError:
            size = 0
        written = size - self.log_start
        if self.log_quota is not None and written > self.log_quota:
            return Exceeded("log_space", written, self.log_quota, True)
        if self.log_limit and written > self.log_limit:
            return Exceeded("log_cap", written, self.log_limit, True)
        if now < self.next_walk:
            return None
        self.next_walk = now + WALK_EVERY_S
        if self.temp_budget is not None and self.tmpdir:
            used = tree_bytes(self.tmpdir)
            if used > self.temp_budget:
                return Exceeded("temp_space", used, self.temp_budget, False)
        if self.output_budget is not None and self.output_dirs:
            used = sum(tree_bytes(d) for d in self.output_dirs)
            if used > self.output_budget:
                return Exceeded("output_space", used, self.output_budget, False)
        return None


def watch_for(store: Any, home_root: str, action_id: str, agent: str | None, policy: Any,
              log_fd: int, log_start: int, tmpdir: str | None) -> QuotaWatch:
    """The watch for one attempt: the agent's budgets minus what its other actions use now."""
    log_budget = temp_budget = output_budget = None
    output_dirs: list[str] = []
    if policy is not None and policy.has_quotas and agent:
        others = [str(r[0]) for r in store.query(
            "SELECT action_id FROM actions WHERE agent = ? AND action_id != ?",
            (agent, action_id))]
        if policy.log_space is not None:
            used = sum(_file_bytes(os.path.join(home_root, "logs", f"{o}.log")) for o in others)
            log_budget = max(0, policy.log_space - used - log_start)
        if policy.temp_space is not None:
            used = sum(tree_bytes(os.path.join(home_root, "tmp", o)) for o in others
                       if os.path.isdir(os.path.join(home_root, "tmp", o)))
            temp_budget = max(0, policy.temp_space - used)
        if policy.output_space is not None:
            output_dirs = list(policy.output_dirs or policy.write or [])
            output_budget = policy.output_space
    return QuotaWatch(log_fd=log_fd, log_start=log_start, log_budget=log_budget,
                      tmpdir=tmpdir, temp_budget=temp_budget, output_dirs=output_dirs,
                      output_budget=output_budget)
