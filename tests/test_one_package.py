"""sp installs one import package, ``sp``, whose subpackages are the repository's folders.

The folders (``ledger/``, ``cli/``, ...) stay beside pyproject.toml and ``sp/<name>`` is a
relative symlink to each; the wheel holds them as real folders under ``sp/``. Whenever the
repository itself is on ``sys.path`` (pytest's rootdir, ``python -c`` run in a checkout, the
sandbox shim) the bare names import too, as second copies of the same modules with state of
their own: nothing may import them. Imports are absolute (``from sp.ledger import ...``, no
relative ones), so that one grep finds every user of a module.
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import importlib.util
import itertools
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.version import Version

from sp.runner.attempt import current_argv
from sp.security import sandbox
from tests.conftest import Sp

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "sp"
SKIP_DIRS = {"build", "dist", "__pycache__", "node_modules"}  # and every hidden folder
SUBPACKAGES = sorted(p.name for p in PACKAGE.iterdir() if p.is_symlink())
_NAMES = "|".join(SUBPACKAGES)
# import statements and `python -m` inside strings (code run by a subprocess, shell lines)
_CODE = re.compile(rf"(?m)(?:^|;)\s*(?:from\s+(?:{_NAMES})(?:\.\w+)*\s+import\b"
                   rf"|import\s+(?:{_NAMES})\b)")
_DASH_M = re.compile(rf"-m\s+(?:{_NAMES})\b")
# "runner.api", "triggers.webhook:build": a module path spelt out in a string
_DOTTED = re.compile(rf"((?:{_NAMES})(?:\.\w+)+)(?::\w+)?")
_PREFIX = re.compile(rf"(?:{_NAMES})(?:\.\w+)*\.")
_TEXT_IMPORT = re.compile(rf"\b(?:from\s+(?:{_NAMES})(?:\.\w+)*\s+import|import\s+(?:{_NAMES})"
                          rf"(?:\.\w+)*\s*(?:$|;|,|\bas\b))|-m\s+(?:{_NAMES})\b"
                          rf"|[\"'](?:{_NAMES})(?:\.\w+)*:\w+[\"']", re.MULTILINE)


def _walk(suffixes: tuple[str, ...]) -> Iterator[Path]:
    """The repository's own files (no virtualenv, caches, build output, or sp/'s links)."""
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                         and not d.endswith(".egg-info")
                         and not os.path.islink(os.path.join(root, d)))
        for name in sorted(files):
            if name.endswith(suffixes):
                yield Path(root, name)


def _is_module(dotted: str) -> bool:
    path = REPO.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _bare_uses(tree: ast.AST, strings: bool = True) -> Iterator[tuple[int, str]]:
    """(line, what) for each use of a bare top-level name, or relative import, in ``tree``;
    ``strings``: in its strings too (code run by subprocesses, argvs, module paths)."""
    for node in ast.walk(tree):
        if not strings and not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in SUBPACKAGES:
                    yield node.lineno, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                yield node.lineno, f"relative import from {'.' * node.level}{node.module or ''}"
            elif (node.module or "").split(".")[0] in SUBPACKAGES:
                yield node.lineno, f"from {node.module} import"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            for pattern in (_CODE, _DASH_M):
                for m in pattern.finditer(text):
                    yield node.lineno, f"{m.group(0).strip()!r} in a string"
            m = _DOTTED.fullmatch(text)
            if m and _is_module(m.group(1)):
                yield node.lineno, f"module path {text!r} in a string"
        elif isinstance(node, (ast.List, ast.Tuple)):
            items = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            for flag, module in itertools.pairwise(items):
                if flag == "-m" and isinstance(module, str) and (
                        module.split(".")[0] in SUBPACKAGES):
                    yield node.lineno, f"'-m', {module!r} in an argv"
        elif isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]  # f"cli.{name}"
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and (
                    _PREFIX.fullmatch(first.value)):
                yield node.lineno, f"module path {first.value!r}... in an f-string"


def test_sp_links_every_top_level_package_and_nothing_else() -> None:
    """Every top-level folder that is a package (tests aside) is one subpackage of sp, by a
    relative symlink of its own name, so a checkout moves as one piece."""
    folders = sorted(p.name for p in REPO.iterdir()
                     if p.is_dir() and not p.is_symlink() and (p / "__init__.py").is_file()
                     and p.name not in ("sp", "tests"))
    assert folders == SUBPACKAGES
    for name in SUBPACKAGES:
        assert os.readlink(PACKAGE / name) == f"../{name}"
    assert sorted(p.name for p in PACKAGE.iterdir() if not p.is_symlink()
                  and p.name != "__pycache__") == ["__init__.py"]
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text())) or ""
    for name in SUBPACKAGES:
        assert f":mod:`sp.{name}`" in doc


def test_no_code_imports_a_bare_top_level_name() -> None:
    """Code, tests and benchmarks import ``sp.<name>``: never ``ledger``, ``cli``... on their
    own (statements, deferred imports, code in strings, ``-m`` argvs, module-path strings),
    and never relatively."""
    found = []
    files = list(_walk((".py",)))
    assert len(files) > 200 and REPO / "bench" / "append.py" in files
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        # this file's own strings are the scanner's samples of what it must find
        uses = _bare_uses(tree, strings=path != Path(__file__).resolve())
        found += [f"{path.relative_to(REPO)}:{line}: {what}" for line, what in sorted(uses)]
    assert not found, "\n".join(found)


def test_the_scanner_sees_each_kind_of_bare_use() -> None:
    """The scan above is only as good as what it recognises."""
    code = '''
import ledger
import cli.main as m
from runner import api
from .events import Event
def f():
    from security.enter import main
x = "import sys; from runner import api"
y = [sys.executable, "-P", "-m", "actions.run"]
z = "triggers.webhook:build"
w = f"cli.{name}"
s = "python -m cli init"
'''
    assert sorted({line for line, _ in _bare_uses(ast.parse(code))}) == list(range(2, 6)) + list(
        range(7, 13))
    fine = '''
from sp.ledger import events
import sp.cli.main
x = "ledger.db"; y = "triggers.yaml"; z = "ledger.archived"; t = "actions"
u = [sys.executable, "-m", "sp.cli"]
'''
    assert list(_bare_uses(ast.parse(fine))) == []


def test_docs_and_scripts_name_the_package() -> None:
    """README snippets, the Makefile, demo.sh, CI and pyproject use ``sp.`` names as well."""
    files = [REPO / n for n in ("README.md", "Makefile", "demo.sh", "pyproject.toml")]
    files += [p for p in (REPO / ".ci").iterdir() if p.is_file()]
    files += list(_walk((".sh", ".md", ".toml", ".yaml", ".yml", ".cfg", ".ini")))
    found = []
    for path in dict.fromkeys(files):
        text = path.read_text()
        for m in _TEXT_IMPORT.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append(f"{path.relative_to(REPO)}:{line}: {m.group(0).strip()}")
    assert not found, "\n".join(found)


def test_a_command_recorded_under_the_old_module_name_runs_the_new_one() -> None:
    """A built-in type's argv recorded before sp was one package (queued, or a plan's recorded
    compensation) runs its module under the new name; nothing else is touched."""
    py = sys.executable
    assert current_argv([py, "-P", "-m", "actions.run", "modify_files", "apply", "{}"]) == [
        py, "-P", "-m", "sp.actions.run", "modify_files", "apply", "{}"]
    assert current_argv([py, "-P", "-m", "actions.preview", "undo", "{}"])[3] == (
        "sp.actions.preview")
    for argv in ([py, "-P", "-m", "sp.actions.run", "x"], [py, "-m", "pytest"],
                 ["/bin/echo", "-m", "actions.run"], ["sh", "-c", "python -m actions.run"],
                 [py, "-P", "-m"], ["true"]):
        assert current_argv(argv) == argv


def test_a_queued_action_recorded_with_the_old_module_name_still_runs(sp: Sp) -> None:
    """End to end: ``-P`` keeps the checkout off sys.path, so only the new name can import."""
    aid = sp("submit", "--", sys.executable, "-P", "-m", "actions.run").stdout.strip()
    sp("worker", "--until-idle")
    log = sp("logs", aid).stdout
    assert "usage: python -m sp.actions.run TYPE" in log, log
    assert "No module named" not in log


def test_sp_own_code_is_readable_where_its_links_lead(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Landlock rules apply to what a path resolves to: a subpackage linked from outside the
    folder that holds sp is a read root of its own (sp.security.enforce grants these to a
    sandboxed built-in type), one inside it is covered already."""
    parent, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    (parent / "sp").mkdir(parents=True)
    (parent / "inside").mkdir()
    (elsewhere / "outside").mkdir(parents=True)
    (parent / "sp" / "inside").symlink_to("../inside")
    (parent / "sp" / "outside").symlink_to("../../elsewhere/outside")
    (parent / "sp" / "__init__.py").write_text("")
    # this checkout: the repository holds every link's target
    assert [os.path.realpath(p) for p in sandbox.code_roots()] == [str(REPO)]
    monkeypatch.setattr(sandbox, "PACKAGE_PARENT", str(parent))
    assert sandbox.code_roots.__wrapped__() == (str(parent),
                                                os.path.realpath(elsewhere / "outside"))


