"""The process wrapper behind `crate run`.

The command gets the secrets in its environment and then replaces crate
(`exec`): same PID, process group, signals, TTY and exit status as without
crate. argv is passed as a list and never through a shell.

`crate run` sits in front of every dev command, so its common forms are
parsed here without click (`parse_run_args`); anything unusual (help, an
unknown option) goes to the click command, which gives the usual errors.
"""

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from crate_cli.config import CREDENTIAL_VARIABLES
from crate_cli.errors import CommandNotExecutable, CommandNotFound, CrateError, InvalidInput

if TYPE_CHECKING:
    from pathlib import Path

    from crate_cli.client import FallbackPolicy, SecretsClient


class RunArgs(NamedTuple):
    names: list[str]
    org: str | None
    env: str | None
    tags: list[str]
    command: list[str] | None = None
    # None: secrets win; True: every inherited variable wins; a list: those do.
    preserve_env: bool | list[str] | None = None
    inherit_env: bool = True
    name_transformer: str | None = None
    raw: bool = False
    shell_command: str | None = None
    # None: the `run.mask` setting decides.
    mask: bool | None = None
    mount: str | None = None
    mount_format: str = "json"
    mount_mode: str = "fifo"
    mount_max_reads: int | None = None
    no_env: bool = False
    watch: bool = False
    restart_grace: float = 10.0
    fallback_only: bool = False
    no_fallback: bool = False
    fallback_max_age: str | None = None

    @property
    def fallback(self) -> "FallbackPolicy":
        return fallback_policy(self.fallback_only, self.no_fallback, self.fallback_max_age)


class Launch(NamedTuple):
    """What one start of the command gets (the exec, or each start under --watch)."""

    env: dict[str, str]
    mask_values: list[str] | None  # None: the output is not filtered
    mount_content: bytes | None = None
    # The secrets as the command sees them (names transformed): --watch says
    # which names changed, even when they are only in the mount.
    secrets: dict[str, str] = {}  # noqa: RUF012 - never mutated


MOUNT_FORMATS = ("json", "env", "dotenv")
MOUNT_MODES = ("fifo", "file")
# What `--no-inherit-env` keeps of the inherited environment.
MINIMAL_ENVIRONMENT = ("PATH", "HOME", "USER", "TERM", "LANG")

