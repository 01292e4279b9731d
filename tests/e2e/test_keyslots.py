"""Key slots and the key registry, through the CLI in new processes (DESIGN §2, §7).

A master key that cannot be unlocked (key file missing or replaced, wrong or
absent passphrase, damaged registry) must exit 6 with a message that says
what is wrong and what to do, and must change nothing: the vault file and
the key registry stay byte for byte the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest

from crate_cli.errors import ExitCode
from tests.support.vault_state import home_state

pytestmark = pytest.mark.e2e

VALUE = "keyslot-test-value-a71c"
PASSPHRASE = "correct horse battery staple"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(home: Path) -> dict[str, object]:
    """Every file under the home, with vaults compared by their rows outside the
    audit log: a failed unlock is recorded there, and nothing else may change."""
    return home_state(home)


def pending_unlocks(home: Path) -> list[tuple[object, ...]]:
    """Failed unlocks recorded, still unauthenticated, in the default org's vault."""
    conn = sqlite3.connect(home / "orgs" / "personal.vault")
    try:
        return conn.execute(
            "SELECT action, outcome, details FROM audit_pending ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def assert_keystore_error(result, *phrases: str) -> None:
    assert result.returncode == ExitCode.KEYSTORE, result
    assert result.stdout == ""
    assert result.stderr.startswith("crate: error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr
    assert "Traceback" not in result.stderr
    assert VALUE not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def names(crate, **kw) -> list[tuple[str, int]]:
    result = crate("secrets", "list", "--json", **kw)
    assert result.returncode == 0, result
    return [(s["name"], s["version"]) for s in json.loads(result.stdout)]


# -- the file slot ---------------------------------------------------------------------


@pytest.fixture
def file_home(personal_home: Path, crate) -> Path:
    assert crate("secrets", "set", "A", "-", input=VALUE).returncode == 0
    return personal_home


def key_file(home: Path) -> Path:
    (path,) = (home / "keys").glob("slot-*.key")
    return path


def test_file_slot_works(file_home: Path, crate) -> None:
    assert crate("secrets", "get", "A").stdout == VALUE
    assert key_file(file_home).stat().st_mode & 0o777 == 0o600
    assert (file_home / "keys").stat().st_mode & 0o777 == 0o700


def test_key_file_deleted(file_home: Path, crate) -> None:
    path = key_file(file_home)
    kek = path.read_bytes()
    path.unlink()
    before = snapshot(file_home)

    assert_keystore_error(crate("secrets", "get", "A"), str(path), "missing")
    assert_keystore_error(crate("secrets", "set", "B", "-", input="b-value"), "missing")
    assert_keystore_error(crate("secrets", "fetch"), "missing")
    # Listing authenticates the rows' metadata, so it needs the key too.
    assert_keystore_error(crate("secrets", "list"), "missing")

    assert snapshot(file_home) == before
    # Putting the key file back is all it takes.
    path.write_bytes(kek)
    path.chmod(0o600)
    assert crate("secrets", "get", "A").stdout == VALUE
    assert names(crate) == [("A", 1)]


@pytest.mark.parametrize(
    "replacement",
    [os.urandom(32), b"", os.urandom(31), os.urandom(33)],
    ids=["other-32-bytes", "empty", "31-bytes", "33-bytes"],
)
def test_key_file_replaced(file_home: Path, crate, replacement: bytes) -> None:
    key_file(file_home).write_bytes(replacement)
    before = snapshot(file_home)

    result = crate("secrets", "get", "A")
    assert_keystore_error(result, str(key_file(file_home)), "does not unlock")
    assert_keystore_error(crate("secrets", "set", "B", "-", input="b-value"), "does not unlock")
    assert_keystore_error(crate("secrets", "list"), "does not unlock")
    assert snapshot(file_home) == before


# -- the passphrase slot -------------------------------------------------------------------


@pytest.fixture
def passphrase_home(crate_home: Path, crate) -> Path:
    result = crate(
        "init", "--keystore", "passphrase", env={"CRATE_PASSPHRASE": PASSPHRASE}, input=b""
    )
    assert result.returncode == 0, result
    assert "passphrase" in result.stderr
    result = crate("secrets", "set", "A", "-", input=VALUE, env={"CRATE_PASSPHRASE": PASSPHRASE})
    assert result.returncode == 0, result
    return crate_home


def test_passphrase_init_keeps_no_key_in_clear(passphrase_home: Path) -> None:
    keys = passphrase_home / "keys"
    assert not list(keys.glob("slot-*.key"))
    registry = (keys / "master.json").read_text()
    (version,) = json.loads(registry)["versions"]
    assert [s["type"] for s in version["slots"]] == ["passphrase"]
    assert version["slots"][0]["params"]["kdf"] == "argon2id"
    assert PASSPHRASE not in registry


def test_right_passphrase_in_fresh_processes(passphrase_home: Path, crate) -> None:
    ok = {"CRATE_PASSPHRASE": PASSPHRASE}
    assert crate("secrets", "get", "A", env=ok, input=b"").stdout == VALUE
    assert crate("secrets", "set", "B", "b-value", env=ok, input=b"").returncode == 0
    result = crate("secrets", "fetch", "--format", "json", env=ok, input=b"")
    assert json.loads(result.stdout) == {"A": VALUE, "B": "b-value"}


def test_wrong_passphrase_changes_nothing(passphrase_home: Path, crate) -> None:
    before = snapshot(passphrase_home)
    wrong = {"CRATE_PASSPHRASE": PASSPHRASE + "!"}

    assert_keystore_error(crate("secrets", "get", "A", env=wrong, input=b""), "wrong passphrase")
    result = crate("secrets", "set", "B", "-", env=wrong, input="b-value-never-stored")
    assert_keystore_error(result, "wrong passphrase", "CRATE_PASSPHRASE")
    assert "b-value-never-stored" not in result.stderr
    result = crate("secrets", "set", "A", "-", env=wrong, input="overwrite-attempt")
    assert_keystore_error(result, "wrong passphrase")

    assert snapshot(passphrase_home) == before
    right = {"CRATE_PASSPHRASE": PASSPHRASE}
    assert names(crate, env=right, input=b"") == [("A", 1)]
    history = crate("secrets", "history", "A", "--json", env=right, input=b"")
    assert [v["version"] for v in json.loads(history.stdout)] == [1]
    assert crate("secrets", "get", "A", env=right, input=b"").stdout == VALUE


@pytest.mark.parametrize("argv", [["secrets", "get", "A"], ["secrets", "set", "B", "b"]])
def test_no_passphrase_and_no_terminal(passphrase_home: Path, crate, argv: list[str]) -> None:
    before = snapshot(passphrase_home)
    result = crate(*argv, input=b"")  # stdin is a pipe: no terminal to ask on
    assert_keystore_error(result, "CRATE_PASSPHRASE")
    assert snapshot(passphrase_home) == before


def test_passphrase_init_without_passphrase_creates_nothing(crate_home: Path, crate) -> None:
    result = crate("init", "--keystore", "passphrase", input=b"")
    assert_keystore_error(result, "CRATE_PASSPHRASE")
    assert not (crate_home / "keys" / "master.json").exists()
    assert not list(crate_home.rglob("slot-*.key"))


def test_second_init_with_another_keystore_is_a_conflict(passphrase_home: Path, crate) -> None:
    before = snapshot(passphrase_home)
    result = crate("init", "--keystore", "file", env={"CRATE_PASSPHRASE": PASSPHRASE}, input=b"")
    assert result.returncode == ExitCode.CONFLICT, result
    assert "already initialized" in result.stderr
    assert snapshot(passphrase_home) == before


# -- the key registry ------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _not_json(path: Path) -> None:
    path.write_bytes(b"\x00\xffgarbage")


def _no_versions(path: Path) -> None:
    path.write_text(json.dumps({"format": 1}))


def _slot_without_params(path: Path) -> None:
    doc = json.loads(path.read_text())
    del doc["versions"][0]["slots"][0]["params"]
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "damage",
    [_truncate, _empty, _not_json, _no_versions, _slot_without_params],
    ids=["truncated", "empty", "not-json", "no-versions", "slot-without-params"],
)
def test_damaged_registry(file_home: Path, crate, damage) -> None:
    registry = file_home / "keys" / "master.json"
    damage(registry)
    before = snapshot(file_home)

    result = crate("secrets", "get", "A")
    assert_keystore_error(result, str(registry), "damaged")
    assert_keystore_error(crate("secrets", "set", "B", "b-value"), "damaged")
    assert_keystore_error(crate("init"), "damaged")
    assert snapshot(file_home) == before  # no new master key, nothing rewritten


@pytest.mark.parametrize("damage", ["deleted", "empty-version-list"])
def test_lost_registry_with_existing_vaults(file_home: Path, crate, damage: str) -> None:
    registry = file_home / "keys" / "master.json"
    if damage == "deleted":
        registry.unlink()
    else:
        registry.write_text(json.dumps({"format": 1, "versions": []}))
    before = snapshot(file_home)

    result = crate("secrets", "get", "A")
    assert_keystore_error(result, "master.json")
    assert snapshot(file_home) == before  # and no replacement master key was made
