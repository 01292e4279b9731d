"""The pkcs11 slot against a real SoftHSM2 token (a temp SOFTHSM2_CONF per test)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import CrateRunner, assert_clean_error
from softhsm_token import Token
from vault_state import vault_rows

from crate_cli.errors import ExitCode


@pytest.fixture
def token(tmp_path: Path) -> Token:
    return Token(tmp_path / "hsm")


@pytest.fixture
def sealed(crate: CrateRunner, token: Token) -> CrateRunner:
    """A home whose master key is sealed by the HSM only, holding API_KEY."""
    done = crate("init", "--keystore", "pkcs11", *token.options(), env=token.env(), check=True)
    assert "sealed by a pkcs11 slot" in done.stderr
    crate("secrets", "set", "API_KEY", "hsm-guarded", env=token.env(), check=True)
    return crate


def test_the_hsm_unlocks_in_a_fresh_process(sealed: CrateRunner, token: Token) -> None:
    got = sealed("secrets", "get", "API_KEY", env=token.env())
    assert (got.returncode, got.stdout) == (0, "hsm-guarded")
    registry = json.loads((sealed.home / "keys" / "master.json").read_text())
    (slot,) = registry["versions"][0]["slots"]
    assert slot["type"] == "pkcs11"
    # Only the wrapped key is on disk; no key file exists.
    assert list((sealed.home / "keys").glob("slot-*.key")) == []


def test_a_wrong_pin_is_exit_6_and_changes_nothing(sealed: CrateRunner, token: Token) -> None:
    before = vault_rows(sealed.home / "orgs" / "personal.vault")
    result = sealed("secrets", "set", "API_KEY", "other", env=token.env(pin="9999"))
    assert_clean_error(result, ExitCode.KEYSTORE, hidden=("9999",))
    assert "wrong PIN" in result.stderr
    # Only the audit log took the failed unlock.
    assert vault_rows(sealed.home / "orgs" / "personal.vault") == before


def test_no_pin_and_no_terminal_says_which_variable(sealed: CrateRunner, token: Token) -> None:
    result = sealed("secrets", "get", "API_KEY", env=token.env(pin=None))
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert "CRATE_PKCS11_PIN" in result.stderr


def test_a_token_that_is_gone(sealed: CrateRunner, token: Token) -> None:
    shutil.rmtree(token.dir)
    token.dir.mkdir()
    result = sealed("secrets", "get", "API_KEY", env=token.env())
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert "not present" in result.stderr


def test_a_new_token_under_the_same_label_does_not_unlock(
    sealed: CrateRunner, token: Token
) -> None:
    shutil.rmtree(token.dir)
    token.dir.mkdir()
    token.init()
    result = sealed("secrets", "get", "API_KEY", env=token.env())
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert "no longer holds the key" in result.stderr


def test_a_missing_module(sealed: CrateRunner, token: Token) -> None:
    registry = sealed.home / "keys" / "master.json"
    doc = json.loads(registry.read_text())
    doc["versions"][0]["slots"][0]["params"]["module"] = "/nonexistent/libpkcs11.so"
    registry.write_text(json.dumps(doc))
    result = sealed("secrets", "get", "API_KEY", env=token.env())
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert "does not exist" in result.stderr


def test_recovery_through_a_passphrase_slot(sealed: CrateRunner, token: Token) -> None:
    both = {**token.env(), "CRATE_PASSPHRASE": "correct horse battery"}
    sealed("keys", "slots", "add", "passphrase", env=both, check=True)
    shutil.rmtree(token.dir)
    token.dir.mkdir()
    # The HSM slot fails first; the passphrase slot unlocks.
    got = sealed(
        "secrets",
        "get",
        "API_KEY",
        env={**token.env(), "CRATE_PASSPHRASE": both["CRATE_PASSPHRASE"]},
    )
    assert (got.returncode, got.stdout) == (0, "hsm-guarded")
    # Without the passphrase, the message names both failures.
    failed = sealed("secrets", "get", "API_KEY", env=token.env())
    assert_clean_error(failed, ExitCode.KEYSTORE)
    assert "pkcs11 slot" in failed.stderr and "passphrase slot" in failed.stderr


def test_a_pkcs11_slot_added_beside_a_file_slot(crate: CrateRunner, token: Token) -> None:
    crate("secrets", "set", "A", "value-a", check=True)
    crate("keys", "slots", "add", "pkcs11", *token.options(), env=token.env(), check=True)
    for key_file in (crate.home / "keys").glob("slot-*.key"):
        key_file.unlink()
    got = crate("secrets", "get", "A", env=token.env())
    assert (got.returncode, got.stdout) == (0, "value-a")


def test_a_pkcs11_slot_needs_its_options(crate: CrateRunner, token: Token) -> None:
    result = crate("init", "--keystore", "pkcs11", env=token.env())
    assert_clean_error(result, ExitCode.USAGE)
    assert "--pkcs11-module" in result.stderr
