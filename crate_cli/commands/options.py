"""Options and output shared by the click commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

org_option = click.option(
    "--org",
    envvar="CRATE_ORG",
    metavar="ORG",
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


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def split_tags(values: tuple[str, ...]) -> list[str]:
    """Tags given as repeated options and/or comma-separated lists."""
    return [t for v in values for t in v.split(",") if t]


def tags_option(help_text: str) -> Callable[[F], F]:
    return click.option("--tags", "tags", multiple=True, metavar="A,B", help=help_text)


def pkcs11_options(fn: F) -> F:
    """--pkcs11-module and --pkcs11-token, for commands that create a pkcs11 slot."""
    fn = click.option(
        "--pkcs11-token", metavar="LABEL", help="pkcs11 slot: the HSM token's label."
    )(fn)
    fn = click.option(
        "--pkcs11-module", metavar="PATH", help="pkcs11 slot: the vendor's PKCS#11 module."
    )(fn)
    return fn


def slot_options(pkcs11_module: str | None, pkcs11_token: str | None) -> dict[str, Any]:
    return {"pkcs11_module": pkcs11_module, "pkcs11_token": pkcs11_token}
