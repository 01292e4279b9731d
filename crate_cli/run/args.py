"""The options of `crate run`, parsed without click.

`crate run` sits in front of every dev command, so its common forms are
parsed here without click (`parse_run_args`); anything unusual (help, an
unknown option) goes to the click command, which gives the usual errors.
One table (`RUN_OPTIONS`) makes the parser, `crate run --help` and the
shell completion of the options.
"""

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from crate_cli.errors import InvalidInput
from crate_cli.records import Record
from crate_cli.run.launch import MINIMAL_ENVIRONMENT

if TYPE_CHECKING:
    from crate_cli.client.fallback import FallbackPolicy


class RunArgs(Record):
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
        from crate_cli.client.fallback import fallback_policy

        return fallback_policy(self.fallback_only, self.no_fallback, self.fallback_max_age)


MOUNT_FORMATS = ("json", "env", "dotenv")
MOUNT_MODES = ("fifo", "file")

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
        from crate_cli.run.transformers import check_transformer

        check_transformer(fields["name_transformer"])
    return RunArgs(**fields)


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


def check_run_args(run: RunArgs) -> RunArgs:
    """Checks that need more than one option at a time."""
    run.fallback  # noqa: B018 - raises if contradictory
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
