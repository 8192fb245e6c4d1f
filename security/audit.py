"""Landlock denial records from the kernel audit netlink socket (stdlib only).

Landlock (ABI 7+) emits, when audit is enabled, ``AUDIT_LANDLOCK_ACCESS`` (1423) records such as
``domain=1a2b blockers=fs.make_reg path="/tmp" dev="vda" ino=2`` and ``AUDIT_LANDLOCK_DOMAIN``
(1424) records such as ``domain=1a2b status=allocated mode=enforcing pid=123 ...`` (the pid of
the task that created the domain). Any process with ``CAP_AUDIT_READ`` can read every record by
joining the ``AUDIT_NLGRP_READLOG`` multicast group; :class:`DenialCollector` keeps the ones of
one domain, identified by its creator's pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
AUDIT_GET = 1000
AUDIT_SET = 1001
AUDIT_STATUS_ENABLED = 1
AUDIT_LANDLOCK_ACCESS = 1423
AUDIT_LANDLOCK_DOMAIN = 1424

_NLMSG_ERROR = 2
_NLM_F_REQUEST = 1
_NLM_F_ACK = 4
_HDR = struct.Struct("=IHHII")
_STATUS = struct.Struct("=11I")
_FIELD = re.compile(r'(\w+)=("[^"]*"|\S+)')


def _request(kind: int, payload: bytes) -> bytes | None:
    """Send one request to the kernel audit socket; the reply payload of type ``kind``."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT) as s:
        s.settimeout(2.0)
        s.bind((0, 0))
        s.send(_HDR.pack(_HDR.size + len(payload), kind, _NLM_F_REQUEST | _NLM_F_ACK, 1, 0)
               + payload)
        reply = None
        while True:
            data = s.recv(65536)
            off = 0
            while off + _HDR.size <= len(data):
                length, mtype, _, _, _ = _HDR.unpack_from(data, off)
                body = data[off + _HDR.size:off + length]
                if mtype == _NLMSG_ERROR:
                    err = -struct.unpack_from("=i", body)[0]
                    if err:
                        raise OSError(err, f"audit netlink: {os.strerror(err)}")
                    if kind == AUDIT_SET or reply is not None:
                        return reply
                elif mtype == kind:
                    reply = body
                    if kind == AUDIT_GET:
                        return reply
                off += (length + 3) & ~3
                if length == 0:
                    break


def enabled() -> int:
    """The kernel's audit ``enabled`` flag (0 off, 1 on, 2 locked on).

    :raises OSError: without ``CAP_AUDIT_CONTROL`` in the initial namespaces.
    """
    body = _request(AUDIT_GET, _STATUS.pack(*([0] * 11)))
    if body is None or len(body) < 8:
        raise OSError(0, "audit netlink: no status reply")
    return int(struct.unpack_from("=I", body, 4)[0])


def enable() -> None:
    """Turn kernel audit on (needs ``CAP_AUDIT_CONTROL``); Landlock logs nothing while it is off."""
    _request(AUDIT_SET, _STATUS.pack(AUDIT_STATUS_ENABLED, 1, *([0] * 9)))


