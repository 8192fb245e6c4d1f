"""host.limits against the real kernel: real cgroups, real processes, no mocks.

A test skips, saying why, only where this kernel lacks the mechanism (no writable cgroup of that
controller); every other failure is a failure.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sp.agents.config import Resources
from sp.agents.units import Percent, Size
from sp.host import limits
from sp.host.limits import LimitsUnavailableError, Prepared
from sp.ledger.errors import UsageError

PY = sys.executable
MiB = 1 << 20

Prepare = Callable[..., Prepared]


@pytest.fixture
def prepare() -> Iterator[Prepare]:
    """limits.prepare with a unique attempt name, cleaned up after the test whatever happens."""
    made: list[Prepared] = []

    def _prepare(resources: Resources | None, *, required: bool = False,
                 cgroups: bool = True) -> Prepared:
        p = limits.prepare(resources, f"t{uuid.uuid4().hex[:12]}-1", required=required,
                           cgroups=cgroups)
        made.append(p)
        return p

    yield _prepare
    for p in made:
        limits.cleanup(p)


def need(p: Prepared, key: str, what: str) -> None:
    """Skip when this machine cannot enforce ``what``, quoting the module's own reason."""
    if key not in p.enforced:
        why = next((m for m in p.missing if m.startswith(what)), "not enforced")
        pytest.skip(f"no writable cgroup for {what} here: {why}")


