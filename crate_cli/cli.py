"""The root `crate` command: lazy subcommands and one error handler.

Subcommand modules are imported only when their command runs, so `crate run`
pays for neither rich nor the other commands. `crate run` also starts its
ephemeral RSA key generation before click is even imported (see `main`).
"""

from __future__ import annotations

import sys
from typing import Any

# name -> (module, attribute): each is a click command or group.
COMMANDS = {
    "init": ("crate_cli.commands.init", "init"),
    "org": ("crate_cli.commands.org", "org"),
    "env": ("crate_cli.commands.env", "env"),
    "session": ("crate_cli.commands.session", "session"),
    "secrets": ("crate_cli.commands.secrets", "secrets"),
    "run": ("crate_cli.commands.run", "run"),
    "keys": ("crate_cli.commands.keys", "keys"),
    "server": ("crate_cli.commands.server", "server"),
    "token": ("crate_cli.commands.token", "token"),
    "store": ("crate_cli.commands.store", "store"),
    "login": ("crate_cli.commands.login", "login"),
    "logout": ("crate_cli.commands.login", "logout"),
    "agent": ("crate_cli.commands.agent", "agent"),
    "audit": ("crate_cli.commands.audit", "audit"),
    "version": ("crate_cli.commands.version", "version"),
    "completion": ("crate_cli.commands.completion", "completion"),
}

# Commands that retrieve secrets: main() starts their ephemeral key first.
RETRIEVING = (["run"], ["secrets", "get"], ["secrets", "fetch"])
# The root command's options that take a value (`crate --store URL run`).
ROOT_VALUE_OPTIONS = ("--store",)


def _print_version() -> None:
    from crate_cli.version import version_line

    sys.stdout.write(version_line() + "\n")


