"""Key rotation inside an org (DESIGN §5): a new org DEK with every secret
DEK rewrapped under it, the org's keys rewrapped to a new master key
version, and the pruning of org DEKs that wrap nothing any more.

A rotation of the org DEK computes the rewraps from a read snapshot, so
that writers (and readers, whose audit entries are writes) are not held up
meanwhile; then one short transaction inserts the new version and applies
them, redoing any row that changed since. Readers see every key under the
old versions or every key under the new one; a crash leaves the old state.
"""

from collections.abc import Callable
from typing import Any

from crate_cli.clock import format_time, parse_time, utc_now
from crate_cli.vault import audit, crypto
from crate_cli.vault.keys import Caller, OrgKeys
from crate_cli.vault.storage.interface import (
    OrgWriter,
    RotationRow,
    VersionRewrap,
    WrappedKeyRow,
)

Progress = Callable[[int, int], None]


def rotate_org(
    keys: OrgKeys,
    caller: Caller,
    progress: Progress | None = None,
    scheduled: bool = False,
) -> tuple[int, int]:
    """Make org DEK version M+1 and rewrap every secret DEK under it.
    Returns (new version, keys rewrapped)."""
    new_key = crypto.new_key()
    new_cipher = crypto.cipher(new_key)
    with keys.store.read() as db:
        planned = keys.current_dek_version(db) + 1
        rows = db.rotation_rows()
    prepared: dict[tuple[int, int], tuple[VersionRewrap, bytes]] = {}
    total = len(rows)
    for done, row in enumerate(rows, 1):
        prepared[(row.secret_id, row.version)] = _rewrap(keys, row, new_cipher, planned)
        if progress is not None and (done % 2000 == 0 or done == total):
            progress(done, total)
    with keys.store.write() as db:
        if scheduled and keys.current_dek_version(db) >= planned:
            # Decided again under the org's lock: another process or replica
            # rotated since the snapshot, so the schedule is met already.
            return keys.current_dek_version(db), 0
        new = _insert_data_key(db, keys, new_key)
        if new != planned:
            prepared.clear()  # another rotation came first: redo every row
        updates = []
        # Only ids and MACs are read under the lock: a row's wrapped DEK
        # changes only in a rotation, which changes its MAC too. A row
        # written or changed since the snapshot is done now.
        for secret_id, version, mac in db.wrapped_version_macs():
            ready = prepared.get((secret_id, version))
            if ready is None or ready[1] != mac:
                changed = db.rotation_row(secret_id, version)
                assert changed is not None  # its MAC was just read in this transaction
                ready = _rewrap(keys, changed, new_cipher, new)
            updates.append(ready[0])
        db.rewrap_versions(updates)
        details: dict[str, Any] = {"data_key_version": new, "rewrapped": len(updates)}
        if scheduled:
            details["scheduled"] = True
        audit.append(db, keys, caller, "rotate-org", details=details)
    keys.remember_dek(new, new_key)
    return new, len(updates)


def _insert_data_key(db: OrgWriter, keys: OrgKeys, new_key: bytes) -> int:
    """Insert `new_key` as the next org DEK version, wrapped by the current
    master key; returns its version. The master version is read inside the
    transaction: a master rotation's rewrap of this org comes wholly before
    or after it."""
    master = keys.master.current().version
    master_key = keys.unlock(master)
    new = keys.current_dek_version(db) + 1
    wrapped = crypto.wrap_key(master_key, new_key, crypto.aad(crypto.ORG_DEK, keys.org, new))
    db.insert_data_key(WrappedKeyRow(new, master, wrapped, utc_now()))
    return new


def _rewrap(
    keys: OrgKeys, row: RotationRow, new_cipher: Any, new: int
) -> tuple[VersionRewrap, bytes]:
    """What moves one version to org DEK `new`, and the row's MAC as it was
    read. The row is authenticated before it is re-MAC'd, so a tampered row
    is refused rather than laundered by the rotation."""
    env, name, version, action, old_dek, tag_text, created_at, actor, mac = row[:9]
    keys.check_version(env, name, row[2:9])
    dek_aad, _ = crypto.secret_aads(keys.org, env, name, version)
    wrapped = crypto.rewrap(keys.dek_cipher(old_dek), new_cipher, row.wrapped_dek, dek_aad)
    new_mac = keys.version_mac(env, name, (version, action, new, tag_text, created_at, actor))
    return VersionRewrap(new, wrapped, new_mac, row.secret_id, version), mac


