"""The ``sp`` group, its context object, output helpers and the one place errors are mapped.

Exit codes:

====  ===================================================================================
0     success
1     an action or a check failed (``sp wait``, ``sp verify``, ``sp replay --check``); the
      ledger is damaged, gone or tampered with (named, never 70 or 75); the disk is full
2     bad usage or bad input: unknown option, malformed value or file, unknown action,
      a transition the lifecycle forbids. Nothing was written.
70    internal error (a bug): rerun with ``--debug`` or ``SP_DEBUG=1`` for the traceback
75    temporary: the ledger stayed locked, or another writer won a race; safe to retry
141   the reader of stdout went away (``sp status | head -1``): quiet, as a tool killed
      by SIGPIPE
====  ===================================================================================
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any, TypeVar

import click

from sp.ledger.errors import SpError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = {"ok": 0, "failed": 1, "usage": 2, "internal": 70, "temporary": 75}


# Control characters a hostile file or argument may carry into a message (a newline would make
# two lines of one error; an ESC would drive the terminal): shown escaped, as \n or \x1b.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)] if c != 0x09}
_CONTROL.update({c: f"\\u{c:04x}" for c in (0x2028, 0x2029)})
_CONTROL.update({0x0A: "\\n", 0x0D: "\\r"})


def one_line(message: str) -> str:
    """A message as one printable line (control characters escaped)."""
    return message.translate(_CONTROL)


class SpClickError(click.ClickException):
    """An :class:`SpError` on its way to the user: click prints ``Error: <message>``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(one_line(message))
        self.exit_code = exit_code  # type: ignore[misc]


def _exit_code_for(err: SpError) -> int:
    code = getattr(err, "exit_code", 1)
    if code in (3, 4):  # not found / invalid transition: bad input, per DESIGN
        return 2
    return int(code)


class App:
    """Per-invocation context: where the home is, how to render."""

    def __init__(self, home: str | None, debug: bool) -> None:
        from sp.commands.home import Home

        self.home = Home(home)
        self.debug = debug
        self._stores: list[Any] = []
        self.new_home_expected = False  # sp init: creating the home is what was asked
        self.created_home = False

    def store(self, write: bool = True, projections: bool = True) -> Any:
        """Open the ledger (created on first use); closed when the command ends.

        A home with no ledger yet is a mistyped ``--home``/``SP_HOME`` as often as a new
        one: a read-only command (``write=False``) refuses it rather than create it, and a
        writing one says that it created it (``sp init`` does not), in one line on stderr.

        :raises UsageError: ``write=False`` and the home has no ledger.
        """
        new = self._no_ledger_yet()
        if new and not write:
            from sp.ledger.errors import UsageError

            raise UsageError(f"no ledger in {self.home.root}: nothing was ever recorded there "
                             "(check --home / SP_HOME, or create it with sp init)")
        store = self.home.open(write=write, projections=projections)
        self._stores.append(store)
        # Said once the command ends (SpGroup.invoke): as its own line after a success, or in
        # the error's one line, so that bad input is still exactly one line.
        self.created_home = self.created_home or (new and not self.new_home_expected)
        return store

    def home_note(self) -> str:
        """What to tell about a home this command created, or ''."""
        if not self.created_home:
            return ""
        return (f"created a new home at {self.home.root} (it had no ledger: if that is not "
                "the home you meant, check --home / SP_HOME)")

    def _no_ledger_yet(self) -> bool:
        """Neither a ledger nor the marker of one (a wiped ledger is refused by the home)."""
        from sp.commands.ledger_marker import read_marker

        if self.home.ledger_path.exists():
            return False
        return not self.home.root.is_dir() or read_marker(self.home.root) is None

    def close(self) -> None:
        for store in self._stores:
            store.close()
        self._stores.clear()


pass_app = click.make_pass_decorator(App)


class SpGroup(click.Group):
    """Turns domain errors into one line and an exit code; hides tracebacks unless --debug.
    Loads a command's module when the command is looked up (:data:`COMMAND_MODULES`)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            module = COMMAND_MODULES.get(cmd_name)
            if module is not None:
                _load(module)
                for extra in GROUP_EXTRAS.get(cmd_name, ()):
                    _load(extra)
            else:
                load_all()  # an unknown name: click's suggestions need them all
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        load_all()
        return super().list_commands(ctx)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """sp's own options (``sp --bogus``): a usage error is one line too."""
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise SpClickError(f"{ctx.command_path}: {e.format_message()} (see --help)",
                               e.exit_code) from None

    def invoke(self, ctx: click.Context) -> Any:
        told = False
        try:
            return super().invoke(ctx)
        except SpError as e:
            told = True
            raise SpClickError(_with_home_note(ctx, str(e)), _exit_code_for(e)) from None
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            # One line, like every other error (click would add its usage and a hint).
            where = f"{e.ctx.command_path}: " if e.ctx is not None else ""
            raise SpClickError(f"{where}{e.format_message()} (see --help)", e.exit_code
                               ) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as e:
            if isinstance(e, BrokenPipeError) and _reader_gone(sys.stdout):
                raise _quiet_pipe_exit() from None
            # A full disk or a damaged ledger met outside the ledger's own translation (a log,
            # a blob, a driver call): still the user's one line, exit 1, whatever --debug says.
            known = _environmental(ctx, e)
            if known is not None:
                told = True
                raise SpClickError(_with_home_note(ctx, str(known)), _exit_code_for(known)
                                   ) from None
            if _debug(ctx):
                raise
            raise SpClickError(
                f"internal error: {type(e).__name__}: {e} (rerun with --debug for details)", 70
            ) from None
        finally:
            app = ctx.find_object(App)
            if not told and app is not None and app.home_note():
                click.echo(f"sp: warning: {app.home_note()}", err=True)


