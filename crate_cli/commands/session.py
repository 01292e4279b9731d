"""`crate session`: the org and env commands use by default."""

from __future__ import annotations

import click

from crate_cli.commands.options import env_option, json_option, org_option, print_json
from crate_cli.config import Settings
from crate_cli.errors import NotFound
from crate_cli.session import Session


@click.group()
def session() -> None:
    """Show or change the session's defaults."""


@session.group("org")
def session_org() -> None:
    """The session's organization."""


@session_org.command("set")
@click.argument("name")
def org_set(name: str) -> None:
    """Make NAME the default organization."""
    s = Session.for_terminal()
    if not s.storage.org_exists(name):
        raise NotFound(f"organization {name!r} does not exist", "create it with: crate org create")
    Settings.update(s.home, "session.org", name)
    click.echo(f"session organization: {name}", err=True)


@session.group("env")
def session_env() -> None:
    """The session's environment."""


@session_env.command("set")
@click.argument("name")
@org_option
def env_set(name: str, org: str | None) -> None:
    """Make NAME the default environment (it must exist in the organization)."""
    s = Session.for_terminal()
    org_name = s.org(org)
    if name not in s.client(org_name).environments():
        raise NotFound(f"environment {name!r} does not exist in organization {org_name!r}")
    Settings.update(s.home, "session.env", name)
    click.echo(f"session environment: {name}", err=True)


@session.command("show")
@org_option
@env_option
@json_option
def show(org: str | None, env: str | None, as_json: bool) -> None:
    """Show the server or agent, org and env commands would use, the home and the keystore."""
    s = Session.for_terminal()
    versions = s.master.versions()
    keystore = (
        ", ".join(sorted({slot.type for slot in s.master.current().slots}))
        if versions
        else "not initialized"
    )
    remote = s.remote
    if remote is not None:
        org = org or remote.org
    info = {
        "server": remote.server if remote is not None else None,
        "agent": s.mode == "agent",
        "org": org or str(s.settings.get("session.org") or "") or None,
        "env": s.env(env),
        "home": str(s.home.data_dir),
        "settings": str(s.home.settings_path),
        "keystore": keystore,
        "master_key_version": s.master.current().version if versions else None,
    }
    if as_json:
        print_json(info)
        return
    for key, value in info.items():
        click.echo(f"{key + ':':<20}{value if value is not None else '-'}")
