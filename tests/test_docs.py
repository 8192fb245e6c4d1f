"""Docs that run: the README's Layout, its command examples and every command's help are checked
against the code, so that none of them can drift from it unnoticed.

* **Layout.** The packages are read from the file system (each ``sp/<name>`` with an
  ``__init__.py``), never from a list here, so a new package is checked the day it appears. Each
  has a docstring whose first line is its one-line summary, and the README's Layout block lists
  it with exactly that summary (reST ````code```` written as Markdown ```code```).
* **Examples.** Every ```` ```sh ```` block of the README runs, as one bash script, against a
  fresh home in ``tmp_path`` (``sp init`` done), with the installed ``sp`` first on ``PATH`` and
  a scratch working directory holding a copy of ``examples/``. Each command must exit 0, or
  the code its comment documents as ``(exit N)``. A block that cannot run in a test (it runs
  until stopped, needs another shell, writes outside the test's folders) is preceded by the
  marker ``<!-- docs-test: skip: <why> -->``; the reason is required.
* **Help.** Every command of click's tree (groups' subcommands included) has help with an
  ``Example:`` block kept verbatim (``\\b``), and the README names it (``sp <command path>``).

Running the examples was chosen over generating a command reference from ``--help``: the
README's command table is written for readers (it says what each option is for, not only that
it exists), and the help check above already covers "every command is documented"; what only a
run can catch is an example that no longer works.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import click
import pytest

from sp.cli.main import cli, load_all

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
# The console script of the installed sp: beside the interpreter in a venv (make test), else
# the one on PATH.
SP_BIN = Path(sys.executable).with_name("sp")
if not SP_BIN.exists():
    SP_BIN = Path(shutil.which("sp") or "sp")
SKIP = re.compile(r"<!--\s*docs-test:\s*skip:\s*(?P<why>.*?)\s*-->")
EXPECT = re.compile(r"#.*\(exit (?P<code>\d+)\)")


# --- Layout -----------------------------------------------------------------------------------

def _packages() -> list[str]:
    """The subpackages of ``sp``, from the file system (``sp/<name>`` -> ``../<name>``)."""
    return sorted(p.name for p in (REPO / "sp").iterdir() if (p / "__init__.py").is_file())


def _summary(package: str) -> str:
    """The one-line summary of a package: its docstring's first line, read without importing
    it (``sp.security`` must stay import-free, and nothing here needs the code to run)."""
    init = REPO / "sp" / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(), str(init)))
    assert doc, f"{package}/__init__.py has no docstring"
    first, _, _ = doc.partition("\n\n")
    assert "\n" not in first, (f"{package}/__init__.py: the docstring's first paragraph must be "
                               f"one line, the summary the README's Layout repeats: {first!r}")
    return first


def _layout() -> dict[str, str]:
    """The README's Layout block: folder name -> the text beside it."""
    text = README.read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 2)[1]
    entries: dict[str, str] = {}
    for line in block.splitlines():
        name, _, rest = line.partition("/")
        assert name and rest.startswith(" "), f"README Layout: not 'folder/  summary': {line!r}"
        entries[name] = rest.strip()
    return entries


@pytest.mark.parametrize("package", _packages())
def test_each_package_has_a_one_line_summary(package: str) -> None:
    assert _summary(package).endswith(".")


def test_the_readme_layout_lists_every_package_with_its_summary() -> None:
    layout = _layout()
    for package in _packages():
        assert package in layout, f"README Layout does not list the package {package}/"
        assert layout[package] == _summary(package).replace("``", "`"), (
            f"README Layout's {package}/ line differs from {package}/__init__.py's summary")


def test_the_readme_layout_names_only_folders_that_exist() -> None:
    """The entries that are not packages (``sp/``, ``tests/``, ``bench/``) exist as folders, so
    a folder that goes away takes its line with it."""
    for name in _layout():
        assert (REPO / name).is_dir(), f"README Layout lists {name}/, which does not exist"


# --- Help -------------------------------------------------------------------------------------

def _commands() -> Iterator[tuple[str, click.Command]]:
    """Every command of the tree, by its path under ``sp`` (``"plan status"``)."""
    load_all()

    def walk(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[str, click.Command]]:
        if path:
            yield " ".join(path), command
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                yield from walk(sub, (*path, name))

    yield from walk(cli, ())


