"""`crate store`: what only the store's owner does to a PostgreSQL store."""

from __future__ import annotations

import click

from crate_cli.errors import InvalidInput
from crate_cli.session import Session


@click.group()
def store() -> None:
    """Manage the store a team's servers share (PostgreSQL)."""


@store.command("grant")
@click.argument("role")
@click.option("--show", is_flag=True, help="Print the statements that were run.")
def grant(role: str, show: bool) -> None:
    """Give ROLE, as the tables' owner, what a replica needs and no more.

    Replicas then connect as ROLE: they can add and read audit entries but
    never change, delete or truncate them, nor drop the trigger that guards
    them. Run it with the owner's --store URL, after the first use made the
    schema, and again after an upgrade."""
    session = Session.for_terminal()
    storage = session.storage
    run = getattr(storage, "grant_app_role", None)
    if run is None:
        raise InvalidInput(
            "only a PostgreSQL store has roles to grant to",
            "give the store: crate --store postgresql://OWNER@HOST/DB store grant ROLE",
        )
    storage.prepare()
    statements = run(role)
    if show:
        for statement in statements:
            click.echo(f"{statement};")
    click.echo(f"granted {role!r} what a replica needs on the store", err=True)
