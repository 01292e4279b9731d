"""`crate init`: create the master key and settings."""

from __future__ import annotations

from typing import Any

import click

from crate_cli.commands.options import slot_creation_options
from crate_cli.errors import Conflict
from crate_cli.session import KEYSTORES, Session, stdin_is_terminal


@click.command()
@click.option(
    "--keystore",
    type=click.Choice(KEYSTORES),
    envvar="CRATE_KEYSTORE",
    help="What seals the master key (env CRATE_KEYSTORE). Default auto: "
    "a TPM when one is reachable, else a secure OS keyring, else a key file.",
)
@slot_creation_options
def init(keystore: str | None, slot_options: dict[str, Any]) -> None:
    """Create crate's home, master key v1 and settings."""
    session = Session.for_terminal()
    created, version = session.init(keystore, slot_options)
    types = [s.type for s in version.slots]
    slots = ", ".join(types)
    where = f"{session.home.describe()} (master key v{version.version}, slots: {slots})"
    if not created:
        if keystore not in (None, "auto") and keystore not in types:
            raise Conflict(
                f"crate is already initialized at {where}",
                f"add a {keystore} slot to it with: crate keys slots add {keystore}",
            )
        click.echo(f"crate is already initialized at {where}", err=True)
        return
    click.echo(f"crate initialized at {session.home.describe()} (slot: {slots})", err=True)
    if (
        keystore in (None, "auto")
        and types != ["passphrase"]
        and stdin_is_terminal()
        and click.confirm(
            "Add a passphrase as a recovery slot, in case this machine's keystore is lost?",
            default=True,
            err=True,
        )
    ):
        slot = session.master.add_slot("passphrase")
        click.echo(f"added passphrase slot {slot.id}", err=True)