def _show_version(ctx: Any, param: Any, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        _print_version()
        ctx.exit()


_root: Any = None


def root_command() -> Any:
    """The root click group (built once: `crate completion` needs it too)."""
    global _root
    if _root is None:
        _root = _build_root()
    return _root


def _build_root() -> Any:
    import importlib

    import click

    class LazyGroup(click.Group):
        def list_commands(self, ctx: click.Context) -> list[str]:
            return sorted(COMMANDS)

        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            target = COMMANDS.get(cmd_name)
            if target is None:
                return None
            command: click.Command = getattr(importlib.import_module(target[0]), target[1])
            return command

    @click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.option(
        "--version",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_show_version,
        help="Show the version and exit.",
    )
    @click.option("--debug", is_flag=True, help="Show tracebacks of unexpected errors.")
    @click.option(
        "--store",
        metavar="URL",
        help="Where the vaults are kept: sqlite (the home's files, the default) or "
        "postgresql://... for a team server (env CRATE_STORE; setting store).",
    )
    @click.pass_context
    def crate(ctx: click.Context, debug: bool, store: str | None) -> None:
        """crate: a local-first secrets manager for developers.

        \b
        crate secrets set NAME VALUE      store a secret (sealed, encrypted at rest)
        crate run -- CMD ARGS...          run CMD with the secrets in its environment
        """
        ctx.ensure_object(dict)["debug"] = debug
        if store is not None:
            # Every Session of this command sees it, before CRATE_STORE and the
            # setting; not an environment variable, which `crate run`'s command
            # would inherit.
            from crate_cli.session import Session

            Session.store_option = store

    return crate


def restore_environment(environ: Any) -> None:
    """Undo what the frozen binary's bootloader added to the environment.

    PyInstaller's bootloader puts the bundle's library folder first in
    LD_LIBRARY_PATH (keeping the user's value in LD_LIBRARY_PATH_ORIG) and
    sets _PYI_* variables, then re-executes itself. This process has loaded
    with them already; the commands crate starts must not see them: the
    bundle's libraries would shadow the system's (bash, git, a nested crate).
    """
    original = environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is not None:
        environ["LD_LIBRARY_PATH"] = original
    else:
        environ.pop("LD_LIBRARY_PATH", None)
    for name in [n for n in environ if n.startswith("_PYI_") or n == "_MEIPASS2"]:
        del environ[name]


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and turn CrateErrors into exit codes."""
    if getattr(sys, "frozen", False):
        import os

        restore_environment(os.environ)
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:  # before click: `crate --version` is a start-up probe
        _print_version()
        return
    own = args[: args.index("--")] if "--" in args else args  # crate's, not a command's
    debug = "--debug" in own
    from crate_cli.errors import CrateError, ExitCode

    try:
        _dispatch(args, own)
    except CrateError as e:
        if debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write(e.render())
        sys.exit(int(e.exit_code))
    except KeyboardInterrupt:
        sys.exit(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (`crate secrets list | head`): not an error.
        # What is still buffered goes to /dev/null: the flush at exit must not
        # fail again (the frozen binary turns that into exit status 1).
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.stderr.close()
        sys.exit(0)
    except SystemExit:
        raise
    except Exception as e:
        if debug:
            raise
        sys.stderr.write(
            f"crate: internal error ({type(e).__name__}); rerun with --debug for details\n"
        )
        sys.exit(ExitCode.ERROR)


def _dispatch(args: list[str], own: list[str]) -> None:
    """Run the command `args` names; `own` are the arguments before `--`."""
    words = _command_words(own)
    if any(words[: len(c)] == c for c in RETRIEVING):
        import gc

        from crate_cli.client import ephemeral

        # Short-lived (`crate run` execs): collecting reference cycles
        # among the imports and the secrets would only cost time. A
        # process that stays (supervise) turns it back on.
        gc.disable()

        # Key generation releases the GIL: it overlaps everything below.
        ephemeral.prestart()
    run_command = None
    if words[:1] == ["run"]:
        # `crate run` parses its own options (run/args.py), not click; the
        # command after `--` is split off here (click would drop `--`) and
        # reaches the click command (`crate --debug run`) in its context.
        cut = args.index("--") if "--" in args else len(args)
        run_command = args[cut + 1 :] or None
        if args[:1] == ["run"]:
            from crate_cli.run.command import run_command_line
            from crate_cli.session import Session

            run_command_line(args[1:cut], run_command, Session.for_terminal)
            return
        args = args[:cut]
    _click_main(args, run_command)


def _command_words(own: list[str]) -> list[str]:
    """The words of `own` that name the command and its arguments: neither
    options nor the value of a root option (`crate --store URL run`)."""
    words: list[str] = []
    value_next = False
    for arg in own:
        if value_next:
            value_next = False
        elif not words and arg in ROOT_VALUE_OPTIONS:
            value_next = True
        elif not arg.startswith("-"):
            words.append(arg)
    return words


def _usage_message(error: Any) -> str:
    """click's message, except that an unknown option is named only when it looks
    like one: `crate secrets set PASS -s3cr3t` must not print the password."""
    import re

    import click

    if isinstance(error, click.NoSuchOption):
        if re.fullmatch(r"--?[a-z][a-z-]{0,30}", error.option_name):
            return f"no such option: {error.option_name}"
        return (
            "an argument starting with '-' is not an option of this command; "
            "put values that start with '-' after --"
        )
    # One line: click's "Choose from:" lists come on several.
    message: str = " ".join(error.format_message().split())
    return message


def _click_main(args: list[str], run_command: list[str] | None = None) -> None:
    import os

    import click

    from crate_cli.errors import CrateError, ExitCode, InvalidInput

    root = root_command()
    if "_CRATE_COMPLETE" in os.environ:
        # A shell asking for completions (`crate completion`): click answers and exits.
        root.main(args=args, prog_name="crate", standalone_mode=False)
    try:
        # Not click's main(): it turns a reader that went away (EPIPE) into
        # exit status 1, where crate's is 0 (see main). The rest is the same.
        with root.make_context("crate", args, obj={"run_command": run_command}) as ctx:
            root.invoke(ctx)
    except (click.exceptions.Abort, EOFError, KeyboardInterrupt):
        sys.stderr.write("crate: aborted\n")
        sys.exit(ExitCode.INTERRUPTED)
    # click's own errors are shown as crate's: the same lines, from the same render.
    except click.UsageError as e:
        command = e.ctx.command_path if e.ctx is not None else "crate"
        usage = InvalidInput(_usage_message(e), f"see '{command} --help'")
        sys.stderr.write(usage.render())
        sys.exit(usage.exit_code)
    except click.ClickException as e:
        sys.stderr.write(CrateError(e.format_message()).render())
        sys.exit(ExitCode.USAGE if e.exit_code == 2 else e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
