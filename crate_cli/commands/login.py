"""`crate login` and `crate logout`: use a crate server instead of the local vault."""

from __future__ import annotations

import click

from crate_cli.context import Session
from crate_cli.errors import InvalidInput, NotFound


def _credentials_place(session: Session) -> str:
    """Where the token goes: the secure OS keystore when one answers, else a 0600 file."""
    if (session.environ.get("CRATE_KEYSTORE") or "auto") == "file":
        return "file"
    from crate_cli.vault.slots import provider
    from crate_cli.vault.slots.base import SlotContext

    ctx = SlotContext(home=session.home, environ=session.environ, prompt=None)
    return "keyring" if provider("keyring").probe(ctx) is None else "file"


@click.command()
@click.option("--server", "server", required=True, metavar="URL", help="https://HOST:PORT")
@click.option(
    "--token",
    "token_source",
    metavar="-",
    help="Read the token from stdin ('-'); without it, a hidden prompt asks.",
)
@click.option("--ca-file", metavar="FILE", help="Trust this CA for the server's certificate.")
def login(server: str, token_source: str | None, ca_file: str | None) -> None:
    """Log in to a crate server: later commands use it instead of the local vault.

    The token is checked against the server, then kept in the OS keystore
    (or a 0600 file where there is no secure one).
    """
    from pathlib import Path

    from crate_cli.context import read_stdin, stdin_is_terminal
    from crate_cli.remote import TOKEN_LABEL, Credentials, Login, remove_login, write_login
    from crate_cli.transport.http import HttpTransport, check_server_url
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
    who = HttpTransport(server, token, ca_file).request("GET", "/whoami")
    place = _credentials_place(session)
    remove_login(session.home)  # the previous token may be kept somewhere else
    Credentials(session.home, place).set(TOKEN_LABEL, token)
    org = who.get("organization")
    write_login(session.home, Login(server, org, ca_file, place))
    where = "the OS keyring" if place == "keyring" else "a 0600 file"
    scope = ", ".join(who.get("environments") or []) or "all environments"
    click.echo(
        f"crate: logged in to {server} as {who.get('actor')} ({who.get('role')} of {org!r}, "
        f"{scope}); token kept in {where}",
        err=True,
    )


@click.command()
def logout() -> None:
    """Forget the server and its token; commands use the local vault again."""
    from crate_cli.remote import remove_login

    session = Session()
    login = remove_login(session.home)
    if login is None:
        click.echo("crate: not logged in", err=True)
        return
    click.echo(f"crate: logged out of {login.server}", err=True)
