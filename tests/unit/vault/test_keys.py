"""An org's keys (crate_cli/vault/keys.py): unwrapping on first use, the row
MACs every read checks, and the failed unlock it reports once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crate_cli.config import CrateHome
from crate_cli.errors import IntegrityError, InvalidSealedValue, KeystoreError
from crate_cli.vault import jwe
from crate_cli.vault.keys import OrgKeys
from crate_cli.vault.masterkey import MasterKeys
from crate_cli.vault.storage.interface import HeadRow
from crate_cli.vault.storage.sqlite import SqliteStorage
from tests.support.org_keys import ORG, TESTER, Backend, head, open_org, store, versions


def test_an_org_has_one_data_key_one_audit_key_and_one_rsa_key(keys: OrgKeys) -> None:
    reader = keys.store.direct
    data_key, audit_key, rsa_key = (
        reader.newest_data_key(),
        reader.newest_audit_key(),
        reader.active_rsa_key(),
    )
    assert data_key is not None and (data_key.version, data_key.master_version) == (1, 1)
    assert audit_key is not None and (audit_key.version, audit_key.master_version) == (1, 1)
    assert rsa_key is not None and (rsa_key.master_version, rsa_key.active) == (1, 1)
    assert keys.current_dek_version(reader) == 1
    assert len(keys.dek(1)) == 32
    assert keys.audit_log_begun(reader)  # the creation is its first entry


def test_the_public_key_is_the_private_keys_half_and_named_by_its_thumbprint(
    keys: OrgKeys,
) -> None:
    kid, der = keys.active_public_key()
    public = keys.private_key(kid).public_key()
    assert jwe.thumbprint(public) == kid
    from cryptography.hazmat.primitives import serialization

    assert (
        public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == der
    )
    with pytest.raises(InvalidSealedValue, match="does not have"):
        keys.private_key("another-kid")


FIELDS = ["name", "version", "deleted", "tags", "updated_at", "actor"]


@pytest.mark.parametrize("field", FIELDS)
def test_a_head_with_any_field_changed_does_not_verify(keys: OrgKeys, field: str) -> None:
    store(keys, "dev", {"A": "alpha"}, tags=["db"])
    row = head(keys, "dev", "A")
    keys.check_head("dev", row)
    other: dict[str, Any] = {
        "name": "B",
        "version": 2,
        "deleted": 1,
        "tags": "[]",
        "updated_at": "2020-01-01T00:00:00.000000Z",
        "actor": "mallory@elsewhere",
    }
    changed: HeadRow = row._replace(**{field: other[field]})
    with pytest.raises(IntegrityError):
        keys.check_head("dev", changed)


def test_a_row_mac_binds_the_org_and_the_environment(
    home: Path, keys: OrgKeys, backend: Backend
) -> None:
    store(keys, "dev", {"A": "alpha"})
    row = head(keys, "dev", "A")
    (version,) = versions(keys, "dev", "A")
    with pytest.raises(IntegrityError):
        keys.check_head("prod", row)
    with pytest.raises(IntegrityError):
        keys.check_version("prod", "A", version)
    with pytest.raises(IntegrityError):
        keys.check_version("dev", "B", version)
    master = backend.master(home)
    other = OrgKeys(
        "other", keys.store, master, TESTER, on_unlock_failure=lambda *args: None
    )  # the same rows and keys, read as another org's
    with pytest.raises(IntegrityError):
        other.check_head("dev", row)


def test_a_data_key_that_is_gone_is_an_integrity_error(keys: OrgKeys) -> None:
    with keys.store.write() as db:
        db.delete_data_keys([1])
    with pytest.raises(IntegrityError):
        keys.dek(1)


def test_a_failed_unlock_is_reported_once_and_raised_each_time(home: Path) -> None:
    (key_file,) = (home / "keys").glob("slot-*.key")
    key_file.unlink()
    reported: list[tuple[str, int]] = []
    master = MasterKeys(CrateHome(home, home), environ={})
    store_ = SqliteStorage(CrateHome(home, home)).open_org(ORG)
    keys = OrgKeys(
        ORG,
        store_,
        master,
        TESTER,
        on_unlock_failure=lambda k, error, version: reported.append((error.api_code, version)),
    )
    try:
        for _ in range(2):
            with pytest.raises(KeystoreError):
                keys.dek(1)
    finally:
        store_.close()
    assert reported == [("keystore_unavailable", 1)]


def test_a_failed_unlock_is_left_pending_in_the_audit_log(home: Path, backend: Backend) -> None:
    """Without the key there is no MAC to chain with: the org's default
    report (audit.record_unlock_failure) writes a pending entry."""
    (key_file,) = (home / "keys").glob("slot-*.key")
    key_file.unlink()
    with open_org(home, backend=backend) as keys:
        with pytest.raises(KeystoreError):
            keys.dek(1)
        ((_, fields),) = keys.store.direct.pending_entries()
    assert (fields.action, fields.outcome, fields.actor) == ("unlock", "failed", "tester@unit")
