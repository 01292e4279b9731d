"""Damaged or foreign vault files (DESIGN §3, §7).

A vault file that is truncated, not SQLite, empty, an SQLite database that is
not a crate vault, or a vault from a newer crate must give one clear error
that names the file: `VaultCorrupted` (exit 5) or `UnsupportedVersion`
(exit 1). The file must be left byte for byte as it was, and no stray files
may appear beside it.
"""

from __future__ import annotations

import gc
import hashlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from crate_cli.errors import (
    CrateError,
    ExitCode,
    IntegrityError,
    UnsupportedVersion,
    VaultCorrupted,
)
from crate_cli.vault.storage.sqlite.schema import SCHEMA_VERSION

VALUE = "fault-test-value-5e1d0b"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncate_100(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _sqlite_magic_then_garbage(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(path.stat().st_size - 16))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _foreign_sqlite(path: Path) -> None:
    path.unlink()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    db.execute("INSERT INTO notes (body) VALUES ('not a vault')")
    db.commit()
    db.close()


def _newer_schema(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()


# damage -> (class the service raises, exit code, words the message must hold)
DAMAGES: dict[str, tuple[Callable[[Path], None], type[CrateError], ExitCode, str]] = {
    "truncated-half": (_truncate_half, VaultCorrupted, ExitCode.INTEGRITY, "damaged"),
    "truncated-100-bytes": (_truncate_100, VaultCorrupted, ExitCode.INTEGRITY, "damaged"),
    "random-bytes": (_random_bytes, VaultCorrupted, ExitCode.INTEGRITY, "not an SQLite file"),
    "sqlite-magic-then-garbage": (
        _sqlite_magic_then_garbage,
        VaultCorrupted,
        ExitCode.INTEGRITY,
        "damaged",
    ),
    "empty": (_empty, VaultCorrupted, ExitCode.INTEGRITY, "not an SQLite file"),
    "foreign-sqlite": (_foreign_sqlite, VaultCorrupted, ExitCode.INTEGRITY, "not a crate vault"),
    "newer-schema": (_newer_schema, UnsupportedVersion, ExitCode.ERROR, "schema version 99"),
}


@pytest.fixture
def vault(personal_home: Path, fresh_session) -> Path:
    """The `personal` vault holding one secret, every connection closed."""
    with fresh_session() as s:
        s.client("personal").store("dev", [("A", VALUE)])
    path = personal_home / "orgs" / "personal.vault"
    assert sorted(os.listdir(path.parent)) == ["personal.vault"]
    return path


@pytest.fixture(params=sorted(DAMAGES))
def damaged(request: pytest.FixtureRequest, vault: Path) -> tuple[Path, str, tuple]:
    damage, cls, code, words = DAMAGES[request.param]
    original = vault.read_bytes()
    damage(vault)
    yield vault, sha256(vault), (cls, code, words)
    # The damage is the only problem: the original file works again.
    vault.write_bytes(original)


def assert_untouched(path: Path, digest: str) -> None:
    assert sha256(path) == digest
    gc.collect()  # see test_failed_open_closes_its_connection for why
    assert sorted(os.listdir(path.parent)) == ["personal.vault"]


def test_service_reports_the_damage(damaged, fresh_session) -> None:
    path, digest, (cls, code, words) = damaged
    operations = [
        lambda s: s.service.list_secrets("personal", "dev", []),
        lambda s: s.service.read_values("personal", "dev", ["A"], []),
        lambda s: s.service.history("personal", "dev", "A"),
        lambda s: s.service.create_env("personal", "qa"),
    ]
    for operation in operations:
        with fresh_session() as s, pytest.raises(cls) as info:
            operation(s)
        assert type(info.value) is cls
        assert info.value.exit_code == code
        assert str(path) in info.value.message
        assert words in info.value.message
        del info  # its traceback would keep a leaked connection alive
        assert_untouched(path, digest)


def test_client_gets_the_same_exit_code(damaged, fresh_session) -> None:
    """Through the loopback the class may be the wire code's base, but not the exit code."""
    path, digest, (cls, code, _words) = damaged
    expected = IntegrityError if issubclass(cls, IntegrityError) else CrateError
    with fresh_session() as s, pytest.raises(expected) as info:
        s.client("personal").retrieve("dev", ["A"])
    assert info.value.exit_code == code
    assert str(path) in info.value.message
    assert_untouched(path, digest)


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
    _newer_schema(vault)
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
    _truncate_half(vault)
    assert crate("secrets", "get", "A").returncode == ExitCode.INTEGRITY
    result = crate("secrets", "get", "B", "--org", "other")
    assert (result.returncode, result.stdout) == (0, "b-value")


def test_failed_open_closes_its_connection(vault: Path, fresh_session) -> None:
    _truncate_100(vault)
    gc.collect()
    gc.disable()  # make "until the garbage collector runs" deterministic
    try:
        with fresh_session() as s, pytest.raises(VaultCorrupted):
            s.service.list_secrets("personal", "dev", [])
        assert sorted(os.listdir(vault.parent)) == ["personal.vault"]
    finally:
        gc.enable()