def _with_home_note(ctx: click.Context, message: str) -> str:
    """An error's one line, saying too when this command created the home (a mistyped
    ``--home`` and a bad input at once)."""
    app = ctx.find_object(App)
    note = app.home_note() if app is not None else ""
    return f"{message} (sp {note})" if note else message


def _environmental(ctx: click.Context, e: BaseException) -> SpError | None:
    from sp.ledger.errors import translate

    app = ctx.find_object(App)
    where = str(app.home.ledger_path) if app is not None else "the ledger"
    for cause in (e, e.__cause__, e.__context__):  # a wrapped OSError counts too
        if cause is not None and (found := translate(cause, where)) is not None:
            return found
    return _damage_behind(app)


def _damage_behind(app: App | None) -> SpError | None:
    """A damaged index answers queries wrongly without an error (a stream's rows missing):
    what fails next is an invariant of sp. Before calling that a bug, ask SQLite."""
    if app is None or not app._stores:
        return None
    from sp.ledger.integrity import damage_error

    try:
        return damage_error(app._stores[0])
    except Exception:  # the check is a courtesy on the way out: never hide the first error
        return None


# `sp status | head -1`: the reader left, the command did its work. Exit as a classic tool
# killed by SIGPIPE would (128 + 13: what a shell shows for cat or grep there), and quietly.
EXIT_PIPE = 141


def _reader_gone(stream: IO[str]) -> bool:
    """Whether ``stream`` is a pipe whose reading end is closed (poll says POLLERR), so that
    an EPIPE of some other pipe or socket (a bug, or a peer) is not mistaken for it."""
    import select

    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (OSError, ValueError):  # no file descriptor (a test's captured stdout)
        return False


def _quiet_pipe_exit() -> click.exceptions.Exit:
    """Point stdout at /dev/null (so that the flush at exit cannot fail again, as the Python
    docs recommend) and the exit that says the reader left."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return click.exceptions.Exit(EXIT_PIPE)


def _debug(ctx: click.Context) -> bool:
    app = ctx.find_object(App)
    return bool(os.environ.get("SP_DEBUG")) or (app is not None and app.debug)


@click.group(cls=SpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False), envvar="SP_HOME",
              help="Home folder (ledger.db, logs/). Default: $SP_HOME, /var/lib/systemprompt-os "
                   "for root, else $XDG_DATA_HOME/systemprompt-os.")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.version_option(package_name="systemprompt-os", prog_name="sp")
@click.pass_context
def cli(ctx: click.Context, home: str | None, debug: bool) -> None:
    """sp: a durable, auditable action runner for this device.

    Every action's lifecycle is recorded in one append-only, hash-chained SQLite event log;
    status, metrics and rollback plans are projections rebuilt from it.

    \b
    Example:
      sp submit --name backup -- tar czf /tmp/b.tgz /etc
      sp worker --until-idle
      sp status
    """
    app = App(home, debug)
    ctx.obj = app
    ctx.call_on_close(app.close)


def format_option(*choices: str) -> Callable[[F], F]:
    names = choices or ("table", "json")
    return click.option(
        "--format", "fmt", type=click.Choice(names), default=names[0], show_default=True,
        help="Output format; json is one stable document on stdout.",
    )


def echo_json(value: Any, out: IO[str] | None = None) -> None:
    import msgspec

    click.echo(msgspec.json.encode(value).decode(), file=out)


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
               wide: Sequence[str] = ()) -> None:
    """A plain aligned table (no colour: safe for pipes and cron mail).

    Cells are cut at 60 characters except in the ``wide`` columns (the last one, usually).
    """
    cells = [
        [_cell(v, h in wide) for h, v in zip(headers, row, strict=True)] for row in rows
    ]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    click.echo(line([h.upper() for h in headers]))
    for row in cells:
        click.echo(line(row))


def _cell(value: Any, wide: bool = False) -> str:
    if value is None:
        return "-"
    text = str(value).replace("\n", " ")
    return text if wide or len(text) <= 60 else text[:57] + "..."


def warn(message: str) -> None:
    click.echo(message, err=True)


# Which module of cli/ holds each top-level command. A command's module is imported only when
# that command runs, so a cron line pays for its own command, not for all of them; --help and
# completion load them all. tests/test_cli.py checks this table against the modules' COMMANDS.
COMMAND_MODULES = {
    "submit": "action", "status": "action", "cancel": "action", "restart": "action",
    "wait": "action", "audit": "action", "logs": "action", "checkpoint": "action",
    "progress": "action", "agent": "agent", "action": "agent", "init": "ledger_cmds",
    "replay": "ledger_cmds", "verify": "ledger_cmds", "sql": "ledger_cmds", "worker": "worker",
    "tick": "worker", "pause": "worker", "resume": "worker", "schedule": "schedule",
    "plan": "plan", "rollback": "plan", "trigger": "trigger", "daemon": "trigger",
    "deploy": "deploy", "metrics": "monitor", "monitor": "live", "report": "report",
    "gc": "retention", "archive": "retention",
}
# Modules that add subcommands to another module's group (`sp action watch`, `sp action
# monitor`, `sp action resources` live beside the monitoring code): loaded with that group.
GROUP_EXTRAS = {"action": ("monitor", "live")}
_LOADED: set[str] = set()


def _load(module_name: str) -> None:
    if module_name in _LOADED:
        return
    import importlib

    module = importlib.import_module(f"sp.cli.{module_name}")
    for command in module.COMMANDS:
        cli.add_command(command)
    _LOADED.add(module_name)


def load_all() -> None:
    """Register every command (for --help, completion, and anything listing them)."""
    for name in dict.fromkeys(COMMAND_MODULES.values()):
        _load(name)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="sp")
