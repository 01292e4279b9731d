"""Every SQL statement crate runs on a vault, as the typed reads and writes
of storage/interface.py (OrgReader, OrgWriter).

Rows come back as SQLite gives them, wrapped in the interface's records:
no value is converted, so the MACs computed over them stay those of the
rows as written. Statements that splice in a fragment splice
only constants of this module; every value is a parameter.
"""

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from crate_cli.errors import AuditSeqTaken
from crate_cli.vault.storage.interface import (
    EXPORT_TABLES,
    AllowedNameRow,
    AnchorRow,
    AuditEntryRow,
    AuditFilter,
    AuditPageRow,
    ChainRow,
    DataKeyUsage,
    EndedAllowanceRow,
    HeadFields,
    HeadRow,
    KeysBelow,
    MasterUse,
    NewVersion,
    PendingFields,
    PendingRow,
    RevocationRow,
    RotationRow,
    RsaKeyRow,
    SnapshotRow,
    TokenRow,
    ValueRow,
    VersionMac,
    VersionRewrap,
    VersionRow,
    WrappedKeyRow,
)

# The newest version a secret's history holds: an authentic but older head row
# copied back in points below it.
_NEWEST_VERSION = "(SELECT max(n.version) FROM secret_versions n WHERE n.secret_id = s.id)"
# A head as HeadRow holds it.
_HEAD = (
    "SELECT s.name, s.version, s.deleted, s.tags, s.updated_at, s.actor, s.mac, s.id, "
    f"{_NEWEST_VERSION} FROM secrets s "
)
# A head and the version a read chose, as ValueRow holds it: with the version
# row's MAC'd fields (_VERSION_FIELDS) or NULLs in their place.
_VALUES = (
    "SELECT s.name, s.version, s.deleted, s.tags, s.updated_at, s.actor, s.mac, "
    "v.version, v.org_dek_version, v.wrapped_dek, v.ciphertext, "
    f"{_NEWEST_VERSION}, {{}} FROM secrets s "
    "LEFT JOIN secret_versions v ON v.secret_id = s.id "
)
_VERSION_FIELDS = "v.action, v.org_dek_version, v.tags, v.created_at, v.actor, v.mac"
_NO_VERSION_FIELDS = "NULL, NULL, NULL, NULL, NULL, NULL"
# Every secret version that has a wrapped DEK, as a rotation reads it.
_ROTATION_ROWS = (
    "SELECT s.env, s.name, v.version, v.action, v.org_dek_version, v.tags, "
    "v.created_at, v.actor, v.mac, v.wrapped_dek, v.secret_id "
    "FROM secret_versions v JOIN secrets s ON s.id = v.secret_id "
    "WHERE v.wrapped_dek IS NOT NULL"
)
# The head MACs of one environment, concatenated by SQLite in one call from
# the index that holds them (secrets_head_macs), with no object per row: in
# name order, so that the same heads always give the same bytes.
HEAD_MACS = (
    "SELECT CAST(group_concat(mac, '') AS BLOB) "
    "FROM (SELECT mac FROM secrets WHERE env = ? ORDER BY name)"
)
_ENTRY_FIELDS = "seq, time, actor, action, env, names, outcome, request_id, client, details"
_PENDING_FIELDS = "time, actor, action, env, names, outcome, request_id, client, details"
_TOKEN_FIELDS = "name, role, envs, tags, created_at, expires_at, actor, hash, mac"
_KEY_TABLES = {"data": "org_deks", "audit": "org_audit_keys"}


