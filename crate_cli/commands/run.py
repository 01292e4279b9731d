"""`crate run`: run a command with the secrets in its environment."""

from __future__ import annotations

import os

import click

from crate_cli.commands.options import (
    env_option,
    flush_notices,
    open_session,
    org_option,
    split_tags,
)
from crate_cli.errors import InvalidInput


@click.command(context_settings={"allow_interspersed_args": True})
@click.argument("names", nargs=-1)
@org_option
@env_option
@click.option(
    "--tags",
    "tags",
    multiple=True,
    metavar="A,B",
    help="Only secrets carrying every one of these tags.",
)
def run(names: tuple[str, ...], org: str | None, env: str | None, tags: tuple[str, ...]) -> None:
    """Run CMD with secrets (all, or NAMES) in its environment: crate run [NAME...] -- CMD ARGS...

    The command replaces crate (exec): its exit status, signals and terminal
    are its own. Secrets override variables of the same name.
    """
    from crate_cli import cli
    from crate_cli.client import EphemeralKey
    from crate_cli.runner import child_environment, exec_command

    command = cli.run_command
    if not command:
        raise InvalidInput("put the command after --: crate run [NAME...] -- CMD ARGS...")
    session = open_session()
    org_name = session.org(org)
    client = session.client(org_name)
    bits = int(session.settings.get("crypto.ephemeral_rsa_bits"))
    early = cli.early_ephemeral_key
    ephemeral = early if early is not None and early.bits == bits else EphemeralKey(bits)
    found = client.retrieve(session.env(env), list(names), split_tags(tags), ephemeral=ephemeral)
    flush_notices(session)
    exec_command(command, child_environment(os.environ, ((s.name, s.value) for s in found)))
