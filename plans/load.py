"""Load a plan file, check it, and resolve it into a :class:`sp.plans.model.Plan`.

Validation reports every problem, not just the first, each with its file and path: unknown
type, missing or mistyped field, unknown dependency, a cycle (naming the actions on it), a
sub-plan nested deeper than five levels, a program the action needs that this machine lacks.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import msgspec

from sp.agents import names
from sp.agents.config import Retry, load_document_marked
from sp.agents.documents import Marks, place
from sp.agents.units import enc_hook
from sp.ledger.errors import UsageError
from sp.plans import action_types, graph
from sp.plans.decode import Problem, Problems, decode_fields, kind
from sp.plans.errors import PlanInvalidError
from sp.plans.model import (
    MAX_DEPTH,
    ActionDoc,
    Compensation,
    FallbackDoc,
    Plan,
    PlanDoc,
    RollbackCommon,
    RollbackSettings,
    Step,
    SubPlanDoc,
)


class _Node(msgspec.Struct, kw_only=True):
    """One step of one (sub-)plan, as far as it decoded."""

    id: str | None
    deps: list[str]
    file: str
    path: str
    step: Step | None = None  # an action step that decoded cleanly (id not yet qualified)
    children: list[_Node] | None = None  # a sub-plan


def check_plan(path: str | Path) -> tuple[Plan | None, list[Problem]]:
    """Load and check a plan file: the plan when it is valid, and every problem found."""
    problems = Problems()
    loader = _Loader(problems)
    p = Path(path)
    doc, nodes = loader.file(p, 1, [])
    if doc is not None:
        _check_names(doc, p, problems)
    if doc is None or nodes is None or problems.items:
        return None, problems.items
    steps, _ = _flatten(nodes, "", [])
    order = [s.id for s in steps]
    deps = {s.id: s.depends_on for s in steps}
    level = graph.levels(order, deps)
    steps = [msgspec.structs.replace(s, level=level[s.id]) for s in steps]
    plan = Plan(
        name=doc.name or p.stem, description=doc.description, source=str(p.resolve()),
        agent=doc.agent,
        on_failure=doc.on_failure, rollback_order=doc.rollback.order,
        rollback_strategy=doc.rollback.strategy, steps=steps,
    )
    digest = hashlib.sha256(msgspec.json.encode(plan)).hexdigest()
    return msgspec.structs.replace(plan, sha256=digest), []


def _check_names(doc: PlanDoc, p: Path, problems: Problems) -> None:
    """The plan's name (its actions are named ``<plan>/<step>``) and agent are names."""
    if doc.name is not None:
        why = names.problem(doc.name)
        if why is not None:
            problems.add(str(p), "$.name", f"{names.shown(doc.name)} {why}; {names.RULE}")
    else:
        why = names.problem(p.stem)
        if why is not None:
            problems.add(str(p), "$.name", f"the plan is named after its file, "
                                           f"{names.shown(p.stem)}, which {why}: give it a name")
    if doc.agent is not None:
        why = names.problem(doc.agent)
        if why is not None:
            problems.add(str(p), "$.agent", f"{names.shown(doc.agent)} {why}; {names.RULE}")


def load_plan(path: str | Path) -> Plan:
    """:func:`check_plan`, raising when the plan is not valid.

    :raises PlanInvalidError: every problem, each with its path.
    """
    plan, problems = check_plan(path)
    if plan is None:
        raise PlanInvalidError(str(path), problems)
    return plan


