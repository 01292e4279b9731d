"""Damaged or foreign vault files (DESIGN §3, §7).

A vault file that is truncated, not SQLite, empty, an SQLite database that is
not a crate vault, or a vault from a newer crate must give one clear error
that names the file: `VaultCorrupted` (exit 5) or `UnsupportedVersion`
(exit 1). The file must be left byte for byte as it was, and no stray files
may appear beside it. Here the service and the client in process; crate as
a command on the same files is in tests/e2e/test_vault_faults.py.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from crate_cli.errors import (
    CrateError,
    IntegrityError,
    VaultCorrupted,
)
from tests.support.vault_damage import (
    DAMAGES,
    Damaged,
    assert_untouched,
    damage,
    truncate_100,
    vault_with_one_secret,
)

VALUE = "fault-test-value-5e1d0b"


@pytest.fixture
def vault(personal_home: Path, fresh_session) -> Path:
    """The `personal` vault holding one secret, every connection closed."""
    return vault_with_one_secret(personal_home, fresh_session, VALUE)


@pytest.fixture(params=sorted(DAMAGES))
def damaged(request: pytest.FixtureRequest, vault: Path) -> Iterator[Damaged]:
    with damage(vault, request.param) as found:
        yield found


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


def test_failed_open_closes_its_connection(vault: Path, fresh_session) -> None:
    truncate_100(vault)
    gc.collect()
    gc.disable()  # make "until the garbage collector runs" deterministic
    try:
        with fresh_session() as s, pytest.raises(VaultCorrupted):
            s.service.list_secrets("personal", "dev", [])
        assert sorted(os.listdir(vault.parent)) == ["personal.vault"]
    finally:
        gc.enable()
