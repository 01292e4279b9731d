"""`crate audit`: read, verify and switch the organization's audit log (DESIGN §5)."""

from __future__ import annotations

import json
from typing import Any

import click

from crate_cli.commands.options import console, json_option, org_option, print_json
from crate_cli.errors import InvalidInput
from crate_cli.session import Session

NAMES_SHOWN = 3


@click.group()
def audit() -> None:
    """Read and verify the organization's tamper-evident audit log."""


def since_time(text: str) -> str:
    """`--since`: a duration back from now (1h, 7d) or a date or time (UTC unless
    it says otherwise), as an ISO 8601 UTC time."""
    from datetime import timedelta

    from crate_cli import clock
    from crate_cli.durations import parse_duration

    raw = text.strip()
    if raw[-1:].lower() in "smhdw" and raw[:-1].isdigit():
        return clock.format_time(clock.now() - timedelta(seconds=parse_duration(raw, "--since")))
    try:
        return clock.parse_iso(raw)
    except ValueError:
        raise InvalidInput(
            f"--since {text!r} is neither a duration nor a date",
            "use e.g. --since 1h, --since 7d, --since 2026-11-01 or --since 2026-11-01T09:00Z",
        ) from None


@audit.command("log")
@click.option("--since", metavar="1h|DATE", help="Only entries since a duration ago or a date.")
@click.option("--actor", metavar="ACTOR", help="Only this actor (user@host, token:NAME).")
@click.option("--action", metavar="ACTION", help="Only this action (retrieve, store, ...).")
@click.option("--env", "env", metavar="ENV", help="Only this environment.")
@click.option("--name", metavar="NAME", help="Only entries naming this secret.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="The newest N entries; 0 for all.",
)
@org_option
@json_option
@click.option("--jsonl", is_flag=True, help="Print JSON Lines, one entry per line (for a SIEM).")
def log(
    since: str | None,
    actor: str | None,
    action: str | None,
    env: str | None,
    name: str | None,
    limit: int,
    org: str | None,
    as_json: bool,
    jsonl: bool,
) -> None:
    """Show the audit log: who did what, when, through which client.

    Entries never hold a value or a token. Reading them needs the audit
    module (crate audit enable); entries are recorded either way.
    """
    if as_json and jsonl:
        raise InvalidInput("give --json or --jsonl, not both")
    query = {
        key: value
        for key, value in (
            ("since", since_time(since) if since else None),
            ("actor", actor),
            ("action", action),
            ("env", env),
            ("name", name),
        )
        if value
    }
    session = Session.for_terminal()
    org_name = session.org(org)
    client = session.client(org_name)
    more = False
    if limit == 0:
        entries: list[dict[str, Any]] = []
        for page in client.audit_oldest_first(query):
            if jsonl:  # JSON Lines leave as they arrive
                for entry in page:
                    click.echo(json.dumps(entry, ensure_ascii=True, separators=(",", ":")))
            else:
                entries.extend(page)
        if jsonl:
            return
    else:
        entries, more = client.audit_newest(query, limit)
    if jsonl:
        for entry in entries:
            click.echo(json.dumps(entry, ensure_ascii=True, separators=(",", ":")))
        return
    if as_json:
        print_json(entries)
        return
    if not entries:
        click.echo(f"no audit entries in {org_name!r} match", err=True)
        return
    _table(entries)
    if more:
        click.echo(
            f"crate: showing the newest {len(entries)} entries; --limit 0 shows them all", err=True
        )


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    if len(names) > NAMES_SHOWN:
        shown += f" +{len(names) - NAMES_SHOWN} more"
    return shown


def _table(entries: list[dict[str, Any]]) -> None:
    from typing import cast

    from rich.markup import escape
    from rich.table import Table

    from crate_cli.display import safe_value

    # Actors, names and details come from the log (a failed unlock's actor was
    # written without a key): no control or bidirectional character is shown.
    entries = [cast("dict[str, Any]", safe_value(e)) for e in entries]
    colours = {"ok": "green", "denied": "red", "failed": "yellow"}
    table = Table(box=None, pad_edge=False)
    for column in ("SEQ", "TIME (UTC)", "ACTOR", "CLIENT", "ACTION", "ENV"):
        table.add_column(column, justify="right" if column == "SEQ" else "left", no_wrap=True)
    table.add_column("NAMES", overflow="fold")
    table.add_column("OUTCOME")
    for e in entries:
        outcome = e["outcome"]
        error = e["details"].get("error")
        if error:
            outcome += f" ({error})"
        if e["details"].get("deferred"):
            outcome += " [recorded while locked]"
        table.add_row(
            str(e["seq"]),
            e["time"][:19].replace("T", " "),
            escape(e["actor"]),
            e["client"],
            e["action"],
            e["environment"] or "",
            _names(e["names"]),
            f"[{colours.get(e['outcome'], 'white')}]{escape(outcome)}[/]",
        )
    console(soft_wrap=True).print(table)


@audit.command("verify")
@org_option
@json_option
def verify(org: str | None, as_json: bool) -> None:
    """Check the whole HMAC chain of the audit log.

    Exit 0 with the number of entries, or exit 5 naming the first entry that
    was changed, removed, reordered, added or cut off.
    """
    session = Session.for_terminal()
    org_name = session.org(org)
    result = session.client(org_name).audit_verify()
    if as_json:
        print_json({"organization": org_name, **result})
        return
    pending = int(result.get("pending", 0))
    note = f"; {pending} recorded while locked, chained by the next write" if pending else ""
    click.echo(
        f"audit log of {org_name!r} verified: {result['entries']} entries, "
        f"newest MAC {str(result['head_mac'])[:16]}{note}"
    )


@audit.command("enable")
@org_option
def enable(org: str | None) -> None:
    """Enable the audit module: admins can then read the log."""
    _switch(org, True)


@audit.command("disable")
@org_option
def disable(org: str | None) -> None:
    """Disable the audit module: entries are still recorded, but not readable."""
    _switch(org, False)


def _switch(org: str | None, enabled: bool) -> None:
    session = Session.for_terminal()
    org_name = session.org(org)
    changed = session.client(org_name).audit_module(enabled)
    state = "enabled" if enabled else "disabled"
    if changed:
        click.echo(f"crate: the audit module of {org_name!r} is now {state}", err=True)
    else:
        click.echo(f"crate: the audit module of {org_name!r} was already {state}", err=True)
