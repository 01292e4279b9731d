"""The tpm2 slot against a real TPM 2.0: a swtpm of its own for every test,
on a fresh state or on a copy of a template TPM that already seals two homes
(built once per module, as `crate init` + `secrets set` cost two processes).

Every test drives the real CLI in new processes and, through tpm2-tools,
looks at the TPM itself: which handles are left in it, how many wrong PINs
its dictionary-attack counter has seen, and (through libtss2's pcap TCTI)
every byte that crossed the bus.

swtpm locks out after 3 wrong PINs and keeps the lockout in its state, so a
test that types wrong PINs has its own TPM and types at most 2, except the
lockout test itself.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from crate_cli.config import Settings, resolve_home
from crate_cli.errors import ExitCode
from tests.support.crate_runner import CrateRunner, Result, assert_clean_error
from tests.support.tools import require_tool
from tests.support.tpm_simulator import Swtpm
from tests.support.vault_state import vault_rows

pytestmark = pytest.mark.e2e

VALUE = "tpm-guarded-value"
PIN = "pin-5a7c19e3"
WRONG_PIN = "pin-0b0b0b0b"
PASSPHRASE = "correct horse battery"
REPLACED = "this TPM can no longer unseal the master key"
# Any digest will do: extending moves PCR 7 off the value a slot was sealed to.
EXTEND = "7:sha256=" + "ab" * 32


# -- looking at the TPM itself -----------------------------------------------------------


def tpm2_tool(swtpm: Swtpm, tool: str, *args: str) -> str:
    require_tool(tool)
    done = subprocess.run(
        [tool, "-T", swtpm.tcti, *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, f"{tool} {args} failed: {done.stderr}"
    return done.stdout


def assert_no_handles(swtpm: Swtpm) -> None:
    """Nothing crate made is left in the TPM: no object, no session."""
    for kind in ("handles-transient", "handles-loaded-session", "handles-saved-session"):
        left = tpm2_tool(swtpm, "tpm2_getcap", kind).strip()
        assert left == "", f"{kind} left in the TPM: {left}"


def lockout_counter(swtpm: Swtpm) -> int:
    """How many failed authorizations the TPM's dictionary-attack logic counts."""
    text = tpm2_tool(swtpm, "tpm2_getcap", "properties-variable")
    found = re.search(r"TPM2_PT_LOCKOUT_COUNTER:\s*(0x[0-9a-fA-F]+|\d+)", text)
    assert found, text
    return int(found.group(1), 0)


def extend_pcr7(swtpm: Swtpm) -> None:
    tpm2_tool(swtpm, "tpm2_pcrextend", EXTEND)


# -- the home ------------------------------------------------------------------------


def registry(crate: CrateRunner) -> dict:
    return dict(json.loads((crate.home / "keys" / "master.json").read_text()))


def slots(crate: CrateRunner) -> list[dict]:
    """The slots of master key v1, from the registry (no process to start)."""
    return list(registry(crate)["versions"][0]["slots"])


def slot_id(crate: CrateRunner, kind: str) -> str:
    return next(s["id"] for s in slots(crate) if s["type"] == kind)


def exported_key(crate: CrateRunner, env: dict[str, str]) -> tuple[str, bytes]:
    """The master key as `crate keys export-env` prints it, and its raw bytes."""
    line = crate("keys", "export-env", "--yes", env=env, check=True).stdout.strip()
    version, _, encoded = line.partition(":")
    assert version == "v1", line
    key = base64.b64decode(encoded, validate=True)
    assert len(key) == 32
    return encoded, key


def get(crate: CrateRunner, env: dict[str, str], name: str = "API_KEY") -> Result:
    return crate("secrets", "get", name, env=env)


def assert_got(result: Result, value: str = VALUE) -> None:
    assert (result.returncode, result.stdout) == (0, value), result


def assert_created_nothing(crate: CrateRunner) -> None:
    assert not (crate.home / "keys" / "master.json").exists()
    assert not (crate.home / "orgs").exists()


def with_pin(swtpm: Swtpm, pin: str = PIN) -> dict[str, str]:
    return swtpm.env() | {"CRATE_TPM2_PIN": pin}