# Every option of `crate run`: (flag, RunArgs field, kind, metavar, help).
# kind: value (one value), list (comma-separated, repeatable), flag, false
# (a flag that sets the field to False), optional (a flag, or `=VALUE`),
# count (a whole number, 1 or more), seconds (a number, 0 or more).
RUN_OPTIONS: tuple[tuple[str, str, str, str, str], ...] = (
    ("--org", "org", "value", "ORG", "organization (default: the session's; env CRATE_ORG)"),
    ("--env", "env", "value", "ENV", "environment (default: dev; env CRATE_ENV)"),
    ("--tags", "tags", "list", "A,B", "only secrets carrying every one of these tags"),
    ("--only", "names", "list", "NAME,...", "only these secrets (as NAME... before --)"),
    (
        "--preserve-env",
        "preserve_env",
        "optional",
        "[=NAME,...]",
        "inherited variables win over secrets: all of them, or the ones listed",
    ),
    (
        "--no-inherit-env",
        "inherit_env",
        "false",
        "",
        "start from an empty environment plus " + ", ".join(MINIMAL_ENVIRONMENT),
    ),
    (
        "--name-transformer",
        "name_transformer",
        "value",
        "KIND",
        "rename for a framework: camel, upper-camel, lower-snake, lower-kebab, tf-var, dotnet-env",
    ),
    ("--raw", "raw", "flag", "", "do not resolve ${NAME} and ${env.NAME} references"),
    (
        "--command",
        "shell_command",
        "value",
        "STRING",
        "run STRING with $SHELL -c (or /bin/sh) instead of CMD after --",
    ),
    (
        "--mask",
        "mask",
        "flag",
        "",
        "replace secret values in the command's output with *** (setting run.mask)",
    ),
    ("--no-mask", "mask", "false", "", "do not mask, whatever run.mask says"),
    (
        "--mount",
        "mount",
        "value",
        "PATH",
        "also give the secrets as a file at PATH (CRATE_SECRETS_PATH), removed at the end",
    ),
    ("--mount-format", "mount_format", "value", "FORMAT", "json (default), env or dotenv"),
    (
        "--mount-mode",
        "mount_mode",
        "value",
        "MODE",
        "fifo (default: a named pipe, nothing on disk) or file (a 0600 file)",
    ),
    (
        "--mount-max-reads",
        "mount_max_reads",
        "count",
        "N",
        "remove the named pipe after N reads",
    ),
    ("--no-env", "no_env", "flag", "", "with --mount: do not put the secrets in the environment"),
    (
        "--watch",
        "watch",
        "flag",
        "",
        "restart the command when a secret it uses changes (SIGTERM, then SIGKILL)",
    ),
    (
        "--restart-grace",
        "restart_grace",
        "seconds",
        "SECONDS",
        "with --watch: how long a restart waits after SIGTERM (default 10)",
    ),
    (
        "--fallback-only",
        "fallback_only",
        "flag",
        "",
        "remote: use the offline copy of the last retrieval without contacting the server",
    ),
    (
        "--no-fallback",
        "no_fallback",
        "flag",
        "",
        "remote: fail when the server cannot be reached instead of using the offline copy",
    ),
    (
        "--fallback-max-age",
        "fallback_max_age",
        "value",
        "DURATION",
        "remote: the oldest offline copy to use, e.g. 24h (default 7d)",
    ),
)
_OPTIONS = {flag: (field, kind) for flag, field, kind, _, _ in RUN_OPTIONS}
USAGE = "crate run [OPTIONS] [NAME...] -- CMD ARGS...  or  crate run [OPTIONS] --command STRING"


def run_help() -> str:
    """The text of `crate run --help`, from RUN_OPTIONS."""
    lines = [
        f"Usage: {USAGE}",
        "",
        "  Run CMD with the secrets (all, or NAMEs) in its environment. The command",
        "  replaces crate (exec): its exit status, signals and terminal are its own.",
        "  Secrets override inherited variables of the same name.",
        "",
        "Options:",
    ]
    for flag, _, kind, metavar, text in RUN_OPTIONS:
        shown = flag + (metavar if kind == "optional" else f" {metavar}" if metavar else "")
        lines.append(f"  {shown:<30} {text}")
    lines.append(f"  {'-h, --help':<30} show this message and exit")
    return "\n".join(lines) + "\n"


def _unknown(arg: str) -> InvalidInput:
    # Named only when it looks like an option: a mistyped value stays unseen.
    import re

    shown = (
        f" {arg.partition('=')[0]}" if re.fullmatch(r"--?[A-Za-z][A-Za-z0-9-]*(=.*)?", arg) else ""
    )
    return InvalidInput(
        f"crate run has no option{shown}", f"usage: {USAGE} (crate run --help lists the options)"
    )


