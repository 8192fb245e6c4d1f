"""Resource limits for one attempt: cgroups, rlimits and nice, applied without ``preexec_fn``.

The seed's systemd-style limits (``cpu_quota: 50%``, ``memory_limit: 2G``, ``tasks_max: 100``,
``nice: 10``, ``io_weight: 50``) become, per attempt:

- a cgroup named ``<action_id>-<attempt>`` in every controller that can hold one, created under
  the cgroup sp itself runs in (``<own cgroup>/sp/<name>``), so that whatever limits sp's own
  supervisor set still apply to the actions, and a delegated subtree is the only place written;
- ``memory.limit_in_bytes`` (+ ``memory.memsw.limit_in_bytes``, so swapping cannot dodge it),
  ``pids.max``, ``cpu.cfs_quota_us``, ``blkio.bfq.weight`` on cgroup v1; ``memory.max``,
  ``pids.max``, ``cpu.max``, ``io.bfq.weight`` on v2 (each controller is taken from whichever
  hierarchy the kernel bound it to, so hybrid v1/v2 machines work);
- niceness, applied by ``nice(1)`` in the exec chain;
- ``RLIMIT_AS`` only when no memory cgroup can be made (see :func:`prepare` for why).

A threaded worker must not use ``preexec_fn``, so :func:`wrap` returns an argv that starts with a
tiny ``/bin/sh`` shim: it writes its own pid into each ``cgroup.procs`` (joining before the user's
program exists, so its first allocation is already counted), sets the rlimit with the ``ulimit``
builtin and ``exec``\\ s the program, through ``nice`` when the niceness changes. The pid never
changes along the chain, so the worker's pid, process group and ``wait4`` stay valid. If joining
fails the shim exits 125 rather than run the program unbounded.

What :attr:`Prepared.enforced` says is read back from the cgroup files after writing them, never
assumed; a requested limit that could not be enforced is named in :attr:`Prepared.missing` with the
reason, or refused with :class:`LimitsUnavailableError` when the policy says ``limits: required``.

Call order for one attempt: :func:`prepare` once, :func:`wrap` before each spawn, after the child
was reaped :func:`usage` and :func:`exhausted` (they also work after :func:`cleanup`, from the
counters it saved), then :func:`cleanup`. :func:`kill_all` may be called at any time.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shlex
import shutil
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sp.agents.config import Resources
from sp.host.cgroupfs import (
    _PARENT,
    _ROLES,
    _V1,
    _V2,
    _enable_v2,
    _hierarchies,
    _int,
    _io_bytes,
    _keyed,
    _make_dir,
    _pids,
    _read,
    _rmtree,
    _schedulers,
    _write,
)
from sp.ledger.errors import SpError, UsageError

__all__ = [
    "LimitsUnavailableError",
    "Prepared",
    "cleanup",
    "exhausted",
    "from_enforced",
    "kill_all",
    "prepare",
    "usage",
    "wrap",
]

SHIM_EXIT = 125  # the shim's own failure (cannot join a cgroup / set a limit), as env(1) does
CLEANUP_WAIT_S = 2.0  # how long cleanup keeps killing stragglers before leaving the directory
_SHELL = "/bin/sh"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_CAP_SYS_NICE = 23
# A non-limiting blkio throttle rule (1 TiB/s). Kernel 6.x only counts per-cgroup bytes in
# blkio.throttle.io_service_bytes for devices that have a rule, so one is set for accounting.
_NO_THROTTLE_BPS = 1 << 40

# Logical roles -> the controller name in each cgroup version. "cpuacct" is accounting only; on
# v2 its numbers come from cpu.stat, which every cgroup has.


class LimitsUnavailableError(SpError):
    """``limits: required`` and some requested limit cannot be enforced on this machine."""

    exit_code = 2

    def __init__(self, name: str, missing: list[str]) -> None:
        super().__init__(
            f"attempt {name}: limits are required but cannot be enforced here: "
            + "; ".join(missing)
        )
        self.name, self.missing = name, list(missing)


@dataclass
class Prepared:
    """One attempt's limits: what is enforced, what is not, and where its cgroups are."""

    name: str
    enforced: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    # role -> (cgroup version, directory); co-mounted v1 controllers and v2 share one directory.
    groups: dict[str, tuple[int, str]] = field(default_factory=dict)
    nice: int | None = None  # the absolute niceness the program runs at
    nice_bin: str = ""
    rlimit_as: int | None = None  # bytes, only without a memory cgroup
    # Event counters (OOM kills, refused forks) when the last step was spawned, so that
    # exhausted() blames only what happened to that step.
    baseline: dict[str, int] = field(default_factory=dict)
    # Counters saved by cleanup() just before the directories went away.
    final: dict[str, int] | None = None

    @property
    def dirs(self) -> list[str]:
        """Each cgroup directory once, in a stable order."""
        return list(dict.fromkeys(d for _, d in self.groups.values()))


