"""The broker acts on what it checked: a sandboxed action that races its root worker (swapping
its own folders for symlinks, planting symlinks and hard links where the worker writes or
reads) gets nothing outside its policy read, served, written or deleted; and a blob is served
only to the action (or plan) that stored it.

Real kernel sandbox, real worker, real files: skipped only where the kernel has no Landlock."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from sp.commands import actions, policies
from sp.commands.home import Home
from sp.ledger.store import EventStore
from sp.runner.worker import Worker
from sp.security import policy as pol
from sp.security import sandbox

REPO = Path(__file__).resolve().parent.parent
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
needs_landlock = pytest.mark.skipif(sandbox.probe().landlock_abi < 1,
                                    reason="the kernel has no Landlock")

# The action's program: folders `a` and `b` of its TMPDIR are swapped for symlinks to the two
# forbidden folders (and `.sp-broker` itself, now and then, for one to the canary folder) in
# tight loops (child processes), while the main process asks the worker to store a file inside
# them as a blob and to fetch it back, with a symlink to the victim planted where the worker
# writes the copy.
RACER = r"""
import os, random, sys, time
from sp.runner import broker
broker.CALL_TIMEOUT_S = 3.0
tmp, bdir = os.environ["TMPDIR"], os.environ["SP_BROKER"]
secret_dir, canary_dir, victim, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
try:
    open(os.path.join(canary_dir, "canary.txt"), "rb").read()
    print("CANARY-READABLE", flush=True)
except OSError:
    pass
stop = time.monotonic() + seconds
def swap(name, target, pause):
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    while time.monotonic() < stop:
        try:
            os.rename(d, d + ".real")
            os.symlink(target, d)
            os.unlink(d)
            os.rename(d + ".real", d)
        except OSError:
            pass
        # real for a moment (the worker's check passes; the CPUs are shared with the worker)
        time.sleep(pause or random.random() / 1000)
pairs = [("a", secret_dir, "secret"), ("b", canary_dir, "canary.txt")]
children = []
for args in [(n, t, 0) for n, t, _ in pairs] + [(".sp-broker", canary_dir, 0.05)]:
    pid = os.fork()  # processes, not threads: they race the worker, not this one's GIL
    if pid == 0:
        try:
            swap(*args)
        finally:
            os._exit(0)
    children.append(pid)
puts = gets = i = 0
why = {}
while time.monotonic() < stop:
    i += 1
    for name, _, fname in pairs:
        path = os.path.join(tmp, name, fname)
        try:
            with open(path, "wb") as f:
                f.write(b"mine %d\n" % i)
            sha = broker.call("put_blob", path=path)
        except (OSError, broker.BrokerError) as e:
            k = type(e).__name__ + str(e)[-30:]
            why[k] = why.get(k, 0) + 1
            continue
        puts += 1
        try:
            os.symlink(victim, os.path.join(bdir, "blob-" + sha))
        except OSError:
            pass
        try:
            copy = broker.call("get_blob", sha=sha)
            with open(copy, "rb") as f:
                data = f.read()
            os.unlink(copy)
        except (OSError, broker.BrokerError):
            continue
        gets += 1
        if not data.startswith(b"mine "):
            print("SERVED", data[:20], flush=True)
for pid in children:
    os.waitpid(pid, 0)
print("PUTS", puts, "GETS", gets, sorted(why.items(), key=lambda x: -x[1])[:5], flush=True)
"""


def _forbidden(tmp_path: Path) -> dict[str, Path]:
    secret_dir = tmp_path / "rootonly"
    secret_dir.mkdir(mode=0o700)
    (secret_dir / "secret").write_bytes(b"root only secret\n")
    (secret_dir / "secret").chmod(0o600)
    canary_dir = tmp_path / "canary"
    canary_dir.mkdir()
    (canary_dir / "canary.txt").write_bytes(b"canary, must survive\n")
    (canary_dir / "victim.txt").write_bytes(b"victim, must not be overwritten\n")
    return {"secret_dir": secret_dir, "canary_dir": canary_dir}


def _policy(store: EventStore, out: Path, *forbidden: Path) -> None:
    policies.set_policy(store, "lab", pol.decode({
        "allowed": [{"write": [str(out)]}],
        "denied": [{"read": [str(p) for p in forbidden]}]}))


def _run(store: EventStore, home: Home, argv: list[str], **kw: Any) -> str:
    (aid,) = actions.submit(store, [actions.SubmitSpec(
        command=argv, agent="lab", cwd=str(REPO), env={"PYTHONPATH": str(REPO)}, **kw)])
    Worker(store, home).run(until_idle=True, wait_retries=False)
    return aid


def _state(store: EventStore, aid: str) -> str:
    row = store.query_one("SELECT state FROM actions WHERE action_id = ?", (aid,))
    assert row is not None
    return str(row[0])


def _race(store: EventStore, home: Home, tmp_path: Path, seconds: float) -> None:
    f = _forbidden(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    _policy(store, out, f["secret_dir"], f["canary_dir"])
    before = {p: p.read_bytes() for d in f.values() for p in d.iterdir()}
    aid = _run(store, home, [PY, "-c", RACER, str(f["secret_dir"]), str(f["canary_dir"]),
                             str(f["canary_dir"] / "victim.txt"), str(seconds)])
    log = home.log_path(aid).read_text(errors="replace")
    assert _state(store, aid) == "completed", log
    assert "CANARY-READABLE" not in log  # the folders really are outside the policy
    broken = []
    # nothing outside the policy deleted, overwritten or added to
    after = {p: p.read_bytes() for d in f.values() for p in d.iterdir()}
    broken += [f"{p.name} deleted" for p in before if p not in after]
    broken += [f"{p.name} written: {after[p][:20]!r}" for p in before
               if p in after and after[p] != before[p]]
    broken += [f"{p.name} added" for p in after if p not in before]
    # nothing outside the policy read into the blob store or served back
    blobs = home.root / "blobs"
    stored = [p.read_bytes() for p in blobs.iterdir()] if blobs.exists() else []
    broken += [f"{p.name} stored as a blob" for p, data in before.items()
               if any(data in blob for blob in stored)]
    broken += [f"{p.name} served" for p, data in before.items()
               if "SERVED " + repr(data[:20]) in log or data.decode() in log]
    assert not broken, broken
    # and the race really ran: the worker served the action many times meanwhile
    puts = int(log.split("PUTS ")[1].split()[0])
    assert puts > 20, log


@needs_landlock
def test_a_short_race_reads_serves_and_deletes_nothing_outside_the_policy(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    _race(store, home, tmp_path, 3.0)


@needs_landlock
@pytest.mark.slow
def test_a_20s_race_reads_serves_and_deletes_nothing_outside_the_policy(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    _race(store, home, tmp_path, 20.0)


# Stores (put_blob) or fetches (get_blob) through the worker, as argv says; prints the outcome.
BLOBBER = r"""
import os, sys
from sp.runner import broker
op, arg = sys.argv[1], sys.argv[2]
try:
    if op == "put":
        path = os.path.join(os.environ["TMPDIR"], "mine")
        with open(path, "wb") as f:
            f.write(arg.encode())
        print("STORED", broker.call("put_blob", path=path), flush=True)
    else:
        copy = broker.call("get_blob", sha=arg)
        with open(copy, "rb") as f:
            print("FETCHED", f.read().decode(), flush=True)
