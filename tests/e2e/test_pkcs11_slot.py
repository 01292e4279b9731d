"""The pkcs11 slot against a real SoftHSM2 token (a temp SOFTHSM2_CONF per test)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from crate_cli.errors import ExitCode
from tests.support.crate_runner import CrateRunner, assert_clean_error
from tests.support.softhsm_token import Token
from tests.support.tools import require_tool
from tests.support.vault_state import vault_rows

pytestmark = pytest.mark.e2e


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


def plant_module(home: Path, module: str) -> None:
    """Point the slot record at another module, as someone who can write the
    key registry (but not the settings or the user's environment) could."""
    registry = home / "keys" / "master.json"
    doc = json.loads(registry.read_text())
    doc["versions"][0]["slots"][0]["params"]["module"] = module
    registry.write_text(json.dumps(doc))


def test_a_missing_module(sealed: CrateRunner, token: Token) -> None:
    plant_module(sealed.home, "/nonexistent/libpkcs11.so")
    env = {**token.env(), "CRATE_PKCS11_MODULE": "/nonexistent/libpkcs11.so"}
    result = sealed("secrets", "get", "API_KEY", env=env)
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert "does not exist" in result.stderr


@pytest.fixture
def evil_module(tmp_path: Path) -> tuple[Path, Path]:
    """A shared library whose constructor writes a marker file when loaded:
    what a planted 'PKCS#11 module' would run inside crate."""
    gcc = require_tool("gcc")
    marker = tmp_path / "module-code-ran"
    source = tmp_path / "evil.c"
    source.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void run(void) {\n"
        f'  FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("ran", f); fclose(f); }}\n'
        "}\n"
    )
    library = tmp_path / "libevil-pkcs11.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library, marker


def test_a_module_named_only_by_the_record_is_never_loaded(
    sealed: CrateRunner, token: Token, evil_module: tuple[Path, Path]
) -> None:
    library, marker = evil_module
    # A recovery slot unlocks, so that a master rotation reaches the point where
    # it seals a new slot like the (planted) pkcs11 one.
    both = {**token.env(), "CRATE_PASSPHRASE": "correct horse battery"}
    sealed("keys", "slots", "add", "passphrase", env=both, check=True)
    plant_module(sealed.home, str(library))
    for args in (("secrets", "get", "API_KEY"), ("keys", "status"), ("keys", "rotate", "master")):
        result = sealed(*args, env=both)
        assert not marker.exists(), args
    rotated = sealed("keys", "rotate", "master", env=both)
    assert_clean_error(rotated, ExitCode.KEYSTORE)
    assert "which crate loads only when you name it too" in rotated.stderr
    result = sealed("secrets", "get", "API_KEY", env=token.env())
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert f"names the module {library}, which crate loads only when you name it too" in (
        result.stderr
    )
    assert "passphrase" in result.stderr  # and the other slot's reason
    # The same path named by the user is loaded: the check is what kept it out.
    named = sealed(
        "secrets", "get", "API_KEY", env={**token.env(), "CRATE_PKCS11_MODULE": str(library)}
    )
    assert named.returncode != 0
    assert marker.exists()


def test_a_slot_made_with_the_option_unlocks_without_naming_it_again(
    sealed: CrateRunner, token: Token
) -> None:
    """crate added the module to the setting when it sealed the slot."""
    settings = (sealed.home / "settings.toml").read_text()
    assert f'pkcs11_modules = [\n    "{token.module}",\n]' in settings or (
        f'pkcs11_modules = ["{token.module}"]' in settings
    )
    got = sealed("secrets", "get", "API_KEY", env=token.env())
    assert (got.returncode, got.stdout) == (0, "hsm-guarded")


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