def init_tpm2(crate: CrateRunner, env: dict[str, str], *options: str) -> CrateRunner:
    """init --keystore tpm2 OPTIONS, then API_KEY=VALUE."""
    done = crate("init", "--keystore", "tpm2", *options, env=env, check=True)
    assert "sealed by a tpm2 slot" in done.stderr
    crate("secrets", "set", "API_KEY", VALUE, env=env, check=True)
    return crate


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per module: a TPM's state and two homes it seals, `plain`
    (no PIN, no PCRs) and `pin`, each holding API_KEY=VALUE."""
    root = tmp_path_factory.mktemp("tpm2-templates")
    tpm = Swtpm()
    try:
        tpm.start()
        init_tpm2(CrateRunner(root / "plain"), tpm.env())
        init_tpm2(CrateRunner(root / "pin"), with_pin(tpm), "--pin")
        # An orderly shutdown: after a PIN was used, a TPM that just loses
        # power counts one dictionary-attack failure at its next start.
        tpm2_tool(tpm, "tpm2_shutdown")
        tpm.stop()
        shutil.copytree(tpm.state, root / "tpm-state")
    finally:
        tpm.close()
    return root


def from_template(templates: Path, name: str, crate: CrateRunner, swtpm: Swtpm) -> CrateRunner:
    """This test's swtpm becomes a copy of the template TPM (same seeds, so the
    same primary), and its home a copy of the template home `name`. The
    slot records the template's TCTI: tests always pass swtpm.env()."""
    swtpm.stop()
    shutil.rmtree(swtpm.state)
    shutil.copytree(templates / "tpm-state", swtpm.state)
    swtpm.start()
    shutil.copytree(templates / name, crate.home)
    return crate


@pytest.fixture
def sealed(templates: Path, crate: CrateRunner, swtpm: Swtpm) -> CrateRunner:
    """A home whose master key only the TPM unseals (no PIN, no PCRs), holding API_KEY."""
    return from_template(templates, "plain", crate, swtpm)


@pytest.fixture
def pin_sealed(templates: Path, crate: CrateRunner, swtpm: Swtpm) -> CrateRunner:
    """The same with a PIN."""
    return from_template(templates, "pin", crate, swtpm)


# -- sealing and unsealing -------------------------------------------------------------


def test_the_tpm_unseals_in_a_fresh_process(crate: CrateRunner, swtpm: Swtpm) -> None:
    sealed = init_tpm2(crate, swtpm.env())
    assert_got(get(sealed, swtpm.env()))
    listed = json.loads(sealed("keys", "slots", "list", "--json", check=True).stdout)
    assert [s["type"] for s in listed] == ["tpm2"]
    (slot,) = slots(sealed)
    assert slot["id"] == listed[0]["id"]
    params = slot["params"]
    assert slot["type"] == "tpm2"
    assert params["tcti"] == swtpm.tcti
    assert (params["pin"], params["pcrs"]) == (False, [])
    public = base64.b64decode(params["public"], validate=True)
    private = base64.b64decode(params["private"], validate=True)
    assert public and private
    # Only the sealed object's blobs are on disk: no key file, and the key in
    # no file of the home (registry, vault, settings) in any spelling.
    assert list((sealed.home / "keys").glob("slot-*.key")) == []
    encoded, key = exported_key(sealed, swtpm.env())
    for path in sealed.home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key not in data, path
            assert encoded.encode() not in data, path
            assert key.hex().encode() not in data, path
    assert key not in public + private
    assert_no_handles(swtpm)


def test_the_blobs_do_nothing_on_another_tpm(sealed: CrateRunner, swtpm: Swtpm) -> None:
    """Pointed at a second swtpm, the slot does not unseal: the blobs are bound
    to the primary of the TPM that made them."""
    other = Swtpm()
    try:
        other.start()
        result = get(sealed, other.env())
        assert_clean_error(result, ExitCode.KEYSTORE)
        assert REPLACED in result.stderr
    finally:
        other.close()
    assert_got(get(sealed, swtpm.env()))


# -- the PIN -----------------------------------------------------------------------------


def test_the_right_pin_unseals(pin_sealed: CrateRunner, swtpm: Swtpm) -> None:
    assert_got(get(pin_sealed, with_pin(swtpm)))
    (slot,) = registry(pin_sealed)["versions"][0]["slots"]
    assert slot["params"]["pin"] is True
    assert PIN not in (pin_sealed.home / "keys" / "master.json").read_text()
    assert lockout_counter(swtpm) == 0
    assert_no_handles(swtpm)