# -- discovery ----------------------------------------------------------------------------------


def _fmt_bytes(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / 1024:.1f} KiB"


def _why(e: OSError) -> str:
    return e.strerror or str(e)


# -- validation ---------------------------------------------------------------------------------


def check(resources: Resources) -> None:
    """Values no kernel would take, as input errors (the config decoder may call this too).

    :raises UsageError: the first bad value, named.
    """
    r = resources
    if r.memory_limit is not None and r.memory_limit <= 0:
        raise UsageError(f"resources.memory_limit: expected a positive size, got {r.memory_limit}")
    if r.tasks_max is not None and r.tasks_max < 1:
        raise UsageError(f"resources.tasks_max: expected at least 1, got {r.tasks_max}")
    if r.nice is not None and not -20 <= r.nice <= 19:
        raise UsageError(f"resources.nice: expected -20..19, got {r.nice}")
    if r.io_weight is not None and not 1 <= r.io_weight <= 10000:
        raise UsageError(f"resources.io_weight: expected 1..10000, got {r.io_weight}")
    if r.cpu_quota is not None and r.cpu_quota <= 0:
        raise UsageError(f"resources.cpu_quota: expected a positive percentage, got {r.cpu_quota}")


def _requested(r: Resources | None) -> bool:
    return r is not None and any(
        v is not None for v in (r.cpu_quota, r.memory_limit, r.tasks_max, r.nice, r.io_weight)
    )


# -- prepare ------------------------------------------------------------------------------------


def prepare(resources: Resources | None, name: str, *, required: bool,
            cgroups: bool = True) -> Prepared:
    """Create the attempt's cgroups, write the limits and read them back.

    ``name`` is a cgroup directory name such as ``<action_id>-<attempt>``. With nothing requested
    nothing is created and :func:`wrap` leaves argv alone. ``cgroups=False`` skips cgroups
    (for machines where they must not be touched, and to test the fallbacks).

    Memory without a memory cgroup: ``RLIMIT_AS`` is set to the limit, and memory_limit is still
    listed as missing. RLIMIT_AS bounds *virtual* memory per process, so (a) it is stricter than
    the limit asked for — runtimes that reserve address space up front (JVM, Go, glibc's per-thread
    arenas) fail with ENOMEM far below it — and (b) it is per process, not per attempt: each child
    gets its own allowance. It is therefore never set on top of a working memory cgroup, and never
    claimed as the memory limit. ``tasks_max`` has no fallback: ``RLIMIT_NPROC`` counts all of a
    user's processes and root ignores it.

    :raises LimitsUnavailableError: ``required`` and a requested limit cannot be enforced
        (nothing is left behind).
    :raises UsageError: a value no kernel accepts (``nice: 40``).
    """
    prepared = Prepared(name)
    if resources is None or not _requested(resources):
        return prepared
    check(resources)
    if not _NAME.fullmatch(name):
        raise ValueError(f"cgroup name {name!r}: use letters, digits, '_', '.', '-'")
    try:
        _prepare(prepared, resources, cgroups)
    except BaseException:
        cleanup(prepared)
        raise
    if required and prepared.missing:
        cleanup(prepared)
        raise LimitsUnavailableError(name, prepared.missing)
    return prepared


