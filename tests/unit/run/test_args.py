"""The click-free parsing of `crate run`'s options (crate_cli/run/args.py)."""

from __future__ import annotations

import pytest

from crate_cli.errors import InvalidInput
from crate_cli.run.args import RunArgs, check_run_args, parse_run_args


def test_parses_names_and_options_in_any_order() -> None:
    parsed = parse_run_args(["A", "--org", "acme", "B", "--env=prod", "--tags", "x,y"], {})
    assert parsed == RunArgs(names=["A", "B"], org="acme", env="prod", tags=["x", "y"])


def test_environment_variables_are_defaults_that_options_override() -> None:
    parsed = parse_run_args(["--env", "staging"], {"CRATE_ORG": "acme", "CRATE_ENV": "dev"})
    assert parsed is not None
    assert (parsed.org, parsed.env) == ("acme", "staging")


def test_repeated_tags_accumulate() -> None:
    parsed = parse_run_args(["--tags", "a", "--tags=b,c"], {})
    assert parsed is not None and parsed.tags == ["a", "b", "c"]


@pytest.mark.parametrize("args", [["--help"], ["A", "-h"]])
def test_help_is_none(args: list[str]) -> None:
    assert parse_run_args(args, {}) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--unknown"], "crate run has no option --unknown"),
        (["--debug"], "crate run has no option --debug"),
        (["--org"], "--org needs a value"),
        (["--raw=yes"], "--raw takes no value"),
        (["--name-transformer", "shouty"], "unknown name transformer 'shouty'"),
        # A value typed where an option goes is not echoed back.
        (["-s3cr3t!value"], "crate run has no option"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    with pytest.raises(InvalidInput) as bad:
        parse_run_args(args, {})
    assert message in bad.value.message
    assert "s3cr3t" not in bad.value.message


def test_every_option_parses() -> None:
    parsed = parse_run_args(
        [
            "--only",
            "A,B",
            "C",
            "--preserve-env=PATH,HOME",
            "--no-inherit-env",
            "--name-transformer",
            "camel",
            "--raw",
            "--command",
            "echo hi",
        ],
        {},
    )
    assert parsed is not None
    assert parsed.names == ["A", "B", "C"]
    assert parsed.preserve_env == ["PATH", "HOME"]
    assert parsed.inherit_env is False
    assert (parsed.name_transformer, parsed.raw, parsed.shell_command) == ("camel", True, "echo hi")
    assert parse_run_args(["--preserve-env"], {}).preserve_env is True  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mount-format", "env"], "--mount-format needs --mount"),
        (["--mount-mode", "file"], "--mount-mode needs --mount"),
        (["--mount-max-reads", "2"], "--mount-max-reads needs --mount"),
        (["--restart-grace", "3"], "--restart-grace needs --watch"),
        (["--no-env"], "--no-env needs --mount"),
        (["--mount", "x", "--mount-max-reads", "0"], "--mount-max-reads takes a number of 1"),
        (["--watch", "--restart-grace", "soon"], "--restart-grace takes a number of 0"),
        (["--mount", "x", "--mount-format", "yaml"], "unknown --mount-format 'yaml'"),
        (["--mount", "x", "--mount-mode", "tmpfs"], "unknown --mount-mode 'tmpfs'"),
        (["--mount", "x", "--mount-mode", "file", "--mount-max-reads", "1"], "counts reads"),
    ],
)
def test_options_that_need_another_are_refused(args: list[str], message: str) -> None:
    with pytest.raises(InvalidInput) as bad:
        parsed = parse_run_args(args, {})
        assert parsed is not None
        check_run_args(parsed._replace(command=["true"]))
    assert message in bad.value.message


def test_numbers_are_parsed_once_into_their_types() -> None:
    parsed = parse_run_args(["--mount", "x", "--mount-max-reads", "3"], {})
    assert parsed is not None and parsed.mount_max_reads == 3
    parsed = parse_run_args(["--watch", "--restart-grace=2.5"], {})
    assert parsed is not None and parsed.restart_grace == 2.5
