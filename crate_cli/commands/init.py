"""`crate init`: create the master key and settings."""

from __future__ import annotations

import click

from crate_cli.commands.options import pkcs11_options, slot_options
from crate_cli.context import Session
from crate_cli.errors import Conflict


@click.command()
@click.option(
    "--keystore",
    type=click.Choice(["auto", "file", "passphrase", "pkcs11"]),
    default="auto",
    show_default=True,
    help="What seals the master key. auto means file until hardware slots exist.",
)
@pkcs11_options
def init(keystore: str, pkcs11_module: str | None, pkcs11_token: str | None) -> None:
    """Create crate's home, master key v1 and settings."""
    session = Session.for_terminal()
    created, version = session.init(keystore, slot_options(pkcs11_module, pkcs11_token))
    slots = ", ".join(s.type for s in version.slots)
    if not created:
        wanted = "file" if keystore == "auto" else keystore
        if keystore != "auto" and wanted not in slots:
            raise Conflict(
                f"crate is already initialized at {session.home.describe()} "
                f"(master key v{version.version}, slots: {slots})",
                "adding another slot comes with key-slot management (crate keys slots add)",
            )
        click.echo(
            f"crate is already initialized at {session.home.describe()} "
            f"(master key v{version.version}, slots: {slots})",
            err=True,
        )
        return
    click.echo(f"crate initialized at {session.home.describe()} (slot: {slots})", err=True)