def _prepare(p: Prepared, r: Resources, use_cgroups: bool) -> None:
    why_not: dict[str, str] = {}  # role -> why there is no cgroup for it
    if use_cgroups:
        _make_groups(p, why_not)
    else:
        why_not.update(dict.fromkeys(_ROLES, "cgroups disabled for this attempt"))
    if p.groups:
        p.enforced["cgroups"] = {role: d for role, (_, d) in p.groups.items()}
        # The directory a person looks at first: memory if there is one.
        p.enforced["cgroup"] = p.groups.get("memory", next(iter(p.groups.values())))[1]

    if r.memory_limit is not None:
        if "memory" in p.groups:
            _set_memory(p, int(r.memory_limit))
        else:
            _set_rlimit_as(p, int(r.memory_limit), why_not["memory"])
    if r.tasks_max is not None:
        if "pids" in p.groups:
            _set_pids(p, r.tasks_max)
        else:
            p.missing.append(f"tasks_max: no pids cgroup ({why_not['pids']}); RLIMIT_NPROC is "
                             "per user and ignored for root, so it is not used instead")
    if r.cpu_quota is not None:
        if "cpu" in p.groups:
            _set_cpu(p, float(r.cpu_quota))
        else:
            p.missing.append(f"cpu_quota: no cpu cgroup ({why_not['cpu']})")
    if r.io_weight is not None:
        if "blkio" in p.groups:
            _set_io_weight(p, r.io_weight)
        else:
            p.missing.append(f"io_weight: no blkio/io cgroup ({why_not['blkio']})")
    if r.nice is not None:
        _set_nice(p, r.nice)
    if "blkio" in p.groups:
        _enable_io_accounting(p)


def _make_groups(p: Prepared, why_not: dict[str, str]) -> None:
    """One directory per hierarchy; every role the machine has, for limits and accounting."""
    hier = _hierarchies()
    made: dict[str, str | None] = {}  # hierarchy parent -> created directory, or None if failed
    for role in _ROLES:
        h = hier.get(role)
        if h is None:
            why_not[role] = f"the {_V1[role]} controller is not mounted for this process"
            continue
        if h.parent not in made:
            try:
                made[h.parent] = _make_dir(h, p.name)
            except OSError as e:
                made[h.parent] = None
                why_not[role] = f"cannot create {h.parent}/{p.name}: {_why(e)}"
        d = made[h.parent]
        if d is None:
            why_not.setdefault(role, f"cannot create a cgroup under {h.parent}")
            continue
        if h.version == 2 and _V2[role]:
            try:
                _enable_v2(h, _V2[role])
            except OSError as e:
                why_not[role] = (f"cannot enable the {_V2[role]} controller below "
                                 f"{h.mount}{h.own}: {_why(e)}")
                continue
        p.groups[role] = (h.version, d)
    # A directory no role ended up using is removed again (e.g. a v2 leaf with no controllers).
    used = set(p.dirs)
    for d in made.values():
        if d is not None and d not in used:
            with contextlib.suppress(OSError):
                os.rmdir(d)


def _file(p: Prepared, role: str, v1: str, v2: str) -> str:
    version, d = p.groups[role]
    return f"{d}/{v1 if version == 1 else v2}"


def _set_memory(p: Prepared, limit: int) -> None:
    version, d = p.groups["memory"]
    path = _file(p, "memory", "memory.limit_in_bytes", "memory.max")
    try:
        _write(path, str(limit))
        got = _int(_read(path))
    except (OSError, ValueError) as e:
        p.missing.append(f"memory_limit: cannot set {path} to {limit}: {_err(e)}")
        return
    # The kernel rounds to whole pages; anything further off means the write did not take.
    if got is None or abs(got - limit) >= os.sysconf("SC_PAGE_SIZE"):
        p.missing.append(f"memory_limit: wrote {limit} to {path}, the kernel reports {got}")
        return
    p.enforced["memory_limit_bytes"] = got
    # Swap must not become a way around the limit: v1 caps memory+swap at the same figure,
    # v2 gives the attempt no swap. Machines without swap accounting have no such file.
    swap = f"{d}/memory.memsw.limit_in_bytes" if version == 1 else f"{d}/memory.swap.max"
    if os.path.exists(swap):
        try:
            _write(swap, str(got) if version == 1 else "0")
            p.enforced["memory_swap_limit_bytes"] = _int(_read(swap))
        except (OSError, ValueError):
            pass  # swap accounting switched off at boot: the RAM limit above still holds


