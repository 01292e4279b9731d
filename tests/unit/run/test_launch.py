"""The environment `crate run` gives the command (crate_cli/run/launch.py)."""

from __future__ import annotations

from crate_cli.config import CREDENTIAL_VARIABLES, NOT_INHERITED
from crate_cli.run.launch import child_environment


def test_secrets_override_inherited_and_credentials_are_dropped() -> None:
    inherited = {"PATH": "/bin", "TOKEN": "old", **{v: "secret" for v in CREDENTIAL_VARIABLES}}
    env = child_environment(inherited, [("TOKEN", "new"), ("EXTRA", "1")])
    assert env == {"PATH": "/bin", "TOKEN": "new", "EXTRA": "1"}


def test_the_store_address_is_not_inherited() -> None:
    assert "CRATE_STORE" in NOT_INHERITED
    inherited = {"PATH": "/bin", "CRATE_STORE": "postgresql://app:pw@db/crate"}
    assert child_environment(inherited, []) == {"PATH": "/bin"}
