"""`crate run`: run a command with the secrets in its environment.

`crate_cli.cli.main` runs `crate run ...` itself, without click (see
`runner.parse_run_args`). This command is reached only when global options
come first (`crate --debug run ...`); it hands the same arguments to the
same parser, so both paths accept exactly the same options.
"""

from __future__ import annotations

import click


@click.command(
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(args: tuple[str, ...]) -> None:
    """Run CMD with the secrets in its environment: crate run [OPTIONS] [NAME...] -- CMD ARGS..."""
    from crate_cli import cli
    from crate_cli.runner import run_command_line

    run_command_line(list(args), cli.run_command)