def _set_rlimit_as(p: Prepared, limit: int, why: str) -> None:
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    kib = limit // 1024
    if hard != resource.RLIM_INFINITY and kib * 1024 > hard:
        p.missing.append(f"memory_limit: no memory cgroup ({why}), and RLIMIT_AS cannot be "
                         f"raised to {limit} (hard limit {hard})")
        return
    p.rlimit_as = kib * 1024
    p.enforced["rlimit_as_bytes"] = p.rlimit_as
    p.missing.append(f"memory_limit: no memory cgroup ({why}); only RLIMIT_AS="
                     f"{p.rlimit_as} is set, which bounds each process's virtual memory, "
                     "not the attempt's resident memory")


def _set_pids(p: Prepared, tasks_max: int) -> None:
    path = _file(p, "pids", "pids.max", "pids.max")
    try:
        _write(path, str(tasks_max))
        got = _int(_read(path))
    except (OSError, ValueError) as e:
        p.missing.append(f"tasks_max: cannot set {path} to {tasks_max}: {_err(e)}")
        return
    if got != tasks_max:
        p.missing.append(f"tasks_max: wrote {tasks_max} to {path}, the kernel reports {got}")
        return
    p.enforced["pids_max"] = got


def _set_cpu(p: Prepared, percent: float) -> None:
    version, d = p.groups["cpu"]
    try:
        if version == 1:
            period = int(_read(f"{d}/cpu.cfs_period_us"))
            quota = round(period * percent / 100)
            _write(f"{d}/cpu.cfs_quota_us", str(quota))
            got_quota = _int(_read(f"{d}/cpu.cfs_quota_us"))
            got_period = int(_read(f"{d}/cpu.cfs_period_us"))
        else:
            period = int(_read(f"{d}/cpu.max").split()[1])
            quota = round(period * percent / 100)
            _write(f"{d}/cpu.max", f"{quota} {period}")
            q, per = _read(f"{d}/cpu.max").split()
            got_quota, got_period = _int(q), int(per)
    except (OSError, ValueError, IndexError) as e:
        p.missing.append(f"cpu_quota: the kernel refused {percent:g}% as a CFS quota: {_err(e)}")
        return
    if got_quota is None or got_quota <= 0:
        p.missing.append(f"cpu_quota: wrote a quota of {quota} us, the kernel reports no quota")
        return
    p.enforced["cpu_quota_pct"] = round(got_quota * 100 / got_period, 3)
    p.enforced["cpu_quota_us"] = got_quota
    p.enforced["cpu_period_us"] = got_period


def _bfq_weight(io_weight: int) -> int:
    """systemd's IOWeight (1..10000, default 100) -> BFQ's weight (1..1000, default 100)."""
    if io_weight <= 100:
        return max(1, io_weight)
    return 100 + (io_weight - 100) * 900 // 9900


