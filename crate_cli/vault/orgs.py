"""Organizations: one vault file each, with the org's own keys.

Creating an org builds the whole vault under a temporary name (schema, org
DEK v1, RSA-3072 key pair, audit key, the default environments) and then
links it into place, so a crash never leaves a half-made org and two
processes creating the same org cannot both succeed.
"""

from __future__ import annotations

import contextlib
import os
import secrets

from crate_cli.config import CrateHome, ensure_private_dir, fsync_dir
from crate_cli.errors import Conflict, NotFound
from crate_cli.vault import audit, crypto, jwe
from crate_cli.vault.audit import Caller
from crate_cli.vault.masterkey import MasterKeys, utc_now
from crate_cli.vault.names import check_org
from crate_cli.vault.store import OrgStore

DEFAULT_ENVIRONMENTS = ("dev", "staging", "prod")
ORG_RSA_BITS = 3072


def list_orgs(home: CrateHome) -> list[str]:
    try:
        entries = os.listdir(home.orgs_dir)
    except FileNotFoundError:
        return []
    return sorted(e[: -len(".vault")] for e in entries if e.endswith(".vault"))


def org_exists(home: CrateHome, org: str) -> bool:
    return home.vault_path(check_org(org)).exists()


def create_org(home: CrateHome, master: MasterKeys, org: str, caller: Caller | None = None) -> None:
    """Create org `org` with fresh keys wrapped by the current master key; its
    audit log starts with the creation."""
    check_org(org)
    ensure_private_dir(home.orgs_dir)
    final = home.vault_path(org)
    if final.exists():
        raise Conflict(f"organization {org!r} already exists")
    master_version = master.current().version
    master_key = master.unlock(master_version)
    tmp = home.orgs_dir / f".{org}.{secrets.token_hex(4)}.creating"
    try:
        store = OrgStore.create(tmp)
        try:
            _initialise(store, org, master, master_key, master_version, caller or Caller("crate"))
        finally:
            store.close()
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise Conflict(f"organization {org!r} already exists") from None
        fsync_dir(home.orgs_dir)  # the new name survives a power loss
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


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

    from crate_cli.vault.service import OrgKeys

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
    with store.write() as db:
        db.execute("INSERT INTO meta (key, value) VALUES ('org', ?), ('created_at', ?)", (org, now))
        db.execute(
            "INSERT INTO org_deks (version, master_version, wrapped, created_at) "
            "VALUES (1, ?, ?, ?)",
            (
                master_version,
                crypto.wrap_key(master_key, crypto.new_key(), crypto.aad(crypto.ORG_DEK, org, 1)),
                now,
            ),
        )
        db.execute(
            "INSERT INTO org_rsa_keys (kid, master_version, public_der, wrapped_private, "
            "created_at, active) VALUES (?, ?, ?, ?, ?, 1)",
            (
                kid,
                master_version,
                public_der,
                crypto.encrypt(master_key, private_der, crypto.aad(crypto.ORG_RSA_KEY, org, kid)),
                now,
            ),
        )
        db.execute(
            "INSERT INTO org_audit_keys (version, master_version, wrapped, created_at) "
            "VALUES (1, ?, ?, ?)",
            (
                master_version,
                crypto.wrap_key(
                    master_key, crypto.new_key(), crypto.aad(crypto.ORG_AUDIT_KEY, org, 1)
                ),
                now,
            ),
        )
        db.executemany(
            "INSERT INTO environments (name, created_at) VALUES (?, ?)",
            [(env, now) for env in DEFAULT_ENVIRONMENTS],
        )
        audit.append(db, OrgKeys(org, store, master, caller), caller, "org-create")


def delete_org(home: CrateHome, org: str) -> None:
    path = home.vault_path(check_org(org))
    doomed = home.orgs_dir / f".{org}.{secrets.token_hex(4)}.deleting"
    # One rename takes the org away at once; a crash after it leaves only a
    # hidden file, never a vault without its WAL under the org's name.
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        raise NotFound(f"organization {org!r} does not exist") from None
    fsync_dir(home.orgs_dir)
    for p in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"), doomed):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