def test_a_wrong_pin_is_exit_6_and_changes_nothing(pin_sealed: CrateRunner, swtpm: Swtpm) -> None:
    vault = pin_sealed.home / "orgs" / "personal.vault"
    before = vault_rows(vault)
    result = pin_sealed("secrets", "set", "API_KEY", "other", env=with_pin(swtpm, WRONG_PIN))
    assert_clean_error(result, ExitCode.KEYSTORE, hidden=(WRONG_PIN, PIN))
    assert "wrong TPM PIN" in result.stderr
    assert "CRATE_TPM2_PIN" in result.stderr
    assert vault_rows(vault) == before  # only the audit log took the failed unlock
    # The TPM counted it, and crate left nothing loaded.
    assert lockout_counter(swtpm) == 1
    assert_no_handles(swtpm)
    assert_got(get(pin_sealed, with_pin(swtpm)))


def test_no_pin_and_no_terminal_names_the_variable(pin_sealed: CrateRunner, swtpm: Swtpm) -> None:
    result = get(pin_sealed, swtpm.env())
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert "CRATE_TPM2_PIN" in result.stderr
    # Nothing was tried against the TPM's PIN.
    assert lockout_counter(swtpm) == 0
    assert_no_handles(swtpm)


def test_init_with_a_pin_and_no_terminal_creates_nothing(crate: CrateRunner, swtpm: Swtpm) -> None:
    result = crate("init", "--keystore", "tpm2", "--pin", env=swtpm.env())
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert "CRATE_TPM2_PIN" in result.stderr
    assert_created_nothing(crate)


@pytest.mark.parametrize("pin", ["123", "x" * 33], ids=["too-short", "too-long"])
def test_a_pin_of_the_wrong_size_creates_nothing(
    crate: CrateRunner, swtpm: Swtpm, pin: str
) -> None:
    result = crate("init", "--keystore", "tpm2", "--pin", env=with_pin(swtpm, pin))
    assert_clean_error(result, ExitCode.USAGE, hidden=(pin,))
    assert "from 4 to 32 bytes" in result.stderr
    assert_created_nothing(crate)
    assert_no_handles(swtpm)


def test_lockout_stops_the_pin_slot_but_not_a_slot_without_pin(
    templates: Path, pin_sealed: CrateRunner, swtpm: Swtpm, tmp_path: Path
) -> None:
    """Wrong PINs lock the TPM out; a slot without a PIN is NODA and its
    primary too, so it keeps unsealing during the lockout."""
    crate = pin_sealed
    # The template's other home, sealed by the same TPM without a PIN.
    no_pin = CrateRunner(tmp_path / "no-pin-home")
    shutil.copytree(templates / "plain", no_pin.home)
    wrong = with_pin(swtpm, WRONG_PIN)
    for _ in range(2):
        result = get(crate, wrong)
        assert_clean_error(result, ExitCode.KEYSTORE, hidden=(WRONG_PIN,))
        assert "wrong TPM PIN" in result.stderr
    # The TPM's limit is 3; whichever attempt trips it, the next one is refused.
    for _ in range(3):
        result = get(crate, wrong)
        if "lockout" in result.stderr:
            break
    else:
        pytest.fail(f"the TPM never reported a lockout: {result}")
    # Now even the right PIN is refused, and crate says why.
    locked = get(crate, with_pin(swtpm))
    assert_clean_error(locked, ExitCode.KEYSTORE, hidden=(PIN,))
    assert "dictionary-attack lockout" in locked.stderr
    assert_no_handles(swtpm)
    # The slot without a PIN still unseals, and a new one can still be made.
    assert_got(get(no_pin, swtpm.env()))
    made = CrateRunner(tmp_path / "made-in-lockout")
    made("init", "--keystore", "tpm2", env=swtpm.env(), check=True)
    assert_no_handles(swtpm)


# -- the PCR policy ------------------------------------------------------------------------


def test_a_pcr_policy_unseals_until_the_pcr_changes(crate: CrateRunner, swtpm: Swtpm) -> None:
    init_tpm2(crate, swtpm.env(), "--pcrs", "7")
    assert_got(get(crate, swtpm.env()))
    (slot,) = registry(crate)["versions"][0]["slots"]
    assert slot["params"]["pcrs"] == [7]
    extend_pcr7(swtpm)
    result = get(crate, swtpm.env())
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert "PCR 7 changed" in result.stderr
    assert_no_handles(swtpm)


