"""The facade (vault/service.py): what it checks before it opens an org."""

from __future__ import annotations

from pathlib import Path

import pytest

from crate_cli.config import CrateHome
from crate_cli.errors import InvalidInput, NotFound, NotPrivate
from crate_cli.vault import jwe
from crate_cli.vault.masterkey import MasterKeys
from crate_cli.vault.orgs import create_org
from crate_cli.vault.service import VaultService
from crate_cli.vault.storage.sqlite import SqliteStorage


def service_of(home: Path) -> VaultService:
    crate_home = CrateHome(home, home)
    return VaultService(SqliteStorage(crate_home), MasterKeys(crate_home, environ={}))


def test_a_malformed_client_key_is_refused_before_the_org_is_opened(home: Path) -> None:
    """A bad request answers as one (400) whether or not the org exists."""
    service = service_of(home)
    for org in ("acme", "nosuch"):
        with pytest.raises(InvalidInput):
            service.retrieve(org, "dev", [], [], None, {"kty": "RSA", "n": "x"}, "n" * 16)
    from cryptography.hazmat.primitives.asymmetric import rsa

    good = jwe.public_jwk(rsa.generate_private_key(65537, 2048).public_key())
    with pytest.raises(NotFound):
        service.retrieve("nosuch", "dev", [], [], None, good, "n" * 16)


def test_an_org_is_not_created_in_a_folder_others_can_enter_nor_a_key_unlocked(
    home: Path,
) -> None:
    """The orgs folder is checked before the master key is unlocked (so a
    home that is not private is refused before any prompt)."""
    crate_home = CrateHome(home, home)
    crate_home.orgs_dir.chmod(0o755)
    unlocked: list[int] = []

    class Watched(MasterKeys):
        def unlock(self, version: int) -> bytes:
            unlocked.append(version)
            return super().unlock(version)

    with pytest.raises(NotPrivate):
        create_org(SqliteStorage(crate_home), Watched(crate_home, environ={}), "other")
    assert unlocked == []
    assert not (crate_home.orgs_dir / "other.vault").exists()