def _offline_build() -> bool:
    """Whether this interpreter's setuptools can build the wheel without fetching anything
    (it has ``bdist_wheel`` from 70.1 on; before that, with the ``wheel`` package)."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    return (Version(importlib.metadata.version("setuptools")) >= Version("70.1")
            or importlib.util.find_spec("wheel") is not None)


@pytest.mark.slow
def test_the_wheel_installs_one_import_package(tmp_path: Path) -> None:
    """Built from a copy of the checkout (its links kept as links): the wheel's top-level names
    are ``sp`` and its .dist-info, every module of every folder is under ``sp/``, and both
    console scripts start ``sp.cli.main``."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".*", "build", "dist", "*.egg-info", "__pycache__", "tests"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "out")]
    if _offline_build():
        cmd.append("--no-build-isolation")
    r = subprocess.run([*cmd, str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp_path / "out").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        record = z.read(f"{dist_info}/RECORD").decode()
        scripts = z.read(f"{dist_info}/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"sp", dist_info}
    assert {line.split(",")[0].split("/")[0] for line in record.splitlines() if line} == {
        "sp", dist_info}
    modules = {f"sp/{p.relative_to(REPO)}" for name in SUBPACKAGES
               for p in (REPO / name).rglob("*.py") if "__pycache__" not in p.parts}
    assert {n for n in names if n.endswith(".py")} == modules | {"sp/__init__.py"}
    entry_points = configparser.ConfigParser()
    entry_points.read_string(scripts)
    assert dict(entry_points["console_scripts"]) == {
        "sp": "sp.cli.main:main", "systemprompt-os": "sp.cli.main:main"}