COMMANDS = dict(_commands())


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(path: str) -> None:
    command = COMMANDS[path]
    raw = command.help or ""
    assert raw.strip(), f"sp {path} has no help"
    # click keeps a paragraph that follows a line of only \b (the docstring's "\b", a
    # backspace) as written: the example's lines stay lines instead of being re-wrapped.
    block = re.search(r"\x08\n\s*Example:\n(?P<lines>(?:[ \t]+\S.*(?:\n|$))+)", raw)
    assert block, f"sp {path}: no 'Example:' block under a \\b line"
    assert re.search(r"\b(sp|systemprompt-os) ", block["lines"]), (
        f"sp {path}: its example runs no sp (nor systemprompt-os) command")
    with click.Context(command, info_name=f"sp {path}") as ctx:
        assert "Example:" in command.get_help(ctx)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_is_in_the_readme(path: str) -> None:
    assert re.search(rf"\bsp {re.escape(path)}\b", README.read_text()), (
        f"the README never names `sp {path}`")


# --- Examples ---------------------------------------------------------------------------------

class Example(NamedTuple):
    line: int                 # of the opening fence in README.md
    commands: list[str]       # each complete (continuations and multi-line quotes joined)
    skip: str | None          # the marker's reason


def _split(block: str) -> list[str]:
    """Shell commands of a block: a line ending in ``\\`` or inside an open quote continues."""
    commands: list[str] = []
    pending = ""
    for line in block.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if not pending.strip():
            pending = ""
            continue
        if pending.endswith("\\"):
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an unclosed quote: the command goes on on the next line
            continue
        commands.append(pending)
        pending = ""
    assert not pending, f"unterminated command: {pending!r}"
    return commands


def _examples() -> list[Example]:
    lines = README.read_text().splitlines()
    found: list[Example] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```sh":
            end = lines.index("```", i + 1)
            marker = SKIP.search(lines[i - 1]) if i else None
            found.append(Example(i + 1, _split("\n".join(lines[i + 1:end])),
                                 marker["why"] if marker else None))
            i = end
        i += 1
    return found


EXAMPLES = _examples()


def test_every_skipped_example_says_why() -> None:
    assert EXAMPLES, "no ```sh block found in README.md"
    for example in EXAMPLES:
        assert example.skip is None or len(example.skip) > 10, example


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"README.md:{e.line}" for e in EXAMPLES])
def test_a_readme_example_runs(example: Example, tmp_path: Path) -> None:
    if example.skip:
        pytest.skip(example.skip)
    work = tmp_path / "work"
    shutil.copytree(REPO / "examples", work / "examples")
    codes = tmp_path / "codes"
    # One script, so that a variable set by one command (an id) reaches the next; each
    # command's exit status is written down before the next one runs.
    script = "".join(f"{cmd}\necho $? >>{shlex.quote(str(codes))}\n"
                     for cmd in example.commands)
    env = {**os.environ, "SP_HOME": str(tmp_path / "home"), "NO_COLOR": "1",
           "PATH": f"{SP_BIN.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # A fresh home, created as a reader's first `sp init` would: the read-only commands of an
    # example (status, sql, ...) refuse a home that has no ledger yet.
    subprocess.run([str(SP_BIN), "init"], env=env, check=True, capture_output=True, timeout=60)
    run = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True,
                         text=True, timeout=120)
    got = [int(c) for c in codes.read_text().split()] if codes.exists() else []
    want = [int(m["code"]) if (m := EXPECT.search(cmd)) else 0 for cmd in example.commands]
    assert got == want, "\n".join([f"README.md:{example.line}: exit codes {got}, want {want}",
                                   *example.commands, "--- stdout", run.stdout,
                                   "--- stderr", run.stderr])


def test_the_example_reader_joins_continued_lines_and_reads_documented_codes() -> None:
    """The harness itself: a ``\\`` continuation and a quote left open go on to the next line,
    and a comment's ``(exit N)`` is the code that command must exit with."""
    commands = _split('sp a \\\n  --b\nsp sql "SELECT 1\n  FROM x"\n\nsp cancel X   # (exit 2)\n')
    assert commands == ['sp a \\\n  --b', 'sp sql "SELECT 1\n  FROM x"', "sp cancel X   # (exit 2)"]
    codes = [int(m["code"]) if (m := EXPECT.search(c)) else 0 for c in commands]
    assert codes == [0, 0, 2]
