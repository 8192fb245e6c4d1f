"""Injection through names (issue 11, item 5): every hostile name is refused at every entry
point (one line naming the field and where, exit 2, the ledger byte for byte unchanged), and
the exporters, fed the same names directly, still write exactly one job / one ExecStart with
the name as one literal argument."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import Result

from sp.agents import names
from sp.ledger.errors import UsageError
from sp.schedules import crontab, systemd
from tests import hostile as h
from tests.conftest import Sp

HOSTILE = [
    "a\n* * * * * id", "a\rb", "a\x00b", "50%", "a;id", "$(id)", "`id`", "a'b", 'a"b', "a b",
    "x\u202ey", "a\u2066b", "a\u200fb", "../x", "/etc/x", "x" * 65, "-rf", ".hidden", "..", "",
    "a/b", "\u0430dmin",  # a Cyrillic 'a': looks like "admin"
]
FINE = ["research-001", "daily_arxiv_scan", "deploy-site", "v1.2", "A" * 64]
AGENT = "research-001"
TASK = "daily_arxiv_scan"


def test_the_grammar() -> None:
    for good in FINE:
        assert names.problem(good) is None
    for bad in HOSTILE:
        why = names.problem(bad)
        assert why is not None, bad
        with pytest.raises(UsageError) as caught:
            names.check(bad, "agent id", "f.yaml: $.id")
        assert "\n" not in str(caught.value) and "\r" not in str(caught.value)
        assert str(caught.value).startswith("f.yaml: $.id: agent id ")
    assert names.check_qualified("research-001/daily_arxiv_scan", "s", "w")
    for bad in ("a//b", "a/", "/a", "a/../b", "a/\nb"):
        with pytest.raises(UsageError):
            names.check_qualified(bad, "schedule name", "w")


@pytest.fixture
def ready(sp: Sp, tmp_path: Path) -> Sp:
    agent = tmp_path / "agent.yaml"
    agent.write_text(h.yaml_text({"id": AGENT, "actions": {TASK: {"command": ["true"]}}}))
    sp("agent", "apply", str(agent))
    return sp


def _refused(result: Result, *where: str) -> None:
    out = result.output
    assert result.exit_code == 2, (result.exit_code, out)
    assert "Traceback" not in out and out.startswith("Error: "), out
    assert out.count("\n") == 1 and out.endswith("\n"), out
    for w in where:
        assert w in out, (w, out)


def _doc(tmp_path: Path, name: str, doc: object) -> Path:
    path = tmp_path / name
    path.write_text(h.yaml_text(doc), encoding="utf-8")
    return path


def _plan(step_id: str = "s", **top: object) -> dict[str, object]:
    return {**top, "actions": [{"id": step_id, "type": "shell",
                                "payload": {"command": ["true"]}}]}


def _attempts(sp: Sp, tmp_path: Path, bad: str) -> list[tuple[list[str], tuple[str, ...]]]:
    """(argv, what the error must name) for every entry point that takes a name."""
    agent_id = _doc(tmp_path, "agent-id.yaml", {"id": bad, "actions": {"t": {"command": ["x"]}}})
    task = _doc(tmp_path, "task.yaml", {"id": "a", "actions": {bad: {"command": ["x"]}}})
    step = _doc(tmp_path, "step.yaml", {"id": "a", "actions": {"t": {
        "command": ["x"], "steps": [bad]}}})
    plan_name = _doc(tmp_path, "plan-name.yaml", _plan(name=bad))
    plan_agent = _doc(tmp_path, "plan-agent.yaml", _plan(agent=bad))
    plan_step = _doc(tmp_path, "plan-step.yaml", _plan(bad))
    trig_name = _doc(tmp_path, "trig-name.yaml", {"agent": AGENT, "triggers": {"filesystem": [
        {"path": str(tmp_path), "action": TASK, "name": bad}]}})
    trig_agent = _doc(tmp_path, "trig-agent.yaml", {"agent": bad, "triggers": {"network": [
        {"port": 1, "action": TASK, "secret": "s" * 32}]}})
    trig_action = _doc(tmp_path, "trig-action.yaml", {"agent": AGENT, "triggers": {
        "network": [{"port": 1, "action": bad, "secret": "s" * 32}]}})
    trig_key = _doc(tmp_path, "trig-key.yaml", {"agent": AGENT, "conditions": {bad: {
        "trigger": "internet_connected", "action": TASK}}})
    policy = _doc(tmp_path, "policy.yaml", {"allowed": [{"read": ["/tmp"]}]})
    cron = ["--cron", "0 9 * * *"]
    return [
        (["submit", "--name", bad, "--", "true"], ("--name",)),
        (["submit", "--agent", bad, "--", "true"], ("--agent",)),
        (["submit", "--task", bad, "--", "true"], ("--task",)),
        (["action", "execute", "--agent", bad, "--task", TASK], ("--agent",)),
        (["action", "run", "--agent", AGENT, "--task", bad], ("--task",)),
        (["schedule", "add", *cron, "--agent", AGENT, "--task", TASK, "--", bad],
         ("schedule name",)),
        (["schedule", "add", *cron, "--agent", bad, "--task", TASK, "s"], ("--agent",)),
        (["schedule", "add", *cron, "--agent", AGENT, "--task", bad, "s"], ("--task",)),
        (["pause", "--agent", bad], ("--agent",)),
        (["agent", "apply", str(agent_id)], (str(agent_id), "$.id")),
        (["agent", "apply", str(task)], (str(task), "$.actions")),
        (["agent", "apply", str(step)], (str(step), "$.actions.t.steps[0]")),
        (["agent", "policy", "--set", str(policy), "--", bad], ("agent",)),
        (["plan", "validate", str(plan_name)], (str(plan_name), "$.name")),
        (["plan", "apply", str(plan_name)], (str(plan_name), "$.name")),
        (["plan", "apply", str(plan_agent)], (str(plan_agent), "$.agent")),
        (["plan", "apply", str(plan_step)], (str(plan_step), "$.actions[0].id")),
        (["trigger", "apply", str(trig_name)], (str(trig_name), "$.triggers.filesystem[0].name")),
        (["trigger", "apply", str(trig_agent)], (str(trig_agent), "$.agent")),
        (["trigger", "apply", str(trig_action)], (str(trig_action),
                                                   "$.triggers.network[0].action")),
        (["trigger", "apply", str(trig_key)], (str(trig_key), "$.conditions")),
    ]


# "a/b" is a fine qualified name where one is taken (a schedule, a trigger's action): those
# entry points get it as a whole name elsewhere, so it is left out of theirs.
_QUALIFIED = {"schedule name", "$.triggers.network[0].action"}


@pytest.mark.parametrize("bad", HOSTILE, ids=[repr(b)[1:-1][:20] for b in HOSTILE])
def test_every_entry_point_refuses_every_hostile_name(ready: Sp, tmp_path: Path,
                                                      bad: str) -> None:
    before = h.ledger_state(ready.home)
    for argv, where in _attempts(ready, tmp_path, bad):
        if bad == "a/b" and _QUALIFIED & set(where):
            continue
        result = ready(*argv, ok=False)
        try:
            _refused(result, *where)
        except AssertionError as e:
            raise AssertionError(f"sp {' '.join(map(repr, argv))}: {e}") from None
        assert h.ledger_state(ready.home) == before, argv


def test_a_qualified_name_is_a_name_per_part(ready: Sp) -> None:
    before = h.ledger_state(ready.home)
    for bad in ("a/../b", "a//b", "a/\nb", "a/-x"):
        _refused(ready("schedule", "add", "--cron", "0 9 * * *", "--agent", AGENT,
                       "--task", TASK, "--", bad, ok=False), "schedule name")
    assert h.ledger_state(ready.home) == before
    ready("schedule", "add", "--cron", "0 9 * * *", "--agent", AGENT, "--task", TASK,
          "team/nightly")


# -- exporters, fed the names directly -------------------------------------------------------

def _argv(bad: str) -> list[str]:
    return ["/usr/bin/systemprompt-os", "--home", f"/srv/{bad}", "action", "execute",
            "--agent", bad, "--task", bad]


def _jobs(text: str) -> list[str]:
    return [ln for ln in text.splitlines()
            if ln.strip() and not ln.startswith("#") and not ln.startswith("CRON_TZ=")]


@pytest.mark.parametrize("bad", HOSTILE, ids=[repr(b)[1:-1][:20] for b in HOSTILE])
def test_crontab_export_writes_one_job_with_the_name_as_one_argument(bad: str) -> None:
    argv = _argv(bad)
    entry = crontab.Entry(name=bad, cron="0 9 * * *", timezone="UTC", argv=argv,
                          notes=[f"note about {bad}"])
    if names.hidden(bad):  # no cron line can carry it: refused, in one line
        with pytest.raises(UsageError) as caught:
            crontab.render([entry], "UTC")
        assert "\n" not in str(caught.value)
        return
    text = crontab.render([entry], "UTC")
    (job,) = _jobs(text)
    fields = job.split(" ", 5)
    assert fields[:5] == ["0", "9", "*", "*", "*"]
    assert "%" not in fields[5].replace("\\%", "")  # every % escaped for cron
    assert shlex.split(fields[5].replace("\\%", "%")) == argv
    disabled = crontab.render([crontab.Entry(name=bad, cron="0 9 * * *", timezone="UTC",
                                             argv=argv, enabled=False)], "UTC")
    assert _jobs(disabled) == []


def test_crontab_refuses_a_home_it_cannot_name() -> None:
    with pytest.raises(UsageError):
        crontab.replace_block("", "0 9 * * * true\n", "/srv/a\n* * * * * id")


def _unquote(value: str) -> list[str]:
    """An ExecStart= value read the way systemd.syntax(7) says: words split on blanks, a word
    wholly in double or single quotes, C escapes, then %% and $$ undone."""
    words: list[str] = []
    i = 0
    escapes = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "'": "'", "s": " "}
    while i < len(value):
        if value[i] == " ":
            i += 1
            continue
        quote = value[i] if value[i] in "\"'" else None
        i += 1 if quote else 0
        out = []
        while i < len(value) and (value[i] != quote if quote else value[i] != " "):
            ch = value[i]
            if ch == "\\":
                nxt = value[i + 1]
                if nxt in "xuU":
                    width = {"x": 2, "u": 4, "U": 8}[nxt]
                    out.append(chr(int(value[i + 2:i + 2 + width], 16)))
                    i += 2 + width
                    continue
                out.append(escapes[nxt])
                i += 2
                continue
            assert quote or ch not in "\"'", f"a quote inside a word: {value!r}"
            out.append(ch)
            i += 1
        if quote:
            assert i < len(value), f"unterminated quote in {value!r}"
            i += 1
            assert i == len(value) or value[i] == " ", f"quote ends inside a word: {value!r}"
        words.append("".join(out))
    for w in words:  # a lone % is a specifier, a lone $ a variable: none may be left
        assert "%" not in w.replace("%%", "") and "$" not in w.replace("$$", ""), value
    return [w.replace("%%", "%").replace("$$", "$") for w in words]


@pytest.mark.parametrize("bad", HOSTILE, ids=[repr(b)[1:-1][:20] for b in HOSTILE])
def test_systemd_export_writes_one_execstart_with_the_name_as_one_argument(
        tmp_path: Path, bad: str) -> None:
    argv = _argv(bad)
    if "\x00" in bad:  # no program can be given a NUL: refused, in one line
        with pytest.raises(UsageError) as caught:
            systemd.service(bad, argv, {}, [f"note {bad}"])
        assert "\n" not in str(caught.value)
        return
    unit = systemd.unit_name(bad)
    assert "/" not in unit and names.hidden(unit) is None and not unit.startswith(".")
    service = systemd.service(bad, argv, {"nice": 5}, [f"note about {bad}"])
    timer = systemd.timer(bad, "*-*-* 09:00:00 UTC", persistent=True, jitter_ms=0,
                          notes=[f"note {bad}"], enabled=True)
    for text, keys in ((service, ["Description", "Type", "ExecStart", "Nice"]),
                       (timer, ["Description", "OnCalendar", "Persistent", "AccuracySec",
                                "Unit", "WantedBy"])):
        lines = [ln for ln in text.splitlines() if ln and not ln.startswith(("#", "["))]
        assert [ln.split("=", 1)[0] for ln in lines] == keys, text
        assert not any(ln.endswith("\\") for ln in text.splitlines()), text  # no continuation
    (exec_line,) = [ln for ln in service.splitlines() if ln.startswith("ExecStart=")]
    assert _unquote(exec_line.removeprefix("ExecStart=")) == argv
    (description,) = [ln for ln in service.splitlines() if ln.startswith("Description=")]
    assert "%" not in description.replace("%%", "")
    if shutil.which("systemd-analyze"):  # the real parser accepts the unit as written
        path = tmp_path / f"{unit}.service"
        path.write_text(service.replace("/usr/bin/systemprompt-os", "/bin/true"))
        done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert "ExecStart" not in done.stderr, done.stderr


def test_systemd_export_writes_units_inside_its_folder(tmp_path: Path) -> None:
    for bad in HOSTILE:
        if "\x00" in bad:
            continue
        path = tmp_path / "units" / f"{systemd.unit_name(bad)}.service"
        assert path.parent == tmp_path / "units"
    assert json.dumps(systemd.unit_name("a@b/c")) == json.dumps("systemprompt-schedule-a\\x40b-c")
