"""Organizations: each with its own keys, in the home's storage.

Creating an org builds all of it (org DEK v1, RSA-3072 key pair, audit key,
the default environments, the first audit entry) before it appears under
its name (storage/sqlite: a temporary file linked into place), so a crash
never leaves a half-made org and two processes creating the same org
cannot both succeed.
"""

from crate_cli.clock import utc_now
from crate_cli.errors import Conflict
from crate_cli.vault import audit, crypto, jwe
from crate_cli.vault.keys import Caller, OrgKeys
from crate_cli.vault.masterkey import MasterKeys
from crate_cli.vault.names import check_org
from crate_cli.vault.storage.interface import (
    EXPORT_TABLES,
    OrgStore,
    RsaKeyRow,
    Storage,
    WrappedKeyRow,
)

DEFAULT_ENVIRONMENTS = ("dev", "staging", "prod")
ORG_RSA_BITS = 3072


def create_org(
    storage: Storage, master: MasterKeys, org: str, caller: Caller | None = None
) -> None:
    """Create org `org` with fresh keys wrapped by the current master key; its
    audit log starts with the creation."""
    check_org(org)
    storage.prepare()
    if storage.org_exists(org):
        raise Conflict(f"organization {org!r} already exists")
    master_version = master.current().version
    master_key = master.unlock(master_version)
    who = caller or Caller("crate")

    def initialise(store: OrgStore) -> None:
        _initialise(store, org, master, master_key, master_version, who)

    storage.create_org(org, initialise)


def _initialise(
    store: OrgStore,
    org: str,
    master: MasterKeys,
    master_key: bytes,
    master_version: int,
    caller: Caller,
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    now = utc_now()
    private = rsa.generate_private_key(public_exponent=65537, key_size=ORG_RSA_BITS)
    kid = jwe.thumbprint(private.public_key())
    private_der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    dek = crypto.wrap_key(master_key, crypto.new_key(), crypto.aad(crypto.ORG_DEK, org, 1))
    wrapped_private = crypto.encrypt(
        master_key, private_der, crypto.aad(crypto.ORG_RSA_KEY, org, kid)
    )
    audit_key = crypto.wrap_key(
        master_key, crypto.new_key(), crypto.aad(crypto.ORG_AUDIT_KEY, org, 1)
    )
    keys = OrgKeys(org, store, master, caller, on_unlock_failure=audit.record_unlock_failure)
    with store.write() as db:
        db.init_org(org, now)
        db.insert_data_key(WrappedKeyRow(1, master_version, dek, now))
        db.insert_rsa_key(RsaKeyRow(kid, master_version, public_der, wrapped_private, now, 1))
        db.insert_audit_key(WrappedKeyRow(1, master_version, audit_key, now))
        db.add_environments(DEFAULT_ENVIRONMENTS, now)
        audit.append(db, keys, caller, "org-create")


def delete_org(storage: Storage, org: str) -> None:
    storage.delete_org(check_org(org))


def copy_org(source: Storage, target: Storage, org: str) -> None:
    """Copy org `org` from `source` into `target` with every row as stored, so
    that every MAC, version and audit entry verifies there as here (`crate org
    export-store`). It appears in the target whole or not at all; Conflict if
    the target has it already. Both must be under the same master keys."""
    check_org(org)
    target.prepare()
    if target.org_exists(org):
        raise Conflict(f"organization {org!r} already exists in the target store")
    store = source.open_org(org)
    try:
        with store.read() as db:  # one snapshot of the source
            first_key = db.data_key(1) or db.newest_data_key()
            created_at = first_key.created_at if first_key is not None else utc_now()

            def initialise(new: OrgStore) -> None:
                with new.write() as copy:
                    copy.init_org(org, created_at)
                    for table in EXPORT_TABLES:
                        copy.import_rows(table, db.export_rows(table))

            target.create_org(org, initialise)
    finally:
        store.close()


def verify_copy(storage: Storage, master: MasterKeys, org: str) -> int:
    """Verify the audit chain of `org` in `storage` (a copy just made) under
    `master`; returns its number of entries (AuditChainBroken if it fails)."""
    keys = OrgKeys(
        org, storage.open_org(org), master, Caller("crate"), on_unlock_failure=lambda *a: None
    )
    try:
        return audit.verify(keys).entries
    finally:
        keys.store.close()