class _Loader:
    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.rollback = RollbackSettings()

    def add(self, file: str, path: str, message: str) -> None:
        self.problems.add(file, path, message)

    # -- files and (sub-)plans -------------------------------------------------------------------
    def file(self, p: Path, depth: int, chain: list[Path],
             where: tuple[str, str] | None = None) -> tuple[PlanDoc | None, list[_Node] | None]:
        """Load the plan file ``p`` (the plan itself, or a sub-plan included at ``where``).

        An included file's problems are summed up as one problem of the including file, by
        position only: its text (keys, values) is never shown, because a plan may name any
        file as a sub-plan (``plan: /etc/shadow``) and its errors may end up in a log that
        the plan's author reads. ``sp plan validate`` on the included file itself tells all.
        """
        file = str(p)
        try:
            raw, marks = load_document_marked(p)
        except UsageError as e:
            text = str(e)
            text = text[len(file) + 2:] if text.startswith(f"{file}: ") else text
            if where is not None:
                self.add(where[0], where[1], f"{file}: {text}")
            else:
                self.add(file, "$", text)
            return None, None
        if where is None:
            return self.document(raw, p, depth, chain)
        outer, self.problems = self.problems, Problems()
        try:
            result = self.document(raw, p, depth, chain)
        finally:
            inner, self.problems = self.problems, outer
        if inner.items:
            self.add(where[0], where[1], _hidden(file, inner.items, marks))
        return result

    def document(self, raw: Any, p: Path, depth: int,
                 chain: list[Path]) -> tuple[PlanDoc | None, list[_Node] | None]:
        file = str(p)
        if not isinstance(raw, dict):
            self.add(file, "$", f"expected a mapping with actions, got {kind(raw)}")
            return None, None
        doc = decode_fields(raw, PlanDoc, file, "$", self.problems, skip=("actions",))
        if doc is not None and depth == 1:
            self.rollback = doc.rollback
        if "actions" not in raw:
            self.add(file, "$.actions", "required field missing")
            return doc, None
        nodes = self.nodes(raw["actions"], file, "$.actions", depth, p.resolve().parent,
                           [*chain, p.resolve()])
        if doc is None:
            return None, nodes
        return msgspec.structs.replace(doc, actions=[]), nodes

    def nodes(self, raw: Any, file: str, path: str, depth: int, base: Path,
              chain: list[Path]) -> list[_Node] | None:
        if not isinstance(raw, list):
            self.add(file, path, f"expected a list of actions, got {kind(raw)}")
            return None
        if not raw:
            self.add(file, path, "a plan needs at least one action")
            return None
        nodes = [self.node(item, file, f"{path}[{i}]", depth, base, chain)
                 for i, item in enumerate(raw)]
        self.graph(nodes)
        return nodes

    def node(self, raw: Any, file: str, path: str, depth: int, base: Path,
             chain: list[Path]) -> _Node:
        if not isinstance(raw, dict):
            self.add(file, path, f"expected a mapping (an action), got {kind(raw)}")
            return _Node(id=None, deps=[], file=file, path=path)
        node = _Node(id=raw.get("id") if isinstance(raw.get("id"), str) else None,
                     deps=[d for d in raw.get("depends_on") or [] if isinstance(d, str)]
                     if isinstance(raw.get("depends_on"), list) else [],
                     file=file, path=path)
        why = None if node.id is None else names.problem(node.id)
        if why is not None:
            self.add(file, f"{path}.id", f"{names.shown(node.id or '')} is not a valid id: "
                                         f"it {why}; {names.RULE}")
        if "actions" in raw or "plan" in raw:
            self.subplan(raw, node, depth, base, chain)
        else:
            node.step = self.action(raw, file, path, base)
        return node

    def subplan(self, raw: dict[str, Any], node: _Node, depth: int, base: Path,
                chain: list[Path]) -> None:
        file, path = node.file, node.path
        doc = decode_fields(raw, SubPlanDoc, file, path, self.problems, skip=("actions",))
        if "actions" in raw and "plan" in raw:
            self.add(file, path, "a sub-plan has either actions: or plan:, not both")
            return
        if depth + 1 > MAX_DEPTH:
            self.add(file, path, f"sub-plan depth {depth + 1} exceeds the maximum of "
                                 f"{MAX_DEPTH}")
            return
        if "actions" in raw:
            node.children = self.nodes(raw["actions"], file, f"{path}.actions", depth + 1,
                                       base, chain)
        elif doc is not None and doc.plan is not None:
            target = (base / doc.plan).resolve()
            if target in chain:
                names = " -> ".join(str(c.name) for c in [*chain, target])
                self.add(file, f"{path}.plan", f"the plan includes itself: {names}")
                return
            _, node.children = self.file(target, depth + 1, chain, (file, f"{path}.plan"))

    # -- one action ------------------------------------------------------------------------------
    def action(self, raw: dict[str, Any], file: str, path: str, base: Path) -> Step | None:
        before = len(self.problems)
        doc = decode_fields(raw, ActionDoc, file, path, self.problems)
        type_name = raw.get("type")
        t = action_types.get(type_name) if isinstance(type_name, str) else None
        if isinstance(type_name, str) and t is None:
            self.add(file, f"{path}.type", f"unknown action type {type_name!r} "
                                           f"(known: {', '.join(action_types.known())})")
        if t is None or doc is None:
            # still check what can be checked of the payload, for a complete report
            if t is not None and isinstance(raw.get("payload"), dict):
                decode_fields(raw["payload"], t.payload, file, f"{path}.payload", self.problems)
            return None
        payload = decode_fields(doc.payload, t.payload, file, f"{path}.payload", self.problems)
        undo, common = self.rollback_of(doc, t, file, path)
        if doc.priority < -1_000_000 or doc.priority > 1_000_000:
            self.add(file, f"{path}.priority", f"must be within ±1000000, got {doc.priority}")
        if doc.timeout is not None and int(doc.timeout) <= 0:
            self.add(file, f"{path}.timeout", "must be positive")
        self.retry(doc.retry, file, f"{path}.retry")
        fallback = self.fallback(doc, file, path, base)
        if payload is None:
            return None
        self.check(t, payload, undo, base, file, path)
        if len(self.problems) != before:
            return None
        command = t.command(payload)
        compensation = t.compensation(payload, undo)
        retry = doc.retry or Retry(max_attempts=1, jitter=False)
        return Step(
            id=doc.id, type=t.name, description=doc.description,
            payload=msgspec.to_builtins(payload, enc_hook=enc_hook),
            command=command.argv, shell=command.shell, cwd=_cwd(base, command.cwd),
            env=command.env, depends_on=list(doc.depends_on), priority=doc.priority,
            timeout_ms=None if doc.timeout is None else int(doc.timeout),
            max_attempts=retry.max_attempts, backoff=retry.backoff,
            retry_max_delay_ms=int(retry.max_delay), retry_jitter=retry.jitter,
            non_retryable_exit_codes=list(retry.non_retryable_exit_codes),
            recovery=doc.recovery, fallback=fallback,
            rollback=None if compensation is None else self.compensation(
                compensation, common, base),
            where=f"{file}: {path}",
        )

    def rollback_of(self, doc: ActionDoc, t: action_types.ActionType, file: str,
                    path: str) -> tuple[Any, RollbackCommon]:
        raw = doc.rollback
        common = RollbackCommon()
        if raw is None:
            return None, common
        if t.rollback is None:
            self.add(file, f"{path}.rollback", f"a {t.name} action cannot be rolled back")
            return None, common
        if isinstance(raw, str | list):
            raw = {"command": raw}
        if not isinstance(raw, dict):
            self.add(file, f"{path}.rollback",
                     f"expected a command or a mapping, got {kind(raw)}")
            return None, common
        shared = {k: v for k, v in raw.items() if k in ("timeout", "retry")}
        own = {k: v for k, v in raw.items() if k not in shared}
        found = decode_fields(shared, RollbackCommon, file, f"{path}.rollback", self.problems)
        if found is not None:
            common = found
            self.retry(common.retry, file, f"{path}.rollback.retry")
        return decode_fields(own, t.rollback, file, f"{path}.rollback", self.problems), common

    def compensation(self, command: action_types.Command, common: RollbackCommon,
                     base: Path) -> Compensation:
        retry = common.retry or self.rollback.retry
        timeout = common.timeout if common.timeout is not None else self.rollback.timeout
        return Compensation(
            argv=command.as_argv(), cwd=_cwd(base, command.cwd), env=command.env,
            timeout_ms=None if timeout is None else int(timeout),
            max_attempts=retry.max_attempts if retry else 1,
            backoff=retry.backoff if retry else "exponential",
        )

    def fallback(self, doc: ActionDoc, file: str, path: str,
                 base: Path) -> dict[str, Any] | None:
        if doc.recovery == "fallback" and doc.fallback is None:
            self.add(file, f"{path}.fallback", "required when recovery is fallback")
            return None
        if doc.fallback is None:
            return None
        if doc.recovery != "fallback":
            self.add(file, f"{path}.fallback", "only used with recovery: fallback")
            return None
        fb = decode_fields(doc.fallback, FallbackDoc, file, f"{path}.fallback", self.problems)
        if fb is None:
            return None
        t = action_types.get(fb.type)
        if t is None:
            self.add(file, f"{path}.fallback.type", f"unknown action type {fb.type!r} "
                                                    f"(known: {', '.join(action_types.known())})")
            return None
        payload = decode_fields(fb.payload, t.payload, file, f"{path}.fallback.payload",
                                self.problems)
        if payload is None:
            return None
        if not self.check(t, payload, None, base, file, f"{path}.fallback"):
            return None
        command = t.command(payload)
        return {"type": t.name, "argv": command.argv, "shell": command.shell,
                "cwd": _cwd(base, command.cwd), "env": command.env}

    def check(self, t: action_types.ActionType, payload: Any, undo: Any, base: Path, file: str,
              path: str) -> bool:
        """The type's own checks, then the programs it needs (the seed's
        ``check_prerequisites``); whether all is well."""
        checked = t.check(payload, undo)
        if not checked and t.check_files is not None:
            checked = t.check_files(payload, Path(_cwd(base, None)))
        for sub, message in checked:
            self.add(file, f"{path}.{sub}", message)
        ok = not checked
        for req in t.requires(payload, undo) if ok else []:
            cwd = _cwd(base, req.cwd)
            if not action_types.find_program(req.program, cwd, req.env):
                full = os.path.normpath(os.path.join(cwd, req.program))
                why = "not on PATH" if "/" not in req.program else f"no executable file {full}"
                self.add(file, f"{path}.{req.where}",
                         f"executable {req.program!r} not found on this machine ({why})")
                ok = False
        return ok

    def retry(self, retry: Retry | None, file: str, path: str) -> None:
        if retry is not None and not 1 <= retry.max_attempts <= 1000:
            self.add(file, f"{path}.max_attempts",
                     f"must be between 1 and 1000, got {retry.max_attempts}")

    # -- the graph of one (sub-)plan -------------------------------------------------------------
    def graph(self, nodes: list[_Node]) -> None:
        first: dict[str, _Node] = {}
        for node in nodes:
            if node.id is None:
                continue
            if node.id in first:
                self.add(node.file, f"{node.path}.id",
                         f"duplicate id {node.id!r} (first at {first[node.id].path})")
            else:
                first[node.id] = node
        for node in nodes:
            for k, dep in enumerate(node.deps):
                if dep not in first:
                    self.add(node.file, f"{node.path}.depends_on[{k}]",
                             f"unknown action {dep!r}")
        ids = list(first)
        deps = {i: [d for d in first[i].deps if d in first] for i in ids}
        for cycle in graph.cycles(ids, deps):
            start = first[cycle[0]]
            self.add(start.file, f"{start.path}.depends_on",
                     f"dependency cycle: {' -> '.join(cycle)}")