def subscribe() -> socket.socket:
    """A non-blocking socket receiving every audit record (needs ``CAP_AUDIT_READ``)."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_AUDIT)
    try:
        s.bind((0, AUDIT_NLGRP_READLOG))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    except OSError:
        s.close()
        raise
    s.setblocking(False)
    return s


def readable() -> str | None:
    """None when this process can read Landlock audit records, else why not."""
    try:
        subscribe().close()
    except OSError as e:
        return f"cannot join the audit multicast group ({e.strerror}; needs CAP_AUDIT_READ)"
    try:
        enabled()
    except OSError as e:
        return f"cannot query kernel audit ({e.strerror}; needs CAP_AUDIT_CONTROL)"
    return None


def parse_fields(text: str) -> dict[str, str]:
    """``key=value`` pairs of one record; quoted values unquoted, audit hex strings decoded."""
    out: dict[str, str] = {}
    for key, raw in _FIELD.findall(text.split("): ", 1)[-1]):
        if raw.startswith('"'):
            out[key] = raw[1:-1]
        elif key in ("path", "exe", "comm", "name") and re.fullmatch(r"(?:[0-9A-F]{2})+", raw):
            # audit hex-encodes strings holding spaces, quotes or control characters
            out[key] = bytes.fromhex(raw).decode(errors="replace")
        else:
            out[key] = raw
    return out


def denial_records(fields: dict[str, str]) -> list[dict[str, object]]:
    """One JSON-able record per blocked right of an AUDIT_LANDLOCK_ACCESS record."""
    base: dict[str, object] = {}
    if "path" in fields:
        base["path"] = fields["path"]
    elif "dest" in fields:
        with contextlib.suppress(ValueError):
            base["port"] = int(fields["dest"])
    elif "opid" in fields:
        with contextlib.suppress(ValueError):
            base["pid"] = int(fields["opid"])
    blockers = fields.get("blockers", "unknown").split(",")
    return [{"access": b, **base} for b in blockers]


class DenialCollector:
    """Keeps the denial records of the one domain whose creator has pid ``creator_pid``.

    An access record can arrive before the domain record that names its creator (they share one
    audit event, access first), so records are buffered by domain until it is known.
    """

    _MAX_DOMAINS = 512
    MAX_RECORDS = 10_000  # a program hammering a denied path must not fill the disk

    def __init__(self, creator_pid: int) -> None:
        self.creator_pid = creator_pid
        self.domain: str | None = None
        self.deallocated = False
        self.records: list[dict[str, object]] = []
        self.dropped = 0
        self.marker: str | None = None
        self.marker_seen = False
        self._pending: dict[str, list[dict[str, object]]] = {}

    def feed(self, kind: int, text: str) -> None:
        if kind == AUDIT_TRUSTED_APP and self.marker and self.marker in text:
            self.marker_seen = True
            return
        if kind not in (AUDIT_LANDLOCK_ACCESS, AUDIT_LANDLOCK_DOMAIN):
            return
        fields = parse_fields(text)
        domain = fields.get("domain")
        if domain is None:
            return
        if kind == AUDIT_LANDLOCK_DOMAIN:
            status = fields.get("status")
            if (status == "allocated" and self.domain is None
                    and fields.get("pid") == str(self.creator_pid)):
                self.domain = domain
                self._keep(self._pending.pop(domain, []))
                self._pending.clear()
            elif status == "deallocated" and domain == self.domain:
                self.deallocated = True
            return
        if domain == self.domain:
            self._keep(denial_records(fields))
        elif self.domain is None:
            if domain not in self._pending and len(self._pending) >= self._MAX_DOMAINS:
                self._pending.pop(next(iter(self._pending)))
            pending = self._pending.setdefault(domain, [])
            if len(pending) < self.MAX_RECORDS:
                pending.extend(denial_records(fields))

    def _keep(self, records: list[dict[str, object]]) -> None:
        room = max(0, self.MAX_RECORDS - len(self.records))
        self.records.extend(records[:room])
        self.dropped += max(0, len(records) - room)

    def drain(self, sock: socket.socket) -> int:
        """Feed every record waiting on ``sock``; how many netlink messages were read."""
        n = 0
        while True:
            try:
                data = sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return n
            except OSError:  # ENOBUFS: the kernel dropped records for us; keep reading
                continue
            off = 0
            while off + _HDR.size <= len(data):
                length, mtype, _, _, _ = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    break
                body = data[off + _HDR.size:off + length]
                self.feed(mtype, body.rstrip(b"\0").decode(errors="replace"))
                n += 1
                off += (length + 3) & ~3


AUDIT_TRUSTED_APP = 1121


class Marker:
    """Proves the audit queue is drained: records are delivered in order, so once a marker
    record sent after the program ended comes back, every denial it caused has arrived.

    The socket is opened up front because unicast audit requests are only accepted from the
    initial namespaces, which the shim leaves right after.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   NETLINK_AUDIT)
        self._sock.bind((0, 0))
        self.text = f"sp-sandbox-drain pid={os.getpid()} nonce={os.urandom(6).hex()}"

    def send(self) -> None:
        payload = self.text.encode() + b"\0"
        self._sock.send(_HDR.pack(_HDR.size + len(payload), AUDIT_TRUSTED_APP, _NLM_F_REQUEST,
                                  1, 0) + payload)

    def close(self) -> None:
        self._sock.close()
