"""`crate secrets`: set, get, list, fetch, delete, history, rollback, import."""

from __future__ import annotations

import sys
from typing import Any

import click

from crate_cli.client.secrets import SecretsClient
from crate_cli.commands.options import (
    console,
    env_option,
    json_option,
    org_option,
    print_json,
    split_tags,
    tags_option,
)
from crate_cli.errors import InvalidInput
from crate_cli.session import Session, read_stdin, stdin_is_terminal
from crate_cli.vault.names import check_secret_name, check_value


@click.group()
def secrets() -> None:
    """Store and read secrets."""


def _client(org: str | None, env: str | None) -> tuple[Session, SecretsClient, str]:
    session = Session.for_terminal()
    org_name = session.org(org)
    client = session.client(org_name)
    return session, client, session.env(env)


def _read_stdin(keep_newline: bool) -> bytes:
    data = read_stdin()
    if not keep_newline:
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
    return data


def _parse_set_args(
    args: tuple[str, ...], keep_newline: bool, max_bytes: int
) -> list[tuple[str, str]]:
    """NAME VALUE | NAME - | NAME (prompt or stdin) | A=1 B=2 ..."""
    if not args:
        raise InvalidInput("give NAME VALUE, NAME - (stdin), NAME (prompt) or NAME=VALUE ...")
    if "=" not in args[0] and len(args) <= 2:
        name = check_secret_name(args[0])
        if len(args) == 2 and args[1] != "-":
            raw = args[1].encode("utf-8", "surrogateescape")
        elif len(args) == 1 and stdin_is_terminal():
            raw = click.prompt(
                f"Value for {name}", hide_input=True, err=True, default="", show_default=False
            ).encode("utf-8")
            if not raw:
                raise InvalidInput(
                    f"no value for {name}: nothing was typed; nothing was stored",
                    f"`crate secrets set {name} -` stores an empty value",
                )
        else:
            raw = _read_stdin(keep_newline)
            if len(args) == 1 and not raw:
                # Not asked for explicitly (`NAME -`): more likely a script
                # without input than a wish to blank the secret.
                raise InvalidInput(
                    f"no value for {name}: stdin was empty; nothing was stored",
                    f"give it as NAME VALUE, or pipe it in; `crate secrets set {name} -` "
                    "stores an empty value",
                )
        return [(name, check_value(name, raw, max_bytes))]
    pairs: list[tuple[str, str]] = []
    for arg in args:
        name, sep, value = arg.partition("=")
        if not sep:
            raise InvalidInput(
                f"argument {len(pairs) + 1} is not NAME=VALUE",
                "give NAME VALUE for one secret, or NAME=VALUE for each of several",
            )
        check_secret_name(name)
        if any(n == name for n, _ in pairs):
            raise InvalidInput(f"secret {name} is given more than once")
        pairs.append((name, check_value(name, value.encode("utf-8", "surrogateescape"), max_bytes)))
    return pairs


@secrets.command("set")
@click.argument("args", nargs=-1)
@org_option
@env_option
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="TAG",
    help="Tag the secret (repeatable); replaces its tags. Without it tags are kept.",
)
@click.option("--keep-newline", is_flag=True, help="Keep a trailing newline read from stdin.")
@json_option
def set_(
    args: tuple[str, ...],
    org: str | None,
    env: str | None,
    tags: tuple[str, ...],
    keep_newline: bool,
    as_json: bool,
) -> None:
    """Store secrets: NAME VALUE, NAME - (stdin), NAME (hidden prompt), or A=1 B=2.

    Several NAME=VALUE pairs are stored in one transaction. A VALUE on the
    command line lands in shell history: prefer stdin or the prompt.
    """
    session, client, env_name = _client(org, env)
    values = _parse_set_args(
        args, keep_newline, int(session.settings.get("secrets.max_value_bytes"))
    )
    results = client.store(env_name, values, split_tags(tags) if tags else None)
    warn_about(results)
    if as_json:
        print_json(results)
        return
    for r in results:
        click.echo(f"set {r['name']} in {client.org}/{env_name} (version {r['version']})", err=True)


