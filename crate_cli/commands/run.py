"""`crate run`: run a command with the secrets in its environment.

`crate_cli.cli.main` runs `crate run ...` itself, without click (see
`run.args.parse_run_args`). This command is reached only when global options
come first (`crate --debug run ...`); it hands the same arguments to the
same parser, so both paths accept exactly the same options.
"""

from __future__ import annotations

import os

import click
from click.shell_completion import CompletionItem


def _after_dashes(incomplete: str) -> bool:
    """Whether `--` came before the word being completed. click's parser drops
    `--`; the words the shell sent (ending with that word) still have it."""
    words = os.environ.get("COMP_WORDS", "").split()
    if words and words[-1] == incomplete:
        words.pop()
    return "--" in words


class RunCommand(click.Command):
    """`crate run` parses its own options (run.args.RUN_OPTIONS); shell
    completion offers them from the same table, and nothing after `--`."""

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        from crate_cli.run.args import RUN_OPTIONS

        if _after_dashes(incomplete) or not incomplete.startswith("-"):
            return []
        return [
            CompletionItem(flag, help=text)
            for flag, _, _, _, text in RUN_OPTIONS
            if flag.startswith(incomplete)
        ]


def complete_value(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """The word after `--org`: the home's organizations."""
    from crate_cli.commands.options import complete_org

    if _after_dashes(incomplete) or ctx.params.get("args", ())[-1:] != ("--org",):
        return []
    return complete_org(ctx, param, incomplete)


@click.command(
    cls=RunCommand,
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED, shell_complete=complete_value)
@click.pass_obj
def run(obj: dict[str, object], args: tuple[str, ...]) -> None:
    """Run CMD with the secrets in its environment: crate run [OPTIONS] [NAME...] -- CMD ARGS..."""
    from crate_cli.run.command import run_command_line
    from crate_cli.session import Session

    command = obj.get("run_command")  # cli.main split it off at `--`
    run_command_line(
        list(args), command if isinstance(command, list) else None, Session.for_terminal
    )
