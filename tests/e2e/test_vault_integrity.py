"""Tampering with a vault file must fail closed (DESIGN §2), through the CLI.

Each test edits a real org vault with sqlite3, as someone with access to
the file could, then runs crate in a new process: any modification or move
of a ciphertext must end in exit 5 with one clean error, never a wrong
value, a traceback or a value on stderr. The full catalogue of tampering,
read back in process, is in tests/integration/test_vault_integrity.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from crate_cli.errors import ExitCode
from tests.support.homes import all_values
from tests.support.vault_state import Sql, flip, read_cell, write_cell

pytestmark = pytest.mark.e2e


def assert_cli_integrity_failure(result, values: list[str]) -> None:
    assert result.returncode == ExitCode.INTEGRITY, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, result.stderr
    assert lines[0].startswith("crate: error: ")
    assert "Traceback" not in result.stderr
    for value in values:
        assert value not in result.stderr


def test_cli_get_of_flipped_ciphertext(
    acme_home: Path, vault_sql: Sql, crate, acme_secrets
) -> None:
    blob = read_cell(vault_sql, "ciphertext", "dev", "DB_URL")
    write_cell(vault_sql, "ciphertext", "dev", "DB_URL", flip(blob, 20))
    result = crate("secrets", "get", "DB_URL", "--org", "acme", "--env", "dev")
    assert_cli_integrity_failure(result, all_values(acme_secrets))
    assert "integrity" in result.stderr


def test_cli_fetch_of_vault_moved_to_another_org(acme_home: Path, crate, acme_secrets) -> None:
    orgs = acme_home / "orgs"
    shutil.move(orgs / "acme.vault", orgs / "beta.vault")
    result = crate("secrets", "fetch", "--org", "beta", "--env", "prod", "--format", "json")
    assert_cli_integrity_failure(result, all_values(acme_secrets))


def test_cli_set_with_tampered_rsa_key(acme_home: Path, vault_sql: Sql, crate) -> None:
    ((wrapped,),) = vault_sql("SELECT wrapped_private FROM org_rsa_keys")
    vault_sql("UPDATE org_rsa_keys SET wrapped_private = ?", (flip(wrapped, -3),))
    result = crate("secrets", "set", "NEW_NAME", "-", "--org", "acme", input="cli-new-value-xyz")
    assert_cli_integrity_failure(result, ["cli-new-value-xyz"])
    assert vault_sql("SELECT count(*) FROM secrets WHERE name = 'NEW_NAME'") == [(0,)]