def _blkio_weight(io_weight: int) -> int:
    """systemd's IOWeight -> the legacy blkio.weight (10..1000, default 500), as systemd maps it."""
    return min(1000, max(10, io_weight * 500 // 100))


def _set_io_weight(p: Prepared, io_weight: int) -> None:
    version, d = p.groups["blkio"]
    if version == 1:
        options = [("blkio.bfq.weight", _bfq_weight(io_weight)),
                   ("blkio.weight", _blkio_weight(io_weight))]
    else:
        options = [("io.bfq.weight", _bfq_weight(io_weight))]
    chosen = next(((f, w) for f, w in options if os.path.exists(f"{d}/{f}")), None)
    if chosen is None:
        p.missing.append(f"io_weight: {d} has no I/O weight file (no BFQ in this kernel)")
        return
    fname, weight = chosen
    try:
        _write(f"{d}/{fname}", str(weight))
        got = _int(_read(f"{d}/{fname}").splitlines()[0])
    except (OSError, ValueError) as e:
        p.missing.append(f"io_weight: cannot set {d}/{fname} to {weight}: {_err(e)}")
        return
    if got != weight:
        p.missing.append(f"io_weight: wrote {weight} to {d}/{fname}, the kernel reports {got}")
        return
    # The weight is only honoured by the BFQ scheduler; with any other the file is inert.
    scheds = _schedulers()
    if not any(s == "bfq" for s in scheds.values()):
        shown = ", ".join(f"{dev}: {s}" for dev, s in scheds.items()) or "no block devices"
        p.missing.append(f"io_weight: {fname}={got} is set but no disk uses the bfq I/O "
                         f"scheduler ({shown}), so it has no effect")
        return
    p.enforced["io_weight"] = io_weight
    p.enforced[fname.replace(".", "_")] = got


def _enable_io_accounting(p: Prepared) -> None:
    """v1 only: a rule that never throttles, so that the cgroup's bytes are counted at all."""
    version, d = p.groups["blkio"]
    if version != 1:
        return  # v2's io.stat counts without rules
    for dev in _schedulers():
        with contextlib.suppress(OSError):
            if int(_read(f"/sys/block/{dev}/size")) == 0:
                continue
            majmin = _read(f"/sys/block/{dev}/dev")
            for f in ("blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device"):
                _write(f"{d}/{f}", f"{majmin} {_NO_THROTTLE_BPS}")


def _can_lower_nice(target: int) -> bool:
    if _has_cap(_CAP_SYS_NICE):
        return True
    soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    floor = -20 if soft == resource.RLIM_INFINITY else 20 - soft
    return target >= floor


def _has_cap(bit: int) -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return False


def _set_nice(p: Prepared, target: int) -> None:
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if target < current and not _can_lower_nice(target):
        p.missing.append(f"nice: cannot lower niceness from {current} to {target} "
                         "without CAP_SYS_NICE or a higher RLIMIT_NICE")
        return
    nice_bin = shutil.which("nice") or ""
    if target != current and not nice_bin:
        p.missing.append("nice: no nice(1) on PATH to apply it with")
        return
    p.nice, p.nice_bin = target, nice_bin
    # Niceness is applied at exec; the check above is what the kernel will decide, and the
    # inherited value is exact (the shim computes the difference from the spawning thread).
    p.enforced["nice"] = target


def _err(e: BaseException) -> str:
    return _why(e) if isinstance(e, OSError) else str(e)


# -- spawn --------------------------------------------------------------------------------------


def wrap(prepared: Prepared, argv: list[str]) -> list[str]:
    """The argv to exec so that the program starts inside its cgroups, rlimits and niceness.

    ``/bin/sh -c '<join>; <ulimit>; exec [nice -n D] "$@"' sp-limits argv...`` costs about one
    millisecond (one more exec, of nice, when the niceness changes); with only a niceness it is
    ``nice -n D -- argv``; with nothing to apply, ``argv`` is returned unchanged (the same list).
    If the program cannot be found the shim exits 127 (126: not executable), as a shell does,
    where an unwrapped spawn would have raised FileNotFoundError in the worker.
    """
    p = prepared
    if not p.groups and p.nice is None and p.rlimit_as is None:
        return argv
    p.baseline = _counters(p)
    # nice(1) adds to the current niceness, which a child inherits from the spawning thread.
    delta = 0 if p.nice is None else p.nice - os.getpriority(os.PRIO_PROCESS, 0)
    if not p.dirs and p.rlimit_as is None:
        # Only niceness: nice(1) alone is one exec instead of two.
        return [p.nice_bin, "-n", str(delta), "--", *argv] if delta else argv
    lines = []
    if p.dirs:
        # Joining happens before exec, so the program's first page is charged to the attempt.
        lines.append(f'j() {{ echo $$ >"$1/cgroup.procs" || {{ echo "sp: cannot join cgroup $1,'
                     f' not running unbounded" >&2; exit {SHIM_EXIT}; }}; }}')
        lines.extend(f"j {shlex.quote(d)}" for d in p.dirs)
    if p.rlimit_as is not None:
        lines.append(f"ulimit -v {p.rlimit_as // 1024} || exit {SHIM_EXIT}")
    if delta:
        lines.append(f'exec {shlex.quote(p.nice_bin)} -n {delta} -- "$@"')
    else:
        lines.append('exec "$@"')
    return [_SHELL, "-c", "\n".join(lines), "sp-limits", *argv]


# -- after the attempt --------------------------------------------------------------------------


def _counters(p: Prepared) -> dict[str, int]:
    """Every counter usage() and exhausted() need, read now (missing files are left out)."""
    if p.final is not None:
        return dict(p.final)
    out: dict[str, int] = {}
    for role, (version, d) in p.groups.items():
        with contextlib.suppress(OSError, ValueError):
            if role == "memory":
                if version == 1:
                    out["mem_peak"] = int(_read(f"{d}/memory.max_usage_in_bytes"))
                    out["oom_kill"] = _keyed(_read(f"{d}/memory.oom_control")).get("oom_kill", 0)
                else:
                    out["oom_kill"] = _keyed(_read(f"{d}/memory.events")).get("oom_kill", 0)
                    out["mem_peak"] = int(_read(f"{d}/memory.peak"))
            elif role == "pids":
                out["pids_refused"] = _keyed(_read(f"{d}/pids.events")).get("max", 0)
            elif role == "cpuacct":
                if version == 1:
                    out["cpu_user_ns"] = int(_read(f"{d}/cpuacct.usage_user"))
                    out["cpu_sys_ns"] = int(_read(f"{d}/cpuacct.usage_sys"))
                else:
                    stat = _keyed(_read(f"{d}/cpu.stat"))
                    out["cpu_user_ns"] = stat["user_usec"] * 1000
                    out["cpu_sys_ns"] = stat["system_usec"] * 1000
            elif role == "blkio":
                out["io_read"], out["io_write"] = _io_bytes(version, d)
    return out


def usage(prepared: Prepared, rusage: resource.struct_rusage | None) -> dict[str, int]:
    """CPU, peak memory and I/O of the attempt, for its terminal event.

    CPU and I/O are the larger of the cgroup's and ``wait4``'s figures, because each source
    misses something the other sees: the cgroup counts processes that escaped the process tree
    but not the shim's first instructions before it joined, nor (v1) buffered writes flushed
    later by the kernel's writeback; rusage counts only reaped descendants.

    Peak memory is the memory cgroup's high-water mark when there is one (everything charged to
    the attempt, page cache included), else ``ru_maxrss``. The two are not mixed: a spawned
    child's ``ru_maxrss`` starts at the *worker's* RSS (Linux carries the pre-exec high-water
    mark across exec), so it would report the worker's size for every small action.
    """
    c = _counters(prepared)
    r_user = r_sys = r_rss = r_in = r_out = 0
    if rusage is not None:
        r_user, r_sys = int(rusage.ru_utime * 1000), int(rusage.ru_stime * 1000)
        r_rss = int(rusage.ru_maxrss) * 1024  # Linux reports KiB
        r_in, r_out = int(rusage.ru_inblock) * 512, int(rusage.ru_oublock) * 512
    return {
        "cpu_user_ms": max(r_user, c.get("cpu_user_ns", 0) // 1_000_000),
        "cpu_sys_ms": max(r_sys, c.get("cpu_sys_ns", 0) // 1_000_000),
        "peak_rss_bytes": c.get("mem_peak", r_rss),
        "io_read_bytes": max(r_in, c.get("io_read", 0)),
        "io_write_bytes": max(r_out, c.get("io_write", 0)),
    }


def exhausted(prepared: Prepared, returncode: int | None) -> str | None:
    """Why the last spawned step died of a limit, in one line; None if it did not (or succeeded).

    Evidence is the kernel's own counters since :func:`wrap`: an OOM kill in the attempt's memory
    cgroup, or forks refused at ``pids.max``. An ``RLIMIT_AS`` refusal leaves no such record (the
    program just sees ENOMEM and fails its own way), so it is not guessed at.
    """
    if returncode == 0 or not prepared.groups:
        return None
    now, base = _counters(prepared), prepared.baseline
    oom = now.get("oom_kill", 0) - base.get("oom_kill", 0)
    if oom > 0:
        limit = prepared.enforced.get("memory_limit_bytes")
        times = "" if oom == 1 else f", {oom} processes killed"
        if limit is None:
            return f"out of memory (oom kill{times}; the system or a parent cgroup ran out)"
        return f"memory limit {_fmt_bytes(limit)} hit (oom kill{times})"
    refused = now.get("pids_refused", 0) - base.get("pids_refused", 0)
    if refused > 0 and "pids_max" in prepared.enforced:
        return (f"task limit {prepared.enforced['pids_max']} reached "
                f"({refused} fork{'s' if refused != 1 else ''} refused)")
    return None


# -- stopping and removing ----------------------------------------------------------------------


def kill_all(prepared: Prepared, sig: int) -> None:
    """Send ``sig`` to every process in the attempt's cgroups, wherever its process group is."""
    pids: set[int] = set()
    for version, d in dict.fromkeys(prepared.groups.values()):
        if version == 2 and sig == signal.SIGKILL and os.path.exists(f"{d}/cgroup.kill"):
            with contextlib.suppress(OSError):
                _write(f"{d}/cgroup.kill", "1")  # atomic: no fork can slip past it
        pids |= _pids(d)
    pids.discard(os.getpid())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def cleanup(prepared: Prepared) -> None:
    """Kill whatever is left in the attempt's cgroups and remove them. Idempotent; never raises.

    Counters are saved first, so :func:`usage` and :func:`exhausted` still answer afterwards.
    A process the kernel cannot kill within :data:`CLEANUP_WAIT_S` (stuck in I/O) keeps its
    directory; the next attempt has another name.
    """
    try:
        p = prepared
        if not p.groups or (p.final is not None and not any(map(os.path.isdir, p.dirs))):
            return
        if p.final is None:
            p.final = _counters(p)
        deadline = time.monotonic() + CLEANUP_WAIT_S
        while True:
            if all(_rmtree(d) for d in p.dirs):
                return
            # Still busy: processes are in it. SIGKILL them and poll until they are gone.
            kill_all(p, signal.SIGKILL)
            if time.monotonic() >= deadline:
                return
            time.sleep(0.005)
    except Exception:  # cleanup must never fail the attempt it tidies up after
        return


def from_enforced(enforced: Mapping[str, Any]) -> Prepared:
    """Rebuild enough of an attempt from its ``started`` event to kill_all() and cleanup() it.

    For recovery after a crash: the interrupted attempt's cgroup still names every process it
    left, even ones that changed process group. Only directories that sit in an ``sp`` parent
    under a mounted cgroup hierarchy are accepted, so a stray value cannot aim kills elsewhere.
    """
    p = Prepared(name="")
    groups = enforced.get("cgroups")
    if not isinstance(groups, Mapping):
        return p
    mounts = {h.mount: h.version for h in _hierarchies().values()}
    for role, d in groups.items():
        if role not in _ROLES or not isinstance(d, str):
            continue
        d = os.path.normpath(d)
        version = next((v for m, v in mounts.items() if d.startswith(m + "/")), None)
        if version is None or os.path.basename(os.path.dirname(d)) != _PARENT:
            continue
        p.groups[role] = (version, d)
        p.name = os.path.basename(d)
    return p
