"""A seccomp-BPF filter for the exec shim: what Landlock and namespaces cannot refuse.

Installed last in the shim's *init* (after ``no_new_privs``, which an unprivileged filter
needs), so it binds init and the program and everything they start; a filter can never be
removed. It refuses, by returning an errno (the program sees an ordinary failure):

- ``unix``: creating a unix-domain socket — ``socket(AF_UNIX, ...)`` and a *datagram*
  ``socketpair(AF_UNIX, SOCK_DGRAM)`` (a datagram socket can ``sendto()``/``connect()`` any
  named socket later; a connected stream or seqpacket pair cannot, ``EISCONN``) — with
  ``EACCES``, and ``io_uring_setup`` with ``ENOSYS`` (its ``IORING_OP_SOCKET``/``CONNECT`` would
  go around the check; programs treat ``ENOSYS`` as "no io_uring here" and fall back). Landlock
  (ABI <= 7) does not cover ``connect()`` to a pathname socket at all, so this is the only
  kernel check there is; with no socket to connect there is nothing left to connect;
- ``exec_fd``: ``execveat(fd, "", AT_EMPTY_PATH)`` (running an open file descriptor, e.g. a
  memfd) with ``EACCES``; and, when asked (``memfd_sealed``: the pid namespace's
  ``vm.memfd_noexec`` could not be set), ``memfd_create`` without ``MFD_NOEXEC_SEAL``.

Every system call ABI the CPU offers is filtered by its own numbers (x86_64, i386 and x32 on
x86_64; aarch64 and 32-bit arm on aarch64): a process can enter the kernel through any of them.
x32 is refused outright (``ENOSYS``: nothing real uses it). On another machine the filter
cannot be built and :func:`supported` says why: the shim then refuses to run the program.

Stdlib + ctypes only: this module runs inside the exec shim.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

from sp.security import linux

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_NR, _ARCH = 0, 4


def _arg(i: int) -> int:
    """Offset of the low 32 bits of argument ``i`` (little-endian: the first word)."""
    return 16 + 8 * i


_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K

RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCH_ARM = 0x40000028
_X32_SYSCALL_BIT = 0x40000000

AF_UNIX = 1
SOCK_DGRAM = 2
AT_EMPTY_PATH = 0x1000
MFD_NOEXEC_SEAL = 0x0008
_SYS_SOCKET, _SYS_SOCKETPAIR = 1, 8  # socketcall(2) call numbers (i386)

# Per ABI: the numbers of the calls the filter inspects (absent = the ABI has no such call).
_TABLES: dict[int, dict[str, int]] = {
    AUDIT_ARCH_X86_64: {"socket": 41, "socketpair": 53, "io_uring_setup": 425,
                        "execveat": 322, "memfd_create": 319},
    AUDIT_ARCH_I386: {"socket": 359, "socketpair": 360, "socketcall": 102,
                      "io_uring_setup": 425, "execveat": 358, "memfd_create": 356},
    AUDIT_ARCH_AARCH64: {"socket": 198, "socketpair": 199, "io_uring_setup": 425,
                         "execveat": 281, "memfd_create": 279},
    AUDIT_ARCH_ARM: {"socket": 281, "socketpair": 288, "io_uring_setup": 425,
                     "execveat": 387, "memfd_create": 385},
}
# The ABIs a process on this machine can use, native first; the seccomp(2) number.
_MACHINES: dict[str, tuple[list[int], int]] = {
    "x86_64": ([AUDIT_ARCH_X86_64, AUDIT_ARCH_I386], 317),
    "aarch64": ([AUDIT_ARCH_AARCH64, AUDIT_ARCH_ARM], 277),
}
_SECCOMP_SET_MODE_FILTER = 1

Insn = tuple[int, int, int, int]  # code, jt, jf, k


def supported() -> str | None:
    """None when this machine's system call ABIs are known here, else why not."""
    if platform.machine() not in _MACHINES:
        return f"no seccomp filter for the {platform.machine()} system call ABIs"
    return None


def _deny(err: int) -> Insn:
    return (_RET_K, 0, 0, RET_ERRNO | err)


