"""`crate keys`: the master key's slots, and the env slot's value."""

from __future__ import annotations

from typing import Any

import click

from crate_cli.commands.options import json_option, pkcs11_options, print_json, slot_options
from crate_cli.context import Session, stdin_is_terminal
from crate_cli.errors import CrateError, InvalidInput


@click.group()
def keys() -> None:
    """Manage how the master key is sealed."""


@keys.group()
def slots() -> None:
    """The key slots that each seal the master key."""


@slots.command("list")
@json_option
def slots_list(as_json: bool) -> None:
    """List slots: id, type, created, master key version."""
    session = Session.for_terminal()
    rows: list[dict[str, Any]] = [
        {"id": s.id, "type": s.type, "created_at": s.created_at, "master_version": v.version}
        for v in session.master.versions()
        for s in v.slots
    ]
    if session.environ.get("CRATE_MASTER_KEY"):
        rows.append({"id": "env", "type": "env", "created_at": None, "master_version": None})
    if as_json:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="key slots", title_justify="left")
    for column in ("id", "type", "created", "master key"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["id"],
            r["type"],
            str(r["created_at"] or "-").replace("T", " ")[:19],
            f"v{r['master_version']}" if r["master_version"] else "from CRATE_MASTER_KEY",
        )
    Console().print(table)


@slots.command("add")
@click.argument(
    "slot_type", metavar="TYPE", type=click.Choice(["file", "passphrase", "pkcs11", "env"])
)
@pkcs11_options
def slots_add(slot_type: str, pkcs11_module: str | None, pkcs11_token: str | None) -> None:
    """Seal the current master key in one more slot of TYPE (unlocks it first)."""
    session = Session.for_terminal()
    slot = session.master.add_slot(slot_type, slot_options(pkcs11_module, pkcs11_token))
    click.echo(f"added {slot.type} slot {slot.id}", err=True)


@slots.command("remove")
@click.argument("slot_id", metavar="ID")
def slots_remove(slot_id: str) -> None:
    """Remove slot ID; refused while it is the last one that unlocks its key."""
    session = Session.for_terminal()
    slot = session.master.remove_slot(slot_id)
    click.echo(f"removed {slot.type} slot {slot.id}", err=True)


@keys.command("export-env")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def export_env(yes: bool) -> None:
    """Print the master key for CRATE_MASTER_KEY (CI machines, containers).

    Whoever holds this value can open every vault of this home: put it only
    in a secret store of the CI system.
    """
    if not yes:
        if not stdin_is_terminal():
            raise InvalidInput(
                "refusing to print the master key without confirmation", "pass --yes"
            )
        if not click.confirm(
            "This prints the master key itself: anyone who sees it can open every vault. Continue?",
            err=True,
        ):
            raise CrateError("nothing was printed")
    session = Session.for_terminal()
    click.echo(session.master.export_env())