def run(p: Prepared, argv: list[str]) -> tuple[int, resource.struct_rusage, str]:
    """Spawn the wrapped argv as the worker does (own session, wait4), return code/rusage/output."""
    proc = subprocess.Popen(limits.wrap(p, argv), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    proc.stdout.close()
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen quiet
    return proc.returncode, rusage, out


def read(path: str) -> str:
    return Path(path).read_text().strip()


def gone(pid: int, within_s: float = 5.0) -> bool:
    """Poll the process table (bounded) until ``pid`` is dead: absent or a zombie."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            stat = read(f"/proc/{pid}/stat")
        except FileNotFoundError:
            return True
        if stat[stat.rindex(")") + 2] == "Z":
            return True
        time.sleep(0.01)
    return False


ALL = Resources(cpu_quota=Percent(50), memory_limit=Size(64 * MiB), tasks_max=100, nice=10)

# A child that leaves a grandchild behind in a new session (so killpg would miss it) and
# prints the grandchild's pid. The grandchild blocks in sleep; cleanup/kill_all end it.
ESCAPE = """
import os
pid = os.fork()
if pid == 0:
    os.setsid()
    fd = os.open(os.devnull, os.O_RDWR)
    for n in (0, 1, 2):
        os.dup2(fd, n)
    os.execvp("sleep", ["sleep", "60"])
print(pid)
"""


# -- no limits: nothing happens -----------------------------------------------------------------


def test_nothing_requested_means_argv_unchanged_and_nothing_created(prepare: Prepare) -> None:
    argv = ["true", "x"]
    for resources in (None, Resources()):
        p = prepare(resources)
        assert limits.wrap(p, argv) is argv
        assert p.enforced == {} and p.missing == [] and p.dirs == []
        assert limits.exhausted(p, -9) is None
        limits.cleanup(p)


def test_invalid_values_are_input_errors(prepare: Prepare) -> None:
    with pytest.raises(UsageError, match=r"resources\.nice: expected -20\.\.19, got 40"):
        prepare(Resources(nice=40))
    with pytest.raises(UsageError, match="io_weight"):
        prepare(Resources(io_weight=0))


# -- what is enforced is what the kernel says ---------------------------------------------------


def test_enforced_equals_the_cgroup_files(prepare: Prepare) -> None:
    p = prepare(ALL)
    need(p, "memory_limit_bytes", "memory_limit")
    need(p, "pids_max", "tasks_max")
    need(p, "cpu_quota_pct", "cpu_quota")
    groups = p.enforced["cgroups"]
    assert p.enforced["cgroup"] == groups["memory"]
    for d in groups.values():
        assert os.path.isdir(d) and d.split("/")[-2] == "sp" and d.endswith(p.name)
    mem, pids, cpu = groups["memory"], groups["pids"], groups["cpu"]
    assert p.enforced["memory_limit_bytes"] == int(read(f"{mem}/memory.limit_in_bytes"))
    assert p.enforced["memory_limit_bytes"] == 64 * MiB
    if "memory_swap_limit_bytes" in p.enforced:
        assert p.enforced["memory_swap_limit_bytes"] == int(
            read(f"{mem}/memory.memsw.limit_in_bytes"))
    assert p.enforced["pids_max"] == int(read(f"{pids}/pids.max")) == 100
    quota, period = int(read(f"{cpu}/cpu.cfs_quota_us")), int(read(f"{cpu}/cpu.cfs_period_us"))
    assert (p.enforced["cpu_quota_us"], p.enforced["cpu_period_us"]) == (quota, period)
    assert p.enforced["cpu_quota_pct"] == 50.0 == quota * 100 / period
    assert p.enforced["nice"] == 10
    assert p.missing == []


def test_required_and_impossible_is_refused_and_leaves_nothing(prepare: Prepare) -> None:
    # 0.5% of a 100 ms period is 500 us, below the kernel's 1 ms minimum CFS quota: EINVAL.
    impossible = Resources(cpu_quota=Percent(0.5), tasks_max=10)
    probe = prepare(impossible)
    if "cgroups" not in probe.enforced or "cpu" not in probe.enforced["cgroups"]:
        pytest.skip(f"no writable cpu cgroup here: {probe.missing}")
    assert "cpu_quota_pct" not in probe.enforced
    assert any(m.startswith("cpu_quota: the kernel refused 0.5%") for m in probe.missing)
    assert probe.enforced.get("pids_max") == 10  # the rest is still enforced, best effort

    refused = f"t{uuid.uuid4().hex[:12]}-1"
    with pytest.raises(LimitsUnavailableError, match="cpu_quota") as err:
        limits.prepare(impossible, refused, required=True)
    assert err.value.exit_code == 2
    assert "Invalid argument" in str(err.value)
    for d in probe.dirs:  # the refused attempt's directories sit beside the probe's
        assert not os.path.exists(os.path.join(os.path.dirname(d), refused))


def test_io_weight_is_not_claimed_without_bfq(prepare: Prepare) -> None:
    if any("[bfq]" in s.read_text() for s in Path("/sys/block").glob("*/queue/scheduler")):
        pytest.skip("a disk here uses bfq, so the weight would be honoured")
    p = prepare(Resources(io_weight=50))
    assert "io_weight" not in p.enforced
    assert len(p.missing) == 1 and p.missing[0].startswith("io_weight: ")
    with pytest.raises(LimitsUnavailableError, match="io_weight"):
        prepare(Resources(io_weight=50), required=True)


# -- the limits bite ----------------------------------------------------------------------------


@pytest.mark.slow
def test_memory_hog_is_oom_killed_and_reported(prepare: Prepare) -> None:
    p = prepare(Resources(memory_limit=Size(64 * MiB)))
    need(p, "memory_limit_bytes", "memory_limit")
    code, rusage, out = run(p, [PY, "-c", "b = b'x' * (200 << 20); print('survived')"])
    assert code == -signal.SIGKILL, out
    assert "survived" not in out
    assert limits.exhausted(p, code) == "memory limit 64.0 MiB hit (oom kill)"
    peak = limits.usage(p, rusage)["peak_rss_bytes"]
    assert 32 * MiB < peak <= 64 * MiB  # the cgroup's high-water mark, held at the limit

    # The next step in the same attempt starts from a clean slate: an unrelated failure is
    # not blamed on the earlier OOM kill.
    code, _, _ = run(p, ["sh", "-c", "exit 3"])
    assert code == 3 and limits.exhausted(p, code) is None


@pytest.mark.slow
def test_pids_max_stops_a_fork_loop(prepare: Prepare) -> None:
    p = prepare(Resources(tasks_max=5))
    need(p, "pids_max", "tasks_max")
    # 20 forks, bounded; each child waits on a pipe so they are all alive at once.
    forker = """
import os, sys
r, w = os.pipe()
kids, refused = [], 0
for _ in range(20):
    try:
        pid = os.fork()
    except BlockingIOError:
        refused += 1
        continue
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    kids.append(pid)
os.close(w)
for k in kids:
    os.waitpid(k, 0)
print(len(kids), refused)
sys.exit(3 if refused else 0)
"""
    code, _, out = run(p, [PY, "-c", forker])
    assert out.split() == ["4", "16"]  # 5 tasks: the parent and four children
    assert code == 3
    assert limits.exhausted(p, code) == "task limit 5 reached (16 forks refused)"
    assert limits.exhausted(p, 0) is None  # a step that coped with EAGAIN did not die of it


@pytest.mark.parametrize("cgroups", [False, True], ids=["nice-only", "with-cgroups"])
def test_nice_is_visible_in_the_childs_proc_stat(prepare: Prepare, cgroups: bool) -> None:
    if os.getpriority(os.PRIO_PROCESS, 0) > 10 and os.geteuid() != 0:
        pytest.skip("this test process is niced above 10 and may not lower it")
    p = prepare(Resources(nice=10, tasks_max=50 if cgroups else None), cgroups=cgroups)
    assert p.enforced["nice"] == 10
    # $$ is the very pid the worker spawned: the exec chain keeps it.
    code, _, out = run(p, ["/bin/sh", "-c", "echo $$; cat /proc/$$/stat /proc/$$/cgroup"])
    assert code == 0, out
    pid_line, stat, *cgroup_lines = out.splitlines()
    assert stat.split(") ", 1)[0] == f"{pid_line} (sh"
    fields = stat[stat.rindex(")") + 2 :].split()
    assert int(fields[16]) == 10  # field 19 of /proc/PID/stat: nice
    if cgroups:
        need(p, "pids_max", "tasks_max")
        pids_dir = p.enforced["cgroups"]["pids"]
        assert any(line.split(":")[1] == "pids" and pids_dir.endswith(line.split(":")[2])
                   for line in cgroup_lines), cgroup_lines


@pytest.mark.slow
def test_cpu_quota_throttles_a_busy_loop(prepare: Prepare) -> None:
    p = prepare(Resources(cpu_quota=Percent(20)))
    need(p, "cpu_quota_pct", "cpu_quota")
    assert p.enforced["cpu_quota_pct"] == 20.0
    # Burn 100 ms of CPU and report the wall time it took: at 20% that is ~0.5 s (the first
    # period's quota is free), unthrottled ~0.1 s. Other load only makes it slower.
    busy = ("import time\nw = time.monotonic()\n"
            "while time.process_time() < 0.1: pass\nprint(time.monotonic() - w)")
    code, rusage, out = run(p, [PY, "-c", busy])
    assert code == 0, out
    assert float(out) >= 0.3
    stat = dict(line.split() for line in read(f"{p.enforced['cgroups']['cpu']}/cpu.stat")
                .splitlines())
    assert int(stat["nr_throttled"]) > 0
    used = limits.usage(p, rusage)
    assert 100 <= used["cpu_user_ms"] + used["cpu_sys_ms"] < 250, used


def test_rlimit_as_is_the_fallback_without_a_memory_cgroup(prepare: Prepare) -> None:
    p = prepare(Resources(memory_limit=Size(256 * MiB)), cgroups=False)
    assert p.enforced == {"rlimit_as_bytes": 256 * MiB}
    assert len(p.missing) == 1 and p.missing[0].startswith("memory_limit: no memory cgroup")
    code, _, out = run(p, ["/bin/sh", "-c", "cat /proc/$$/limits"])
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("Max address space"))
    assert line.split()[3:5] == [str(256 * MiB), str(256 * MiB)]  # soft and hard
    # It bites (as ENOMEM, not a kill) but is not claimed as the memory limit.
    code, _, out = run(p, [PY, "-c", "b = b'x' * (400 << 20)"])
    assert code == 1 and "MemoryError" in out
    with pytest.raises(LimitsUnavailableError, match="memory_limit"):
        prepare(Resources(memory_limit=Size(256 * MiB)), required=True, cgroups=False)


# -- accounting ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_usage_is_plausible(prepare: Prepare, tmp_path: Path) -> None:
    p = prepare(Resources(memory_limit=Size(512 * MiB), tasks_max=100))
    need(p, "memory_limit_bytes", "memory_limit")
    target = tmp_path / "out.bin"
    work = f"""
import os, time
b = b'x' * (80 << 20)
while time.process_time() < 0.15: pass
with open({str(target)!r}, 'wb') as f:
    f.write(os.urandom(4 << 20)); f.flush(); os.fsync(f.fileno())
"""
    code, rusage, out = run(p, [PY, "-c", work])
    assert code == 0, out
    used = limits.usage(p, rusage)
    assert set(used) == {"cpu_user_ms", "cpu_sys_ms", "peak_rss_bytes", "io_read_bytes",
                         "io_write_bytes"}
    assert used["cpu_user_ms"] + used["cpu_sys_ms"] >= 150
    assert used["cpu_user_ms"] > 0
    assert used["peak_rss_bytes"] > 80 * MiB
    assert used["io_write_bytes"] >= 4 * MiB
    assert limits.exhausted(p, code) is None
    # rusage alone (no cgroup): the same keys, from wait4's figures.
    bare = limits.usage(Prepared("x"), rusage)
    assert bare["cpu_user_ms"] == int(rusage.ru_utime * 1000)
    assert bare["peak_rss_bytes"] == rusage.ru_maxrss * 1024
    assert limits.usage(Prepared("x"), None) == dict.fromkeys(used, 0)


# -- stopping and cleaning up -------------------------------------------------------------------


def test_kill_all_reaches_processes_that_left_the_group(prepare: Prepare) -> None:
    p = prepare(Resources(tasks_max=20))
    need(p, "pids_max", "tasks_max")
    code, _, out = run(p, [PY, "-c", ESCAPE])
    escapee = int(out)
    assert code == 0
    assert os.getsid(escapee) == escapee  # its own session: killpg of the child would miss it
    assert str(escapee) in read(f"{p.enforced['cgroups']['pids']}/cgroup.procs").split()
    limits.kill_all(p, signal.SIGKILL)
    assert gone(escapee)


def test_cleanup_kills_leftovers_removes_the_directories_and_is_idempotent(
        prepare: Prepare) -> None:
    p = prepare(ALL)
    if not p.dirs:
        pytest.skip(f"no writable cgroup here: {p.missing}")
    code, rusage, out = run(p, [PY, "-c", ESCAPE])
    assert code == 0
    escapee = int(out)
    before = limits.usage(p, rusage)
    limits.cleanup(p)
    assert gone(escapee)
    assert [d for d in p.dirs if os.path.exists(d)] == []
    limits.cleanup(p)  # again: nothing to do, no error
    # The counters were saved on the way out: usage and exhausted still answer.
    after = limits.usage(p, rusage)
    assert after["peak_rss_bytes"] == before["peak_rss_bytes"] > 0
    assert limits.exhausted(p, 1) is None


def test_the_shim_fails_closed_when_it_cannot_join(prepare: Prepare) -> None:
    p = prepare(Resources(tasks_max=10))
    need(p, "pids_max", "tasks_max")
    limits.cleanup(p)  # the cgroup is gone: joining it must fail, and the program not run
    code, _, out = run(p, ["sh", "-c", "echo ran"])
    assert code == limits.SHIM_EXIT
    assert "ran" not in out and "not running unbounded" in out


def test_from_enforced_finds_a_crashed_attempts_processes(prepare: Prepare) -> None:
    p = prepare(Resources(tasks_max=20))
    need(p, "pids_max", "tasks_max")
    code, _, out = run(p, [PY, "-c", ESCAPE])
    assert code == 0
    escapee = int(out)
    # As after a crash: only the started event's record of the attempt is left.
    again = limits.from_enforced(p.enforced)
    assert again.dirs == p.dirs
    limits.cleanup(again)
    assert gone(escapee) and not any(os.path.exists(d) for d in p.dirs)
    # Directories outside an sp parent (or outside any cgroup mount) are never adopted.
    root = os.path.dirname(os.path.dirname(p.enforced["cgroups"]["pids"]))
    assert limits.from_enforced({"cgroups": {"pids": root}}).dirs == []
    assert limits.from_enforced({"cgroups": {"pids": "/tmp/sp/x"}}).dirs == []
    assert limits.from_enforced({}).dirs == []
