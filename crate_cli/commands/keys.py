"""`crate keys`: the master key's slots, and the env slot's value."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from crate_cli.commands.options import (
    console,
    json_option,
    org_option,
    print_json,
    slot_creation_options,
)
from crate_cli.errors import CrateError, InvalidInput
from crate_cli.session import Session, stdin_is_terminal
from crate_cli.vault.slots import SLOT_TYPES

if TYPE_CHECKING:
    from crate_cli.vault.audit import Action


@click.group()
def keys() -> None:
    """Manage how the master key is sealed."""


@keys.group()
def slots() -> None:
    """The key slots that each seal the master key."""


def _when(stamp: str | None) -> str:
    return (stamp or "-").replace("T", " ").rstrip("Z")[:19]


@slots.command("list")
@json_option
def slots_list(as_json: bool) -> None:
    """List slots: id, type, master key version, created, last used."""
    session = Session.for_terminal()
    rows = session.master.slot_report()
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title="key slots", title_justify="left")
    for column in ("id", "type", "master key", "created", "last used", "depends on"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["id"],
            r["type"],
            f"v{r['master_version']}" if r["master_version"] else "any",
            _when(r["created_at"]),
            _when(r["last_used"]),
            r["details"],
        )
    console().print(table)
    if not rows:
        click.echo("crate has no master key yet; create it with: crate init", err=True)


@keys.command("status")
@json_option
def status(as_json: bool) -> None:
    """How the master key is protected: versions, slots and plain warnings."""
    from crate_cli.vault.protection import assess

    session = Session.for_terminal()
    rows = session.master.slot_report()
    summary, warnings = assess(rows, str(session.home.keys_dir))
    orgs: list[dict[str, Any]] = [
        {
            "org": org,
            "data_keys": session.service.org_dek_usage(org),
            "rotation_due": session.service.rotation_due(org),
        }
        for org in session.storage.list_orgs()
    ]
    if as_json:
        versions: dict[int, dict[str, Any]] = {}
        for v in session.master.versions():
            versions[v.version] = {"version": v.version, "created_at": v.created_at, "slots": []}
        for r in rows:
            if r["master_version"] in versions:
                versions[r["master_version"]]["slots"].append(r)
        print_json(
            {
                "summary": summary,
                "warnings": warnings,
                "master_versions": [versions[k] for k in sorted(versions)],
                "organizations": orgs,
                "env_slot": bool(session.environ.get("CRATE_MASTER_KEY")),
            }
        )
        return
    console().print(_status_tree(session, rows, orgs), highlight=False)
    click.echo(summary)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)


def _status_tree(session: Session, rows: list[dict[str, Any]], orgs: list[dict[str, Any]]) -> Any:
    """`crate keys status` as a tree: master key versions and their slots,
    then each org's data keys."""
    from rich.markup import escape
    from rich.tree import Tree

    if session.local_store:
        tree = Tree(f"crate home {session.home.describe()}")
    else:
        from crate_cli.vault.storage.urls import redact_store_url

        tree = Tree(f"crate store {redact_store_url(session.store)}")
    for v in sorted(session.master.versions(), key=lambda v: v.version):
        current = (
            " (current)"
            if any(r["current"] for r in rows if r["master_version"] == v.version)
            else ""
        )
        branch = tree.add(f"master key v{v.version}{current}, created {_when(v.created_at)}")
        for r in rows:
            if r["master_version"] == v.version:
                branch.add(
                    escape(f"slot {r['id']}: {r['protection']}")
                    + (f" [dim]- {escape(r['details'])}[/dim]" if r["details"] else "")
                    + f" [dim](last used {_when(r['last_used'])})[/dim]"
                )
    if session.environ.get("CRATE_MASTER_KEY"):
        tree.add("env: CRATE_MASTER_KEY is set in this environment (nothing at rest)")
    for entry in orgs:
        due = (
            f" (data key rotation due {_when(entry['rotation_due'])})"
            if entry["rotation_due"]
            else ""
        )
        org_branch = tree.add(escape(f"organization {entry['org']}{due}"))
        for dek in entry["data_keys"]:
            org_branch.add(
                f"data key v{dek['version']}{' (current)' if dek['current'] else ''}, "
                f"wrapped by master key v{dek['master_version']}: "
                f"wraps {dek['wrapped_keys']} secret keys"
            )
    return tree


@keys.group()
def rotate() -> None:
    """Replace a key with a new version, without downtime."""


@rotate.command("master")
def rotate_master() -> None:
    """Make a new master key version and rewrap every org's keys under it.

    The new version is sealed in a slot like each slot of the current one
    (asking for a passphrase or PIN where a slot needs one). Each org is
    rewrapped in one transaction; an interrupted rotation is finished by
    running the command again. Old versions stay until crate keys prune.
    """
    session = Session.for_terminal()
    # One rotation at a time, across every process and replica on the store:
    # a slow one must not undo a later one.
    with session.storage.exclusive("rotate"):
        _rotate_master(session)


