"""Capability policies: the seed's ``allowed`` / ``denied`` lists, normalised, resolved, checked.

```yaml
capabilities:
  allowed:
    - read: ["/data/research", "/data/papers"]
    - write: ["/data/research/output"]
    - network: ["https://arxiv.org", "https://scholar.google.com"]
    - execute: ["python3", "jupyter"]
  denied:
    - write: ["/etc", "/usr", "/boot"]
    - network: ["*:22", "*:3389"]   # no SSH/RDP
    - execute: ["sudo", "su", "passwd"]
```

Meaning, per category (``read``, ``write``, ``network``, ``execute``):

- a category listed under ``allowed`` is an allow-list: only what it names (plus what sp itself
  needs to start a program: the system's runtime folders for reading and the action's private
  temporary folder for writing); ``network: []`` means no network at all;
- a category not listed under ``allowed`` is open, except what ``denied`` names (``default:
  deny`` turns every unlisted category into an empty allow-list);
- ``denied`` always wins over ``allowed``.

Paths are compared after resolving ``..`` and symlinks (:func:`os.path.realpath`), so
``/data/research/../../etc`` is ``/etc``; executables are found through ``PATH`` and resolved the
same way, so ``/usr/bin/../bin/sudo`` and a symlink to it are still ``sudo``. Network entries are
URLs (``https://arxiv.org`` = TCP port 443), ``host:port``, ``*:port`` or ``*``; the kernel
(Landlock) filters TCP ports, not host names, so host names are checked where sp itself connects
(``http_request``) and recorded as not enforced for programs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from sp.ledger.errors import UsageError

CATEGORIES = ("read", "write", "network", "execute")
_SCHEME_PORTS = {"http": 80, "https": 443, "ssh": 22, "ftp": 21, "smtp": 25, "imap": 143,
                 "imaps": 993, "mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443,
                 "postgres": 5432, "postgresql": 5432, "mysql": 3306, "redis": 6379}
# Read (and executed from) by almost every program: the dynamic loader, libraries, locale and
# resolver files. An allow-listed ``read`` adds these so that a program can start at all.
# From /etc only what programs read to start and to name users, hosts and certificates (an
# allow-list, so that a secret added later to /etc is not readable either); a policy lists
# anything else it needs. Globs are expanded when an attempt is claimed.
SYSTEM_READ_ETC = (
    "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/host.conf",
    "/etc/hostname", "/etc/resolv.conf", "/etc/gai.conf", "/etc/services", "/etc/protocols",
    "/etc/networks", "/etc/rpc", "/etc/ethertypes", "/etc/ld.so.cache", "/etc/ld.so.conf",
    "/etc/ld.so.conf.d", "/etc/ld.so.preload", "/etc/localtime", "/etc/timezone",
    "/etc/locale.alias", "/etc/locale.conf", "/etc/default/locale", "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf", "/etc/ca-certificates", "/etc/ca-certificates.conf",
    "/etc/pki/tls/certs", "/etc/pki/ca-trust", "/etc/crypto-policies", "/etc/os-release",
    "/etc/debian_version", "/etc/mime.types", "/etc/magic", "/etc/magic.mime",
    "/etc/terminfo", "/etc/inputrc", "/etc/shells", "/etc/alternatives", "/etc/fonts",
    "/etc/mtab", "/etc/python3*", "/etc/perl", "/etc/java*")
SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin",
               *SYSTEM_READ_ETC,
               "/proc", "/sys/devices/system/cpu", "/dev/null", "/dev/zero", "/dev/random",
               "/dev/urandom", "/dev/full", "/dev/tty", "/dev/pts", "/dev/shm")
# Never readable by a sandboxed action, whatever grant covers them (a ``read`` of ``/`` or of
# ``/etc``, or an open ``read``), unless its policy names the path itself (or a path inside it)
# in ``read`` or ``write``: password hashes, sudo rules, private keys, root's and users' key
# folders. sp's own home is kept out of reach separately (security.enforce). Globs are expanded
# when an attempt is claimed.
SECRETS = (
    "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers",
    "/etc/sudoers.d", "/etc/ssh/*_key", "/etc/ssl/private", "/etc/pki/tls/private",
    "/etc/krb5.keytab", "/etc/security/opasswd", "/etc/credstore", "/etc/credstore.encrypted",
    "/etc/letsencrypt", "/etc/wireguard", "/etc/NetworkManager/system-connections",
    "/etc/ipsec.secrets", "/etc/ppp/chap-secrets", "/etc/ppp/pap-secrets", "/root",
    "/home/*/.ssh", "/home/*/.gnupg", "/var/lib/systemprompt-os")
SYSTEM_WRITE = ("/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/pts")


class NetRule(msgspec.Struct, frozen=True, omit_defaults=True):
    """One network entry: ``host`` ("*" for any) and ``port`` (None for any)."""

    text: str
    host: str = "*"
    port: int | None = None


class Policy(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An agent's effective policy. ``None`` in an allow-list means the category is open."""

    read: list[str] | None = None
    write: list[str] | None = None
    execute: list[str] | None = None
    network: list[NetRule] | None = None
    deny_read: list[str] = []
    deny_write: list[str] = []
    deny_execute: list[str] = []
    deny_network: list[NetRule] = []
    default: Literal["allow", "deny"] = "allow"
    # storage quotas in bytes (agents.config.Quotas), None = unlimited
    temp_space: int | None = None
    output_space: int | None = None
    log_space: int | None = None
    output_dirs: list[str] = []
    # whom the action runs as (security.identity; a name or a number, None = sp's own user),
    # and the capabilities of linux.GRANTABLE_CAPABILITIES a root program keeps
    user: str | None = None
    group: str | None = None
    linux_capabilities: list[str] = []
    # "any" or "none" unix-domain sockets (None: as the network; see blocks_unix_sockets)
    unix_sockets: Literal["any", "none"] | None = None

    @property
    def restricts_fs(self) -> bool:
        return any(x is not None for x in (self.read, self.write, self.execute)) or bool(
            self.deny_read or self.deny_write or self.deny_execute)

    @property
    def restricts_network(self) -> bool:
        return self.network is not None or bool(self.deny_network) or self.blocks_unix_sockets

    @property
    def blocks_unix_sockets(self) -> bool:
        """``unix_sockets: none``; unset, the default follows ``network``: a policy that lists
        the network it allows (``network: []`` included) allows no unix sockets either."""
        if self.unix_sockets is not None:
            return self.unix_sockets == "none"
        return self.network is not None

    @property
    def has_quotas(self) -> bool:
        return any(q is not None for q in (self.temp_space, self.output_space, self.log_space))

    @property
    def sets_identity(self) -> bool:
        return self.user is not None or bool(self.linux_capabilities)

    @property
    def empty(self) -> bool:
        return not (self.restricts_fs or self.restricts_network or self.has_quotas
                    or self.sets_identity)


