"""Whole vault files damaged as a disk, a bad copy or a newer crate could
leave them, and the checks that a refusal left such a file as it was
(tests/integration/test_vault_faults.py, tests/e2e/test_vault_faults.py)."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from crate_cli.errors import CrateError, ExitCode, UnsupportedVersion, VaultCorrupted

# The damaged file, its digest, and (error class, exit code, words the message holds).
Damaged = tuple[Path, str, tuple[type[CrateError], ExitCode, str]]


def sha256(path: Path) -> str:
    """The file's SHA-256, to show it was left byte for byte as it was."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def truncate_100(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def sqlite_magic_then_garbage(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(path.stat().st_size - 16))


def empty(path: Path) -> None:
    path.write_bytes(b"")


def foreign_sqlite(path: Path) -> None:
    path.unlink()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    db.execute("INSERT INTO notes (body) VALUES ('not a vault')")
    db.commit()
    db.close()


def newer_schema(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()


# damage -> (class the service raises, exit code, words the message must hold)
DAMAGES: dict[str, tuple[Callable[[Path], None], type[CrateError], ExitCode, str]] = {
    "truncated-half": (truncate_half, VaultCorrupted, ExitCode.INTEGRITY, "damaged"),
    "truncated-100-bytes": (truncate_100, VaultCorrupted, ExitCode.INTEGRITY, "damaged"),
    "random-bytes": (random_bytes, VaultCorrupted, ExitCode.INTEGRITY, "not an SQLite file"),
    "sqlite-magic-then-garbage": (
        sqlite_magic_then_garbage,
        VaultCorrupted,
        ExitCode.INTEGRITY,
        "damaged",
    ),
    "empty": (empty, VaultCorrupted, ExitCode.INTEGRITY, "not an SQLite file"),
    "foreign-sqlite": (foreign_sqlite, VaultCorrupted, ExitCode.INTEGRITY, "not a crate vault"),
    "newer-schema": (newer_schema, UnsupportedVersion, ExitCode.ERROR, "schema version 99"),
}


def vault_with_one_secret(home: Path, fresh_session: Callable[[], Any], value: str) -> Path:
    """The `personal` vault of `home` holding secret A, every connection closed."""
    with fresh_session() as s:
        s.client("personal").store("dev", [("A", value)])
    path = home / "orgs" / "personal.vault"
    assert sorted(os.listdir(path.parent)) == ["personal.vault"]
    return path


@contextlib.contextmanager
def damage(vault: Path, kind: str) -> Iterator[Damaged]:
    """`vault` with the damage `kind` of DAMAGES, then put back as it was: the
    damage is the only problem, and the original file works again."""
    spoil, cls, code, words = DAMAGES[kind]
    original = vault.read_bytes()
    spoil(vault)
    yield vault, sha256(vault), (cls, code, words)
    vault.write_bytes(original)


def assert_untouched(path: Path, digest: str) -> None:
    """The file is byte for byte as it was, and nothing appeared beside it."""
    assert sha256(path) == digest
    # A failed open must close its connection at once, not when the garbage
    # collector runs (tests/integration/test_vault_faults.py checks it).
    gc.collect()
    assert sorted(os.listdir(path.parent)) == ["personal.vault"]