def _rotate_master(session: Session) -> None:
    master = session.master
    orgs = session.storage.list_orgs()
    current = master.current().version
    behind = [o for o in orgs if set(session.service.master_versions_used(o)) - {current}]
    if behind:
        click.echo(
            f"crate: resuming the rotation to master key v{current}: "
            f"{len(behind)} organization(s) still to rewrap",
            err=True,
        )
    else:
        record = master.rotate()
        current = record.version
        click.echo(
            f"crate: created master key v{current} in {len(record.slots)} slot(s) "
            f"({', '.join(s.type for s in record.slots)})",
            err=True,
        )
        behind = orgs
    for org in behind:
        count = session.service.rewrap_to_master(org, current)
        click.echo(f"crate: {org}: {count} keys rewrapped to master key v{current}", err=True)
    click.echo(
        f"crate: every organization now uses master key v{current}; crate keys prune removes "
        "the old version and its slots",
        err=True,
    )
    if session.environ.get("CRATE_MASTER_KEY"):
        click.echo(
            "crate: CRATE_MASTER_KEY holds an older version: export the new one with "
            "crate keys export-env",
            err=True,
        )
    from crate_cli.client.agent import status as agent_status

    if agent_status(session.home) is not None:
        click.echo(
            "crate: restart the agent (crate agent stop; crate agent start) and any crate "
            "server to use the new key",
            err=True,
        )


@rotate.command("org")
@org_option
def rotate_org(org: str | None) -> None:
    """Make a new data key for the organization and rewrap every secret key under it.

    One transaction: commands reading the vault meanwhile keep working and
    see either the old keys or the new ones; an interruption changes nothing.
    """
    import sys

    session = Session.for_terminal()
    org_name = session.org(org, local=True)
    progress = None
    if sys.stderr.isatty():
        from rich.progress import Progress

        bar = Progress(transient=True)
        task = bar.add_task(f"rewrapping the secret keys of {org_name}", total=None)
        bar.start()

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

    try:
        version, count = session.service.rotate_org(org_name, progress)
    finally:
        if progress is not None:
            bar.stop()
    click.echo(
        f"crate: organization {org_name!r} now uses data key v{version}; "
        f"{count} secret keys rewrapped (crate keys prune removes unused versions)",
        err=True,
    )


@keys.command("prune")
@json_option
def prune(as_json: bool) -> None:
    """Delete key versions nothing uses any more: org data keys, then master keys
    (with their slots). An old master key version still in use is kept, and
    the command names what holds it and exits 7."""
    from crate_cli.errors import Conflict

    session = Session.for_terminal()
    orgs = session.storage.list_orgs()
    removed = {org: session.service.prune_org_deks(org) for org in orgs}
    master = session.master
    current = master.current().version if master.exists() else 0
    used: dict[int, list[str]] = {}
    for org in orgs:
        for version, what in session.service.master_versions_used(org).items():
            used.setdefault(version, []).append(f"{org} ({', '.join(what)})")
    pruned_master, held = [], {}
    for record in master.versions():
        if record.version == current:
            continue
        if record.version in used:
            held[record.version] = used[record.version]
        else:
            master.remove_version(record.version)
            pruned_master.append(record.version)
    if pruned_master:
        _record(session, "prune", {"master_versions": pruned_master})
    if as_json:
        print_json({"data_keys": removed, "master_keys": pruned_master, "held": held})
    else:
        for org, versions in removed.items():
            if versions:
                shown = ", ".join(f"v{v}" for v in versions)
                click.echo(f"crate: {org}: removed data key {shown}", err=True)
        for version in pruned_master:
            click.echo(f"crate: removed master key v{version} and its slots", err=True)
        if not any(removed.values()) and not pruned_master and not held:
            click.echo("crate: nothing to prune: every key version is in use", err=True)
    if held:
        version, holders = min(held.items())
        raise Conflict(
            f"master key v{version} is still used by {'; '.join(holders)}",
            "finish the rotation first: crate keys rotate master",
        )


@slots.command("add")
@click.argument("slot_type", metavar="TYPE", type=click.Choice([*SLOT_TYPES, "env"]))
@slot_creation_options
def slots_add(slot_type: str, slot_options: dict[str, Any]) -> None:
    """Seal the current master key in one more slot of TYPE (unlocks it first)."""
    session = Session.for_terminal()
    slot = session.master.add_slot(slot_type, slot_options)
    click.echo(f"added {slot.type} slot {slot.id}", err=True)
    _record(session, "slot-add", {"slot": slot.id, "type": slot.type})


@slots.command("remove")
@click.argument("slot_id", metavar="ID")
def slots_remove(slot_id: str) -> None:
    """Remove slot ID; refused while it is the last one that unlocks its key."""
    session = Session.for_terminal()
    slot = session.master.remove_slot(slot_id)
    click.echo(f"removed {slot.type} slot {slot.id}", err=True)
    _record(session, "slot-remove", {"slot": slot.id, "type": slot.type})


def _record(session: Session, action: Action, details: dict[str, Any]) -> None:
    """Record a master key change in every org's audit log; the change itself
    is done, so an org whose log cannot take it gets a warning, not a failure."""
    for org in session.service.record_key_change(action, details):
        click.echo(
            f"crate: warning: could not record {action} in the audit log of {org!r}; "
            f"check it with: crate audit verify --org {org}",
            err=True,
        )


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
    value = session.master.export_env()
    _record(session, "key-export", {"master_version": session.master.current().version})
    click.echo(value)
