"""The process wrapper behind `crate run`.

The command gets the secrets in its environment and then replaces crate
(`exec`): same PID, process group, signals, TTY and exit status as without
crate. argv is passed as a list and never through a shell.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping

from crate_cli.errors import CommandNotExecutable, CommandNotFound

# crate's own credentials never reach the child.
CREDENTIAL_VARIABLES = ("CRATE_PASSPHRASE", "CRATE_PKCS11_PIN", "CRATE_TOKEN", "CRATE_MASTER_KEY")


def child_environment(
    inherited: Mapping[str, str], secrets: Iterable[tuple[str, str]]
) -> dict[str, str]:
    """The child's environment: inherited variables, overridden by the secrets,
    without crate's credentials."""
    env = {k: v for k, v in inherited.items() if k not in CREDENTIAL_VARIABLES}
    for name, value in secrets:
        env[name] = value
    return env


def exec_command(argv: list[str], env: dict[str, str]) -> None:
    """Replace this process with `argv`; returns only by raising a CrateError."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        raise CommandNotFound(f"command not found: {argv[0]}") from None
    except PermissionError:
        raise CommandNotExecutable(f"permission denied: {argv[0]} is not executable") from None
    except OSError as e:
        raise CommandNotExecutable(f"cannot execute {argv[0]}: {e.strerror}") from None
