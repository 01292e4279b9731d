"""Slot management and the env slot, through the CLI in new processes."""

from __future__ import annotations

import json

import pytest

from crate_cli.errors import ExitCode
from tests.support.crate_runner import CrateRunner, assert_clean_error

pytestmark = pytest.mark.e2e

PASSPHRASE = "correct horse battery"
WITH_PASSPHRASE = {"CRATE_PASSPHRASE": PASSPHRASE}


def slots(crate: CrateRunner, env: dict[str, str] | None = None) -> list[dict]:
    return list(json.loads(crate("keys", "slots", "list", "--json", env=env, check=True).stdout))


@pytest.fixture
def two_slots(crate: CrateRunner) -> CrateRunner:
    """A home with a value, sealed by a file slot and a passphrase slot."""
    crate("secrets", "set", "API_KEY", "s3cret-value", check=True)
    added = crate("keys", "slots", "add", "passphrase", env=WITH_PASSPHRASE, check=True)
    assert "added passphrase slot" in added.stderr
    assert [s["type"] for s in slots(crate)] == ["file", "passphrase"]
    return crate


def slot_id(crate: CrateRunner, kind: str) -> str:
    return next(s["id"] for s in slots(crate) if s["type"] == kind)


def test_a_second_slot_unlocks_when_the_first_is_gone(two_slots: CrateRunner) -> None:
    crate = two_slots
    (key_file,) = (crate.home / "keys").glob("slot-*.key")
    key_file.unlink()
    assert_clean_error(crate("secrets", "get", "API_KEY"), ExitCode.KEYSTORE)
    done = crate("secrets", "get", "API_KEY", env=WITH_PASSPHRASE)
    assert (done.returncode, done.stdout) == (0, "s3cret-value")


def test_the_last_slot_cannot_be_removed(crate: CrateRunner) -> None:
    crate("secrets", "set", "A", "1", check=True)
    (only,) = slots(crate)
    result = crate("keys", "slots", "remove", only["id"])
    assert_clean_error(result, ExitCode.CONFLICT)
    assert "last slot" in result.stderr
    assert crate("secrets", "get", "A", check=True).stdout == "1"


def test_a_slot_stays_while_no_other_slot_unlocks(two_slots: CrateRunner) -> None:
    crate = two_slots
    file_id = slot_id(crate, "file")
    # Without the passphrase the other slot cannot be proven to work.
    refused = crate("keys", "slots", "remove", file_id)
    assert_clean_error(refused, ExitCode.CONFLICT)
    assert len(slots(crate)) == 2
    removed = crate("keys", "slots", "remove", file_id, env=WITH_PASSPHRASE, check=True)
    assert f"removed file slot {file_id}" in removed.stderr
    assert list((crate.home / "keys").glob("slot-*.key")) == []
    assert [s["type"] for s in slots(crate)] == ["passphrase"]
    assert crate("secrets", "get", "API_KEY", env=WITH_PASSPHRASE, check=True).stdout == (
        "s3cret-value"
    )


def test_removing_an_unknown_slot_is_not_found(crate: CrateRunner) -> None:
    crate("secrets", "set", "A", "1", check=True)
    assert_clean_error(crate("keys", "slots", "remove", "nope"), ExitCode.NOT_FOUND)


def test_adding_a_slot_needs_the_key_unlocked(two_slots: CrateRunner) -> None:
    crate = two_slots
    (key_file,) = (crate.home / "keys").glob("slot-*.key")
    key_file.unlink()
    before = (crate.home / "keys" / "master.json").read_bytes()
    assert_clean_error(crate("keys", "slots", "add", "file"), ExitCode.KEYSTORE)
    assert (crate.home / "keys" / "master.json").read_bytes() == before


# -- the env slot ------------------------------------------------------------------------


@pytest.fixture
def exported(crate: CrateRunner) -> str:
    crate("secrets", "set", "API_KEY", "s3cret-value", check=True)
    value = crate("keys", "export-env", "--yes", check=True).stdout.strip()
    assert value.startswith("v1:")
    return value


def test_the_env_slot_unlocks_with_nothing_at_rest(crate: CrateRunner, exported: str) -> None:
    for key_file in (crate.home / "keys").glob("slot-*.key"):
        key_file.unlink()
    done = crate("secrets", "get", "API_KEY", env={"CRATE_MASTER_KEY": exported})
    assert (done.returncode, done.stdout) == (0, "s3cret-value")
    # crate run keeps it from the command.
    ran = crate(
        "run",
        "--",
        "sh",
        "-c",
        'printf %s "${CRATE_MASTER_KEY-unset}"',
        env={"CRATE_MASTER_KEY": exported},
    )
    assert ran.stdout == "unset"


