"""Landlock rulesets: the access rights each ABI knows, deny-inside-allow, ports, enforcement.

Landlock only *allows*: a rule on a directory grants its rights on everything beneath it. A deny
inside an allowed tree (``/etc/shadow`` while ``/etc`` is readable, ``/usr/bin/sudo`` while
``/usr/bin`` is executable) is therefore built by decomposition (:func:`fs_rules`): instead of the
allowed tree, every sibling along the path down to the denied entry gets the rule (files directly,
directories recursively), and the denied entry gets nothing. Consequences, by design:

- entries *created later* in a decomposed directory are not covered by the rule (they are denied
  the carved rights), and the decomposed directories themselves do not get the carved
  directory rights (for a write deny: nothing can be created in or removed from the directories
  on the path to the denied entry; for a read deny of a directory: those directories cannot be
  listed). A read deny of a *file* keeps its ancestors listable (``READ_DIR`` does not apply to
  files, so granting it on the ancestors does not leak the file);
- symlinks inside a decomposed directory get no rule: Landlock checks the resolved path, and a
  symlink's target is only reachable if its own tree is allowed, exactly as for the whole tree;
- a deny at or above an allowed path wins: the allowed path loses the denied rights.

Stdlib + ctypes only: this module runs inside the exec shim.
"""

from __future__ import annotations

import ctypes
import os
import stat

from sp.security import linux

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5

NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

RESTRICT_SELF_LOG_NEW_EXEC_ON = 1 << 1  # ABI 7: log denials after execve too

FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = READ_FILE | READ_DIR
# Device nodes are never creatable, even in writable trees: a root program could otherwise
# mknod the disk's block device there and read around every rule.
WRITE = (WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO
         | MAKE_SYM | REFER | TRUNCATE | IOCTL_DEV)
# Exec opens the file for reading too, so an executable entry is also readable (as a file).
EXEC = EXECUTE | READ_FILE

_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}

_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2
_CREATE_RULESET_VERSION = 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def abi_version() -> int:
    """The Landlock ABI this kernel offers; 0 when Landlock is absent or disabled."""
    try:
        return linux.syscall(linux.SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                             ctypes.c_uint32(_CREATE_RULESET_VERSION), what="landlock")
    except OSError:
        return 0


