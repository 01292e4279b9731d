"""`crate login` and `crate logout`: use a crate server instead of the local vault."""

from __future__ import annotations

import click

from crate_cli.errors import InvalidInput, NotFound
from crate_cli.session import Session


@click.command()
@click.option("--server", "server", required=True, metavar="URL", help="https://HOST:PORT")
@click.option(
    "--token",
    "token_source",
    metavar="-",
    help="Read the token from stdin ('-'); without it, a hidden prompt asks.",
)
@click.option("--ca-file", metavar="FILE", help="Trust this CA for the server's certificate.")
@click.option(
    "--fingerprint",
    metavar="SHA256:...",
    help="The org key's fingerprint to expect (crate org fingerprint, where the server runs).",
)
def login(
    server: str, token_source: str | None, ca_file: str | None, fingerprint: str | None
) -> None:
    """Log in to a crate server: later commands use it instead of the local vault.

    The token is checked against the server, then kept in the OS keystore
    (or a 0600 file where there is no secure one). The organization's key is
    pinned: values are sealed to it and every answer must be signed by it.
    Give its fingerprint with --fingerprint; without it the key is trusted on
    first use and its fingerprint shown, and a key that differs from the one
    pinned before is refused (exit 5).
    """
    from pathlib import Path

    from crate_cli.client.remote import FINGERPRINT_ENV, expected_fingerprint, log_in
    from crate_cli.client.remote import fingerprint as shown
    from crate_cli.client.transport.http import check_server_url
    from crate_cli.session import read_stdin, stdin_is_terminal
    from crate_cli.vault.tokens import looks_like_token

    server = check_server_url(server)
    if token_source not in (None, "-"):
        raise InvalidInput(
            "--token takes only '-' (read stdin): a token on the command line would "
            "stay in your shell history",
            'echo "$TOKEN" | crate login --server URL --token -',
        )
    if ca_file is not None:
        if not Path(ca_file).is_file():
            raise NotFound(f"no CA file {ca_file}")
        ca_file = str(Path(ca_file).absolute())
    if token_source == "-" or not stdin_is_terminal():
        token = read_stdin().decode("utf-8", "replace").strip()
    else:
        token = click.prompt("API token", hide_input=True, err=True).strip()
    if not looks_like_token(token):
        raise InvalidInput("that is not a crate API token (crate_ and 43 letters or digits)")
    session = Session()
    expected = expected_fingerprint(fingerprint) or expected_fingerprint(
        session.environ.get(FINGERPRINT_ENV), FINGERPRINT_ENV
    )
    done = log_in(session.home, server, token, ca_file, expected, session.credentials_place)
    who, org = done.who, done.org
    where = "the OS keyring" if done.place == "keyring" else "a 0600 file"
    scope = ", ".join(who.get("environments") or []) or "all environments"
    click.echo(
        f"crate: logged in to {server} as {who.get('actor')} ({who.get('role')} of {org!r}, "
        f"{scope}); token kept in {where}",
        err=True,
    )
    if done.first_use:
        click.echo(
            f"crate: trusting organization {org!r}'s key {shown(done.pin.kid)} on first use; "
            "compare it with `crate org fingerprint` where the server runs (or log in with "
            "--fingerprint)",
            err=True,
        )
    else:
        click.echo(f"crate: organization {org!r}'s key is {shown(done.pin.kid)}", err=True)


@click.command()
def logout() -> None:
    """Forget the server, its token and its offline copies; commands use the
    local vault again. The org keys pinned for it stay (see crate login)."""
    from crate_cli.client.remote import remove_login

    session = Session()
    login = remove_login(session.home)
    if login is None:
        click.echo("crate: not logged in", err=True)
        return
    click.echo(
        f"crate: logged out of {login.server}; its token and offline copies are gone", err=True
    )
