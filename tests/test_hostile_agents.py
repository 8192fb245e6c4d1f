"""Hostile agent files (``sp agent apply FILE``), capabilities and storage sections included:
every bad file is one line naming the file and the place, exit 2, the ledger untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import hostile as h
from tests.conftest import Sp

task = st.fixed_dictionaries(
    {"command": h.command},
    optional={
        "timeout": st.sampled_from(["30s", "2h", "1h30m", 90, "500ms"]),
        "priority": st.integers(-1000, 1000),
        "env": st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), h.arg,
                               max_size=3),
        "retry": st.fixed_dictionaries({"max_attempts": st.integers(1, 10)}, optional={
            "backoff": st.sampled_from(["exponential", "linear"]), "jitter": st.booleans()}),
        "steps": st.lists(h.ident, max_size=3),
        "notify": st.fixed_dictionaries({"command": h.command}, optional={
            "on": st.lists(st.sampled_from(["completion", "failure"]), max_size=2)}),
        "failure_patterns": st.lists(st.sampled_from(["error", "fatal: .*", r"\d+ failed"]),
                                     max_size=2),
        "shell": st.booleans(),
    },
)

abs_path = st.builds(lambda parts: "/" + "/".join(parts), st.lists(h.ident, min_size=1,
                                                                   max_size=3))
capabilities = st.fixed_dictionaries({}, optional={
    "allowed": st.lists(st.one_of(
        st.builds(lambda p: {"read": p}, st.lists(abs_path, max_size=2)),
        st.builds(lambda p: {"write": p}, st.lists(abs_path, max_size=2)),
        st.builds(lambda p: {"network": p}, st.lists(st.sampled_from(
            ["https://arxiv.org", "example.org:8080", "*:443"]), max_size=2)),
        st.builds(lambda p: {"execute": p}, st.lists(st.sampled_from(["python3", "ls"]),
                                                     max_size=2)),
    ), max_size=3),
    "denied": st.lists(st.one_of(
        st.builds(lambda p: {"write": p}, st.lists(abs_path, max_size=2)),
        st.builds(lambda p: {"network": p}, st.just(["*:22"])),
        st.builds(lambda p: {"execute": p}, st.just(["sudo"])),
    ), max_size=2),
})
storage = st.fixed_dictionaries({}, optional={
    "quotas": st.fixed_dictionaries({}, optional={
        k: st.sampled_from(["1G", "512M", 4096]) for k in ("temp_space", "output_space",
                                                          "log_space")}),
    "cleanup": st.fixed_dictionaries({}, optional={
        k: st.sampled_from(["24h", "7d", 3600]) for k in ("temp_files", "completed_actions",
                                                         "failed_actions")}),
})

agent = st.fixed_dictionaries(
    {"id": h.ident, "actions": st.dictionaries(h.ident, task, min_size=1, max_size=3)},
    optional={
        "description": h.plain_text,
        "resources": st.fixed_dictionaries({}, optional={
            "cpu_quota": st.sampled_from(["50%", 25, "100%"]),
            "memory_limit": st.sampled_from(["2G", "512M", 1 << 30]),
            "tasks_max": st.integers(1, 1000), "nice": st.integers(0, 19)}),
        "capabilities": capabilities,
        "storage": storage,
    },
)
fmt = st.sampled_from(["yaml", "toml"])

# Values known to be wrong where they stand (path below an agent, value).
WRONG: list[tuple[tuple[str, ...], Any]] = [
    (("id",), ""), (("id",), "   "), (("id",), 7), (("id",), None), (("id",), [1]),
    (("actions",), {}), (("actions",), []), (("actions",), "task"),
    (("actions", "t", "command"), []), (("actions", "t", "command"), [""]),
    (("actions", "t", "command"), ["echo", "a\x00b"]), (("actions", "t", "command"), 5),
    (("actions", "t", "timeout"), "2 fortnights"), (("actions", "t", "timeout"), -1),
    (("actions", "t", "timeout"), 1e999), (("actions", "t", "timeout"), True),
    (("actions", "t", "timeout"), 10**30), (("actions", "t", "timeout"), "9" * 400 + "h"),
    (("actions", "t", "priority"), 2**63), (("actions", "t", "priority"), 10**400),
    (("actions", "t", "priority"), 1.5), (("actions", "t", "priority"), "high"),
    (("actions", "t", "retry"), {"max_attempts": 0}),
    (("actions", "t", "retry"), {"max_attempts": 10**12}),
    (("actions", "t", "retry"), {"backoff": "sideways"}),
    (("actions", "t", "retry"), {"max_delay": -5}),
    (("actions", "t", "env"), {"A": 1}), (("actions", "t", "env"), {"A=B": "x"}),
    (("actions", "t", "env"), {"": "x"}), (("actions", "t", "env"), {"A": "x\x00"}),
    (("actions", "t", "cwd"), "/tmp/\x00"),
    (("actions", "t", "notify"), {"command": []}), (("actions", "t", "notify"), {"on": ["x"]}),
    (("actions", "t", "notify"), {"url": "file:///etc/passwd"}),
    (("actions", "t", "recovery"), {"strategy": "fallback", "fallback": "nope"}),
    (("actions", "t", "steps"), [{"name": "s", "command": 3}]),
    (("actions", "t", "on_interrupt"), "explode"),
    (("actions", "t", "failure_patterns"), ["(unclosed"]),
    (("actions", "t", "schedule"), "61 25 * * *"), (("actions", "t", "schedule"), "@sometimes"),
    (("resources",), {"nice": 40}), (("resources",), {"cpu_quota": "150%x"}),
    (("resources",), {"memory_limit": "2 parsecs"}), (("resources",), {"tasks_max": -1}),
    (("resources",), {"io_weight": 0}), (("resources",), {"memory_limit": 10**400}),
    (("limits",), "sometimes"),
    (("capabilities",), []), (("capabilities",), {"allowed": {"read": ["/x"]}}),
    (("capabilities",), {"allowed": [{"teleport": ["/x"]}]}),
    (("capabilities",), {"allowed": [{"read": ["relative/path"]}]}),
    (("capabilities",), {"allowed": [{"read": ["/a\x00b"]}]}),
    (("capabilities",), {"allowed": [{"network": ["host:99999"]}]}),
    (("capabilities",), {"allowed": [{"network": ["gopher://x"]}]}),
    (("capabilities",), {"default": "maybe"}),
    (("storage",), {"quotas": {"temp_space": "-1G"}}), (("storage",), {"quotas": 5}),
    (("storage",), {"quotas": {"temp_space": 0}}),
    (("storage",), {"cleanup": {"temp_files": "forever"}}), (("storage",), {"shred": True}),
]


@pytest.fixture
def ready(sp: Sp) -> Sp:
    sp("init")
    return sp


def _apply(sp: Sp, path: Path) -> Any:
    return sp("agent", "apply", str(path), ok=False)


def _reject(sp: Sp, path: Path) -> None:
    before = h.ledger_state(sp.home)
    result = _apply(sp, path)
    h.assert_rejected(result, str(path))
    assert h.ledger_state(sp.home) == before


@h.FUZZ
@given(doc=agent, fmt=fmt)
def test_valid_agents_are_accepted(ready: Sp, tmp_path: Path, doc: dict[str, Any],
                                   fmt: str) -> None:
    path = h.write(tmp_path / "agent", doc, fmt)
    result = _apply(ready, path)
    assert result.exit_code == 0, result.output


@h.FUZZ
@given(doc=st.one_of(h.poisoned(agent), h.with_unknown_key(agent)), fmt=fmt)
def test_mistyped_agents_are_refused(ready: Sp, tmp_path: Path, doc: dict[str, Any],
                                     fmt: str) -> None:
    _reject(ready, h.write(tmp_path / "agent", doc, fmt))


CASES = [(fmt, w, v) for fmt in ("yaml", "toml") for w, v in WRONG
         if fmt == "yaml" or h.toml_ok(v)]  # TOML has no null and no infinity


@pytest.mark.parametrize(("fmt", "where", "value"), CASES, ids=[
    f"{f}:{'.'.join(w)}={v!r}"[:60] for f, w, v in CASES])
def test_wrong_values_are_refused(ready: Sp, tmp_path: Path, fmt: str, where: tuple[str, ...],
                                  value: Any) -> None:
    base = {"id": "a", "actions": {"t": {"command": ["echo", "hi"]}}}
    _reject(ready, h.write(tmp_path / "agent", h.replaced(base, where, value), fmt))


@h.FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".yaml", ".toml", ".yml"]))
def test_random_bytes_never_crash(ready: Sp, tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"agent{suffix}"
    path.write_bytes(data)
    before = h.ledger_state(ready.home)
    if not h.assert_robust(_apply(ready, path), str(path)):
        assert h.ledger_state(ready.home) == before


@h.FUZZ
@given(doc=agent, cut=st.floats(0, 1), noise=st.binary(min_size=1, max_size=8),
       fmt=fmt)
def test_damaged_files_never_crash(ready: Sp, tmp_path: Path, doc: dict[str, Any], cut: float,
                                   noise: bytes, fmt: str) -> None:
    """A valid file cut short, with bytes spliced in: accepted or refused in one line."""
    text = (h.toml_text(doc) if fmt == "toml" else h.yaml_text(doc)).encode()
    at = int(len(text) * cut)
    path = tmp_path / f"agent.{fmt}"
    path.write_bytes(text[:at] + noise + text[at + len(noise):])
    before = h.ledger_state(ready.home)
    if not h.assert_robust(_apply(ready, path), str(path)):
        assert h.ledger_state(ready.home) == before


@pytest.mark.parametrize("text", h.BAD_YAML)
def test_broken_yaml_is_refused_with_its_line(ready: Sp, tmp_path: Path, text: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    _reject(ready, path)


@pytest.mark.parametrize("text", h.BAD_TOML)
def test_broken_toml_is_refused_with_its_line(ready: Sp, tmp_path: Path, text: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    _reject(ready, path)


@pytest.mark.parametrize("content", [b"", b"\n", b"---\n", b"# only a comment\n", b"null\n",
                                     b"[]\n", b"42\n", b"\x00\x01\x02", b"\xff\xfe\x00i\x00d",
                                     "id: caf\u00e9\n".encode("latin-1"), b"id: x\r\n\x1b[2J"])
@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_empty_and_binary_files_are_refused(ready: Sp, tmp_path: Path, content: bytes,
                                            suffix: str) -> None:
    path = tmp_path / f"agent{suffix}"
    path.write_bytes(content)
    _reject(ready, path)


@pytest.mark.parametrize(("levels", "width"), [(9, 9), (30, 2), (4, 30)])
@pytest.mark.timeout(10)
def test_alias_bombs_are_refused_quickly(ready: Sp, tmp_path: Path, levels: int,
                                         width: int) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(h.laughs(levels, width))
    _reject(ready, path)


def test_an_alias_inside_its_own_anchor_is_refused(ready: Sp, tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("id: &a [x, *a]\nactions: {t: {command: [echo]}}\n")
    _reject(ready, path)


def test_small_aliases_and_merge_keys_still_work(ready: Sp, tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    # Unknown top-level keys are refused, so the anchor sits on a task.
    path.write_text("id: anchors\nactions:\n  a: &base {command: [echo, hi], timeout: 30s}\n"
                    "  b: {<<: *base, priority: 3}\n  c: *base\n")
    result = _apply(ready, path)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("depth", [65, 300, 5000])
@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_deep_nesting_is_refused(ready: Sp, tmp_path: Path, depth: int, suffix: str) -> None:
    path = tmp_path / f"deep{suffix}"
    if suffix == ".toml":
        path.write_text("id = " + "[" * depth + "]" * depth + "\n")
    else:
        path.write_text("id: " + "[" * depth + "]" * depth + "\n")
    _reject(ready, path)


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
def test_duplicate_keys_are_refused(ready: Sp, tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"dup.{fmt}"
    if fmt == "toml":
        path.write_text('id = "a"\n[actions.t]\ncommand = ["echo"]\ncommand = ["rm"]\n')
    else:
        path.write_text("id: a\nactions:\n  t: {command: [echo], command: [rm, -rf, /]}\n")
    _reject(ready, path)
    assert "line" in _apply(ready, path).output


def test_unicode_in_values_is_kept_and_names_stay_ascii(ready: Sp, tmp_path: Path) -> None:
    path = tmp_path / "uni.yaml"
    path.write_text("id: agent-1\ndescription: \u00e9\u6f22\u0627\nactions:\n  hello:\n"
                    "    command: [echo, \"\U0001f600 \u202e reversed\"]\n", encoding="utf-8")
    assert _apply(ready, path).exit_code == 0
    assert "agent-1" in ready("agent", "list").output
    # Names are ASCII (agents.names): a look-alike letter cannot pass for another agent.
    before = h.ledger_state(ready.home)
    path.write_text("id: agent-\u00e9\u6f22\u0627\nactions:\n  \u05e9\u05dc\u05d5\u05dd:\n"
                    "    command: [echo, hi]\n", encoding="utf-8")
    h.assert_rejected(_apply(ready, path), str(path))
    assert h.ledger_state(ready.home) == before


@pytest.mark.slow
def test_a_bad_agent_file_in_a_real_process(sp: Sp, tmp_path: Path) -> None:
    sp("init")
    before = h.ledger_state(sp.home)
    path = tmp_path / "bomb.yaml"
    path.write_text(h.laughs(9, 9))
    proc = sp.proc("agent", "apply", str(path), timeout=30)
    h.assert_one_line_error(proc.stdout + proc.stderr, str(path), proc.returncode)
    assert proc.stdout == ""
    assert h.ledger_state(sp.home) == before
