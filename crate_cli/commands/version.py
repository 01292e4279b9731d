"""`crate version`: the version, the build and the runtime under it."""

from __future__ import annotations

import click

from crate_cli.commands.options import json_option, print_json


@click.command("version")
@json_option
def version(as_json: bool) -> None:
    """Show crate's version, commit, build date and the runtime under it."""
    from crate_cli.vault.storage.sqlite import library_version
    from crate_cli.version import report

    data = report(library_version())
    if as_json:
        print_json(data)
        return
    components = data.pop("components")
    for key, value in data.items():
        shown = {True: "yes", False: "no", None: "unknown"}.get(value, value)
        click.echo(f"{key.replace('_', ' '):<22}{shown}")
    for name, found in components.items():
        click.echo(f"{name:<22}{found or 'not installed'}")
