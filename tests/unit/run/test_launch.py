"""The environment `crate run` gives the command (crate_cli/run/launch.py)."""

from __future__ import annotations

from crate_cli.config import CREDENTIAL_VARIABLES
from crate_cli.run.launch import child_environment


def test_secrets_override_inherited_and_credentials_are_dropped() -> None:
    inherited = {"PATH": "/bin", "TOKEN": "old", **{v: "secret" for v in CREDENTIAL_VARIABLES}}
    env = child_environment(inherited, [("TOKEN", "new"), ("EXTRA", "1")])
    assert env == {"PATH": "/bin", "TOKEN": "new", "EXTRA": "1"}
