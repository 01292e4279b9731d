"""Starting the command of `crate run`: its environment, and the exec.

The command gets the secrets in its environment and then replaces crate
(`exec`): same PID, process group, signals, TTY and exit status as without
crate. argv is passed as a list and never through a shell. The supervisor
(supervise.py) starts it the same way when crate must stay its parent.
"""

import os
import sys
from collections.abc import Iterable, Mapping

from crate_cli.config import NOT_INHERITED
from crate_cli.errors import CommandNotExecutable, CommandNotFound, CrateError
from crate_cli.records import Record

# What `--no-inherit-env` keeps of the inherited environment.
MINIMAL_ENVIRONMENT = ("PATH", "HOME", "USER", "TERM", "LANG")


class Launch(Record):
    """What one start of the command gets (the exec, or each start under --watch)."""

    env: dict[str, str]
    mask_values: list[str] | None  # None: the output is not filtered
    mount_content: bytes | None = None
    # The secrets as the command sees them (names transformed): --watch says
    # which names changed, even when they are only in the mount.
    secrets: dict[str, str] = {}  # noqa: RUF012 - never mutated


def child_environment(
    inherited: Mapping[str, str],
    secrets: Iterable[tuple[str, str]],
    preserve: bool | list[str] | None = None,
    inherit: bool = True,
) -> dict[str, str]:
    """The child's environment: inherited variables (all, or the minimal set),
    overridden by the secrets unless preserved, without crate's credentials
    or the store's address."""
    if inherit:
        env = {k: v for k, v in inherited.items() if k not in NOT_INHERITED}
    else:
        env = {k: inherited[k] for k in MINIMAL_ENVIRONMENT if k in inherited}
    kept = set(env) if preserve is True else set(preserve or ()) & set(env)
    for name, value in secrets:
        if name not in kept:
            env[name] = value
    return env


def keep_passphrase_fd() -> None:
    """The descriptor CRATE_PASSPHRASE_FD names (above stderr) is crate's: the
    command does not inherit it, whether or not crate read it (an agent may
    have unlocked instead)."""
    text = os.environ.get("CRATE_PASSPHRASE_FD", "")
    if text.isascii() and text.isdigit() and 2 < int(text) < 1 << 20:
        import contextlib

        with contextlib.suppress(OSError):  # not open: nothing to keep
            os.set_inheritable(int(text), False)


def resolve_command(name: str, environ: Mapping[str, str]) -> str:
    """The program `name` names, found as a shell would, in the PATH of
    `environ` (crate's caller's, never a PATH from the vault): a name with a
    slash as it is, else the first executable file of that name on the PATH.
    Raises FileNotFoundError, or PermissionError when only files that cannot
    be executed have that name."""
    if "/" in name:
        return name
    denied = False
    for folder in os.get_exec_path(dict(environ)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            if os.access(path, os.X_OK):
                return path
            denied = True
    if denied:
        raise PermissionError(name)
    raise FileNotFoundError(name)


def exec_command(argv: list[str], env: dict[str, str]) -> None:
    """Replace this process with `argv`; returns only by raising a CrateError."""
    import signal

    sys.stdout.flush()
    sys.stderr.flush()
    from crate_cli.client import keyreserve

    keyreserve.reap()  # the command must not inherit crate's child
    # Python ignores SIGPIPE and SIGXFSZ at start-up and exec keeps ignored
    # signals: restore the defaults the command would have had without crate.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        # The caller's PATH finds the program; the command's own environment
        # (which may hold a PATH from the vault, if an admin allowed one) does not.
        os.execve(resolve_command(argv[0], os.environ), argv, env)
    except OSError as e:
        raise start_failure(argv[0], e) from None


def start_failure(command: str, error: OSError) -> CrateError:
    """Why `command` could not start, as a shell says it (exit 127 or 126)."""
    if isinstance(error, FileNotFoundError):
        return CommandNotFound(f"command not found: {command}")
    if isinstance(error, PermissionError):
        return CommandNotExecutable(f"permission denied: {command} is not executable")
    return CommandNotExecutable(f"cannot execute {command}: {error.strerror}")


def exit_status(wait_status: int) -> int:
    """A shell's view of a wait status: the exit code, or 128+N for signal N."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)