def to_dict(policy: Policy) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(policy)
    return out


def from_dict(data: dict[str, Any]) -> Policy:
    return msgspec.convert(data, Policy)


def digest(policy: Policy) -> str:
    return hashlib.sha256(msgspec.json.encode(policy)).hexdigest()


# -- decoding the seed's shape ------------------------------------------------------------------


def parse_net(text: str, where: str) -> NetRule:
    """``https://host[:port]``, ``host:port``, ``*:port``, ``host`` or ``*``.

    :raises UsageError: not one of those.
    """
    t = text.strip()
    if not t:
        raise UsageError(f"{where}: an empty network entry")
    if t == "*":
        return NetRule(t)
    if "://" in t:
        parts = urlsplit(t)
        scheme = parts.scheme.lower()
        try:
            port = parts.port
        except ValueError:
            raise UsageError(f"{where}: {text!r}: the port is not a number in 0..65535") from None
        if port is None:
            port = _SCHEME_PORTS.get(scheme)
            if port is None:
                raise UsageError(f"{where}: {text!r}: no default port for {scheme!r}; add one")
        if not parts.hostname:
            raise UsageError(f"{where}: {text!r}: no host")
        return NetRule(t, parts.hostname.lower(), port)
    host, sep, port_text = t.rpartition(":")
    if not sep:
        return NetRule(t, t.lower(), None)
    if port_text == "*":
        return NetRule(t, host.lower() or "*", None)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"{where}: {text!r}: expected host:port with a port in 1..65535")
    return NetRule(t, host.lower() or "*", int(port_text))


