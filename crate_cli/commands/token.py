"""`crate token`: API tokens for `crate server` (DESIGN §5)."""

from __future__ import annotations

import click

from crate_cli.commands.options import (
    console,
    json_option,
    org_option,
    print_json,
    split_tags,
)
from crate_cli.session import Session
from crate_cli.vault.keys import ROLES


@click.group()
def token() -> None:
    """Create, list and revoke API tokens for crate server."""


@token.command("create")
@click.argument("name")
@click.option(
    "--role",
    required=True,
    type=click.Choice(ROLES),
    help="admin: everything; writer: store, delete, read; reader: list and read.",
)
@click.option(
    "--env", "envs", multiple=True, metavar="ENV", help="Limit to these environments (repeatable)."
)
@click.option(
    "--tags", "tags", multiple=True, metavar="A,B", help="Limit to secrets carrying one of these."
)
@click.option("--expires", metavar="DURATION", help="Expire after e.g. 12h, 30d (default never).")
@org_option
@json_option
def create(
    name: str,
    role: str,
    envs: tuple[str, ...],
    tags: tuple[str, ...],
    expires: str | None,
    org: str | None,
    as_json: bool,
) -> None:
    """Create token NAME and print it once: store it now, it cannot be shown again."""
    from datetime import timedelta

    from crate_cli import clock
    from crate_cli.durations import parse_duration
    from crate_cli.vault import tokens
    from crate_cli.vault.keys import local_actor

    expires_at = ""
    if expires is not None:
        seconds = parse_duration(expires, "--expires")
        expires_at = clock.format_time(clock.now() + timedelta(seconds=seconds))
    session = Session.for_terminal()
    org_name = session.org(org, local=True)  # tokens live in the local vault
    keys = session.service.org(org_name)
    secret, info = tokens.create(
        keys, name, role, list(envs), split_tags(tags), expires_at, local_actor(), clock.utc_now()
    )
    if as_json:
        print_json({**info.to_wire(), "token": secret})
        return
    click.echo(secret)
    scope = []
    if info.envs:
        scope.append("environments " + ", ".join(info.envs))
    if info.tags:
        scope.append("tags " + ", ".join(info.tags))
    limits = f" limited to {'; '.join(scope)}" if scope else ""
    until = f", expires {info.expires_at}" if info.expires_at else ""
    click.echo(
        f"crate: created {role} token {name!r} for {org_name!r}{limits}{until}; "
        "it is shown only this once",
        err=True,
    )


@token.command("list")
@org_option
@json_option
def list_(org: str | None, as_json: bool) -> None:
    """List the organization's tokens (names and scopes, never the tokens)."""
    from crate_cli.clock import utc_now
    from crate_cli.vault import tokens

    session = Session.for_terminal()
    org_name = session.org(org, local=True)  # tokens live in the local vault
    found = tokens.list_tokens(session.service.org(org_name))
    now = utc_now()
    if as_json:
        print_json([{**t.to_wire(), "expired": t.expired(now)} for t in found])
        return
    if not found:
        click.echo(f"no tokens in {org_name!r}; create one with: crate token create NAME", err=True)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "ROLE", "ENVIRONMENTS", "TAGS", "EXPIRES", "CREATED BY"):
        table.add_column(column)
    for t in found:
        expiry = t.expires_at or "never"
        if t.expired(now):
            expiry += " (expired)"
        table.add_row(
            t.name, t.role, ",".join(t.envs) or "all", ",".join(t.tags) or "all", expiry, t.actor
        )
    console(soft_wrap=True).print(table)


@token.command("revoke")
@click.argument("name")
@org_option
def revoke(name: str, org: str | None) -> None:
    """Revoke token NAME; the server refuses it from its next request."""
    from crate_cli.vault import tokens

    session = Session.for_terminal()
    org_name = session.org(org, local=True)  # tokens live in the local vault
    tokens.revoke(session.service.org(org_name), name, session.service.caller)
    click.echo(f"crate: revoked token {name!r} of {org_name!r}", err=True)