class SqliteRows:
    """The reads and writes of one vault connection. Inside `read()` and
    `write()` they belong to that transaction; the store's `direct` copy
    runs each under `guard` (the store's SQLite-fault translation)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        guard: Callable[[], AbstractContextManager[None]] | None = None,
    ) -> None:
        self._conn = conn
        self._guard = guard

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._guard is None:
            return self._conn.execute(sql, params).fetchall()
        with self._guard():
            return self._conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._guard is None:
            return self._conn.execute(sql, params).fetchone()
        with self._guard():
            return self._conn.execute(sql, params).fetchone()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, params)

    # -- keys -----------------------------------------------------------------------------

    def data_key(self, version: int) -> WrappedKeyRow | None:
        row = self._one(
            "SELECT version, master_version, wrapped, created_at FROM org_deks WHERE version = ?",
            (version,),
        )
        return None if row is None else WrappedKeyRow._make(row)

    def newest_data_key(self) -> WrappedKeyRow | None:
        row = self._one(
            "SELECT version, master_version, wrapped, created_at FROM org_deks "
            "ORDER BY version DESC LIMIT 1"
        )
        return None if row is None else WrappedKeyRow._make(row)

    def newest_audit_key(self) -> WrappedKeyRow | None:
        row = self._one(
            "SELECT version, master_version, wrapped, created_at FROM org_audit_keys "
            "ORDER BY version DESC LIMIT 1"
        )
        return None if row is None else WrappedKeyRow._make(row)

    def active_rsa_key(self) -> RsaKeyRow | None:
        row = self._one(
            "SELECT kid, master_version, public_der, wrapped_private, created_at, active "
            "FROM org_rsa_keys WHERE active = 1 ORDER BY created_at DESC LIMIT 1"
        )
        return None if row is None else RsaKeyRow._make(row)

    def rsa_key(self, kid: str) -> RsaKeyRow | None:
        row = self._one(
            "SELECT kid, master_version, public_der, wrapped_private, created_at, active "
            "FROM org_rsa_keys WHERE kid = ?",
            (kid,),
        )
        return None if row is None else RsaKeyRow._make(row)

    def master_use(self) -> MasterUse:
        counts = []
        for table in ("org_deks", "org_rsa_keys", "org_audit_keys"):
            query = f"SELECT master_version, count(*) FROM {table} GROUP BY master_version"
            counts.append({int(v): int(n) for v, n in self._all(query)})
        return MasterUse(*counts)

    def keys_below_master(self, master_version: int) -> KeysBelow:
        # `<`: keys already on a newer version (a later rotation) stay.
        wrapped = [
            [
                WrappedKeyRow._make(row)
                for row in self._all(
                    f"SELECT version, master_version, wrapped, created_at FROM {table} "
                    "WHERE master_version < ?",
                    (master_version,),
                )
            ]
            for table in (_KEY_TABLES["data"], _KEY_TABLES["audit"])
        ]
        rsa = [
            RsaKeyRow._make(row)
            for row in self._all(
                "SELECT kid, master_version, public_der, wrapped_private, created_at, active "
                "FROM org_rsa_keys WHERE master_version < ?",
                (master_version,),
            )
        ]
        return KeysBelow(wrapped[0], wrapped[1], rsa)

    def data_key_usage(self) -> list[DataKeyUsage]:
        return [
            DataKeyUsage._make(row)
            for row in self._all(
                "SELECT d.version, d.master_version, d.created_at, "
                "(SELECT count(*) FROM secret_versions v WHERE v.org_dek_version = d.version) "
                "FROM org_deks d ORDER BY d.version"
            )
        ]

    def unused_data_keys(self, below: int) -> list[int]:
        return [
            row[0]
            for row in self._all(
                "SELECT d.version FROM org_deks d WHERE d.version < ? AND NOT EXISTS "
                "(SELECT 1 FROM secret_versions v WHERE v.org_dek_version = d.version)",
                (below,),
            )
        ]

    # -- environments and org policy --------------------------------------------------------

    def environment_names(self) -> list[str]:
        return [row[0] for row in self._all("SELECT name FROM environments ORDER BY name")]

    def has_environment(self, env: str) -> bool:
        return self._one("SELECT 1 FROM environments WHERE name = ?", (env,)) is not None

    def count_secrets(self, env: str) -> int:
        return int(self._one("SELECT count(*) FROM secrets WHERE env = ?", (env,))[0])

    def allowed_names(self) -> list[AllowedNameRow]:
        return [
            AllowedNameRow._make(row)
            for row in self._all(
                "SELECT name, allowed_at, actor, mac FROM allowed_names ORDER BY name"
            )
        ]

    def ended_allowances(self) -> list[EndedAllowanceRow]:
        return [
            EndedAllowanceRow._make(row)
            for row in self._all(
                "SELECT name, allowed_at, ended_at, actor, mac FROM allowed_names_ended"
            )
        ]

    # -- secrets --------------------------------------------------------------------------

    def head(self, env: str, name: str) -> HeadRow | None:
        row = self._one(_HEAD + "WHERE s.env = ? AND s.name = ?", (env, name))
        return None if row is None else HeadRow._make(row)

    def heads(self, env: str) -> list[HeadRow]:
        return list(
            map(HeadRow._make, self._all(_HEAD + "WHERE s.env = ? ORDER BY s.name", (env,)))
        )

    def values(
        self,
        env: str,
        names: Sequence[str],
        versions: Mapping[str, int],
        version_rows: bool = False,
    ) -> list[ValueRow]:
        base = _VALUES.format(_VERSION_FIELDS if version_rows else _NO_VERSION_FIELDS)
        if not names:
            return list(
                map(
                    ValueRow._make,
                    self._all(
                        base + "AND v.version = s.version WHERE s.env = ? ORDER BY s.name", (env,)
                    ),
                )
            )
        rows = []
        for name in dict.fromkeys(names):
            row = self._one(
                base + "AND v.version = coalesce(?, s.version) WHERE s.env = ? AND s.name = ?",
                (versions.get(name), env, name),
            )
            if row is not None:
                rows.append(ValueRow._make(row))
        return rows

    def versions(self, secret_id: int) -> list[VersionRow]:
        return [
            VersionRow._make(row)
            for row in self._all(
                "SELECT version, action, org_dek_version, tags, created_at, actor, mac, "
                "ciphertext IS NULL FROM secret_versions WHERE secret_id = ? ORDER BY version",
                (secret_id,),
            )
        ]

    def head_versions(self) -> dict[tuple[str, str], int]:
        return {(r[0], r[1]): r[2] for r in self._all("SELECT env, name, version FROM secrets")}

    def rotation_rows(self) -> list[RotationRow]:
        return list(map(RotationRow._make, self._all(_ROTATION_ROWS)))

    def rotation_row(self, secret_id: int, version: int) -> RotationRow | None:
        row = self._one(
            _ROTATION_ROWS + " AND v.secret_id = ? AND v.version = ?", (secret_id, version)
        )
        return None if row is None else RotationRow._make(row)

    def wrapped_version_macs(self) -> list[VersionMac]:
        return [
            VersionMac._make(row)
            for row in self._all(
                "SELECT secret_id, version, mac FROM secret_versions WHERE wrapped_dek IS NOT NULL"
            )
        ]

    # -- snapshots ------------------------------------------------------------------------

    def head_macs(self, env: str) -> bytes:
        row = self._one(HEAD_MACS, (env,))
        return bytes(row[0]) if row is not None and row[0] is not None else b""

    def snapshot(self, env: str) -> SnapshotRow | None:
        row = self._one(
            "SELECT org_dek_version, wrapped_dek, ciphertext FROM env_snapshots WHERE env = ?",
            (env,),
        )
        return None if row is None else SnapshotRow._make(row)

    # -- audit ----------------------------------------------------------------------------

    def anchor(self) -> AnchorRow | None:
        row = self._one("SELECT seq, mac, enabled, tag FROM audit_anchor WHERE id = 1")
        return None if row is None else AnchorRow._make(row)

    def pending_entries(self) -> list[PendingRow]:
        return [
            PendingRow(row[0], PendingFields._make(row[1:]))
            for row in self._all(f"SELECT id, {_PENDING_FIELDS} FROM audit_pending ORDER BY id")
        ]

    def newest_entry_time(self) -> str | None:
        row = self._one("SELECT time FROM audit_log ORDER BY seq DESC LIMIT 1")
        return None if row is None else row[0]

    def audit_page(
        self, filters: AuditFilter, limit: int, before: int | None, after: int | None
    ) -> list[AuditPageRow]:
        conditions: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("a.actor", filters.actor),
            ("a.action", filters.action),
            ("a.env", filters.env),
        ):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        if filters.since is not None:
            conditions.append("a.time >= ?")
            params.append(filters.since)
        if filters.name is not None:
            conditions.append("EXISTS (SELECT 1 FROM json_each(a.names) j WHERE j.value = ?)")
            params.append(filters.name)
        if after is not None:
            conditions.append("a.seq > ?")
            params.append(after)
            order = "ASC"
        else:
            if before is not None:
                conditions.append("a.seq < ?")
                params.append(before)
            order = "DESC"
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        columns = ", ".join(f"a.{c.strip()}" for c in _ENTRY_FIELDS.split(","))
        sql = (
            f"SELECT {columns}, a.mac, p.mac FROM audit_log a "
            f"LEFT JOIN audit_log p ON p.seq = a.seq - 1 {where} ORDER BY a.seq {order} LIMIT ?"
        )
        return [
            AuditPageRow(AuditEntryRow._make(row[:11]), row[11])
            for row in self._all(sql, (*params, limit))
        ]

    def audit_chain(self) -> Iterator[ChainRow]:
        # SQLite joins the fields faster than Python unpacks them; an integer
        # field becomes the text str() gives it.
        joined = " || char(0) || ".join(c.strip() for c in _ENTRY_FIELDS.split(","))
        query = f"SELECT seq, action, outcome, {joined}, mac FROM audit_log ORDER BY seq"
        return map(ChainRow._make, self._conn.execute(query))

    # -- tokens ---------------------------------------------------------------------------

    def has_token(self, name: str) -> bool:
        return self._one("SELECT 1 FROM tokens WHERE name = ?", (name,)) is not None

    def tokens(self) -> list[TokenRow]:
        return [
            TokenRow._make(row)
            for row in self._all(f"SELECT {_TOKEN_FIELDS} FROM tokens ORDER BY name")
        ]

    def token_by_hash(self, digest: bytes) -> TokenRow | None:
        row = self._one(f"SELECT {_TOKEN_FIELDS} FROM tokens WHERE hash = ?", (digest,))
        return None if row is None else TokenRow._make(row)

    def token_hash(self, name: str) -> bytes | None:
        row = self._one("SELECT hash FROM tokens WHERE name = ?", (name,))
        return None if row is None else bytes(row[0])

    def is_revoked(self, digest: bytes) -> bool:
        return self._one("SELECT 1 FROM token_revocations WHERE hash = ?", (digest,)) is not None

    def revocations(self) -> list[RevocationRow]:
        return [
            RevocationRow._make(row)
            for row in self._all("SELECT hash, name, revoked_at, actor, mac FROM token_revocations")
        ]

    # -- writes (inside write() only) ---------------------------------------------------------

    def init_org(self, org: str, created_at: str) -> None:
        self._run(
            "INSERT INTO meta (key, value) VALUES ('org', ?), ('created_at', ?)", (org, created_at)
        )

    def insert_data_key(self, row: WrappedKeyRow) -> None:
        # A trigger drops every environment snapshot (sealed under older DEKs).
        self._run(
            "INSERT INTO org_deks (version, master_version, wrapped, created_at) "
            "VALUES (?, ?, ?, ?)",
            row,
        )

    def insert_audit_key(self, row: WrappedKeyRow) -> None:
        self._run(
            "INSERT INTO org_audit_keys (version, master_version, wrapped, created_at) "
            "VALUES (?, ?, ?, ?)",
            row,
        )

    def insert_rsa_key(self, row: RsaKeyRow) -> None:
        self._run(
            "INSERT INTO org_rsa_keys (kid, master_version, public_der, wrapped_private, "
            "created_at, active) VALUES (?, ?, ?, ?, ?, ?)",
            row,
        )

    def rewrap_data_key(self, version: int, master_version: int, wrapped: bytes) -> None:
        self._run(
            "UPDATE org_deks SET master_version = ?, wrapped = ? WHERE version = ?",
            (master_version, wrapped, version),
        )

    def rewrap_audit_key(self, version: int, master_version: int, wrapped: bytes) -> None:
        self._run(
            "UPDATE org_audit_keys SET master_version = ?, wrapped = ? WHERE version = ?",
            (master_version, wrapped, version),
        )

    def rewrap_rsa_key(self, kid: str, master_version: int, wrapped_private: bytes) -> None:
        self._run(
            "UPDATE org_rsa_keys SET master_version = ?, wrapped_private = ? WHERE kid = ?",
            (master_version, wrapped_private, kid),
        )

    def delete_data_keys(self, versions: Sequence[int]) -> None:
        self._conn.executemany("DELETE FROM org_deks WHERE version = ?", [(v,) for v in versions])

    def add_environments(self, names: Sequence[str], created_at: str) -> None:
        self._conn.executemany(
            "INSERT INTO environments (name, created_at) VALUES (?, ?)",
            [(name, created_at) for name in names],
        )

    def delete_environment(self, env: str) -> None:
        # The foreign keys cascade to its secrets and their versions, and a
        # trigger drops its snapshot.
        self._run("DELETE FROM environments WHERE name = ?", (env,))

    def allow_name(self, row: AllowedNameRow) -> None:
        # OR REPLACE: over an ended allowance's row put back from a backup.
        self._run(
            "INSERT OR REPLACE INTO allowed_names (name, allowed_at, actor, mac) "
            "VALUES (?, ?, ?, ?)",
            row,
        )

    def end_allowance(self, row: EndedAllowanceRow) -> None:
        self._run("DELETE FROM allowed_names WHERE name = ?", (row.name,))
        self._run(
            "INSERT INTO allowed_names_ended (name, allowed_at, ended_at, actor, mac) "
            "VALUES (?, ?, ?, ?, ?)",
            row,
        )

    def insert_head(self, env: str, head: HeadFields) -> int:
        # Triggers drop the environment's snapshot on every change of a head.
        cursor = self._run(
            "INSERT INTO secrets (env, name, version, deleted, tags, updated_at, actor, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (env, *head),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def update_head(self, secret_id: int, head: HeadFields) -> None:
        self._run(
            "UPDATE secrets SET version = ?, deleted = ?, tags = ?, updated_at = ?, "
            "actor = ?, mac = ? WHERE id = ?",
            (*head[1:], secret_id),
        )

    def insert_version(self, secret_id: int, row: NewVersion) -> None:
        self._run(
            "INSERT INTO secret_versions (secret_id, version, action, org_dek_version, "
            "wrapped_dek, ciphertext, tags, created_at, actor, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (secret_id, *row),
        )

    def rewrap_versions(self, rows: Sequence[VersionRewrap]) -> None:
        self._conn.executemany(
            "UPDATE secret_versions SET org_dek_version = ?, wrapped_dek = ?, mac = ? "
            "WHERE secret_id = ? AND version = ?",
            rows,
        )

    def put_snapshot(self, env: str, row: SnapshotRow) -> None:
        self._run(
            "INSERT OR REPLACE INTO env_snapshots (env, org_dek_version, wrapped_dek, ciphertext) "
            "SELECT ?, ?, ?, ? WHERE (SELECT max(version) FROM org_deks) = ? "
            "AND EXISTS (SELECT 1 FROM environments WHERE name = ?)",
            (env, *row, row.dek_version, env),
        )

    def insert_audit_entry(self, row: AuditEntryRow) -> None:
        try:
            self._run(
                f"INSERT INTO audit_log ({_ENTRY_FIELDS}, mac) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        except sqlite3.IntegrityError:  # the primary key, or the append-only trigger
            raise AuditSeqTaken(row.seq) from None

    def clear_pending(self) -> None:
        self._run("DELETE FROM audit_pending")

    def add_pending(self, fields: PendingFields) -> None:
        self._run(
            f"INSERT INTO audit_pending ({_PENDING_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            fields,
        )

    def write_anchor(self, row: AnchorRow) -> None:
        self._run(
            "INSERT OR REPLACE INTO audit_anchor (id, seq, mac, enabled, tag) "
            "VALUES (1, ?, ?, ?, ?)",
            row,
        )

    def insert_token(self, row: TokenRow) -> None:
        self._run(
            f"INSERT INTO tokens ({_TOKEN_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )

    def revoke_token(self, row: RevocationRow) -> None:
        self._run("DELETE FROM tokens WHERE name = ?", (row.name,))
        self._run(
            "INSERT OR IGNORE INTO token_revocations (hash, name, revoked_at, actor, mac) "
            "VALUES (?, ?, ?, ?, ?)",
            row,
        )

    # -- copying an org -------------------------------------------------------------------

    def export_rows(self, table: str) -> Iterator[tuple[object, ...]]:
        columns = EXPORT_TABLES[table]
        if table == "secret_versions":
            fields = ", ".join(f"v.{c}" for c in columns[2:])
            query = (
                f"SELECT s.env, s.name, {fields} FROM secret_versions v "
                "JOIN secrets s ON s.id = v.secret_id ORDER BY s.env, s.name, v.version"
            )
        else:
            query = f"SELECT {', '.join(columns)} FROM {table} ORDER BY rowid"
        return iter(self._conn.execute(query))

    def import_rows(self, table: str, rows: Iterable[tuple[object, ...]]) -> None:
        columns = EXPORT_TABLES[table]
        marks = ", ".join("?" * len(columns))
        if table == "secret_versions":
            query = (
                f"INSERT INTO secret_versions (secret_id, {', '.join(columns[2:])}) "
                "VALUES ((SELECT id FROM secrets WHERE env = ? AND name = ?), "
                f"{', '.join('?' * (len(columns) - 2))})"
            )
        elif table == "audit_anchor":
            names = ", ".join(columns)
            query = f"INSERT OR REPLACE INTO audit_anchor (id, {names}) VALUES (1, {marks})"
        else:
            query = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
        self._conn.executemany(query, rows)