def _path(text: str, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"{where}: expected a path, got {text!r}")
    if "\0" in text:
        raise UsageError(f"{where}: a path must not contain NUL")
    if not os.path.isabs(text) and not text.startswith("~"):
        raise UsageError(f"{where}: {text!r} must be an absolute path")
    return os.path.normpath(os.path.expanduser(text))


def _executable(text: str, where: str) -> str:
    if not isinstance(text, str) or not text.strip() or "\0" in text:
        raise UsageError(f"{where}: expected a program name or path, got {text!r}")
    if "/" in text and not os.path.isabs(text):
        raise UsageError(f"{where}: {text!r}: a program is a name (found through PATH) or an"
                         " absolute path")
    return text.strip()


def _entries(items: Any, where: str) -> dict[str, list[str]]:
    """``[{read: [...]}, {write: [...]}]`` (or one mapping) -> category -> values."""
    if items is None:
        return {}
    if isinstance(items, dict):
        items = [{k: v} for k, v in items.items()]
    if not isinstance(items, list):
        raise UsageError(f"{where}: expected a list like [{{read: [/data]}}]")
    out: dict[str, list[str]] = {}
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        if not isinstance(item, dict) or not item:
            raise UsageError(f"{here}: expected a mapping like {{read: [/data]}}")
        for key, values in item.items():
            if key not in CATEGORIES:
                raise UsageError(f"{here}: unknown capability {key!r}; expected one of"
                                 f" {', '.join(CATEGORIES)}")
            if isinstance(values, str):
                values = [values]
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise UsageError(f"{here}.{key}: expected a list of text")
            out.setdefault(key, []).extend(values)
    return out


def decode(capabilities: Any, storage: Any = None, where: str = "$.capabilities",
           storage_where: str = "$.storage") -> Policy:
    """Turn the seed's ``capabilities`` (and ``storage``) mappings into a :class:`Policy`.

    :raises UsageError: the first problem, with its path.
    """
    caps = capabilities or {}
    if not isinstance(caps, dict):
        raise UsageError(f"{where}: expected a mapping with allowed and/or denied")
    unknown = set(caps) - {"allowed", "denied", "default", "unix_sockets", *IDENTITY_KEYS}
    if unknown:
        raise UsageError(f"{where}: unknown key {sorted(unknown, key=str)[0]!r}; expected"
                         " allowed, denied, default, unix_sockets, user, group or"
                         " linux_capabilities")
    default = caps.get("default", "allow")
    if default not in ("allow", "deny"):
        raise UsageError(f"{where}.default: expected allow or deny, got {default!r}")
    allowed = _entries(caps.get("allowed"), f"{where}.allowed")
    denied = _entries(caps.get("denied"), f"{where}.denied")
    fields: dict[str, Any] = {"default": default}
    for cat in CATEGORIES:
        here = f"{where}.allowed.{cat}"
        if cat in allowed or default == "deny":
            values = allowed.get(cat, [])
            fields[cat] = _convert(cat, values, here)
        dhere = f"{where}.denied.{cat}"
        if cat in denied:
            fields[f"deny_{cat}"] = _convert(cat, denied[cat], dhere)
    if caps.get("unix_sockets") is not None:
        fields["unix_sockets"] = _unix_sockets(caps["unix_sockets"], f"{where}.unix_sockets")
    fields.update(_storage(storage, storage_where))
    fields.update(_run_as(caps, where))
    return Policy(**fields)


IDENTITY_KEYS = ("user", "group", "linux_capabilities")


