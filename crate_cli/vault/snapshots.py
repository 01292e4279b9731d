"""Environment snapshots: a whole environment's live values in one sealed blob.

`crate run` reads every secret of an environment. Read row by row, that is a
MAC check, a DEK unwrap and a value decryption per secret (about 20 µs each
in Python). After such a full read has checked every row, the server role
seals what it served, `[names, versions, values]` (three lists, in name
order), as one blob under a fresh DEK wrapped by the newest org DEK (the
same three tiers as a secret), and the next full read of that environment
opens this blob instead.

A snapshot is bound, through its associated data, to a digest of its
environment's head rows: the SHA-256 of their MACs (32 bytes each) in name
order. Any change to a head (a value stored, deleted or rolled back, tags
edited, a row restored from an older copy) changes its MAC, so a stale or
replayed snapshot does not open and the read falls back to the rows, with
every check. Storage also drops a snapshot as soon as its
environment or the org DEKs change, so that no stale copy of a value stays
behind. A snapshot written under an org DEK that is no longer the newest is
not used.

A read served from a snapshot checks neither each head row's MAC nor the
version rows: a row edited in place (its MAC left as it was, the triggers
dropped) is refused by the next read that checks rows (a read by name,
`list`, `history`, a write, `crate audit verify`), while the snapshot keeps
serving the values it sealed from authentic rows.
"""

import contextlib
import json
from collections.abc import Sequence
from typing import Any

from crate_cli.errors import CrateError, IntegrityError
from crate_cli.vault import crypto
from crate_cli.vault.keys import OrgKeys
from crate_cli.vault.storage.interface import OrgReader, SnapshotRow


def heads_digest(db: OrgReader, env: str) -> str:
    """The digest a snapshot of `env` is bound to, read in the caller's transaction."""
    return crypto.sha256_hex(db.head_macs(env))


def _associated(keys: OrgKeys, env: str, digest: str) -> tuple[bytes, bytes]:
    return (
        crypto.aad(crypto.ENV_SNAPSHOT_DEK, keys.org, env),
        crypto.aad(crypto.ENV_SNAPSHOT, keys.org, env, digest),
    )


def load(
    db: OrgReader, keys: OrgKeys, env: str, digest: str, dek_version: int
) -> list[list[Any]] | None:
    """The snapshot of `env` if it matches `digest` and was sealed under org DEK
    `dek_version` (the newest), else None: the caller then reads the rows."""
    row = db.snapshot(env)
    if row is None or row.dek_version != dek_version:
        return None
    dek_aad, value_aad = _associated(keys, env, digest)
    try:
        dek = crypto.unwrap_key(keys.dek(dek_version), row.wrapped_dek, dek_aad)
        values = json.loads(crypto.decrypt(dek, row.ciphertext, value_aad))
    except (IntegrityError, TypeError, ValueError):
        return None  # stale (the heads moved on) or damaged: the rows decide
    # What save() writes: [names, versions, values], three lists of one length.
    if not (
        type(values) is list
        and len(values) == 3
        and all(type(column) is list for column in values)
        and len(values[0]) == len(values[1]) == len(values[2])
    ):
        return None
    return values


def save(
    keys: OrgKeys, env: str, digest: str, dek_version: int, values: Sequence[list[Any]]
) -> None:
    """Seal `values` (the names, versions and values that a full read of
    `env` served, read in the transaction that gave `digest`) as the
    environment's snapshot. Nothing is written if the org DEKs changed
    meanwhile; a failure to write is left for the next read, which reads the
    rows again."""
    dek_aad, value_aad = _associated(keys, env, digest)
    plaintext = json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    dek = crypto.new_key()
    wrapped = crypto.wrap_key(keys.dek(dek_version), dek, dek_aad)
    sealed = crypto.encrypt(dek, plaintext, value_aad)
    with contextlib.suppress(CrateError), keys.store.write() as db:
        db.put_snapshot(env, SnapshotRow(dek_version, wrapped, sealed))
