"""`crate agent`: keep the master key unlocked in a local background process."""

from __future__ import annotations

import click

from crate_cli.commands.options import json_option, print_json
from crate_cli.errors import InvalidInput
from crate_cli.session import Session


@click.group()
def agent() -> None:
    """Run a local agent so that commands do not unlock the vault each time."""


@agent.command("start")
@click.option(
    "--idle-timeout",
    default="15m",
    show_default=True,
    metavar="DURATION",
    help="Forget the key and stop after this long without a request.",
)
@json_option
def start(idle_timeout: str, as_json: bool) -> None:
    """Unlock the master key once and serve local commands on a private socket."""
    from crate_cli.durations import parse_duration
    from crate_cli.server import agent as agent_core

    seconds = parse_duration(idle_timeout, "--idle-timeout")
    session = Session.for_terminal()
    if not session.local_store:
        # Commands find the agent by their home, whatever store they name.
        raise InvalidInput(
            "the agent serves the home's own vaults, not another store",
            "run `crate server` for a shared store, or start the agent without "
            "--store and CRATE_STORE",
        )
    info = agent_core.start(session, seconds)
    if as_json:
        print_json(info)
        return
    if info["already_running"]:
        click.echo(f"crate: the agent already runs (pid {info['pid']})", err=True)
        return
    click.echo(
        f"crate: agent started (pid {info['pid']}) on {info['socket']}; it forgets the key "
        f"after {idle_timeout} idle",
        err=True,
    )


@agent.command("stop")
def stop() -> None:
    """Stop the agent; it forgets the master key."""
    from crate_cli.server import agent as agent_core

    pid = agent_core.stop(Session().home)
    if pid is None:
        click.echo("crate: no agent runs", err=True)
        return
    click.echo(f"crate: agent (pid {pid}) stopped", err=True)


@agent.command("status")
@json_option
def status(as_json: bool) -> None:
    """Say whether the agent runs (exit 0) or not (exit 3)."""
    import sys

    from crate_cli.client.agent import status as agent_status
    from crate_cli.errors import ExitCode

    info = agent_status(Session().home)
    if as_json:
        print_json(info or {"running": False})
    elif info is None:
        click.echo("crate: no agent runs; commands unlock the vault in-process")
    else:
        left = max(0.0, float(info["idle_timeout"]) - float(info["idle_for"]))
        click.echo(
            f"crate: agent runs (pid {info['pid']}) on {info['socket']}, since "
            f"{info['started_at']}; it stops after {int(left)} s more idle"
        )
    if info is None:
        sys.exit(ExitCode.NOT_FOUND)
