"""`crate org`: create, list and delete organizations."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from crate_cli.commands.options import json_option, org_option, print_json
from crate_cli.config import Settings
from crate_cli.errors import Conflict, CrateError, InvalidInput, NotFound
from crate_cli.session import Session, stdin_is_terminal

if TYPE_CHECKING:
    from crate_cli.vault.masterkey import MasterKeys


@click.group()
def org() -> None:
    """Manage organizations (one encrypted vault file each)."""


@org.command("create")
@click.argument("name")
def create(name: str) -> None:
    """Create organization NAME with fresh keys."""
    from crate_cli.vault.orgs import create_org

    session = Session.for_terminal()
    session.init()
    create_org(session.storage, session.master, name, session.caller())
    click.echo(f"created organization {name!r}", err=True)


@org.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List organizations; * marks the session's."""
    session = Session.for_terminal()
    current = str(session.settings.get("session.org") or "")
    names = session.storage.list_orgs()
    if as_json:
        print_json([{"name": n, "current": n == current} for n in names])
        return
    for n in names:
        click.echo(f"{'*' if n == current else ' '} {n}")


@org.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(name: str, yes: bool) -> None:
    """Delete organization NAME and every secret in it."""
    from crate_cli.errors import NotFound
    from crate_cli.vault.orgs import delete_org

    session = Session.for_terminal()
    if not session.storage.org_exists(name):
        raise NotFound(f"organization {name!r} does not exist")
    confirm_destruction(f"Delete organization {name!r} and all its secrets?", yes)
    delete_org(session.storage, name)
    if session.settings.get("session.org") == name:
        Settings.update(session.home, "session.org", "")
    click.echo(f"deleted organization {name!r}", err=True)


@org.command("export-store")
@click.option(
    "--to", "target", required=True, metavar="URL", help="The store to copy into (postgresql://…)."
)
@click.option(
    "--org",
    "orgs",
    multiple=True,
    metavar="ORG",
    help="Copy only this org (repeatable; default all).",
)
def export_store(target: str, orgs: tuple[str, ...]) -> None:
    """Copy organizations into another store, every key, version and audit
    entry as they are (moving a team's orgs to PostgreSQL).

    The master-key registry goes along when the target has none. Each copy
    appears whole or not at all, and its audit chain is verified there."""
    from crate_cli.session import open_storage
    from crate_cli.vault.masterkey import MasterKeys
    from crate_cli.vault.orgs import copy_org, verify_copy
    from crate_cli.vault.storage.urls import redact_store_url

    session = Session.for_terminal()
    if target.lower() == session.store.lower() or (session.local_store and target == "sqlite"):
        raise InvalidInput("--to names the store crate is using already", "give another store")
    source = session.storage
    names = list(orgs) or source.list_orgs()
    for name in names:
        if not source.org_exists(name):
            raise NotFound(f"organization {name!r} does not exist")
    shown = redact_store_url(target)
    destination = open_storage(session.home, target)
    there = [name for name in names if destination.org_exists(name)]
    if there:
        raise Conflict(
            f"{shown} has organization {there[0]!r} already; nothing was copied",
            "copy the others with --org NAME",
        )
    registry = destination.master_registry()
    if session.master.share_with(registry):
        click.echo(f"copied the master-key registry to {shown}", err=True)
    copied_master = MasterKeys(
        session.home, environ=session.environ, prompt=session.prompt, registry=registry
    )
    for name in names:
        copy_org(source, destination, name)
        entries = verify_copy(destination, copied_master, name)
        click.echo(
            f"copied organization {name!r} to {shown}: audit log verified ({entries} entries)",
            err=True,
        )
    _advise_slots(copied_master)


def _advise_slots(master: MasterKeys) -> None:
    """Say which slots of the copied registry replicas on other hosts can use."""
    host_bound = sorted(
        {
            s.type
            for v in master.versions()
            for s in v.slots
            if s.type in ("file", "keyring", "tpm2")
        }
    )
    if host_bound:
        click.echo(
            f"crate: note: {', '.join(host_bound)} slots unlock on this host only; for replicas "
            "elsewhere add a passphrase or pkcs11 slot (crate --store URL keys slots add TYPE) or "
            "give them CRATE_MASTER_KEY (crate keys export-env)",
            err=True,
        )


@org.command("allow-name")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@org_option
def allow_name(names: tuple[str, ...], org: str | None) -> None:
    """Allow secrets named NAME (PATH, LD_PRELOAD, PYTHONPATH ...) in an organization.

    Such names steer how the processes that `crate run` starts load code,
    which shell runs or where programs read their settings, so crate refuses
    them unless an admin allows each one. Recorded in the audit log.
    """
    _set_allowed(names, org, True)


@org.command("disallow-name")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@org_option
def disallow_name(names: tuple[str, ...], org: str | None) -> None:
    """Stop allowing secrets named NAME: crate run refuses them again."""
    _set_allowed(names, org, False)


def _set_allowed(names: tuple[str, ...], org: str | None, allow: bool) -> None:
    session = Session.for_terminal()
    chosen = session.org(org)
    client = session.client(chosen)
    for name in names:
        changed = client.allow_name(name, allow)
        state = "allowed" if allow else "no longer allowed"
        note = "" if changed else " (already so)"
        click.echo(f"{name} is {state} in organization {chosen!r}{note}", err=True)


@org.command("allowed-names")
@org_option
@json_option
def allowed_names(org: str | None, as_json: bool) -> None:
    """List the steering names an admin allowed, with who and when."""
    session = Session.for_terminal()
    chosen = session.org(org)
    rows = session.client(chosen).allowed_names()
    if as_json:
        print_json(rows)
        return
    from crate_cli.display import safe_text

    for row in rows:
        click.echo(safe_text(f"{row['name']}  allowed {row['allowed_at']} by {row['actor']}"))
    if not rows:
        click.echo(f"no steering names are allowed in organization {chosen!r}", err=True)


@org.command("fingerprint")
@org_option
@json_option
def fingerprint(org: str | None, as_json: bool) -> None:
    """The fingerprint of an organization's key, to check a teammate's login.

    Run it where the vault is (the machine of `crate server`); a teammate
    compares it with what `crate login` shows, or passes it with
    `crate login --fingerprint`.
    """
    from crate_cli.client.remote import fingerprint as shown

    session = Session.for_terminal()
    chosen = session.org(org, local=True)
    kid = session.service.public_key(chosen)["key_id"]
    if as_json:
        print_json({"organization": chosen, "fingerprint": shown(kid)})
        return
    click.echo(shown(kid))


def confirm_destruction(question: str, yes: bool) -> None:
    """Ask on a terminal; without one, insist on --yes."""
    if yes:
        return
    if not stdin_is_terminal():
        raise InvalidInput("refusing to delete without confirmation", "pass --yes")
    if not click.confirm(question, err=True):
        raise CrateError("nothing was deleted")
