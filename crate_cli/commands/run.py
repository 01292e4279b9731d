"""`crate run`: run a command with the secrets in its environment.

`crate_cli.cli.main` runs `crate run ...` itself, without click (see
`runner.parse_run_args`). This command is reached only when global options
come first (`crate --debug run ...`); it hands the same arguments to the
same parser, so both paths accept exactly the same options.
"""

from __future__ import annotations

import os
import sys

import click


@click.command(
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(args: tuple[str, ...]) -> None:
    """Run CMD with the secrets in its environment: crate run [OPTIONS] [NAME...] -- CMD ARGS..."""
    from crate_cli import cli
    from crate_cli.runner import parse_run_args, run_help, run_with_secrets

    parsed = parse_run_args(list(args), os.environ, cli.run_command is not None)
    if parsed is None:
        sys.stdout.write(run_help())
        return
    run_with_secrets(parsed._replace(command=cli.run_command))
