"""The process wrapper behind `crate run`.

The command gets the secrets in its environment and then replaces crate
(`exec`): same PID, process group, signals, TTY and exit status as without
crate. argv is passed as a list and never through a shell.

`crate run` sits in front of every dev command, so its common forms are
parsed here without click (`parse_run_args`); anything unusual (help, an
unknown option) goes to the click command, which gives the usual errors.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from crate_cli.errors import CommandNotExecutable, CommandNotFound, InvalidInput

# crate's own credentials never reach the child.
CREDENTIAL_VARIABLES = (
    "CRATE_PASSPHRASE",
    "CRATE_PKCS11_PIN",
    "CRATE_TPM2_PIN",
    "CRATE_TOKEN",
    "CRATE_MASTER_KEY",
)


class RunArgs(NamedTuple):
    names: list[str]
    org: str | None
    env: str | None
    tags: list[str]
    command: list[str] | None = None


def parse_run_args(args: list[str], environ: Mapping[str, str]) -> RunArgs | None:
    """Parse `NAME... [--org O] [--env E] [--tags A,B]` (before `--`) without click.

    Returns None for anything else, so click handles it and reports errors.
    """
    names: list[str] = []
    tags: list[str] = []
    org = environ.get("CRATE_ORG") or None
    env = environ.get("CRATE_ENV") or None
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-"):
            names.append(arg)
            i += 1
            continue
        option, eq, value = arg.partition("=")
        if option not in ("--org", "--env", "--tags"):
            return None
        if not eq:
            if i + 1 >= len(args):
                return None
            value = args[i + 1]
            i += 1
        i += 1
        if option == "--org":
            org = value
        elif option == "--env":
            env = value
        else:
            tags.extend(t for t in value.split(",") if t)
    return RunArgs(names, org, env, tags)


def child_environment(
    inherited: Mapping[str, str], secrets: Iterable[tuple[str, str]]
) -> dict[str, str]:
    """The child's environment: inherited variables, overridden by the secrets,
    without crate's credentials."""
    env = {k: v for k, v in inherited.items() if k not in CREDENTIAL_VARIABLES}
    for name, value in secrets:
        env[name] = value
    return env


def run_with_secrets(run: RunArgs) -> None:
    """Resolve the secrets and exec the command; returns only by raising."""
    from crate_cli.context import Session

    if not run.command:
        raise InvalidInput("put the command after --: crate run [NAME...] -- CMD ARGS...")
    session = Session.for_terminal()
    org = session.org(run.org)
    client = session.client(org)
    session.service.warm(org)
    found = client.retrieve(session.env(run.env), run.names, run.tags)
    session.service.close()  # exec skips interpreter shutdown: close the vault now
    exec_command(run.command, child_environment(os.environ, ((s.name, s.value) for s in found)))


def exec_command(argv: list[str], env: dict[str, str]) -> None:
    """Replace this process with `argv`; returns only by raising a CrateError."""
    import signal

    sys.stdout.flush()
    sys.stderr.flush()
    # Python ignores SIGPIPE and SIGXFSZ at start-up and exec keeps ignored
    # signals: restore the defaults the command would have had without crate.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        raise CommandNotFound(f"command not found: {argv[0]}") from None
    except PermissionError:
        raise CommandNotExecutable(f"permission denied: {argv[0]} is not executable") from None
    except OSError as e:
        raise CommandNotExecutable(f"cannot execute {argv[0]}: {e.strerror}") from None
