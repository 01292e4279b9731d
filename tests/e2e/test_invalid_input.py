"""Input that breaks a rule of DESIGN §1 is refused before anything changes.

Through the CLI in new processes: bad org, env, secret and tag names and bad
values exit 2 with the rule in the message; an unknown environment or org
exits 3 and is not created. After each refusal the vault shows nothing new.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from crate_cli.errors import ExitCode
from crate_cli.vault.names import ENV_RULE, ORG_RULE, SECRET_RULE, TAG_RULE

pytestmark = pytest.mark.e2e

LIMIT = 64 * 1024


@pytest.fixture
def home(personal_home: Path, crate) -> Path:
    """An initialised home holding one secret, so "nothing stored" is a real comparison."""
    assert crate("secrets", "set", "EXISTING", "kept").returncode == 0
    return personal_home


def listed(crate, env: str = "dev", org: str | None = None) -> list[tuple[str, int]]:
    extra = ["--org", org] if org else []
    result = crate("secrets", "list", "--json", "--env", env, *extra)
    assert result.returncode == 0, result
    return [(s["name"], s["version"]) for s in json.loads(result.stdout)]


def assert_refused(result, code: ExitCode, *phrases: str) -> None:
    assert result.returncode == code, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("crate: error: "), result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def assert_nothing_stored(crate, *no_history: str) -> None:
    """Only EXISTING, at version 1; the names in `no_history` never had a version."""
    assert listed(crate) == [("EXISTING", 1)]
    for name in no_history:
        assert crate("secrets", "history", name).returncode == ExitCode.NOT_FOUND


# -- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("org", ["Acme", "acme_corp", "acme.corp", "a" * 64, "acmé"])
def test_bad_org_name(home: Path, crate, org: str) -> None:
    result = crate("secrets", "set", "NEW", "value", "--org", org)
    assert_refused(result, ExitCode.USAGE, "invalid organization name", ORG_RULE)
    assert_refused(crate("org", "create", org), ExitCode.USAGE, ORG_RULE)
    assert sorted(p.name for p in (home / "orgs").iterdir()) == ["personal.vault"]
    assert_nothing_stored(crate)


@pytest.mark.parametrize("env", ["Prod", "dev!", "_dev", "-", "e" * 64, "dev/prod"])
def test_bad_env_name(home: Path, crate, env: str) -> None:
    result = crate("secrets", "set", "NEW", "value", "--env", env)
    assert_refused(result, ExitCode.USAGE, "invalid environment name", ENV_RULE)
    # The same through CRATE_ENV.
    result = crate("secrets", "set", "NEW", "value", env={"CRATE_ENV": env})
    assert_refused(result, ExitCode.USAGE, ENV_RULE)
    assert_refused(crate("env", "create", env), ExitCode.USAGE, ENV_RULE)
    assert_nothing_stored(crate)


@pytest.mark.parametrize("name", ["1ABC", "MY-KEY", "MY KEY", "A" * 257, "ÄPFEL", "A|B", "", "X.Y"])
def test_bad_secret_name(home: Path, crate, name: str) -> None:
    result = crate("secrets", "set", name, "value")
    assert_refused(result, ExitCode.USAGE, "invalid secret name", SECRET_RULE)
    result = crate("secrets", "set", f"{name}=value", "OTHER=x")
    assert_refused(result, ExitCode.USAGE, SECRET_RULE)
    assert_refused(crate("secrets", "get", name), ExitCode.USAGE, SECRET_RULE)
    assert_nothing_stored(crate)


def test_long_bad_name_is_not_echoed_in_full(home: Path, crate) -> None:
    """A value pasted as a name by mistake is not printed back."""
    pasted = "sk_live_" + "Z9" * 60 + "-end"
    result = crate("secrets", "set", pasted, "value")
    assert_refused(result, ExitCode.USAGE, SECRET_RULE)
    assert pasted not in result.stderr


@pytest.mark.parametrize("tag", ["Prod", "has space", ".dot", "t" * 64, "a,b,C"])
def test_bad_tag(home: Path, crate, tag: str) -> None:
    result = crate("secrets", "set", "NEW", "value", "--tag", tag)
    assert_refused(result, ExitCode.USAGE, "invalid tag name", TAG_RULE)
    # Replacing the tags of an existing secret is refused too, and keeps its version.
    result = crate("secrets", "set", "EXISTING", "changed", "--tag", "ok", "--tag", tag)
    assert_refused(result, ExitCode.USAGE, TAG_RULE)
    assert_refused(crate("secrets", "list", "--tags", tag), ExitCode.USAGE, TAG_RULE)
    assert_nothing_stored(crate)


def test_longest_valid_names_are_accepted(home: Path, crate) -> None:
    """The boundaries of the rules: the longest names are fine."""
    assert crate("env", "create", "e" * 63).returncode == 0
    name = "N" * 256
    result = crate("secrets", "set", name, "v", "--env", "e" * 63, "--tag", "t" * 63)
    assert result.returncode == 0, result
    assert listed(crate, env="e" * 63) == [(name, 1)]


# -- values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "phrase"),
    [
        (b"abc\x00def", "NUL"),
        (b"\x00", "NUL"),
        (b"\xff\xfe\xfd", "UTF-8"),
        (b"caf\xc3", "UTF-8"),
        (b"\xed\xa0\x80", "UTF-8"),  # an encoded surrogate is not UTF-8
        (b"x" * (LIMIT + 1), str(LIMIT)),
        ("é".encode() * (LIMIT // 2 + 1), str(LIMIT)),  # the limit counts bytes
    ],
    ids=["nul", "only-nul", "not-utf8", "cut-utf8", "surrogate", "over-64k", "over-64k-bytes"],
)
def test_bad_value_from_stdin(home: Path, crate, raw: bytes, phrase: str) -> None:
    result = crate("secrets", "set", "NEW", "-", input=raw)
    assert_refused(result, ExitCode.USAGE, phrase)
    result = crate("secrets", "set", "EXISTING", "-", input=raw)
    assert_refused(result, ExitCode.USAGE, phrase)
    assert_nothing_stored(crate, "NEW")


def test_bad_utf8_on_the_command_line(home: Path, crate) -> None:
    not_utf8 = os.fsdecode(b"\xff\xfeabc")
    assert_refused(crate("secrets", "set", "NEW", not_utf8), ExitCode.USAGE, "UTF-8")
    assert_refused(crate("secrets", "set", f"NEW={not_utf8}"), ExitCode.USAGE, "UTF-8")
    assert_nothing_stored(crate, "NEW")


def test_one_bad_value_refuses_the_whole_set(home: Path, crate) -> None:
    not_utf8 = os.fsdecode(b"\xff")
    result = crate("secrets", "set", "A=fine", f"B={not_utf8}", "EXISTING=changed")
    assert_refused(result, ExitCode.USAGE, "UTF-8")
    assert_nothing_stored(crate, "A", "B")


def test_value_at_the_limit_is_accepted(home: Path, crate) -> None:
    value = "y" * LIMIT
    assert crate("secrets", "set", "BIG", "-", input=value).returncode == 0
    result = crate("secrets", "get", "BIG")
    assert (result.returncode, len(result.stdout)) == (0, LIMIT)
    assert result.stdout == value


# -- things that do not exist --------------------------------------------------------


def test_unknown_env_is_not_found_and_not_created(home: Path, crate) -> None:
    for argv in (
        ["secrets", "set", "NEW", "value", "--env", "qa"],
        ["secrets", "get", "EXISTING", "--env", "qa"],
        ["secrets", "list", "--env", "qa"],
        ["secrets", "fetch", "--env", "qa"],
        ["secrets", "history", "EXISTING", "--env", "qa"],
    ):
        assert_refused(crate(*argv), ExitCode.NOT_FOUND, "'qa'")
    envs = crate("env", "list", "--json")
    assert envs.returncode == 0
    assert "qa" not in json.loads(envs.stdout)
    assert_nothing_stored(crate, "NEW")


def test_unknown_org_is_not_found_and_not_created(home: Path, crate) -> None:
    result = crate("secrets", "set", "NEW", "value", "--org", "nobody")
    assert_refused(result, ExitCode.NOT_FOUND, "'nobody'")
    assert_refused(crate("secrets", "get", "NEW", "--org", "nobody"), ExitCode.NOT_FOUND)
    assert sorted(p.name for p in (home / "orgs").iterdir()) == ["personal.vault"]
    assert_nothing_stored(crate, "NEW")


def test_missing_secret(home: Path, crate) -> None:
    result = crate("secrets", "get", "MISSING")
    assert_refused(result, ExitCode.NOT_FOUND, "MISSING")
    assert len(result.stderr.strip().splitlines()) <= 2
