"""The exec shim that confines one action's program: ``python -I -m sp.security.enter CFG -- ARGV``.

``CFG`` is the JSON ``enforced`` dict of :func:`sp.security.sandbox.plan` plus ``denials_path`` (it
may be split over several arguments, joined back before ``--``). Three processes:

- **outer** (the pid the worker spawned; it stays in the worker's process group): joins the
  audit multicast group when denial records were promised, unshares the namespaces (adding a
  user namespace when not root), forks *init*, ignores the signals the worker sends to the whole
  group (the program receives those itself), waits, writes the Landlock denials of its domain to
  ``denials_path`` and stderr, and exits exactly as the program did (re-raising its signal);
- **init** (pid 1 of the new pid namespace): private mounts, a fresh ``/proc``, the hostname,
  ``lo`` up, the Landlock ruleset, ``no_new_privs``, ``landlock_restrict_self`` (so the domain's
  creator is init's pid, which outer knows), then forks and ``execvp``\\ s the program, forwards
  SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to it, reaps everything, and exits with the
  program's status once it ends (the kernel then kills whatever it left in the namespace);
- **program**: the action's argv, with the signal dispositions the worker gave outer.

A signal the worker sends to the whole group reaches the program directly and again through
init's forwarding, so a program handling it may see it twice.

Anything promised that cannot be applied: one line ``sp: sandbox: cannot apply <what>: <why>``
and exit 125, before the program runs. Imports stay stdlib + ctypes for startup time.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import sys
from typing import Any, NoReturn

from sp.security import execmounts, identity, landlock, linux, seccomp

SANDBOX_EXIT = 125
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
# Also ignored by outer (and init), restored for the program: a program's ``kill 0`` reaches
# the whole group, and where Landlock signal scoping is unavailable these would end the shim.
SHIELDED = (signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGIO)
_MAX_STDERR_LINES = 50


def _fail(what: str, why: object) -> NoReturn:
    os.write(2, f"sp: sandbox: cannot apply {what}: {why}\n".encode())
    os._exit(SANDBOX_EXIT)


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def _which(name: str) -> str | None:
    if "/" in name:
        return name
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        p = os.path.join(d or ".", name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def _ruleset(cfg: dict[str, Any], program: str | None) -> landlock.Ruleset | None:
    abi = int(cfg.get("landlock_abi") or 0)
    fs, tcp, scoped = cfg.get("fs"), cfg.get("tcp"), cfg.get("scoped") or []
    if not abi or not (fs or tcp or scoped):
        return None
    handled = landlock.handled_fs(abi) if fs else 0
    try:
        rs = landlock.Ruleset(abi, handled, landlock.NET_CONNECT_TCP if tcp else 0,
                              landlock.SCOPE_SIGNAL if "signal" in scoped else 0)
    except OSError as e:
        _fail(f"Landlock ABI {abi}", _why(e))
    if fs:
        read_rights = landlock.READ | (landlock.EXECUTE if fs["execute"] is None else 0)
        real = os.path.realpath  # deny carving compares paths: symlinks must not dodge it
        grants = [(real(p), read_rights) for p in fs["read"]]
        grants += [(real(p), landlock.WRITE) for p in fs["write"]]
        grants += [(real(p), landlock.READ_FILE | landlock.WRITE_FILE | landlock.TRUNCATE
                    | landlock.IOCTL_DEV) for p in fs.get("devices", [])]
        if fs["execute"] is not None:
            grants += [(real(p), landlock.EXEC)
                       for p in [*fs["execute"], *landlock.loaders(program)]]
        denies = [(real(p), landlock.READ | landlock.EXECUTE) for p in fs["deny_read"]]
        denies += [(real(p), landlock.WRITE) for p in fs["deny_write"]]
        denies += [(real(p), landlock.EXECUTE) for p in fs["deny_execute"]]
        for path, rights in landlock.fs_rules(grants, denies, handled).items():
            try:
                rs.add_path(path, rights)
            except OSError as e:
                if e.errno in (2, 20):  # vanished since it was listed: nothing left to allow
                    continue
                _fail(f"filesystem rule for {path}", _why(e))
    if tcp:
        deny = set(tcp["deny"])
        ports = tcp["connect"] if tcp["connect"] is not None else range(65536)
        try:
            rs.add_ports([p for p in ports if p not in deny], landlock.NET_CONNECT_TCP)
        except OSError as e:
            _fail("tcp port rules", _why(e))
    return rs


def _exec_mounts(cfg: dict[str, Any], argv: list[str]) -> None:
    """Only the allowed programs (and the libraries) executable (:mod:`sp.security.execmounts`)."""
    plan = cfg.get("exec_mounts")
    if not plan:
        return
    program = _which(argv[0])
    try:
        execmounts.apply(plan["noexec"], [*plan["executable"], *landlock.loaders(program)],
                         plan["writable"])
    except OSError as e:
        _fail(f"noexec mounts ({e.filename or 'mount'})", _why(e))


def _memfd_noexec(cfg: dict[str, Any]) -> bool:
    """Set ``vm.memfd_noexec=2`` in our pid namespace (memfds cannot be executable, and no
    nested namespace can lower it); True when it could not be, so that seccomp refuses
    memfds created without ``MFD_NOEXEC_SEAL`` instead."""
    if not cfg.get("memfd_exec"):
        return False
    if "pid" not in (cfg.get("namespaces") or []):
        return True
    try:
        with open("/proc/sys/vm/memfd_noexec", "w") as f:
            f.write("2")
        return False
    except OSError:  # an older kernel, or not root in the initial user namespace
        return True


def _seccomp(cfg: dict[str, Any], memfd_sealed: bool) -> None:
    """Last, after ``no_new_privs``: the filter binds init, the program and its children."""
    unix = bool(cfg.get("unix_sockets"))
    exec_fd = bool(cfg.get("exec_fd"))
    if not (unix or exec_fd or memfd_sealed):
        return
    try:
        seccomp.install(unix=unix, exec_fd=exec_fd, memfd_sealed=memfd_sealed)
    except OSError as e:
        _fail("seccomp filter", _why(e))


def _init(cfg: dict[str, Any], argv: list[str], status_w: int,
          dispositions: dict[int, Any]) -> NoReturn:
    namespaces = cfg.get("namespaces") or []
    try:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError as e:
        _fail("parent-death signal", _why(e))
    if "mnt" in namespaces:
        try:
            linux.mount("none", "/", None, linux.MS_REC | linux.MS_PRIVATE)
            if "pid" in namespaces:
                linux.mount("proc", "/proc", "proc",
                            linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
        except OSError as e:
            _fail("mount namespace", _why(e))
        _exec_mounts(cfg, argv)
    memfd_sealed = _memfd_noexec(cfg)
    if "uts" in namespaces:
        try:
            linux.sethostname(cfg.get("hostname") or "sp-sandbox")
        except OSError as e:
            _fail("hostname", _why(e))
    if "net" in namespaces:
        try:
            linux.loopback_up()
        except OSError as e:
            _fail("network namespace (lo up)", _why(e))
    for name in cfg.get("dropped_capabilities") or []:
        number = linux.CAPABILITIES.get(name)
        if number is None:
            _fail("capability bounding set", f"unknown capability {name}")
        try:
            linux.prctl(linux.PR_CAPBSET_DROP, number)
        except OSError as e:
            if e.errno != errno.EINVAL:  # EINVAL: this kernel does not know it (older)
                _fail(f"dropping {name}", _why(e))
    program = _which(argv[0])
    rs = _ruleset(cfg, program)
    try:
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    except OSError as e:
        _fail("no_new_privs", _why(e))
    if rs is not None:
        flags = landlock.RESTRICT_SELF_LOG_NEW_EXEC_ON if cfg.get("denial_log") else 0
        try:
            rs.restrict_self(flags)
        except OSError as e:
            _fail("landlock_restrict_self", _why(e))
        rs.close()
    _seccomp(cfg, memfd_sealed)

    # Block the forwarded signals across the fork so none is lost in between: the program
    # gets its dispositions back before unblocking, init installs its forwarders first.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    child = os.fork()
    if child == 0:
        for sig, handler in dispositions.items():
            signal.signal(sig, handler)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; programs must not
            signal.signal(sig, signal.SIG_DFL)
        try:  # last before exec: the user switch and capability drops end what root can do
            identity.apply(cfg)
        except OSError as e:
            _fail(str(e.filename or "identity"), _why(e))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        try:
            os.execvp(argv[0], argv)
        except OSError as e:
            os.write(2, f"sp: sandbox: cannot run {argv[0]}: {_why(e)}\n".encode())
            os._exit(127 if e.errno == 2 else 126)

    def forward(sig: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, sig)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(SANDBOX_EXIT)
        if pid == child:
            break
    while True:  # reap what is already dead; the rest dies with the namespace
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    if os.WIFSIGNALED(status):
        os.write(status_w, f"s {os.WTERMSIG(status)}".encode())
        os._exit(128 + os.WTERMSIG(status))
    os.write(status_w, f"x {os.waitstatus_to_exitcode(status)}".encode())
    os._exit(os.waitstatus_to_exitcode(status))


def _report(cfg: dict[str, Any], records: list[dict[str, Any]], dropped: int) -> None:
    path = cfg.get("denials_path")
    if path:
        try:
            with open(path, "w") as f:
                for rec in records:
                    f.write(json.dumps(rec) + "\n")
        except OSError as e:
            with contextlib.suppress(OSError):
                os.write(2, f"sp: sandbox: cannot write denials to {path}: {_why(e)}\n".encode())
    counts: dict[str, int] = {}
    for rec in records:
        target = rec.get("path", f"port {rec['port']}" if "port" in rec else rec.get("pid", ""))
        line = f"{rec['access']} {target}".rstrip()
        counts[line] = counts.get(line, 0) + 1
    lines = [f"sp: sandbox denied {k}" + (f" ({n} times)" if n > 1 else "")
             for k, n in counts.items()]
    if len(lines) > _MAX_STDERR_LINES:
        lines = [*lines[:_MAX_STDERR_LINES], f"sp: sandbox: {len(lines) - _MAX_STDERR_LINES} more"
                 " kinds of denial" + (f" in {path}" if path else "")]
    if dropped:
        lines.append(f"sp: sandbox: {dropped} further denials not recorded")
    if lines:
        with contextlib.suppress(OSError):  # a closed stderr must not change the exit status
            os.write(2, ("\n".join(lines) + "\n").encode())


def _mirror(status: int, message: bytes) -> NoReturn:
    """Exit as the program did; ``message`` is init's report (empty if init itself failed)."""
    kind, _, value = message.decode(errors="replace").partition(" ")
    sig = int(value) if kind == "s" and value.isdigit() else 0
    if not sig and not kind and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
    if sig:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the program may have dumped; not us
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    if kind == "x" and value.lstrip("-").isdigit():
        os._exit(int(value) & 0xFF)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status) else SANDBOX_EXIT)


