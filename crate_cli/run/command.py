"""`crate run` from its arguments to the command: the session's client
retrieves the secrets, they are checked and shaped, and the command is
exec'ed (launch.py) or supervised (supervise.py).

The session comes from a factory (crate_cli/session.py's `Session.for_terminal`,
passed in by cli.py and the click command): nothing in `run` imports the
session, which sits above it.
"""

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from crate_cli.errors import InvalidInput
from crate_cli.run.args import RunArgs, check_run_args, parse_run_args, run_help
from crate_cli.run.launch import Launch, child_environment, exec_command, keep_passphrase_fd

if TYPE_CHECKING:
    from crate_cli.client.fallback import FallbackPolicy
    from crate_cli.client.secrets import SecretsClient
    from crate_cli.config import Settings
    from crate_cli.vault.storage.interface import Storage


class RunSession(Protocol):
    """What `crate run` needs of a session."""

    @property
    def storage(self) -> "Storage": ...
    @property
    def settings(self) -> "Settings": ...
    @property
    def mode(self) -> str: ...
    def org(self, explicit: str | None = None, local: bool = False) -> str: ...
    def env(self, explicit: str | None = None) -> str: ...
    def client(self, org: str, fallback: "FallbackPolicy | None" = None) -> "SecretsClient": ...
    def warm(self, org: str, prefetch: bool = True) -> None: ...
    def close(self) -> None: ...


def run_command_line(
    args: list[str], command: list[str] | None, session: Callable[[], RunSession]
) -> None:
    """`crate run ARGS -- COMMAND`: help, or the command with its secrets.
    `cli.main` and the click command (`crate --debug run`) both come here."""
    parsed = parse_run_args(args, os.environ, command is not None)
    if parsed is None:
        sys.stdout.write(run_help())
        return
    run_with_secrets(parsed._replace(command=command), session)


def run_with_secrets(run: RunArgs, make_session: Callable[[], RunSession]) -> None:
    """Resolve the secrets and exec the command (or supervise it); returns only
    by raising or exiting."""
    run = check_run_args(run)
    assert run.command is not None
    session = make_session()
    org = session.org(run.org)
    if run.watch and session.mode == "remote":
        raise InvalidInput(
            "--watch follows changes to a local vault; it cannot watch a crate server",
            "run it where the vault is, or without --watch",
        )
    client = session.client(org, run.fallback)
    from crate_cli.client import ephemeral

    session.warm(org, prefetch=ephemeral.searching())
    env = session.env(run.env)
    mask = run.mask if run.mask is not None else bool(session.settings.get("run.mask"))

    def launch() -> Launch:
        try:
            return prepare(run, client, env, mask)
        finally:
            session.close()  # exec skips interpreter shutdown: close the vault now

    first = launch()
    keep_passphrase_fd()
    if not (mask or run.mount or run.watch):
        exec_command(run.command, first.env)
    import gc

    from crate_cli.client import keyreserve

    gc.enable()  # crate stays, as the command's supervisor (see cli.main)
    keyreserve.reap()  # its only child is to be the command
    from crate_cli.run.supervise import Watch, supervise

    mount = None
    if run.mount:
        import signal

        from crate_cli.run.mount import Mount
        from crate_cli.run.supervise import RELAYED

        # From here on the mount exists: signals wait for the supervisor, which
        # removes it however the command ends.
        signal.pthread_sigmask(signal.SIG_BLOCK, RELAYED)

        assert first.mount_content is not None
        mount = Mount(run.mount, first.mount_content, run.mount_mode, run.mount_max_reads)
    watch = None
    if run.watch:
        watch = Watch(
            changed=vault_watcher(session.storage, org),
            reload=launch,
            grace=run.restart_grace,
        )
    supervise(run.command, first, mount, watch)


def prepare(run: RunArgs, client: "SecretsClient", env: str, mask: bool) -> Launch:
    """Retrieve the secrets and make what one start of the command gets."""
    found = client.retrieve_columns(env, run.names, run.tags)
    pairs = list(zip(found.names, found.values, strict=True))
    values = [value for _, value in pairs]  # what --mask hides, references' too
    if not run.raw and any("${" in value for value in values):
        from crate_cli.run.references import resolve_pairs

        pairs = resolve_pairs(client, env, pairs, seen=values)
    if run.name_transformer:
        from crate_cli.run.transformers import transform

        pairs = transform(pairs, run.name_transformer)
    # In the environment, or in a mount file that a tool may load into one.
    refuse_steering(client, env, list(zip(found.names, (n for n, _ in pairs), strict=True)))
    child_env = child_environment(
        os.environ, [] if run.no_env else pairs, run.preserve_env, run.inherit_env
    )
    content = None
    if run.mount:
        from pathlib import Path

        from crate_cli.formats import render

        content = render(pairs, run.mount_format).encode("utf-8")
        child_env["CRATE_SECRETS_PATH"] = str(Path(run.mount).absolute())
    return Launch(
        child_env, [*values, *(v for _, v in pairs)] if mask else None, content, dict(pairs)
    )


def refuse_steering(client: "SecretsClient", env: str, names: list[tuple[str, str]]) -> None:
    """Refuse to start the command with a secret whose variable steers how it
    loads code or which programs it runs (PATH, LD_PRELOAD ...: vault/names.py),
    unless an admin allowed that name for the org. `names` pairs each secret's
    name with the variable it becomes (after --name-transformer)."""
    from crate_cli.vault.names import steering_names, steering_reason

    found = steering_names([variable for _, variable in names])
    if not found:
        return
    allowed = {str(row.get("name", "")).upper() for row in client.allowed_names()}
    for secret, variable in names:
        if variable in found and variable.upper() not in allowed:
            from crate_cli.errors import Forbidden

            shown = secret if secret == variable else f"{secret} (as {variable})"
            raise Forbidden(
                f"secret {shown} of {client.org}/{env} is not passed to the command: "
                f"{steering_reason(variable)}, so its writer would choose what runs here",
                f"an admin can allow it: crate org allow-name {variable}; or rename the secret",
            )


def vault_watcher(storage: "Storage", org: str) -> Callable[[], bool]:
    """A cheap check for `--watch`: did the org's vault change since the last
    call? A write to it is what can change a secret."""
    last = storage.org_marker(org)

    def changed() -> bool:
        nonlocal last
        now = storage.org_marker(org)
        if now == last:
            return False
        last = now
        return True

    return changed