def handled_fs(abi: int) -> int:
    """Every filesystem right the given ABI knows (0 for no Landlock)."""
    best = [v for k, v in _FS_BY_ABI.items() if k <= abi]
    return best[-1] if best else 0


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _dirish(path: str) -> bool:
    """A directory, or something that does not exist yet (and could become one)."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return True


def fs_rules(grants: list[tuple[str, int]], denies: list[tuple[str, int]],
             handled: int) -> dict[str, int]:
    """Path -> rights to add as path-beneath rules, with each deny carved out of the grants.

    ``grants`` and ``denies`` hold resolved paths with the rights each grants or takes away.
    Missing granted paths are skipped: there is nothing to allow, and Landlock rules need an
    existing inode.
    """
    out: dict[str, int] = {}
    for root, rights in grants:
        rights &= handled
        for q, r in denies:
            if _within(root, q):
                rights &= ~r
        below = [(q, r & rights) for q, r in denies
                 if q != root and _within(q, root) and r & rights]
        try:
            is_dir = stat.S_ISDIR(os.stat(root).st_mode)
        except OSError:
            continue
        _grant(root, rights, below, is_dir, out)
    return out


def _grant(path: str, rights: int, denies: list[tuple[str, int]], is_dir: bool,
           out: dict[str, int]) -> None:
    if not is_dir:
        rights &= FILE_RIGHTS
    blocked = 0
    for _, r in denies:
        blocked |= r
    blocked &= rights
    whole = rights & ~blocked
    if blocked & READ_DIR and not any(r & READ_DIR and _dirish(q) for q, r in denies):
        whole |= READ_DIR
        blocked &= ~READ_DIR
    if whole:
        out[path] = out.get(path, 0) | whole
    if not blocked or not is_dir:
        return
    try:
        entries = list(os.scandir(path))
    except OSError:
        return  # cannot list it, so cannot decompose it: the carved rights stay denied here
    for entry in entries:
        if entry.is_symlink():
            continue
        child = entry.path
        crights = blocked
        for q, r in denies:
            if q == child:
                crights &= ~r
        below = [(q, r & crights) for q, r in denies if q != child and _within(q, child)
                 and r & crights]
        if crights:
            try:
                child_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            _grant(child, crights, below, child_dir, out)


class Ruleset:
    """One Landlock ruleset fd: add rules, then :meth:`restrict_self` the calling thread."""

    def __init__(self, abi: int, fs: int, net: int, scoped: int) -> None:
        attr = _RulesetAttr(fs, net, scoped)
        # The struct grew with the ABI; an older kernel rejects a size it does not know.
        size = 8 if abi < 4 else 16 if abi < 6 else 24
        self.fd = linux.syscall(linux.SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr),
                                ctypes.c_size_t(size), ctypes.c_uint32(0),
                                what="landlock_create_ruleset")

    def add_path(self, path: str, rights: int) -> None:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            attr = _PathBeneathAttr(rights, fd)
            linux.syscall(linux.SYS_LANDLOCK_ADD_RULE, self.fd, _RULE_PATH_BENEATH,
                          ctypes.byref(attr), ctypes.c_uint32(0), what=f"landlock rule {path}")
        finally:
            os.close(fd)

    def add_ports(self, ports: list[int], rights: int) -> None:
        """One rule per port. A deny-only spec needs 65,535 of them: the loop calls libc
        directly (no per-call wrapper), about 60 ms here against a 24 ms kernel floor in C."""
        attr = _NetPortAttr(rights, 0)
        ref = ctypes.byref(attr)
        call, fd, nr = linux.raw_syscall, self.fd, linux.SYS_LANDLOCK_ADD_RULE
        for port in ports:
            attr.port = port
            if call(nr, fd, _RULE_NET_PORT, ref, 0):
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), f"landlock port rule {port}")

    def restrict_self(self, flags: int) -> None:
        linux.syscall(linux.SYS_LANDLOCK_RESTRICT_SELF, self.fd, ctypes.c_uint32(flags),
                      what="landlock_restrict_self")

    def close(self) -> None:
        os.close(self.fd)


def elf_interp(path: str) -> str | None:
    """The PT_INTERP (dynamic loader) an ELF executable names, or None (static, script, ...)."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF":
                return None
            bits64, end = head[4] == 2, "<" if head[5] == 1 else ">"
            if bits64:
                phoff, = struct.unpack_from(end + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(end + "HH", head, 54)
            else:
                phoff, = struct.unpack_from(end + "I", head, 28)
                phentsize, phnum = struct.unpack_from(end + "HH", head, 42)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                ph = table[i * phentsize:(i + 1) * phentsize]
                if struct.unpack_from(end + "I", ph, 0)[0] != 3:  # PT_INTERP
                    continue
                if bits64:
                    off, = struct.unpack_from(end + "Q", ph, 8)
                    size, = struct.unpack_from(end + "Q", ph, 32)
                else:
                    off, = struct.unpack_from(end + "I", ph, 4)
                    size, = struct.unpack_from(end + "I", ph, 16)
                f.seek(off)
                return f.read(size).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


_LOADER_GLOBS = ("/lib64/ld-linux*.so*", "/lib/ld-linux*.so*", "/lib/ld-musl-*.so*",
                 "/lib/*/ld-linux*.so*", "/usr/lib64/ld-linux*.so*", "/usr/lib/*/ld-linux*.so*")


def loaders(program: str | None) -> list[str]:
    """Resolved paths of the dynamic loaders: the program's PT_INTERP plus the usual places."""
    import glob

    found = {os.path.realpath(p) for pattern in _LOADER_GLOBS for p in glob.glob(pattern)}
    interp = elf_interp(program) if program else None
    if interp:
        found.add(os.path.realpath(interp))
    return sorted(p for p in found if os.path.isfile(p))
