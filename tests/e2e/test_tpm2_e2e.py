"""End to end: a home sealed by a TPM over the TPM's life, as a user meets it.

The machine reboots (swtpm restarted on its state: the key still unseals),
then its TPM is cleared or replaced (swtpm on a fresh state: the slot is dead,
the passphrase recovery slot opens the home, also typed at a prompt, and a new
tpm2 slot seals the key to the new TPM). The PIN prompts run on a
pseudo-terminal under pexpect, whose transcript must never show the PIN.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from crate_cli.errors import ExitCode
from tests.support.crate_runner import CrateRunner, Result, assert_clean_error
from tests.support.terminal import Terminal
from tests.support.tools import require_tool
from tests.support.tpm_simulator import Swtpm

pytestmark = pytest.mark.e2e

VALUE = "sealed-by-the-tpm"
PASSPHRASE = "correct horse battery"
PIN = "pin-31f0c2d8"
PASSPHRASE_PROMPT = "Passphrase for the crate master key: "
PIN_PROMPT = "TPM PIN for the crate master key: "
REPEAT_PIN_PROMPT = "Repeat the PIN: "


def slots(crate: CrateRunner, env: dict[str, str]) -> list[dict]:
    return list(json.loads(crate("keys", "slots", "list", "--json", env=env, check=True).stdout))


def assert_got(result: Result) -> None:
    assert (result.returncode, result.stdout) == (0, VALUE), result


def assert_no_handles(swtpm: Swtpm) -> None:
    require_tool("tpm2_getcap")
    for kind in ("handles-transient", "handles-loaded-session", "handles-saved-session"):
        left = subprocess.run(
            ["tpm2_getcap", "-T", swtpm.tcti, kind],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        assert left == "", f"{kind} left in the TPM: {left}"


def test_a_reboot_a_new_tpm_and_resealing(crate: CrateRunner, swtpm: Swtpm) -> None:
    tpm = swtpm.env()
    recovery = tpm | {"CRATE_PASSPHRASE": PASSPHRASE}
    done = crate("init", "--keystore", "tpm2", env=tpm, check=True)
    assert "sealed by a tpm2 slot" in done.stderr
    crate("keys", "slots", "add", "passphrase", env=recovery, check=True)
    crate("secrets", "set", "API_KEY", VALUE, env=tpm, check=True)
    (old_tpm2,) = [s["id"] for s in slots(crate, tpm) if s["type"] == "tpm2"]

    # A reboot: same TPM, same seeds, PCRs reset. No passphrase needed.
    swtpm.restart()
    assert_got(crate("secrets", "get", "API_KEY", env=tpm))

    # The TPM is cleared or the board replaced: the slot can never unseal again.
    swtpm.replace()
    dead = crate("secrets", "get", "API_KEY", env=tpm)
    assert_clean_error(dead, ExitCode.KEYSTORE)
    assert "this TPM can no longer unseal the master key" in dead.stderr
    assert "recovery slot" in dead.stderr
    assert_no_handles(swtpm)

    # The recovery slot opens the home, from the variable ...
    assert_got(crate("secrets", "get", "API_KEY", env=recovery))
    # ... or typed at the prompt.
    term = Terminal(crate, "secrets", "get", "API_KEY", env=tpm)
    term.answer_hidden(PASSPHRASE_PROMPT, PASSPHRASE)
    assert term.finish() == 0, term.output
    assert term.output.replace("\r", "").endswith(VALUE + "\n"), term.output
    assert PASSPHRASE not in term.output

    # Reseal to the new TPM, then drop the dead slot.
    added = crate("keys", "slots", "add", "tpm2", env=recovery, check=True)
    assert "added tpm2 slot" in added.stderr
    assert_got(crate("secrets", "get", "API_KEY", env=tpm))
    removed = crate("keys", "slots", "remove", old_tpm2, env=tpm, check=True)
    assert f"removed tpm2 slot {old_tpm2}" in removed.stderr
    left = slots(crate, tpm)
    assert [s["type"] for s in left] == ["passphrase", "tpm2"]
    assert old_tpm2 not in [s["id"] for s in left]
    # The new slot alone, again without the passphrase, and after a reboot.
    swtpm.restart()
    assert_got(crate("secrets", "get", "API_KEY", env=tpm))
    assert_no_handles(swtpm)


def test_the_pin_at_a_prompt(crate: CrateRunner, swtpm: Swtpm) -> None:
    tpm = swtpm.env()
    # Two different PINs: nothing is created.
    mismatch = Terminal(crate, "init", "--keystore", "tpm2", "--pin", env=tpm)
    mismatch.answer_hidden(PIN_PROMPT, PIN)
    mismatch.answer_hidden(REPEAT_PIN_PROMPT, PIN + "x")
    assert mismatch.finish() == ExitCode.KEYSTORE, mismatch.output
    assert "the two PINs differ" in mismatch.output
    assert not (crate.home / "keys" / "master.json").exists()

    created = Terminal(crate, "init", "--keystore", "tpm2", "--pin", env=tpm)
    created.answer_hidden(PIN_PROMPT, PIN)
    created.answer_hidden(REPEAT_PIN_PROMPT, PIN)
    assert created.finish() == 0, created.output
    assert "sealed by a tpm2 slot" in created.output
    crate("secrets", "set", "API_KEY", VALUE, env=tpm | {"CRATE_TPM2_PIN": PIN}, check=True)

    shown = Terminal(crate, "secrets", "get", "API_KEY", env=tpm)
    shown.answer_hidden(PIN_PROMPT, PIN)
    assert shown.finish() == 0, shown.output
    assert shown.output.replace("\r", "").endswith(VALUE + "\n"), shown.output

    wrong = Terminal(crate, "secrets", "get", "API_KEY", env=tpm)
    wrong.answer_hidden(PIN_PROMPT, "pin-wrong-one")
    assert wrong.finish() == ExitCode.KEYSTORE, wrong.output
    assert "wrong TPM PIN" in wrong.output
    assert VALUE not in wrong.output

    for term in (mismatch, created, shown, wrong):
        # Typed with echo off: the PINs never show.
        assert PIN not in term.output and "pin-wrong-one" not in term.output
        assert "Traceback" not in term.output
    assert_no_handles(swtpm)