except broker.BrokerError as e:
    print("REFUSED", e, flush=True)
"""


@needs_landlock
def test_a_blob_is_served_only_to_the_action_or_plan_that_stored_it(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _policy(store, out)
    first = _run(store, home, [PY, "-c", BLOBBER, "put", "private bytes"])
    log = home.log_path(first).read_text()
    assert "STORED " in log, log
    sha = log.split("STORED ")[1].split()[0]
    owners = store.query("SELECT action_id FROM blob_owners WHERE sha256 = ?", (sha,))
    assert [tuple(r) for r in owners] == [(first,)]
    # another action of the same agent, knowing the hash, is refused
    other = _run(store, home, [PY, "-c", BLOBBER, "get", sha])
    log = home.log_path(other).read_text()
    assert "FETCHED" not in log and "REFUSED get_blob" in log and "not stored by" in log, log
    # the action that compensates the first one (its rollback) is served
    (undo,) = actions.submit(store, [actions.SubmitSpec(
        command=[PY, "-c", BLOBBER, "get", sha], agent="lab", cwd=str(REPO),
        env={"PYTHONPATH": str(REPO)}, payload={"compensates": first})])
    Worker(store, home).run(until_idle=True, wait_retries=False)
    assert "FETCHED private bytes" in home.log_path(undo).read_text()
    # ownership is a projection of the log: a rebuild gives the same rows
    from sp.projections import engine

    engine.rebuild(store)
    again = store.query("SELECT action_id FROM blob_owners WHERE sha256 = ?", (sha,))
    assert [tuple(r) for r in again] == [(first,)]


@needs_landlock
def test_a_hard_link_or_a_symlinked_folder_is_refused_without_a_race(
        store: EventStore, home: Home, tmp_path: Path) -> None:
    f = _forbidden(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    _policy(store, out, f["canary_dir"])
    code = (
        "import os\nfrom sp.runner import broker\ntmp = os.environ['TMPDIR']\n"
        "open(tmp + '/mine', 'w').write('x')\nos.link(tmp + '/mine', tmp + '/second')\n"
        f"os.symlink({str(f['canary_dir'])!r}, tmp + '/away')\n"
        f"for src in ('/etc/shadow', '/etc/passwd', {str(f['canary_dir'] / 'canary.txt')!r}):\n"
        "    try:\n        os.link(src, tmp + '/linked')\n        print('LINKED', src)\n"
        "        os.unlink(tmp + '/linked')\n"
        "    except OSError as e:\n        print('NO-LINK', src, e.errno)\n"
        "for path in (tmp + '/mine', tmp + '/away/canary.txt', tmp + '/../x'):\n"
        "    try:\n        broker.call('put_blob', path=path)\n        print('ALLOWED', path)\n"
        "    except broker.BrokerError as e:\n        print('REFUSED', e)\n")
    aid = _run(store, home, [PY, "-c", code])
    log = home.log_path(aid).read_text()
    assert _state(store, aid) == "completed", log
    assert "ALLOWED" not in log, log
    # Landlock refuses hard links from outside the writable folders (REFER), so a root-only
    # file cannot get a second name in the action's folder; the broker refuses one anyway.
    assert "LINKED" not in log, log
    assert "2 hard links" in log and "symlink" in log and "not a plain path" in log, log
    assert (f["canary_dir"] / "canary.txt").read_bytes() == b"canary, must survive\n"