def test_a_pcr_policy_with_a_pin(crate: CrateRunner, swtpm: Swtpm) -> None:
    """Both in one policy session: the PIN (PolicyAuthValue) and PCR 7."""
    init_tpm2(crate, with_pin(swtpm), "--pin", "--pcrs", "7")
    assert_got(get(crate, with_pin(swtpm)))
    wrong = get(crate, with_pin(swtpm, WRONG_PIN))
    assert_clean_error(wrong, ExitCode.KEYSTORE, hidden=(WRONG_PIN, PIN))
    assert "wrong TPM PIN" in wrong.stderr
    assert_no_handles(swtpm)
    extend_pcr7(swtpm)
    changed = get(crate, with_pin(swtpm))
    assert_clean_error(changed, ExitCode.KEYSTORE, hidden=(PIN,))
    assert "PCR 7 changed" in changed.stderr
    assert_no_handles(swtpm)


# tests/unit/vault/slots/test_tpm2.py tries many more; these show the CLI's answer.
# "" is refused rather than read as "no PCR policy" (`--pcrs "$UNSET"`).


@pytest.mark.parametrize(
    "pcrs",
    [
        "24",
        "7,x",
        "",
        "²",
    ],
)
def test_bad_pcrs_are_refused_and_create_nothing(
    crate: CrateRunner, swtpm: Swtpm, pcrs: str
) -> None:
    result = crate("init", "--keystore", "tpm2", "--pcrs", pcrs, env=swtpm.env())
    assert_clean_error(result, ExitCode.USAGE)
    assert "--pcrs takes PCR numbers from 0 to 23" in result.stderr
    assert_created_nothing(crate)


def test_bad_pcrs_when_adding_a_slot_change_nothing(crate: CrateRunner, swtpm: Swtpm) -> None:
    crate("secrets", "set", "API_KEY", VALUE, check=True)
    before = (crate.home / "keys" / "master.json").read_bytes()
    result = crate("keys", "slots", "add", "tpm2", "--pcrs", "7,24", env=swtpm.env())
    assert_clean_error(result, ExitCode.USAGE)
    assert (crate.home / "keys" / "master.json").read_bytes() == before


# -- reaching the TPM ----------------------------------------------------------------------


def test_a_stopped_tpm_is_exit_6_quickly(sealed: CrateRunner, swtpm: Swtpm) -> None:
    swtpm.stop()
    started = time.monotonic()
    result = get(sealed, swtpm.env())
    elapsed = time.monotonic() - started
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert f"no TPM answers at {swtpm.tcti}" in result.stderr
    assert elapsed < 5, f"took {elapsed:.1f} s to give up"


@pytest.mark.parametrize(
    ("tcti", "message"),
    [
        ("device:/nonexistent/tpmrm0", "there is no TPM device /nonexistent/tpmrm0"),
        ("no-such-tcti:whatever", "no TPM answers at no-such-tcti:whatever"),
    ],
)
def test_a_tcti_that_leads_nowhere_creates_nothing(
    crate: CrateRunner, tcti: str, message: str
) -> None:
    result = crate("init", "--keystore", "tpm2", "--tcti", tcti)
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert message in result.stderr
    assert_created_nothing(crate)


def test_which_tcti_is_used(crate: CrateRunner, swtpm: Swtpm) -> None:
    """--tcti beats CRATE_TPM2_TCTI, which beats TPM2TOOLS_TCTI, which beats
    the TCTI the slot was made with."""
    nowhere = "device:/nonexistent/tpmrm0"
    unset = {"CRATE_TPM2_TCTI": "", "TPM2TOOLS_TCTI": ""}
    crate(
        "init",
        "--keystore",
        "tpm2",
        "--tcti",
        swtpm.tcti,
        env={"CRATE_TPM2_TCTI": nowhere},
        check=True,
    )
    assert registry(crate)["versions"][0]["slots"][0]["params"]["tcti"] == swtpm.tcti
    # No variable: the recorded TCTI.
    crate("secrets", "set", "API_KEY", VALUE, env=unset, check=True)
    assert_got(get(crate, unset))
    # A variable overrides the recorded one (the TPM moved)...
    for variable in ("TPM2TOOLS_TCTI", "CRATE_TPM2_TCTI"):
        moved = get(crate, unset | {variable: nowhere})
        assert_clean_error(moved, ExitCode.KEYSTORE)
        assert "/nonexistent/tpmrm0" in moved.stderr
    # ... and CRATE_TPM2_TCTI comes before TPM2TOOLS_TCTI.
    assert_got(get(crate, {"CRATE_TPM2_TCTI": swtpm.tcti, "TPM2TOOLS_TCTI": nowhere}))


