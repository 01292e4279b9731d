"""The click-free parsing and the environment of `crate run`."""

from __future__ import annotations

import pytest

from crate_cli.runner import CREDENTIAL_VARIABLES, RunArgs, child_environment, parse_run_args


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


@pytest.mark.parametrize(
    "args", [["--help"], ["-h"], ["--unknown"], ["--org"], ["--only", "A"], ["--debug"]]
)
def test_anything_unusual_is_left_to_click(args: list[str]) -> None:
    assert parse_run_args(args, {}) is None


def test_secrets_override_inherited_and_credentials_are_dropped() -> None:
    inherited = {"PATH": "/bin", "TOKEN": "old", **{v: "secret" for v in CREDENTIAL_VARIABLES}}
    env = child_environment(inherited, [("TOKEN", "new"), ("EXTRA", "1")])
    assert env == {"PATH": "/bin", "TOKEN": "new", "EXTRA": "1"}