def main(args: list[str]) -> NoReturn:
    if "--" not in args or args.index("--") == 0 or args.index("--") == len(args) - 1:
        _fail("configuration",
              "usage: python -I -m sp.security.enter CONFIG_JSON -- PROGRAM [ARG...]")
    split = args.index("--")
    try:
        cfg: dict[str, Any] = json.loads("".join(args[:split]))
    except ValueError as e:
        _fail("configuration", e)
    argv = args[split + 1:]

    sock = marker = collector = None
    if cfg.get("denial_log") == "kernel_audit":
        from sp.security import audit

        try:
            sock = audit.subscribe()
            marker = audit.Marker()
            if not audit.enabled():
                audit.enable()
        except OSError as e:
            _fail("denial log (kernel audit)", _why(e))

    namespaces = cfg.get("namespaces") or []
    flags = 0
    for name in namespaces:
        flags |= linux.NAMESPACE_FLAGS[name]
    if flags:
        uid, gid = os.geteuid(), os.getegid()
        if cfg.get("user_namespace"):
            flags |= linux.CLONE_NEWUSER
        try:
            linux.unshare(flags)
            if cfg.get("user_namespace"):
                linux.write_id_maps(uid, gid)
        except OSError as e:
            _fail(f"namespaces {','.join(namespaces)}", _why(e))

    dispositions: dict[int, Any] = {
        sig: signal.SIG_IGN if signal.getsignal(sig) == signal.SIG_IGN else signal.SIG_DFL
        for sig in (*FORWARDED, *SHIELDED)}
    for sig in dispositions:  # the worker signals the group: the program gets these itself
        signal.signal(sig, signal.SIG_IGN)
    status_r, status_w = os.pipe()
    try:
        init = os.fork()
    except OSError as e:
        _fail("fork", _why(e))
    if init == 0:
        os.close(status_r)
        if sock is not None:
            sock.close()
        if marker is not None:
            marker.close()
        _init(cfg, argv, status_w, dispositions)
    os.close(status_w)

    poller = select.poll()
    # init holds the only write end (close-on-exec, so not the program): readable or hung up
    # means init has reported and is exiting
    poller.register(status_r, select.POLLIN)
    if sock is not None:
        from sp.security import audit

        collector = audit.DenialCollector(init)
        poller.register(sock.fileno(), select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if sock is not None and collector is not None and sock.fileno() in ready:
            collector.drain(sock)
        if status_r in ready:
            break
    message = os.read(status_r, 64)
    _, status = os.waitpid(init, 0)
    if sock is not None and marker is not None and collector is not None:
        import time

        # Every denial was queued before the program ended; the marker queued now comes back
        # after all of them.
        collector.marker = marker.text
        try:
            marker.send()
            deadline = time.monotonic() + 2.0
        except OSError:
            deadline = time.monotonic() + 0.1
        while not collector.marker_seen:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if select.select([sock], [], [], left)[0]:
                collector.drain(sock)
        _report(cfg, collector.records, collector.dropped)
    elif cfg.get("denials_path"):
        _report(cfg, [], 0)
    _mirror(status, message)


if __name__ == "__main__":
    main(sys.argv[1:])