def warn_about(results: list[dict[str, Any]]) -> None:
    """The server's warnings about what it stored (a `${` that is no reference)."""
    from crate_cli.display import safe_text

    for r in results:
        for warning in r.get("warnings") or []:
            click.echo(f"crate: warning: {safe_text(str(warning), 300)}", err=True)


@secrets.command("get")
@click.argument("name")
@org_option
@env_option
@click.option(
    "--version", "version", type=click.IntRange(min=1, max=2**63 - 1), help="An older version."
)
def get(name: str, org: str | None, env: str | None, version: int | None) -> None:
    """Print the value of NAME and nothing else (a newline only on a terminal)."""
    _, client, env_name = _client(org, env)
    (secret,) = client.retrieve(env_name, [name], versions={name: version} if version else None)
    out = sys.stdout
    out.write(secret.value)
    if out.isatty():
        out.write("\n")
    out.flush()


def _short_time(stamp: str) -> str:
    return stamp.replace("T", " ")[:19]


@secrets.command("list")
@org_option
@env_option
@tags_option("Only secrets carrying every one of these tags.")
@json_option
def list_(org: str | None, env: str | None, tags: tuple[str, ...], as_json: bool) -> None:
    """List secrets (names, versions, tags; never values)."""
    _, client, env_name = _client(org, env)
    rows = client.list_secrets(env_name, split_tags(tags))
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title=f"{client.org}/{env_name}", title_justify="left")
    for column in ("name", "version", "tags", "updated", "actor"):
        table.add_column(column, justify="right" if column == "version" else "left")
    for r in rows:
        table.add_row(
            r["name"],
            str(r["version"]),
            ", ".join(r["tags"]),
            _short_time(r["updated_at"]),
            r["actor"],
        )
    console().print(table)


@secrets.command("fetch")
@click.argument("names", nargs=-1)
@org_option
@env_option
@tags_option("Only secrets carrying every one of these tags.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["env", "dotenv", "json", "shell"]),
    default="env",
    show_default=True,
    help="Output format.",
)
@json_option
@click.option("--raw", is_flag=True, help="Do not resolve ${NAME} and ${env.NAME} references.")
@click.option(
    "--fallback-only",
    is_flag=True,
    help="Remote: use the offline copy of the last retrieval; do not contact the server.",
)
@click.option("--no-fallback", is_flag=True, help="Remote: fail rather than use the offline copy.")
@click.option(
    "--fallback-max-age",
    metavar="DURATION",
    help="Remote: the oldest offline copy to use, e.g. 24h (default 7d).",
)
def fetch(
    names: tuple[str, ...],
    org: str | None,
    env: str | None,
    tags: tuple[str, ...],
    fmt: str,
    as_json: bool,
    raw: bool,
    fallback_only: bool,
    no_fallback: bool,
    fallback_max_age: str | None,
) -> None:
    """Print secrets with their values (all, or NAMES) in a chosen format.

    References to other secrets (${NAME}, ${env.NAME}) are resolved unless --raw.
    """
    from crate_cli.client.fallback import fallback_policy
    from crate_cli.formats import dotenv_docker_incompatible, dotenv_interpolated, render

    policy = fallback_policy(fallback_only, no_fallback, fallback_max_age)
    session = Session.for_terminal()
    org_name = session.org(org)
    client = session.client(org_name, policy)
    env_name = session.env(env)
    found = client.retrieve(env_name, list(names), split_tags(tags))
    pairs = [(s.name, s.value) for s in found]
    if not raw:
        from crate_cli.run.references import resolve_pairs

        pairs = resolve_pairs(client, env_name, pairs)
    fmt = "json" if as_json else fmt
    if fmt == "dotenv":
        odd = dotenv_docker_incompatible(pairs)
        if odd:
            click.echo(
                f"crate: warning: docker --env-file would read {', '.join(odd)} with their "
                "quotes (it cannot read quoted or multi-line values)",
                err=True,
            )
        expanding = dotenv_interpolated(pairs)
        if expanding:
            click.echo(
                f"crate: warning: python-dotenv expands ${{...}} in {', '.join(expanding)}; "
                "load the file with interpolate=False to read them as stored",
                err=True,
            )
    sys.stdout.write(render(pairs, fmt))
    sys.stdout.flush()


