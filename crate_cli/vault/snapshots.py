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
every check. Triggers (store.py) also drop a snapshot as soon as its
environment or the org DEKs change, so that no stale copy of a value stays
behind. A snapshot written under an org DEK that is no longer the newest is
not used.

A read served from a snapshot checks neither each head row's MAC nor the
version rows: a row edited in place (its MAC left as it was, the triggers
dropped) is refused by the next read that checks rows (a read by name,
`list`, `history`, a write, `crate audit verify`), while the snapshot keeps
serving the values it sealed from authentic rows.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from crate_cli.errors import CrateError, IntegrityError
from crate_cli.vault import crypto

if TYPE_CHECKING:
    from crate_cli.vault.service import OrgKeys

# The head MACs of one environment, concatenated by SQLite in one call from
# the index that holds them (secrets_head_macs), with no object per row: in
# name order, so that the same heads always give the same bytes.
_HEAD_MACS = (
    "SELECT CAST(group_concat(mac, '') AS BLOB) "
    "FROM (SELECT mac FROM secrets WHERE env = ? ORDER BY name)"
)


def heads_digest(db: sqlite3.Connection, env: str) -> str:
    """The digest a snapshot of `env` is bound to, read in the caller's transaction."""
    row = db.execute(_HEAD_MACS, (env,)).fetchone()
    macs = row[0] if row is not None and row[0] is not None else b""
    return crypto.sha256_hex(bytes(macs))


def _associated(keys: OrgKeys, env: str, digest: str) -> tuple[bytes, bytes]:
    return (
        crypto.aad(crypto.ENV_SNAPSHOT_DEK, keys.org, env),
        crypto.aad(crypto.ENV_SNAPSHOT, keys.org, env, digest),
    )


def load(
    db: sqlite3.Connection, keys: OrgKeys, env: str, digest: str, dek_version: int
) -> list[list[Any]] | None:
    """The snapshot of `env` if it matches `digest` and was sealed under org DEK
    `dek_version` (the newest), else None: the caller then reads the rows."""
    row = db.execute(
        "SELECT org_dek_version, wrapped_dek, ciphertext FROM env_snapshots WHERE env = ?",
        (env,),
    ).fetchone()
    if row is None or row[0] != dek_version:
        return None
    dek_aad, value_aad = _associated(keys, env, digest)
    try:
        dek = crypto.unwrap_key(keys.dek(dek_version), row[1], dek_aad)
        values = json.loads(crypto.decrypt(dek, row[2], value_aad))
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
        db.execute(
            "INSERT OR REPLACE INTO env_snapshots (env, org_dek_version, wrapped_dek, ciphertext) "
            "SELECT ?, ?, ?, ? WHERE (SELECT max(version) FROM org_deks) = ? "
            "AND EXISTS (SELECT 1 FROM environments WHERE name = ?)",
            (env, dek_version, wrapped, sealed, dek_version, env),
        )
