"""Damaged or foreign vault files (DESIGN §3, §7), through the CLI.

crate run as a command on a vault that is truncated, not SQLite, empty, not
a crate vault, or from a newer crate prints one clear error that names the
file, with exit 5 (or 1 for a newer schema), shows no value, and leaves the
file byte for byte as it was. What the service and the client raise in
process is in tests/integration/test_vault_faults.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crate_cli.errors import ExitCode
from crate_cli.vault.storage.sqlite.schema import SCHEMA_VERSION
from tests.support.vault_damage import (
    DAMAGES,
    Damaged,
    assert_untouched,
    damage,
    newer_schema,
    sha256,
    truncate_half,
    vault_with_one_secret,
)

pytestmark = pytest.mark.e2e


VALUE = "fault-test-value-5e1d0b"


@pytest.fixture
def vault(personal_home: Path, fresh_session) -> Path:
    """The `personal` vault holding one secret, every connection closed."""
    return vault_with_one_secret(personal_home, fresh_session, VALUE)


@pytest.fixture(params=sorted(DAMAGES))
def damaged(request: pytest.FixtureRequest, vault: Path) -> Iterator[Damaged]:
    with damage(vault, request.param) as found:
        yield found


@pytest.mark.parametrize(
    "argv",
    [
        ["secrets", "get", "A"],
        ["secrets", "list", "--json"],
        ["secrets", "fetch"],
        ["secrets", "history", "A"],
    ],
    ids=["get", "list", "fetch", "history"],
)
def test_cli_reads_report_the_damage(damaged, crate, argv: list[str]) -> None:
    path, digest, (_cls, code, words) = damaged
    result = crate(*argv)
    assert result.returncode == code, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, result.stderr
    assert lines[0].startswith("crate: error: vault ")
    assert str(path) in lines[0]
    assert words in lines[0]
    assert "Traceback" not in result.stderr
    assert VALUE not in result.stderr
    assert_untouched(path, digest)


def test_cli_write_refuses_and_leaves_the_file(damaged, crate) -> None:
    path, digest, (_cls, code, _words) = damaged
    result = crate("secrets", "set", "B", "-", input="another-value-never-written")
    assert result.returncode == code, result
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr
    assert "another-value-never-written" not in result.stderr
    assert_untouched(path, digest)


def test_cli_newer_schema_says_upgrade(vault: Path, crate) -> None:
    newer_schema(vault)
    digest = sha256(vault)
    result = crate("secrets", "get", "A")
    assert result.returncode == ExitCode.ERROR
    assert result.stderr.splitlines() == [
        f"crate: error: vault {vault} has schema version 99, newer than this crate "
        f"understands ({SCHEMA_VERSION}); it was left untouched",
        "crate: upgrade crate to use this vault",
    ]
    assert_untouched(vault, digest)


def test_damaged_org_does_not_affect_another(vault: Path, crate) -> None:
    assert crate("org", "create", "other").returncode == 0
    assert crate("secrets", "set", "B", "b-value", "--org", "other").returncode == 0
    truncate_half(vault)
    assert crate("secrets", "get", "A").returncode == ExitCode.INTEGRITY
    result = crate("secrets", "get", "B", "--org", "other")
    assert (result.returncode, result.stdout) == (0, "b-value")