def parse_run_args(
    args: list[str], environ: Mapping[str, str], after_dashes: bool = True
) -> RunArgs | None:
    """Parse crate's own arguments of `crate run` (those before `--`), without click.

    Returns None for --help; raises InvalidInput (exit 2) for anything wrong.
    `after_dashes` says whether a `--` followed: without one, an unknown option
    is most likely the command's (`crate run ls -l`), and the error says so.
    """
    fields: dict[str, Any] = {
        "names": [],
        "org": environ.get("CRATE_ORG") or None,
        "env": environ.get("CRATE_ENV") or None,
        "tags": [],
    }
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-h", "--help"):
            return None
        if not arg.startswith("-") or arg == "-":
            fields["names"].append(arg)
            continue
        option, eq, value = arg.partition("=")
        if option not in _OPTIONS:
            if not after_dashes and "--command" not in args:
                raise InvalidInput(f"put the command after --: {USAGE}")
            raise _unknown(arg)
        field, kind = _OPTIONS[option]
        if kind in ("flag", "false"):
            if eq:
                raise InvalidInput(f"{option} takes no value", f"usage: {USAGE}")
            fields[field] = kind == "flag"
            continue
        if kind == "optional":
            fields[field] = [n for n in value.split(",") if n] if eq else True
            continue
        if not eq:
            if i >= len(args):
                raise InvalidInput(f"{option} needs a value", f"usage: {USAGE}")
            value = args[i]
            i += 1
        if kind == "list":
            items = [v for v in value.split(",") if v]
            if not items:
                # `--only "$UNSET"` must not widen to every secret.
                raise InvalidInput(f"{option} needs at least one value", f"usage: {USAGE}")
            fields[field] = [*fields[field], *items]
        elif kind == "count":
            fields[field] = _number(option, value, int, least=1)
        elif kind == "seconds":
            fields[field] = _number(option, value, float)
        else:
            fields[field] = value
    if fields.get("name_transformer") is not None:
        from crate_cli.transformers import check_transformer

        check_transformer(fields["name_transformer"])
    return RunArgs(**fields)


def child_environment(
    inherited: Mapping[str, str],
    secrets: Iterable[tuple[str, str]],
    preserve: bool | list[str] | None = None,
    inherit: bool = True,
) -> dict[str, str]:
    """The child's environment: inherited variables (all, or the minimal set),
    overridden by the secrets unless preserved, without crate's credentials."""
    if inherit:
        env = {k: v for k, v in inherited.items() if k not in CREDENTIAL_VARIABLES}
    else:
        env = {k: inherited[k] for k in MINIMAL_ENVIRONMENT if k in inherited}
    kept = set(env) if preserve is True else set(preserve or ()) & set(env)
    for name, value in secrets:
        if name not in kept:
            env[name] = value
    return env


def shell_argv(command: str, environ: Mapping[str, str]) -> list[str]:
    """`--command STRING`: the user's shell (or /bin/sh) runs it."""
    return [environ.get("SHELL") or "/bin/sh", "-c", command]


def _number(option: str, text: str, kind: type[int] | type[float], least: int = 0) -> Any:
    try:
        value = kind(text)
    except ValueError:
        value = least - 1
    if not least <= value < 10**9:
        raise InvalidInput(f"{option} takes a number of {least} or more, not {text!r}")
    return value


def run_command_line(args: list[str], command: list[str] | None) -> None:
    """`crate run ARGS -- COMMAND`: help, or the command with its secrets.
    `cli.main` and the click command (`crate --debug run`) both come here."""
    parsed = parse_run_args(args, os.environ, command is not None)
    if parsed is None:
        sys.stdout.write(run_help())
        return
    run_with_secrets(parsed._replace(command=command))


def fallback_policy(only: bool, never: bool, max_age: str | None) -> "FallbackPolicy":
    """The offline-copy policy of `crate run` and `crate secrets fetch`."""
    from crate_cli.client import DEFAULT_FALLBACK_MAX_AGE, FallbackPolicy

    if only and never:
        raise InvalidInput("--fallback-only and --no-fallback contradict each other")
    age = DEFAULT_FALLBACK_MAX_AGE
    if max_age is not None:
        from crate_cli.durations import parse_duration

        age = parse_duration(max_age, "--fallback-max-age")
    return FallbackPolicy("only" if only else "never" if never else "auto", age)


