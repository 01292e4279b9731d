"""Faults found in review, through the CLI: replayed rows, odd paths, echoes.

The client's own checks of what a transport returns are in
tests/integration/test_review_fixes.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from crate_cli.errors import ExitCode
from crate_cli.vault import jwe
from tests.support.crate_runner import CrateRunner, assert_clean_error

pytestmark = pytest.mark.e2e


# -- an older, authentic head row copied back ------------------------------------------


def test_an_older_head_row_restored_is_refused(
    acme_home: Path, vault_sql: Callable[..., list[tuple[object, ...]]], crate: CrateRunner
) -> None:
    crate("secrets", "set", "DB", "pw-old", "--org", "acme", check=True)
    (saved,) = vault_sql(
        "SELECT version, deleted, tags, updated_at, actor, mac FROM secrets WHERE name = 'DB'"
    )
    crate("secrets", "set", "DB", "pw-new-rotated", "--org", "acme", check=True)
    crate("secrets", "delete", "DB", "--yes", "--org", "acme", check=True)
    vault_sql(
        "UPDATE secrets SET version = ?, deleted = ?, tags = ?, updated_at = ?, actor = ?, "
        "mac = ? WHERE name = 'DB'",
        saved,
    )
    for args in (
        ["secrets", "get", "DB", "--org", "acme"],
        ["secrets", "list", "--org", "acme"],
        ["run", "--org", "acme", "--", "true"],
    ):
        assert_clean_error(crate(*args), ExitCode.INTEGRITY, hidden=("pw-old",))


@pytest.mark.parametrize("column", ["wrapped_dek", "ciphertext"])
def test_a_blob_cut_to_a_few_bytes_is_an_integrity_failure(
    acme_home: Path,
    vault_sql: Callable[..., list[tuple[object, ...]]],
    crate: CrateRunner,
    column: str,
) -> None:
    vault_sql(
        f"UPDATE secret_versions SET {column} = x'01616263' WHERE secret_id = "
        "(SELECT id FROM secrets WHERE name = 'API_KEY' AND env = 'dev')"
    )
    assert_clean_error(crate("secrets", "get", "API_KEY", "--org", "acme"), ExitCode.INTEGRITY)


def test_a_swapped_public_key_is_refused(
    acme_home: Path, vault_sql: Callable[..., list[tuple[object, ...]]], crate: CrateRunner
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=3072).public_key()
    der = other.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    vault_sql("UPDATE org_rsa_keys SET public_der = ?", (der,))
    assert_clean_error(crate("secrets", "set", "NEW", "value", "--org", "acme"), ExitCode.INTEGRITY)
    # With the key id rewritten to match, the private key no longer opens.
    vault_sql("UPDATE org_rsa_keys SET kid = ?", (jwe.thumbprint(other),))
    assert_clean_error(crate("secrets", "set", "NEW", "value", "--org", "acme"), ExitCode.INTEGRITY)


# -- odd paths -------------------------------------------------------------------------


@pytest.mark.parametrize("odd", ["a#b", "a?b", "p%41q", "sp ace"])
def test_a_home_with_uri_characters_keeps_the_vault_inside(tmp_path: Path, odd: str) -> None:
    home = tmp_path / odd / "home"
    crate = CrateRunner(home)
    crate("secrets", "set", "X", "val", check=True)
    assert crate("secrets", "get", "X", check=True).stdout == "val"
    vault = home / "orgs" / "personal.vault"
    assert vault.stat().st_size > 0
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and home not in p.parents]
    assert outside == []


# -- what errors repeat ----------------------------------------------------------------


def test_a_value_typed_as_a_name_is_not_echoed(crate: CrateRunner) -> None:
    pasted = "postgres://admin:hunter2@db/prod"
    assert_clean_error(crate("secrets", "set", pasted), ExitCode.USAGE, hidden=(pasted, "hunter2"))


def test_a_value_that_looks_like_an_option_is_not_echoed(crate: CrateRunner) -> None:
    result = crate("secrets", "set", "PASS", "--s3cr3t-P4ss")
    assert_clean_error(result, ExitCode.USAGE, hidden=("s3cr3t",))
    assert "after --" in result.stderr
    crate("secrets", "set", "PASS", "--", "--s3cr3t-P4ss", check=True)
    assert crate("secrets", "get", "PASS", check=True).stdout == "--s3cr3t-P4ss"


@pytest.mark.parametrize(
    "args", [["secrets", "get"], ["bogus"], ["secrets", "set", "--tga", "x", "A", "1"]]
)
def test_usage_errors_are_two_crate_lines(crate: CrateRunner, args: list[str]) -> None:
    result = crate(*args)
    assert_clean_error(result, ExitCode.USAGE)
    assert "--help" in result.stderr.splitlines()[1]


def test_first_use_says_what_it_created_even_when_the_command_fails(crate: CrateRunner) -> None:
    result = crate("secrets", "get", "NOPE")
    assert result.returncode == ExitCode.NOT_FOUND
    assert "protected by file permissions only" in result.stderr
    assert "crate: error: no secret NOPE" in result.stderr


def test_a_named_secret_without_the_tag_is_an_error(crate: CrateRunner) -> None:
    crate("secrets", "set", "DATABASE_URL", "pg://x", check=True)
    assert_clean_error(crate("secrets", "fetch", "--tags", "backend", "DATABASE_URL"), 3)
    assert_clean_error(crate("run", "--tags", "backend", "DATABASE_URL", "--", "true"), 3)


# -- settings --------------------------------------------------------------------------


def test_a_slot_asking_for_absurd_argon2_memory_is_refused(crate: CrateRunner) -> None:
    env = {"CRATE_PASSPHRASE": "correct horse battery"}
    crate("init", "--keystore", "passphrase", env=env, check=True)
    registry = crate.home / "keys" / "master.json"
    doc = json.loads(registry.read_text())
    doc["versions"][0]["slots"][0]["params"]["memory_cost"] = 1 << 40
    registry.write_text(json.dumps(doc))
    assert_clean_error(crate("secrets", "list", env=env), ExitCode.KEYSTORE)
