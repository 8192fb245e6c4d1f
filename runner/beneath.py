"""Files of a sandboxed action's own folder, as its root worker must touch them: by what was
checked, never by a path the action can change in between.

The worker is root and unsandboxed; the action owns its folder and can rename, symlink and
hard-link inside it at any moment. So the worker never resolves a path there twice. It holds a
directory fd of the folder from the moment it creates it (:class:`Folder`), reaches every file
relative to that fd without following any symlink (``openat2`` with ``RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`` where the kernel has it, else a walk of
``openat(O_NOFOLLOW)`` one component at a time), checks what it opened on the open fd
(``fstat``: a regular file, one link, owned by the action), reads or writes through that fd, and
removes a name only after checking it still names the same inode (``unlinkat`` relative to the
parent's fd).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import stat
from collections.abc import Iterator

from sp.security import linux

# openat2(2): the same number on every architecture (the generic syscall table).
_SYS_OPENAT2 = 437 if platform.machine() in ("x86_64", "aarch64") else -1
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_openat2_works: bool | None = None  # None until first tried; False where the kernel lacks it


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class Refused(PermissionError):
    """What the action named is not a plain file of its own folder."""


def components(rel: str) -> list[str]:
    """The names of a relative path, each a plain name.

    :raises Refused: empty, absolute, or with ``.``/``..``/empty components or a NUL byte.
    """
    parts = rel.split("/")
    if not rel or "\0" in rel or any(p in ("", ".", "..") for p in parts):
        raise Refused(f"{rel!r} is not a plain path inside the action's folder")
    return parts


def _openat2(dirfd: int, rel: str, flags: int) -> int | None:
    """``openat2`` with the beneath/no-symlink resolution; None where the kernel lacks it."""
    global _openat2_works
    if _openat2_works is False:
        return None
    how = _OpenHow(flags=flags, mode=0, resolve=_RESOLVE)
    try:
        fd = linux.syscall(_SYS_OPENAT2, ctypes.c_int(dirfd), os.fsencode(rel),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)),
                           what="openat2")
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.E2BIG) and _openat2_works is None:
            _openat2_works = False  # an older kernel (before 5.6): the walk instead
            return None
        if e.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
            raise Refused(f"{rel!r} goes through a symlink or out of the action's folder"
                          ) from None
        raise OSError(e.errno, e.strerror, rel) from None
    _openat2_works = True
    return fd


def open_dir(dirfd: int, rel: str) -> int:
    """A directory fd of ``rel`` beneath ``dirfd``, reached without following any symlink.

    :raises Refused: a component is a symlink, ``..`` or not a plain name.
    :raises OSError: a component is missing or not a directory.
    """
    parts = components(rel)
    fd = _openat2(dirfd, rel, _DIR)
    if fd is not None:
        return fd
    fd = os.dup(dirfd)
    try:
        for name in parts:  # the fallback walk: one component at a time, none followed
            nxt = _open_nofollow(name, _DIR, fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_nofollow(name: str, flags: int, dirfd: int, mode: int = 0o600) -> int:
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dirfd)
    except OSError as e:
        # O_DIRECTORY | O_NOFOLLOW on a symlink fails with ENOTDIR rather than ELOOP.
        if e.errno == errno.ELOOP or (e.errno == errno.ENOTDIR and flags & os.O_DIRECTORY):
            raise Refused(f"{name!r} is a symlink or not a folder") from None
        raise


@contextlib.contextmanager
def parent_of(dirfd: int, rel: str) -> Iterator[tuple[int, str]]:
    """``(fd of rel's folder, rel's last name)``, the folder reached as :func:`open_dir` does."""
    parts = components(rel)
    fd = os.dup(dirfd) if len(parts) == 1 else open_dir(dirfd, "/".join(parts[:-1]))
    try:
        yield fd, parts[-1]
    finally:
        os.close(fd)


def check_file(st: os.stat_result, uid: int, what: str) -> None:
    """A regular file with one name, owned by the action.

    A hard link to a file the action may not read (made where its sandbox lets it) would
    otherwise let the worker read or write that file for it: a second name is refused.

    :raises Refused: anything else.
    """
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"{what} is not a regular file")
    if st.st_nlink != 1:
        raise Refused(f"{what} has {st.st_nlink} hard links (one allowed)")
    if st.st_uid != uid:
        raise Refused(f"{what} is not owned by the action (uid {st.st_uid})")


def open_file(dirfd: int, name: str, uid: int, what: str) -> int:
    """Open the plain name ``name`` of folder ``dirfd`` for reading, checked on the fd.

    Opened as ``O_PATH`` first (no open side effect, e.g. of a FIFO or device), checked, then
    opened for reading through the fd itself, so that what is read is what was checked.

    :raises Refused: a symlink, or not a regular file with one name owned by ``uid``.
    """
    pfd = _open_nofollow(name, os.O_PATH, dirfd)
    try:
        st = os.fstat(pfd)
        check_file(st, uid, what)
        try:
            return os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # no /proc here: open the name, then prove it is the same
            fd = _open_nofollow(name, os.O_RDONLY | os.O_NONBLOCK, dirfd)
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)
                raise Refused(f"{what} changed while it was opened") from None
            return fd
    finally:
        os.close(pfd)


def read_capped(fd: int, cap: int, what: str) -> bytes:
    """All of ``fd`` from its start, refusing more than ``cap`` bytes.

    :raises Refused: larger than ``cap``.
    """
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.pread(fd, min(1 << 20, cap + 1 - total), total)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > cap:
            raise Refused(f"{what} is larger than {cap} bytes")


def unlink_same(dirfd: int, name: str, st: os.stat_result) -> bool:
    """Remove ``name`` from folder ``dirfd`` if it still names the inode of ``st``; whether it
    did. (``unlinkat`` never follows the last name, and the folder is the one held.)"""
    try:
        now = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        return False
    os.unlink(name, dir_fd=dirfd)
    return True


def create_file(dirfd: int, name: str, data: bytes, uid: int) -> None:
    """Create ``name`` in folder ``dirfd`` holding ``data``; never through a planted name.

    ``O_CREAT | O_EXCL | O_NOFOLLOW``: a symlink or file the action put there first makes it
    fail rather than write elsewhere.

    :raises FileExistsError: ``name`` exists (the caller picks unguessable names).
    """
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dirfd)
    try:
        if uid != os.geteuid():
            os.fchown(fd, uid, -1)  # the action reads it as itself
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


class Folder:
    """A folder sp created for an action, held by a directory fd from its creation.

    ``parent`` is in sp's home (out of the action's reach); ``name`` is created there (or the
    folder of an earlier attempt reused) with mode 0700, opened without following a symlink, and
    checked: a directory owned by sp's user (or by ``owner``, the user the action runs as, to
    whom sp handed an earlier attempt's folder). Its device and inode are recorded;
    :meth:`check` proves the held fd still is that folder (not closed and reused by mistake).
    """

    def __init__(self, parent: str, name: str, owner: int | None = None) -> None:
        os.makedirs(parent, mode=0o700, exist_ok=True)
        pfd = os.open(parent, _DIR)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=pfd)
            self.fd = _open_nofollow(name, _DIR, pfd)
        finally:
            os.close(pfd)
        self.path = os.path.join(parent, name)
        try:
            st = os.fstat(self.fd)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (os.geteuid(), owner):
                raise Refused(f"{self.path} is not a folder sp created")
            os.fchmod(self.fd, 0o700)  # an earlier attempt's action may have opened it up
            self.dev, self.ino = st.st_dev, st.st_ino
        except BaseException:
            os.close(self.fd)
            raise

    def check(self) -> None:
        """:raises Refused: the held fd is not the folder recorded at creation."""
        st = os.fstat(self.fd)
        if (st.st_dev, st.st_ino) != (self.dev, self.ino) or not stat.S_ISDIR(st.st_mode):
            raise Refused(f"{self.path} is not the folder sp created")

    def relative(self, path: str) -> str:
        """``path`` (as the action names it: absolute, inside this folder) relative to it.

        :raises Refused: outside the folder, or not a plain path.
        """
        prefix = self.path.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise Refused(f"{path} is not a file in the action's own folder")
        rel = path[len(prefix):]
        components(rel)
        return rel

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
