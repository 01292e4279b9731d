"""`crate run`: run a command with the secrets in its environment.

The common forms never reach this module: `crate_cli.cli.main` parses them
without click (see `runner.parse_run_args`). This command serves `--help`
and reports usage errors; the work is `runner.run_with_secrets` either way.
"""

from __future__ import annotations

import click

from crate_cli.commands.options import env_option, org_option, split_tags, tags_option


@click.command()
@click.argument("names", nargs=-1)
@org_option
@env_option
@tags_option("Only secrets carrying every one of these tags.")
def run(names: tuple[str, ...], org: str | None, env: str | None, tags: tuple[str, ...]) -> None:
    """Run CMD with secrets (all, or NAMES) in its environment: crate run [NAME...] -- CMD ARGS...

    The command replaces crate (exec): its exit status, signals and terminal
    are its own. Secrets override variables of the same name.
    """
    from crate_cli import cli
    from crate_cli.runner import RunArgs, run_with_secrets

    run_with_secrets(RunArgs(list(names), org, env, split_tags(tags), cli.run_command))