@secrets.command("delete")
@click.argument("name")
@org_option
@env_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(name: str, org: str | None, env: str | None, yes: bool) -> None:
    """Delete NAME (a new, empty version; the history is kept)."""
    from crate_cli.commands.org import confirm_destruction

    _, client, env_name = _client(org, env)
    check_secret_name(name)
    confirm_destruction(f"Delete {name} from {client.org}/{env_name}?", yes)
    r = client.delete(env_name, name)
    click.echo(f"deleted {name} from {client.org}/{env_name} (version {r['version']})", err=True)


@secrets.command("history")
@click.argument("name")
@org_option
@env_option
@json_option
def history(name: str, org: str | None, env: str | None, as_json: bool) -> None:
    """Show the versions of NAME: times, actors, tags (no values)."""
    _, client, env_name = _client(org, env)
    versions = client.history(env_name, name)
    if as_json:
        print_json(versions)
        return
    from rich.table import Table

    table = Table(title=f"{name} in {client.org}/{env_name}", title_justify="left")
    for column in ("version", "action", "time", "actor", "tags"):
        table.add_column(column)
    for v in versions:
        table.add_row(
            str(v["version"]),
            v["action"],
            _short_time(v["created_at"]),
            v["actor"],
            ", ".join(v["tags"]),
        )
    console().print(table)


@secrets.command("rollback")
@click.argument("name")
@click.option(
    "--to",
    "to",
    type=click.IntRange(min=1, max=2**63 - 1),
    required=True,
    metavar="N",
    help="The version whose value becomes current again.",
)
@org_option
@env_option
def rollback(name: str, to: int, org: str | None, env: str | None) -> None:
    """Write version N's value of NAME as a new version."""
    _, client, env_name = _client(org, env)
    r = client.rollback(env_name, name, to)
    click.echo(f"rolled {name} back to version {to}'s value (now version {r['version']})", err=True)


@secrets.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@org_option
@env_option
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Tag every imported secret.")
@json_option
def import_(
    file: str, org: str | None, env: str | None, tags: tuple[str, ...], as_json: bool
) -> None:
    """Import a .env FILE (or - for stdin) in one transaction."""
    from crate_cli.formats import parse_dotenv

    if file == "-":
        raw = read_stdin()
    else:
        try:
            with open(file, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise InvalidInput(f"cannot read {file}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"{file} is not UTF-8 text") from None
    session, client, env_name = _client(org, env)
    max_bytes = int(session.settings.get("secrets.max_value_bytes"))
    merged: dict[str, str] = {}
    for name, value in parse_dotenv(text):
        check_secret_name(name)
        merged[name] = check_value(name, value.encode("utf-8"), max_bytes)
    if not merged:
        raise InvalidInput(f"{file} holds no NAME=VALUE lines; nothing was imported")
    results = client.store(env_name, list(merged.items()), split_tags(tags) if tags else None)
    warn_about(results)
    created = sum(1 for r in results if r["version"] == 1)
    summary = {"imported": len(results), "new": created, "updated": len(results) - created}
    if as_json:
        print_json(summary)
        return
    click.echo(
        f"imported {len(results)} secrets into {client.org}/{env_name} "
        f"({created} new, {len(results) - created} updated)",
        err=True,
    )