def _hidden(file: str, problems: list[Problem], marks: Marks) -> str:
    """An included file's problems, by count and first position: none of its text."""
    n = len(problems)
    first = problems[0]
    at = place(marks, first.path) if first.file == file else None
    where = (f"the first at line {at[0]}, column {at[1]}" if at is not None
             else "no position known (TOML)" if first.file == file
             else f"the first in {first.file}")
    return (f"{file}: not a valid sub-plan: {n} problem{'s' if n > 1 else ''}, {where} (an "
            f"included file's text is not shown: sp plan validate {file} shows it)")


def _cwd(base: Path, cwd: str | None) -> str:
    """A step's directory: relative to the plan file's, which is also the default."""
    return os.path.normpath(base / cwd) if cwd else str(base)


def _flatten(nodes: list[_Node], prefix: str,
             inherited: list[str]) -> tuple[list[Step], list[str]]:
    """The steps of a valid (sub-)plan with qualified ids, and its exits (what a step that
    depends on the whole sub-plan waits for: the actions nothing inside depends on)."""
    by_id = {n.id: n for n in nodes if n.id is not None}
    order = graph.topological(list(by_id), {i: n.deps for i, n in by_id.items()})
    exits: dict[str, list[str]] = {}
    steps: list[Step] = []
    for local in order:
        node = by_id[local]
        qualified = prefix + local
        upstream = [x for d in node.deps for x in exits[d]] if node.deps else list(inherited)
        upstream = list(dict.fromkeys(upstream))
        if node.children is not None:
            inner, inner_exits = _flatten(node.children, f"{qualified}/", upstream)
            steps += inner
            exits[local] = inner_exits
        else:
            assert node.step is not None
            steps.append(msgspec.structs.replace(node.step, id=qualified, depends_on=upstream))
            exits[local] = [qualified]
    needed = {d for n in by_id.values() for d in n.deps}
    sinks = [x for i in order if i not in needed for x in exits[i]]
    return steps, sinks