def master_versions_used(keys: OrgKeys) -> dict[int, list[str]]:
    """Which master key versions wrap this org's keys: version -> what."""
    with keys.store.read() as db:
        use = db.master_use()
    used: dict[int, list[str]] = {}
    for counts, what in (
        (use.data_keys, "data key"),
        (use.rsa_keys, "RSA key"),
        (use.audit_keys, "audit key"),
    ):
        for version, count in counts.items():
            used.setdefault(version, []).append(f"{count} {what}{'s' if count > 1 else ''}")
    return used


def rewrap_to_master(keys: OrgKeys, version: int, caller: Caller) -> int:
    """Rewrap every key of the org that master key `version` does not wrap
    yet, in one transaction; returns how many were rewrapped."""
    org = keys.org
    new_key = keys.unlock(version)
    with keys.store.write() as db:
        below = db.keys_below_master(version)
        for row in below.data_keys:
            aad = crypto.aad(crypto.ORG_DEK, org, row.version)
            key = crypto.unwrap_key(keys.unlock(row.master_version), row.wrapped, aad)
            db.rewrap_data_key(row.version, version, crypto.wrap_key(new_key, key, aad))
        for row in below.audit_keys:
            # Keeps the label that says whether the log has begun.
            master_key = keys.unlock(row.master_version)
            key, begun = keys.unwrap_audit_key(master_key, row.wrapped, row.version)
            label = crypto.ORG_AUDIT_KEY_CHAINED if begun else crypto.ORG_AUDIT_KEY
            aad = crypto.aad(label, org, row.version)
            db.rewrap_audit_key(row.version, version, crypto.wrap_key(new_key, key, aad))
        for rsa in below.rsa_keys:
            aad = crypto.aad(crypto.ORG_RSA_KEY, org, rsa.kid)
            der = crypto.decrypt(keys.unlock(rsa.master_version), rsa.wrapped_private, aad)
            db.rewrap_rsa_key(rsa.kid, version, crypto.encrypt(new_key, der, aad))
        count = len(below.data_keys) + len(below.audit_keys) + len(below.rsa_keys)
        if count:
            audit.append(
                db,
                keys,
                caller,
                "rotate-master",
                details={"master_version": version, "rewrapped": count},
            )
    return count


def rotation_due(keys: OrgKeys, every: float) -> str | None:
    """When the org's data key is due for rotation, `every` seconds after it
    was made, or None."""
    from datetime import timedelta

    row = keys.store.direct.newest_data_key()
    if row is None:
        return None
    return format_time(parse_time(row.created_at) + timedelta(seconds=every))


def rotate_if_due(keys: OrgKeys, every: float | None, caller: Caller) -> None:
    if not every:
        return
    due = rotation_due(keys, every)
    if due is not None and due <= utc_now():
        rotate_org(keys, caller, scheduled=True)


def org_dek_usage(keys: OrgKeys) -> list[dict[str, Any]]:
    """Each org DEK version: its master key version and how many secret
    DEKs it wraps (the newest one is the one new writes use)."""
    with keys.store.read() as db:
        rows = db.data_key_usage()
    newest = max((r.version for r in rows), default=0)
    return [{**r._asdict(), "current": r.version == newest} for r in rows]


def prune_org_deks(keys: OrgKeys, caller: Caller) -> list[int]:
    """Delete org DEK versions that wrap nothing and are not the newest."""
    with keys.store.write() as db:
        unused = db.unused_data_keys(keys.current_dek_version(db))
        db.delete_data_keys(unused)
        if unused:
            audit.append(db, keys, caller, "prune", details={"data_key_versions": unused})
    keys.forget_deks(unused)
    return unused
