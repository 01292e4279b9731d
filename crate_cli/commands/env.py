"""`crate env`: environments of an organization."""

from __future__ import annotations

import click

from crate_cli.commands.options import (
    json_option,
    org_option,
    print_json,
)
from crate_cli.session import Session


@click.group()
def env() -> None:
    """Manage environments (dev, staging, prod, ...)."""


@env.command("list")
@org_option
@json_option
def list_(org: str | None, as_json: bool) -> None:
    """List the environments of the organization."""
    session = Session.for_terminal()
    org_name = session.org(org)
    names = session.client(org_name).environments()
    if as_json:
        print_json(names)
        return
    for n in names:
        click.echo(n)


@env.command("create")
@click.argument("name")
@org_option
def create(name: str, org: str | None) -> None:
    """Create environment NAME."""
    session = Session.for_terminal()
    org_name = session.org(org)
    session.client(org_name).create_environment(name)
    click.echo(f"created environment {name!r} in {org_name!r}", err=True)


@env.command("delete")
@click.argument("name")
@org_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(name: str, org: str | None, yes: bool) -> None:
    """Delete environment NAME and every secret in it."""
    from crate_cli.commands.org import confirm_destruction

    session = Session.for_terminal()
    org_name = session.org(org)
    client = session.client(org_name)
    if name not in client.environments():
        from crate_cli.errors import NotFound

        raise NotFound(f"environment {name!r} does not exist in organization {org_name!r}")
    confirm_destruction(f"Delete environment {name!r} of {org_name!r} and all its secrets?", yes)
    removed = client.delete_environment(name)
    click.echo(f"deleted environment {name!r} ({removed} secrets)", err=True)