def _rules(table: dict[str, int], unix: bool, exec_fd: bool,
           memfd_sealed: bool) -> list[list[Insn]]:
    """One block per checked call: each loads what it needs, falls through when allowed.

    A block's jumps are relative within itself and its last instruction is followed by the next
    block, so blocks can be concatenated.
    """
    blocks: list[list[Insn]] = []

    def on(name: str, body: list[Insn]) -> None:
        nr = table.get(name)
        if nr is None:
            return
        # A == nr ? run body : skip it (the body ends by reloading nr for the next block)
        blocks.append([(_JEQ_K, 0, len(body), nr), *body])

    reload = (_LD_W_ABS, 0, 0, _NR)
    if unix:
        on("socket", [(_LD_W_ABS, 0, 0, _arg(0)), (_JEQ_K, 0, 1, AF_UNIX),
                      _deny(errno.EACCES), reload])
        on("socketpair", [(_LD_W_ABS, 0, 0, _arg(0)), (_JEQ_K, 0, 4, AF_UNIX),
                          (_LD_W_ABS, 0, 0, _arg(1)), (_AND_K, 0, 0, 0xF),
                          (_JEQ_K, 0, 1, SOCK_DGRAM), _deny(errno.EACCES), reload])
        # i386's socketcall multiplexer: its family is behind a pointer, so no socket can
        # be created through it at all (glibc uses the direct calls, checked above)
        on("socketcall", [(_LD_W_ABS, 0, 0, _arg(0)), (_JEQ_K, 1, 0, _SYS_SOCKET),
                          (_JEQ_K, 0, 1, _SYS_SOCKETPAIR), _deny(errno.EACCES), reload])
        on("io_uring_setup", [_deny(errno.ENOSYS)])
    if exec_fd:
        on("execveat", [(_LD_W_ABS, 0, 0, _arg(4)), (_JSET_K, 0, 1, AT_EMPTY_PATH),
                        _deny(errno.EACCES), reload])
    if memfd_sealed:
        on("memfd_create", [(_LD_W_ABS, 0, 0, _arg(1)), (_JSET_K, 1, 0, MFD_NOEXEC_SEAL),
                            _deny(errno.EACCES), reload])
    return blocks


def program(unix: bool, exec_fd: bool, memfd_sealed: bool,
            machine: str | None = None) -> list[Insn]:
    """The filter for this machine (or ``machine``) as BPF instructions.

    :raises OSError: ``ENOSYS`` on a machine whose ABIs are not known here.
    """
    arches, _ = _MACHINES.get(machine or platform.machine(), ([], -1))
    if not arches:
        raise OSError(errno.ENOSYS, supported() or "unsupported machine")
    out: list[Insn] = [(_LD_W_ABS, 0, 0, _ARCH)]
    sections: list[list[Insn]] = []
    for arch in arches:
        body: list[Insn] = [(_LD_W_ABS, 0, 0, _NR)]
        if arch == AUDIT_ARCH_X86_64:
            # x32 calls share this arch value, marked by a bit in nr: refused outright
            body += [(_JSET_K, 0, 1, _X32_SYSCALL_BIT), _deny(errno.ENOSYS)]
        for block in _rules(_TABLES[arch], unix, exec_fd, memfd_sealed):
            body += block
        body.append((_RET_K, 0, 0, RET_ALLOW))
        sections.append(body)
    # dispatch: arch == a_i ? jump to section i : next test; no match -> ENOSYS
    tests = len(arches)
    offsets, at = [], 0
    for body in sections:
        offsets.append(at)
        at += len(body)
    for i, arch in enumerate(arches):
        # from test i, the section starts after the remaining tests and the final deny
        jump = (tests - i - 1) + 1 + offsets[i]
        out.append((_JEQ_K, jump, 0, arch))
    out.append(_deny(errno.ENOSYS))
    for body in sections:
        out += body
    if len(out) > 4096:  # BPF_MAXINSNS
        raise OSError(errno.E2BIG, "seccomp filter too long")
    return out


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(unix: bool, exec_fd: bool, memfd_sealed: bool) -> None:
    """Load the filter into the calling thread (needs ``no_new_privs`` or CAP_SYS_ADMIN).

    :raises OSError: the kernel refused it (or this machine is not supported).
    """
    insns = program(unix, exec_fd, memfd_sealed)
    raw = b"".join(struct.pack("=HBBI", *insn) for insn in insns)
    buf = ctypes.create_string_buffer(raw, len(raw))
    prog = _SockFprog(len(insns), ctypes.cast(buf, ctypes.c_void_p))
    _, nr = _MACHINES[platform.machine()]
    linux.syscall(nr, _SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(prog), what="seccomp")