def _account(value: Any, where: str) -> str:
    """A user or group: a name or a non-negative number (kept as text)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UsageError(f"{where}: expected a name or a number, got {value!r}")
    text = str(value).strip()
    if (isinstance(value, int) and value < 0) or not text or any(
            c.isspace() or c in ":/" or ord(c) < 32 for c in text):
        raise UsageError(f"{where}: expected a name or a number, got {value!r}")
    return text


def _run_as(caps: dict[str, Any], where: str) -> dict[str, Any]:
    """``user:``, ``group:`` and ``linux_capabilities:`` (``[dac_override, CAP_CHOWN]``).

    :raises UsageError: a malformed account, a group without a user, or a capability that is
        unknown or cannot be granted (the sandbox-escaping ones).
    """
    from sp.security import linux

    out: dict[str, Any] = {}
    if caps.get("user") is not None:
        out["user"] = _account(caps["user"], f"{where}.user")
    if caps.get("group") is not None:
        if "user" not in out:
            raise UsageError(f"{where}.group: a group needs a user: (whom to run as)")
        out["group"] = _account(caps["group"], f"{where}.group")
    raw = caps.get("linux_capabilities")
    if raw is None:
        return out
    if not isinstance(raw, list):
        raise UsageError(f"{where}.linux_capabilities: expected a list like [dac_override]")
    names: list[str] = []
    for i, item in enumerate(raw):
        here = f"{where}.linux_capabilities[{i}]"
        if not isinstance(item, str) or not item.strip():
            raise UsageError(f"{here}: expected a capability name like dac_override")
        name = item.strip().upper()
        name = name if name.startswith("CAP_") else f"CAP_{name}"
        if name in linux.DROPPED_CAPABILITIES:
            raise UsageError(f"{here}: {item!r} cannot be granted: it would let the program"
                             " step around the sandbox itself")
        if name not in linux.GRANTABLE_CAPABILITIES:
            grantable = ", ".join(n[4:].lower() for n in linux.GRANTABLE_CAPABILITIES)
            raise UsageError(f"{here}: unknown capability {item!r}; grantable: {grantable}")
        if name not in names:
            names.append(name)
    if names:
        out["linux_capabilities"] = names
    return out


def _unix_sockets(value: Any, where: str) -> str:
    """``unix_sockets: any`` or ``none`` (a list of socket paths is refused: see below).

    :raises UsageError: anything else, naming ``where``.
    """
    if isinstance(value, list):
        # Landlock (ABI <= 7) does not check connect() to a pathname socket, and seccomp
        # cannot read the path it is given: a per-path list would not be enforced.
        raise UsageError(f"{where}: a list of socket paths cannot be enforced on Linux (the"
                         " kernel checks no socket path on connect); use any or none")
    if value not in ("any", "none"):
        raise UsageError(f"{where}: expected any or none, got {value!r}")
    return str(value)


def _convert(cat: str, values: list[str], where: str) -> list[Any]:
    if cat == "network":
        return [parse_net(v, f"{where}[{i}]") for i, v in enumerate(values)]
    if cat == "execute":
        return [_executable(v, f"{where}[{i}]") for i, v in enumerate(values)]
    return [_path(v, f"{where}[{i}]") for i, v in enumerate(values)]


def _storage(storage: Any, where: str) -> dict[str, Any]:
    if storage is None:
        return {}
    from sp.agents.config import Storage
    from sp.agents.units import dec_hook

    try:
        s = msgspec.convert(storage, Storage, dec_hook=dec_hook)
    except msgspec.ValidationError as e:
        from sp.agents.config import _rename_path

        raise UsageError(_rename_path(str(e), where)) from None
    out: dict[str, Any] = {}
    if s.quotas is not None:
        for name in ("temp_space", "output_space", "log_space"):
            value = getattr(s.quotas, name)
            if value is not None:
                if value <= 0:
                    raise UsageError(f"{where}.quotas.{name}: must be positive")
                out[name] = int(value)
    if s.output_dirs:
        out["output_dirs"] = [_path(p, f"{where}.output_dirs[{i}]")
                              for i, p in enumerate(s.output_dirs)]
    return out


# -- resolving and checking ---------------------------------------------------------------------


def real(path: str) -> str:
    """``path`` with ``..`` and every symlink that exists resolved."""
    return os.path.realpath(path)


def under(path: str, roots: list[str]) -> str | None:
    """The root (resolved) that contains the resolved ``path``, or None."""
    p = real(path)
    for root in roots:
        r = real(root)
        if p == r or p.startswith(r.rstrip("/") + "/"):
            return root
    return None


def resolve_program(program: str, env_path: str | None = None,
                    cwd: str | None = None) -> str | None:
    """The real path of the file ``program`` runs (through PATH for a bare name), or None."""
    if "/" in program:
        p = program if os.path.isabs(program) else os.path.join(cwd or os.getcwd(), program)
        return real(p) if os.path.exists(p) else None
    found = shutil.which(program, path=env_path if env_path is not None
                         else os.environ.get("PATH", os.defpath))
    return real(found) if found else None


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def program_matches(resolved: str, rules: list[str], env_path: str | None = None) -> str | None:
    """The rule (a name or a path) that names the program at ``resolved``, or None.

    A name matches the program PATH finds for it; a path matches itself resolved; either
    matches the same file through another link (same device and inode), so a hard link or a
    symlink to ``sudo`` is still ``sudo``.
    """
    ident = _identity(resolved)
    base = os.path.basename(resolved)
    for rule in rules:
        target = resolve_program(rule, env_path)
        if target is None:
            # Not installed here: a bare name still matches a program of that name.
            if "/" not in rule and base == rule:
                return rule
            continue
        if target == resolved or (ident is not None and _identity(target) == ident):
            return rule
    return None


class Denial(msgspec.Struct, frozen=True, omit_defaults=True):
    """A refusal before running: ``access`` as the kernel would name it, the target, why."""

    access: str  # "execute" | "read" | "write" | "network"
    target: str
    reason: str
    where: str = ""

    def line(self) -> str:
        at = f"{self.where}: " if self.where else ""
        return f"{at}{self.reason}"


def check_program(policy: Policy, argv0: str, where: str, env_path: str | None = None,
                  cwd: str | None = None) -> Denial | None:
    """Is the program ``argv0`` allowed to run under ``policy``?"""
    resolved = resolve_program(argv0, env_path, cwd)
    shown = argv0 if resolved is None or resolved == argv0 else f"{argv0} ({resolved})"
    if resolved is None:
        if policy.execute is not None:
            return Denial("execute", argv0, f"{argv0!r} is not found, so it cannot be checked"
                          " against the policy's allowed executables", where)
        name = os.path.basename(argv0)
        if any(os.path.basename(r) == name for r in policy.deny_execute):
            return Denial("execute", argv0, f"executable {argv0!r} is denied by the policy", where)
        return None
    rule = program_matches(resolved, policy.deny_execute, env_path)
    if rule is not None:
        return Denial("execute", resolved, f"executable {shown} is denied by the policy"
                      f" (denied: {rule})", where)
    if policy.execute is not None and program_matches(resolved, policy.execute,
                                                      env_path) is None:
        allowed = ", ".join(policy.execute) or "nothing"
        return Denial("execute", resolved, f"executable {shown} is not allowed by the policy"
                      f" (allowed: {allowed})", where)
    return None


def check_path(policy: Policy, path: str, access: Literal["read", "write"],
               where: str) -> Denial | None:
    """Is ``path`` (resolved through ``..`` and symlinks) readable / writable under ``policy``?"""
    resolved = real(path)
    shown = path if resolved == path else f"{path} ({resolved})"
    deny = policy.deny_write if access == "write" else policy.deny_read
    rule = under(resolved, deny)
    if rule is not None:
        return Denial(access, resolved, f"{access} of {shown} is denied by the policy"
                      f" (denied: {rule})", where)
    allow = policy.write if access == "write" else policy.read
    if allow is not None and under(resolved, list(allow)) is None:
        if access == "read" and policy.write is not None and under(resolved, policy.write):
            return None  # what may be written may be read back
        roots = ", ".join(allow) or "nothing"
        return Denial(access, resolved, f"{access} of {shown} is outside the policy's allowed"
                      f" {access} paths ({roots})", where)
    return None


def check_host(policy: Policy, host: str, port: int, where: str) -> Denial | None:
    """Is a TCP connection to ``host:port`` allowed (for connections sp makes itself)?"""
    h = host.lower()

    def hit(rules: list[NetRule]) -> NetRule | None:
        for r in rules:
            if (r.host == "*" or r.host == h) and (r.port is None or r.port == port):
                return r
        return None

    rule = hit(policy.deny_network)
    if rule is not None:
        return Denial("network", f"{host}:{port}", f"connecting to {host}:{port} is denied by"
                      f" the policy (denied: {rule.text})", where)
    if policy.network is not None and hit(policy.network) is None:
        allowed = ", ".join(r.text for r in policy.network) or "no network"
        return Denial("network", f"{host}:{port}", f"connecting to {host}:{port} is not allowed"
                      f" by the policy (allowed: {allowed})", where)
    return None