def check_run_args(run: RunArgs) -> RunArgs:
    """Checks that need more than one option at a time."""
    fallback_policy(
        run.fallback_only, run.no_fallback, run.fallback_max_age
    )  # raises if contradictory
    if run.shell_command is not None:
        if run.command:
            raise InvalidInput(
                "give the command either after -- or with --command, not both",
                f"usage: {USAGE}",
            )
        run = run._replace(command=shell_argv(run.shell_command, os.environ))
    if not run.command:
        raise InvalidInput(f"put the command after --: {USAGE}")
    if run.no_env and not run.mount:
        raise InvalidInput("--no-env needs --mount: the command would get no secrets at all")
    if run.mount_format not in MOUNT_FORMATS:
        raise InvalidInput(f"unknown --mount-format {run.mount_format!r}: use json, env or dotenv")
    if run.mount_mode not in MOUNT_MODES:
        raise InvalidInput(f"unknown --mount-mode {run.mount_mode!r}: use fifo or file")
    if run.mount_max_reads is not None and run.mount_mode != "fifo":
        raise InvalidInput(
            "--mount-max-reads counts reads of a named pipe; a file's reads cannot be counted",
            "drop --mount-max-reads, or use --mount-mode fifo",
        )
    defaults = RunArgs([], None, None, [])
    for option, field, needs in (
        ("--mount-format", "mount_format", "--mount"),
        ("--mount-mode", "mount_mode", "--mount"),
        ("--mount-max-reads", "mount_max_reads", "--mount"),
        ("--restart-grace", "restart_grace", "--watch"),
    ):
        if getattr(run, field) != getattr(defaults, field) and not (
            run.mount if needs == "--mount" else run.watch
        ):
            raise InvalidInput(f"{option} needs {needs}", f"usage: {USAGE}")
    return run


def run_with_secrets(run: RunArgs) -> None:
    """Resolve the secrets and exec the command (or supervise it); returns only
    by raising or exiting."""
    from crate_cli.context import Session

    run = check_run_args(run)
    assert run.command is not None
    session = Session.for_terminal()
    org = session.org(run.org)
    if run.watch and session.mode == "remote":
        raise InvalidInput(
            "--watch follows changes to a local vault; it cannot watch a crate server",
            "run it where the vault is, or without --watch",
        )
    client = session.client(org, run.fallback)
    from crate_cli import ephemeral

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

    from crate_cli import keyreserve

    gc.enable()  # crate stays, as the command's supervisor (see cli.main)
    keyreserve.reap()  # its only child is to be the command
    from crate_cli.supervise import Watch, supervise

    mount = None
    if run.mount:
        import signal

        from crate_cli.mount import Mount
        from crate_cli.supervise import RELAYED

        # From here on the mount exists: signals wait for the supervisor, which
        # removes it however the command ends.
        signal.pthread_sigmask(signal.SIG_BLOCK, RELAYED)

        assert first.mount_content is not None
        mount = Mount(run.mount, first.mount_content, run.mount_mode, run.mount_max_reads)
    watch = None
    if run.watch:
        watch = Watch(
            changed=vault_watcher(session.home.vault_path(org)),
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
        from crate_cli.references import resolve_pairs

        pairs = resolve_pairs(client, env, pairs, seen=values)
    if run.name_transformer:
        from crate_cli.transformers import transform

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


def vault_watcher(path: "Path") -> Callable[[], bool]:
    """A cheap check for `--watch`: did the vault (or its WAL) change since the
    last call? A write to the org's vault is what can change a secret."""
    files = (path, path.with_name(path.name + "-wal"))

    def state() -> tuple[tuple[int, int], ...]:
        out = []
        for f in files:
            try:
                st = f.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((0, 0))
        return tuple(out)

    last = state()

    def changed() -> bool:
        nonlocal last
        now = state()
        if now == last:
            return False
        last = now
        return True

    return changed


def exec_command(argv: list[str], env: dict[str, str]) -> None:
    """Replace this process with `argv`; returns only by raising a CrateError."""
    import signal

    sys.stdout.flush()
    sys.stderr.flush()
    from crate_cli import keyreserve

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
