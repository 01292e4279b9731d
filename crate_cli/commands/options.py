"""Options and output shared by the click commands."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def complete_org(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of --org: the home's vault files, nothing unlocked.
    With another store, nothing: a key press opens no database connection."""
    from crate_cli.session import Session

    try:
        session = Session()
        if not session.local_store:
            return []
        return [org for org in session.storage.list_orgs() if org.startswith(incomplete)]
    except Exception:  # a completion must never print an error into the prompt
        return []


org_option = click.option(
    "--org",
    envvar="CRATE_ORG",
    metavar="ORG",
    shell_complete=complete_org,
    help="Organization (default: the session's; env CRATE_ORG).",
)
env_option = click.option(
    "--env",
    "env",
    envvar="CRATE_ENV",
    metavar="ENV",
    help="Environment (default: dev; env CRATE_ENV).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def console(soft_wrap: bool = False) -> Any:
    """A rich Console for tables. A reader that went away (`crate secrets list
    | head`) ends crate with exit 0 in cli.main, as for any other output;
    rich's own handling would exit 1."""
    from rich.console import Console

    class PipeAwareConsole(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    return PipeAwareConsole(soft_wrap=soft_wrap)


def print_json(data: Any) -> None:
    """Data as JSON for scripts; every character beyond ASCII escaped, so that
    text from a server or a vault (an actor, a name) brings no control or
    bidirectional character to a terminal, and parses back the same."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=True))


def split_tags(values: tuple[str, ...]) -> list[str]:
    """Tags given as repeated options and/or comma-separated lists."""
    return [t for v in values for t in v.split(",") if t]


def tags_option(help_text: str) -> Callable[[F], F]:
    return click.option("--tags", "tags", multiple=True, metavar="A,B", help=help_text)


# The options a new key slot may need, as (flag, key in the slot's options, help).
_SLOT_OPTIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (
        "--pkcs11-module",
        "pkcs11_module",
        {"metavar": "PATH", "help": "pkcs11: the vendor's module."},
    ),
    (
        "--pkcs11-token",
        "pkcs11_token",
        {"metavar": "LABEL", "help": "pkcs11: the HSM token's label."},
    ),
    (
        "--tcti",
        "tpm2_tcti",
        {"metavar": "TCTI", "help": "tpm2: how to reach the TPM (default device:/dev/tpmrm0)."},
    ),
    ("--pin", "tpm2_pin", {"is_flag": True, "help": "tpm2: also require a PIN to unseal."}),
    (
        "--pcrs",
        "tpm2_pcrs",
        {"metavar": "N,N", "help": "tpm2: unseal only while these sha256 PCRs are unchanged."},
    ),
    (
        "--allow-insecure-keyring",
        "allow_insecure_keyring",
        {"is_flag": True, "help": "keyring: accept a backend that stores in plain text."},
    ),
)


def slot_creation_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add every slot type's creation options; the command gets them as one
    `slot_options` dict keyed as the providers read them."""
    keys = [key for _, key, _ in _SLOT_OPTIONS]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["slot_options"] = {key: kwargs.pop(key) for key in keys}
        return fn(*args, **kwargs)

    for flag, key, attrs in reversed(_SLOT_OPTIONS):
        wrapper = click.option(flag, key, **attrs)(wrapper)
    return wrapper