def test_an_owner_password_is_named(sealed: CrateRunner, swtpm: Swtpm, tmp_path: Path) -> None:
    """crate derives its storage primary under an empty owner auth; a TPM
    whose owner set a password says so instead of a bare TPM code."""
    tpm2_tool(swtpm, "tpm2_changeauth", "-c", "owner", "owner-secret")
    for result in (
        get(sealed, swtpm.env()),
        CrateRunner(tmp_path / "new-home")("init", "--keystore", "tpm2", env=swtpm.env()),
    ):
        assert_clean_error(result, ExitCode.KEYSTORE, hidden=("owner-secret",))
        assert "owner hierarchy has a password" in result.stderr
    assert_no_handles(swtpm)


def test_a_recorded_tcti_cannot_run_a_command(sealed: CrateRunner, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    path = sealed.home / "keys" / "master.json"
    doc = json.loads(path.read_text())
    doc["versions"][0]["slots"][0]["params"]["tcti"] = f"cmd:touch {ran}"
    path.write_text(json.dumps(doc))
    result = get(sealed, {"CRATE_TPM2_TCTI": "", "TPM2TOOLS_TCTI": ""})
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert not ran.exists(), "the TCTI from the slot record ran a command"


def test_a_master_rotation_does_not_trust_a_recorded_tcti_either(
    sealed: CrateRunner, swtpm: Swtpm, tmp_path: Path
) -> None:
    """Rotating seals a new slot like each old one: the old slot's TCTI is a
    record's, never taken as if the user had given it."""
    both = swtpm.env() | {"CRATE_PASSPHRASE": PASSPHRASE}
    sealed("keys", "slots", "add", "passphrase", env=both, check=True)
    ran = tmp_path / "ran"
    path = sealed.home / "keys" / "master.json"
    doc = json.loads(path.read_text())
    doc["versions"][0]["slots"][0]["params"]["tcti"] = f"cmd:touch {ran}"
    path.write_text(json.dumps(doc))
    unset = {"CRATE_TPM2_TCTI": "", "TPM2TOOLS_TCTI": "", "CRATE_PASSPHRASE": PASSPHRASE}
    result = sealed("keys", "rotate", "master", env=unset)
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert "names the TCTI" in result.stderr
    assert not ran.exists(), "the TCTI from the slot record ran a command"


# -- recovery and the unlock order -----------------------------------------------------


def test_recovery_through_a_passphrase_slot(sealed: CrateRunner, swtpm: Swtpm) -> None:
    both = swtpm.env() | {"CRATE_PASSPHRASE": PASSPHRASE}
    sealed("keys", "slots", "add", "passphrase", env=both, check=True)
    assert [s["type"] for s in slots(sealed)] == ["tpm2", "passphrase"]
    swtpm.stop()
    # The tpm2 slot fails first; the passphrase slot unlocks.
    assert_got(get(sealed, both))
    # Without the passphrase, the message names both failures.
    failed = get(sealed, swtpm.env())
    assert_clean_error(failed, ExitCode.KEYSTORE)
    assert "tpm2 slot" in failed.stderr and "passphrase slot" in failed.stderr
    assert "no TPM answers at" in failed.stderr
    assert "a passphrase is needed" in failed.stderr


def test_a_replaced_tpm_sends_you_to_the_recovery_slot(sealed: CrateRunner, swtpm: Swtpm) -> None:
    both = swtpm.env() | {"CRATE_PASSPHRASE": PASSPHRASE}
    sealed("keys", "slots", "add", "passphrase", env=both, check=True)
    swtpm.replace()
    failed = get(sealed, swtpm.env())
    assert_clean_error(failed, ExitCode.KEYSTORE)
    assert REPLACED in failed.stderr
    assert "recovery slot" in failed.stderr
    assert_no_handles(swtpm)
    assert_got(get(sealed, both))
    assert_no_handles(swtpm)


@pytest.fixture
def pin_and_passphrase(pin_sealed: CrateRunner, swtpm: Swtpm) -> CrateRunner:
    """A PIN-protected tpm2 slot and a passphrase slot, in that order."""
    env = with_pin(swtpm) | {"CRATE_PASSPHRASE": PASSPHRASE}
    pin_sealed("keys", "slots", "add", "passphrase", env=env, check=True)
    assert [s["type"] for s in slots(pin_sealed)] == ["tpm2", "passphrase"]
    return pin_sealed


def test_the_default_order_tries_the_tpm_first(
    pin_and_passphrase: CrateRunner, swtpm: Swtpm
) -> None:
    crate = pin_and_passphrase
    # A wrong PIN: the TPM is asked first (its counter shows it), then the passphrase.
    wrong_pin = with_pin(swtpm, WRONG_PIN) | {"CRATE_PASSPHRASE": PASSPHRASE}
    assert_got(get(crate, wrong_pin))
    assert lockout_counter(swtpm) == 1
    # A wrong passphrase does not matter while the TPM unseals first.
    wrong_passphrase = with_pin(swtpm) | {"CRATE_PASSPHRASE": "not the passphrase"}
    assert_got(get(crate, wrong_passphrase))
    assert_no_handles(swtpm)


def test_a_changed_unlock_order_tries_the_passphrase_first(
    pin_and_passphrase: CrateRunner, swtpm: Swtpm
) -> None:
    crate = pin_and_passphrase
    home = resolve_home({"CRATE_HOME": str(crate.home)})
    Settings.update(home, "keys.unlock_order", ["env", "passphrase", "tpm2", "file"])
    # The passphrase unlocks before the TPM is asked for the (wrong) PIN at all.
    wrong_pin = with_pin(swtpm, WRONG_PIN) | {"CRATE_PASSPHRASE": PASSPHRASE}
    assert_got(get(crate, wrong_pin))
    assert lockout_counter(swtpm) == 0
    # The passphrase slot fails first, then the TPM unseals.
    wrong_passphrase = with_pin(swtpm) | {"CRATE_PASSPHRASE": "not the passphrase"}
    assert_got(get(crate, wrong_passphrase))
    # Both fail: both are reported, in the order they were tried.
    both_wrong = with_pin(swtpm, WRONG_PIN) | {"CRATE_PASSPHRASE": "not the passphrase"}
    failed = get(crate, both_wrong)
    assert_clean_error(failed, ExitCode.KEYSTORE, hidden=(WRONG_PIN, "not the passphrase"))
    assert 0 <= failed.stderr.index("passphrase slot") < failed.stderr.index("tpm2 slot")
    assert "wrong TPM PIN" in failed.stderr
    assert lockout_counter(swtpm) == 1
    assert_no_handles(swtpm)


# -- slot management -------------------------------------------------------------------


def test_a_tpm2_slot_added_beside_a_file_slot(crate: CrateRunner, swtpm: Swtpm) -> None:
    crate("secrets", "set", "A", "value-a", check=True)
    added = crate("keys", "slots", "add", "tpm2", env=swtpm.env(), check=True)
    assert "added tpm2 slot" in added.stderr
    assert [s["type"] for s in slots(crate)] == ["file", "tpm2"]
    file_id = slot_id(crate, "file")
    removed = crate("keys", "slots", "remove", file_id, env=swtpm.env(), check=True)
    assert f"removed file slot {file_id}" in removed.stderr
    assert list((crate.home / "keys").glob("slot-*.key")) == []
    assert [s["type"] for s in slots(crate)] == ["tpm2"]
    assert_got(get(crate, swtpm.env(), "A"), "value-a")
    # The TPM is now the only way in.
    swtpm.stop()
    assert_clean_error(get(crate, swtpm.env(), "A"), ExitCode.KEYSTORE)


# -- the bus ---------------------------------------------------------------------------


@pytest.mark.parametrize("options", [["--pin"], ["--pin", "--pcrs", "7"]], ids=["hmac", "policy"])
def test_the_key_and_the_pin_never_cross_the_bus_in_clear(
    crate: CrateRunner, swtpm: Swtpm, tmp_path: Path, options: list[str]
) -> None:
    """libtss2's pcap TCTI records every command and response; sealing,
    unsealing and exporting through it must show neither the key nor the PIN."""
    capture = tmp_path / "bus.pcap"
    env = {
        "CRATE_TPM2_TCTI": f"pcap:{swtpm.tcti}",
        "TCTI_PCAP_FILE": str(capture),
        "CRATE_TPM2_PIN": PIN,
    }
    init_tpm2(crate, env, *options)
    assert_got(get(crate, env))
    encoded, key = exported_key(crate, env)
    bus = capture.read_bytes()
    assert len(bus) > 1000, "the pcap TCTI recorded nothing"
    # The capture does hold parameters in clear: the sealed object's public
    # area goes to the TPM as it is (TPM2_Load) ...
    public = base64.b64decode(registry(crate)["versions"][0]["slots"][0]["params"]["public"])
    assert public in bus
    # ... but the key and the PIN went only inside encrypted parameters.
    assert key not in bus
    assert encoded.encode() not in bus
    assert PIN.encode() not in bus
    assert_no_handles(swtpm)


# -- a TPM whose slots are taken ---------------------------------------------------------


def hold_object_slots(swtpm: Swtpm) -> Any:
    """Another program's connection holding every transient object slot of swtpm
    (three), as a crashed program's objects do on a TPM without a resource manager."""
    import tpm2_pytss as t

    esapi = t.ESAPI(swtpm.tcti)
    template = t.TPM2B_PUBLIC.parse(
        "ecc256:aes128cfb", objectAttributes=t.TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS
    )
    while True:
        try:
            esapi.create_primary(t.TPM2B_SENSITIVE_CREATE(), template, t.ESYS_TR.OWNER)
        except t.TSS2_Exception as e:
            assert e.error == 0x902, e  # TPM_RC_OBJECT_MEMORY
            return esapi


def test_a_tpm_with_no_free_slot_is_named_after_retries(sealed: CrateRunner, swtpm: Swtpm) -> None:
    esapi = hold_object_slots(swtpm)
    try:
        started = time.monotonic()
        result = get(sealed, swtpm.env())
        assert time.monotonic() - started > 1.0  # it waited for a slot to free up
        assert_clean_error(result, ExitCode.KEYSTORE)
        assert "no free slot for crate's objects" in result.stderr
        assert "tpm2_flushcontext -t" in result.stderr
    finally:
        esapi.close()  # the swtpm connection closes; its objects stay until flushed
    tpm2_tool(swtpm, "tpm2_flushcontext", "-t")
    assert_got(get(sealed, swtpm.env()))


def test_concurrent_unseals_wait_for_each_other(sealed: CrateRunner, swtpm: Swtpm) -> None:
    """swtpm has three object slots and no resource manager: six crate
    processes unsealing at once take turns instead of failing."""
    argv = [*sealed.argv0, "secrets", "get", "API_KEY"]
    procs = [
        subprocess.Popen(
            argv, env=sealed.env(swtpm.env()), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(6)
    ]
    outcomes = [(p.wait(timeout=60), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    for p in procs:
        p.stdout.close()  # type: ignore[union-attr]
        p.stderr.close()  # type: ignore[union-attr]
    assert [(code, out) for code, out, _ in outcomes] == [(0, VALUE.encode())] * 6, outcomes
    assert_no_handles(swtpm)


def test_keys_status_says_what_a_slot_without_pin_protects(
    sealed: CrateRunner, swtpm: Swtpm
) -> None:
    """What `auto` makes (no PIN, no PCRs) protects a stolen disk, not a stolen
    laptop: `crate keys status` says so, and how to add a PIN."""
    plain = sealed("keys", "status", env=swtpm.env())
    assert plain.returncode == 0, plain
    assert "has no PIN or PCR policy" in plain.stderr
    assert "not from a stolen laptop" in plain.stderr
    assert "crate keys slots add tpm2 --pin" in plain.stderr


def test_keys_status_is_quiet_about_a_pin_slot(pin_sealed: CrateRunner, swtpm: Swtpm) -> None:
    guarded = pin_sealed("keys", "status", env=swtpm.env())
    assert guarded.returncode == 0, guarded
    assert "has no PIN or PCR policy" not in guarded.stderr
