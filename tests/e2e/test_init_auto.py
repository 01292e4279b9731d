"""`crate init --keystore auto`: the best slot this machine offers, and a
passphrase recovery slot offered on a terminal.

Each test says exactly what the machine has: a swtpm or none (a TCTI that
points nowhere), a keyring or none (no D-Bus session), so the outcome does
not depend on the laptop or CI machine running it.
"""

from __future__ import annotations

import json

import pytest

from crate_cli.errors import ExitCode
from tests.support.crate_runner import CrateRunner, assert_clean_error
from tests.support.keyring_service import SecretService
from tests.support.terminal import Terminal
from tests.support.tpm_simulator import Swtpm

pytestmark = pytest.mark.e2e

NO_TPM = {"CRATE_TPM2_TCTI": "device:/nonexistent/tpmrm0"}
NO_KEYRING = {"DBUS_SESSION_BUS_ADDRESS": "", "PYTHON_KEYRING_BACKEND": ""}
AUTO = {"CRATE_KEYSTORE": ""}
PASSPHRASE = "recovery horse battery"


def slot_types(crate: CrateRunner) -> list[str]:
    listed = crate("keys", "slots", "list", "--json", check=True)
    return [row["type"] for row in json.loads(listed.stdout)]


def test_auto_picks_the_tpm_when_one_answers(crate: CrateRunner, swtpm: Swtpm) -> None:
    done = crate("init", env=AUTO | NO_KEYRING | swtpm.env(), check=True)
    assert "sealed by a tpm2 slot" in done.stderr
    assert slot_types(crate) == ["tpm2"]
    crate("secrets", "set", "API_KEY", "tpm-sealed", env=AUTO | swtpm.env(), check=True)
    got = crate("secrets", "get", "API_KEY", env=swtpm.env(), check=True)
    assert got.stdout == "tpm-sealed"


def test_auto_falls_back_to_a_file_and_says_why(crate: CrateRunner) -> None:
    done = crate("init", env=AUTO | NO_TPM | NO_KEYRING, check=True)
    assert "protected by file permissions only: no TPM or secure OS keyring was found" in (
        done.stderr
    )
    assert "there is no TPM device /nonexistent/tpmrm0" in done.stderr
    assert slot_types(crate) == ["file"]
    status = crate("keys", "status", check=True)
    assert "only file permissions protect it" in status.stderr


def test_implicit_first_use_picks_like_auto(crate: CrateRunner, swtpm: Swtpm) -> None:
    crate("secrets", "set", "FIRST", "use", env=AUTO | NO_KEYRING | swtpm.env(), check=True)
    assert slot_types(crate) == ["tpm2"]


def test_forced_keystore_is_not_second_guessed(crate: CrateRunner, swtpm: Swtpm) -> None:
    done = crate("init", "--keystore", "file", env=swtpm.env(), check=True)
    assert "no TPM" not in done.stderr
    assert slot_types(crate) == ["file"]


def test_keystore_from_the_environment(crate: CrateRunner, swtpm: Swtpm) -> None:
    crate("init", env={"CRATE_KEYSTORE": "tpm2"} | swtpm.env(), check=True)
    assert slot_types(crate) == ["tpm2"]


def test_unknown_keystore_in_the_environment(crate: CrateRunner) -> None:
    bad = crate("secrets", "set", "A", "b", env={"CRATE_KEYSTORE": "floppy"})
    assert_clean_error(bad, ExitCode.USAGE)
    assert "unknown keystore 'floppy'" in bad.stderr
    assert not (crate.home / "keys" / "master.json").exists()


def test_terminal_init_offers_a_passphrase_recovery_slot(crate: CrateRunner) -> None:
    term = Terminal(crate, "init", env=AUTO | NO_TPM | NO_KEYRING)
    term.answer("Add a passphrase as a recovery slot", "y")
    term.answer_hidden("Passphrase for the crate master key: ", PASSPHRASE)
    term.answer_hidden("Repeat the passphrase: ", PASSPHRASE)
    assert term.finish() == 0, term.output
    assert PASSPHRASE not in term.output
    assert sorted(slot_types(crate)) == ["file", "passphrase"]
    # The recovery slot works on its own: the key file is gone.
    for key_file in (crate.home / "keys").glob("slot-*.key"):
        key_file.unlink()
    crate("secrets", "set", "A", "b", env={"CRATE_PASSPHRASE": PASSPHRASE}, check=True)


def test_terminal_init_recovery_offer_can_be_declined(crate: CrateRunner) -> None:
    term = Terminal(crate, "init", env=AUTO | NO_TPM | NO_KEYRING)
    term.answer("Add a passphrase as a recovery slot", "n")
    assert term.finish() == 0, term.output
    assert slot_types(crate) == ["file"]


def test_auto_picks_the_keyring_when_there_is_no_tpm(
    crate: CrateRunner, keyring_service: SecretService
) -> None:
    done = crate("init", env=AUTO | NO_TPM | keyring_service.env(), check=True)
    assert "sealed by a keyring slot" in done.stderr
    assert slot_types(crate) == ["keyring"]
    crate("secrets", "set", "API_KEY", "in-the-keyring", env=keyring_service.env(), check=True)
    got = crate("secrets", "get", "API_KEY", env=keyring_service.env(), check=True)
    assert got.stdout == "in-the-keyring"


def test_auto_passes_over_a_locked_keyring(
    crate: CrateRunner, keyring_service: SecretService
) -> None:
    with keyring_service.connection() as conn:
        keyring_service.collection(conn).lock()
    done = crate("init", env=AUTO | NO_TPM | keyring_service.env(), check=True)
    assert "keyring: the OS keyring is locked" in done.stderr
    assert slot_types(crate) == ["file"]