@pytest.mark.parametrize(
    "value",
    ["v2:AAAA", "garbage", "v1:not-base64!", "v1:" + "A" * 44],
    ids=["other-version", "no-version", "not-base64", "wrong-key"],
)
def test_a_wrong_env_key_is_a_keystore_error(crate: CrateRunner, exported: str, value: str) -> None:
    for key_file in (crate.home / "keys").glob("slot-*.key"):
        key_file.unlink()
    result = crate("secrets", "get", "API_KEY", env={"CRATE_MASTER_KEY": value})
    assert_clean_error(result, ExitCode.KEYSTORE, hidden=(value, exported))
    assert "CRATE_MASTER_KEY" in result.stderr


def test_a_wrong_env_key_falls_back_to_the_other_slots(crate: CrateRunner, exported: str) -> None:
    done = crate("secrets", "get", "API_KEY", env={"CRATE_MASTER_KEY": "v1:" + "A" * 44})
    assert (done.returncode, done.stdout) == (0, "s3cret-value")


def test_export_needs_a_confirmation(crate: CrateRunner, exported: str) -> None:
    refused = crate("keys", "export-env")
    assert_clean_error(refused, ExitCode.USAGE, hidden=(exported,))


def test_the_env_slot_cannot_be_added_to_disk(crate: CrateRunner, exported: str) -> None:
    result = crate("keys", "slots", "add", "env")
    assert result.returncode == ExitCode.USAGE


def test_slots_list_says_when_each_slot_last_unlocked(two_slots: CrateRunner) -> None:
    crate = two_slots
    before = {s["type"]: s["last_used"] for s in slots(crate)}
    assert before["file"] is not None  # it unlocked the key for the passphrase slot
    assert before["passphrase"] is None
    (key_file,) = (crate.home / "keys").glob("slot-*.key")
    key_file.unlink()
    crate("secrets", "get", "API_KEY", env=WITH_PASSPHRASE, check=True)
    after = {s["type"]: s for s in slots(crate, env=WITH_PASSPHRASE)}
    assert after["passphrase"]["last_used"] is not None
    assert after["passphrase"]["details"].startswith("Argon2id")
    assert after["file"]["details"].endswith(".key")


def test_a_slot_copied_from_another_home_is_refused(
    crate: CrateRunner, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Each home's master key has a check value: a slot that unseals some other
    key (here another home's file slot, copied in) is named as not holding
    this key, instead of failing later as damaged vault data."""
    crate("secrets", "set", "A", "1", check=True)
    other = CrateRunner(tmp_path_factory.mktemp("other") / "crate-home")
    other("secrets", "set", "B", "2", check=True)
    registry = json.loads((crate.home / "keys" / "master.json").read_text())
    foreign = json.loads((other.home / "keys" / "master.json").read_text())
    foreign_slot = foreign["versions"][0]["slots"][0]
    registry["versions"][0]["slots"] = [foreign_slot]
    (crate.home / "keys" / "master.json").write_text(json.dumps(registry))
    for key_file in (other.home / "keys").glob("slot-*.key"):
        (crate.home / "keys" / key_file.name).write_bytes(key_file.read_bytes())
    result = crate("secrets", "get", "A")
    assert_clean_error(result, ExitCode.KEYSTORE)
    assert f"file slot {foreign_slot['id']} does not hold master key v1" in result.stderr


def test_keys_status_says_plainly_how_the_key_is_protected(two_slots: CrateRunner) -> None:
    crate = two_slots
    shown = crate("keys", "status", check=True)
    assert "master key v1 can be unlocked by: a key file" in shown.stdout
    assert "a passphrase" in shown.stdout
    assert "also unlocks it" in shown.stderr  # the file slot weakens the passphrase
    as_json = json.loads(crate("keys", "status", "--json", check=True).stdout)
    (version,) = as_json["master_versions"]
    assert [s["type"] for s in version["slots"]] == ["file", "passphrase"]
    assert as_json["env_slot"] is False
    file_id = slot_id(crate, "file")
    crate("keys", "slots", "remove", file_id, env=WITH_PASSPHRASE, check=True)
    after = json.loads(crate("keys", "status", "--json", check=True).stdout)
    assert after["warnings"] == []
    assert after["summary"] == "master key v1 can be unlocked by: a passphrase"
