"""Every SQL statement crate runs on an org in a PostgreSQL store, as the
typed reads and writes of storage/interface.py (OrgReader, OrgWriter).

The same statements as storage/sqlite/queries.py, each limited to one org
(`org_id`), with PostgreSQL's spelling: `ON CONFLICT` for `OR REPLACE`,
`RETURNING` for `lastrowid`, `string_agg` for `group_concat`,
`jsonb_array_elements_text` for `json_each`. Rows come back as psycopg gives
them (int, str, bytes, None), wrapped in the interface's records; the one
boolean PostgreSQL computes (`ciphertext IS NULL`) is cast to an integer, and
the audit chain's NUL separators are joined here (PostgreSQL text holds no NUL).
"""

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

# Each returns a connection for one statement: the open transaction's, or
# one of the pool's for a read on its own (the store's `direct`).
Connect = Callable[[], AbstractContextManager[Any]]

_NEWEST_VERSION = "(SELECT max(n.version) FROM secret_versions n WHERE n.secret_id = s.id)"
_HEAD = (
    "SELECT s.name, s.version, s.deleted, s.tags, s.updated_at, s.actor, s.mac, s.id, "
    f"{_NEWEST_VERSION} FROM secrets s "
)
_VALUES = (
    "SELECT s.name, s.version, s.deleted, s.tags, s.updated_at, s.actor, s.mac, "
    "v.version, v.org_dek_version, v.wrapped_dek, v.ciphertext, "
    f"{_NEWEST_VERSION}, {{}} FROM secrets s "
    "LEFT JOIN secret_versions v ON v.secret_id = s.id "
)
_VERSION_FIELDS = "v.action, v.org_dek_version, v.tags, v.created_at, v.actor, v.mac"
_NO_VERSION_FIELDS = "NULL, NULL::bigint, NULL, NULL, NULL, NULL::bytea"
_ROTATION_ROWS = (
    "SELECT s.env, s.name, v.version, v.action, v.org_dek_version, v.tags, "
    "v.created_at, v.actor, v.mac, v.wrapped_dek, v.secret_id "
    "FROM secret_versions v JOIN secrets s ON s.id = v.secret_id "
    "WHERE v.org_id = %s AND v.wrapped_dek IS NOT NULL"
)
_KEY = "version, master_version, wrapped, created_at"
_RSA = "kid, master_version, public_der, wrapped_private, created_at, active"
_ENTRY_FIELDS = "seq, time, actor, action, env, names, outcome, request_id, client, details"
_PENDING_FIELDS = "time, actor, action, env, names, outcome, request_id, client, details"
_TOKEN_FIELDS = "name, role, envs, tags, created_at, expires_at, actor, hash, mac"


class PostgresRows:
    """The reads and writes of one org in a store: inside `read()` and
    `write()` on that transaction's connection, else each on its own. Every
    statement names the org (`self.org`, its first or only `org_id` test)."""

    def __init__(self, connect: Connect, org_id: int) -> None:
        self._connect = connect
        self.org = org_id

    def _all(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._connect() as conn:
            return list(conn.execute(sql, params).fetchall())

    def _one(self, sql: str, params: Sequence[Any]) -> Any:
        with self._connect() as conn:
            return conn.execute(sql, params).fetchone()

    def _run(self, sql: str, params: Sequence[Any]) -> Any:
        with self._connect() as conn:
            return conn.execute(sql, params)

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self._connect() as conn, conn.cursor() as cursor:
            cursor.executemany(sql, rows)

    # -- keys -----------------------------------------------------------------------------

    def data_key(self, version: int) -> WrappedKeyRow | None:
        row = self._one(
            f"SELECT {_KEY} FROM org_deks WHERE org_id = %s AND version = %s", (self.org, version)
        )
        return None if row is None else WrappedKeyRow._make(row)

    def newest_data_key(self) -> WrappedKeyRow | None:
        row = self._one(
            f"SELECT {_KEY} FROM org_deks WHERE org_id = %s ORDER BY version DESC LIMIT 1",
            (self.org,),
        )
        return None if row is None else WrappedKeyRow._make(row)

    def newest_audit_key(self) -> WrappedKeyRow | None:
        row = self._one(
            f"SELECT {_KEY} FROM org_audit_keys WHERE org_id = %s ORDER BY version DESC LIMIT 1",
            (self.org,),
        )
        return None if row is None else WrappedKeyRow._make(row)

    def active_rsa_key(self) -> RsaKeyRow | None:
        row = self._one(
            f"SELECT {_RSA} FROM org_rsa_keys WHERE org_id = %s AND active = 1 "
            "ORDER BY created_at DESC LIMIT 1",
            (self.org,),
        )
        return None if row is None else RsaKeyRow._make(row)

    def rsa_key(self, kid: str) -> RsaKeyRow | None:
        row = self._one(
            f"SELECT {_RSA} FROM org_rsa_keys WHERE org_id = %s AND kid = %s", (self.org, kid)
        )
        return None if row is None else RsaKeyRow._make(row)

    def master_use(self) -> MasterUse:
        counts = []
        for table in ("org_deks", "org_rsa_keys", "org_audit_keys"):
            query = (
                f"SELECT master_version, count(*) FROM {table} WHERE org_id = %s "
                "GROUP BY master_version"
            )
            counts.append({int(v): int(n) for v, n in self._all(query, (self.org,))})
        return MasterUse(*counts)

    def keys_below_master(self, master_version: int) -> KeysBelow:
        # `<`: keys already on a newer version (a later rotation) stay.
        below = (self.org, master_version)
        wrapped = [
            [
                WrappedKeyRow._make(row)
                for row in self._all(
                    f"SELECT {_KEY} FROM {table} WHERE org_id = %s AND master_version < %s", below
                )
            ]
            for table in ("org_deks", "org_audit_keys")
        ]
        rsa = [
            RsaKeyRow._make(row)
            for row in self._all(
                f"SELECT {_RSA} FROM org_rsa_keys WHERE org_id = %s AND master_version < %s", below
            )
        ]
        return KeysBelow(wrapped[0], wrapped[1], rsa)

    def data_key_usage(self) -> list[DataKeyUsage]:
        return [
            DataKeyUsage._make(row)
            for row in self._all(
                "SELECT d.version, d.master_version, d.created_at, "
                "(SELECT count(*) FROM secret_versions v "
                "WHERE v.org_id = d.org_id AND v.org_dek_version = d.version) "
                "FROM org_deks d WHERE d.org_id = %s ORDER BY d.version",
                (self.org,),
            )
        ]

    def unused_data_keys(self, below: int) -> list[int]:
        return [
            row[0]
            for row in self._all(
                "SELECT d.version FROM org_deks d WHERE d.org_id = %s AND d.version < %s "
                "AND NOT EXISTS (SELECT 1 FROM secret_versions v "
                "WHERE v.org_id = d.org_id AND v.org_dek_version = d.version)",
                (self.org, below),
            )
        ]

    # -- environments and org policy --------------------------------------------------------

    def environment_names(self) -> list[str]:
        rows = self._all(
            "SELECT name FROM environments WHERE org_id = %s ORDER BY name", (self.org,)
        )
        return [row[0] for row in rows]

    def has_environment(self, env: str) -> bool:
        found = self._one(
            "SELECT 1 FROM environments WHERE org_id = %s AND name = %s", (self.org, env)
        )
        return found is not None

    def count_secrets(self, env: str) -> int:
        row = self._one(
            "SELECT count(*) FROM secrets WHERE org_id = %s AND env = %s", (self.org, env)
        )
        return int(row[0])

    def allowed_names(self) -> list[AllowedNameRow]:
        return [
            AllowedNameRow._make(row)
            for row in self._all(
                "SELECT name, allowed_at, actor, mac FROM allowed_names WHERE org_id = %s "
                "ORDER BY name",
                (self.org,),
            )
        ]

    def ended_allowances(self) -> list[EndedAllowanceRow]:
        return [
            EndedAllowanceRow._make(row)
            for row in self._all(
                "SELECT name, allowed_at, ended_at, actor, mac FROM allowed_names_ended "
                "WHERE org_id = %s",
                (self.org,),
            )
        ]

    # -- secrets --------------------------------------------------------------------------

    def head(self, env: str, name: str) -> HeadRow | None:
        row = self._one(
            _HEAD + "WHERE s.org_id = %s AND s.env = %s AND s.name = %s", (self.org, env, name)
        )
        return None if row is None else HeadRow._make(row)

    def heads(self, env: str) -> list[HeadRow]:
        rows = self._all(
            _HEAD + "WHERE s.org_id = %s AND s.env = %s ORDER BY s.name", (self.org, env)
        )
        return list(map(HeadRow._make, rows))

    def values(
        self,
        env: str,
        names: Sequence[str],
        versions: Mapping[str, int],
        version_rows: bool = False,
    ) -> list[ValueRow]:
        base = _VALUES.format(_VERSION_FIELDS if version_rows else _NO_VERSION_FIELDS)
        if not names:
            rows = self._all(
                base + "AND v.version = s.version WHERE s.org_id = %s AND s.env = %s "
                "ORDER BY s.name",
                (self.org, env),
            )
            return list(map(ValueRow._make, rows))
        # One statement for every name (SQLite runs one per name, which costs
        # it nothing; here each would be a round trip and a plan): the names
        # in the order given, each at the version asked for or its head's.
        wanted = list(dict.fromkeys(names))
        fields = _VERSION_FIELDS if version_rows else _NO_VERSION_FIELDS
        rows = self._all(
            "SELECT s.name, s.version, s.deleted, s.tags, s.updated_at, s.actor, s.mac, "
            "v.version, v.org_dek_version, v.wrapped_dek, v.ciphertext, "
            f"{_NEWEST_VERSION}, {fields} "
            "FROM unnest(%s::text[], %s::bigint[]) WITH ORDINALITY AS w(name, version, n) "
            "JOIN secrets s ON s.org_id = %s AND s.env = %s AND s.name = w.name "
            "LEFT JOIN secret_versions v ON v.secret_id = s.id "
            "AND v.version = coalesce(w.version, s.version) ORDER BY w.n",
            (wanted, [versions.get(name) for name in wanted], self.org, env),
        )
        return list(map(ValueRow._make, rows))

    def versions(self, secret_id: int) -> list[VersionRow]:
        return [
            VersionRow._make(row)
            for row in self._all(
                "SELECT version, action, org_dek_version, tags, created_at, actor, mac, "
                "(ciphertext IS NULL)::int FROM secret_versions "
                "WHERE org_id = %s AND secret_id = %s ORDER BY version",
                (self.org, secret_id),
            )
        ]

    def head_versions(self) -> dict[tuple[str, str], int]:
        rows = self._all("SELECT env, name, version FROM secrets WHERE org_id = %s", (self.org,))
        return {(r[0], r[1]): r[2] for r in rows}

    def rotation_rows(self) -> list[RotationRow]:
        return list(map(RotationRow._make, self._all(_ROTATION_ROWS, (self.org,))))

    def rotation_row(self, secret_id: int, version: int) -> RotationRow | None:
        row = self._one(
            _ROTATION_ROWS + " AND v.secret_id = %s AND v.version = %s",
            (self.org, secret_id, version),
        )
        return None if row is None else RotationRow._make(row)

    def wrapped_version_macs(self) -> list[VersionMac]:
        return [
            VersionMac._make(row)
            for row in self._all(
                "SELECT secret_id, version, mac FROM secret_versions "
                "WHERE org_id = %s AND wrapped_dek IS NOT NULL",
                (self.org,),
            )
        ]

    # -- snapshots ------------------------------------------------------------------------

    def head_macs(self, env: str) -> bytes:
        row = self._one(
            "SELECT string_agg(mac, ''::bytea ORDER BY name) FROM secrets "
            "WHERE org_id = %s AND env = %s",
            (self.org, env),
        )
        return bytes(row[0]) if row is not None and row[0] is not None else b""

    def snapshot(self, env: str) -> SnapshotRow | None:
        row = self._one(
            "SELECT org_dek_version, wrapped_dek, ciphertext FROM env_snapshots "
            "WHERE org_id = %s AND env = %s",
            (self.org, env),
        )
        return None if row is None else SnapshotRow._make(row)

    # -- audit ----------------------------------------------------------------------------

    def anchor(self) -> AnchorRow | None:
        row = self._one(
            "SELECT seq, mac, enabled, tag FROM audit_anchor WHERE org_id = %s", (self.org,)
        )
        return None if row is None else AnchorRow._make(row)

    def pending_entries(self) -> list[PendingRow]:
        return [
            PendingRow(row[0], PendingFields._make(row[1:]))
            for row in self._all(
                f"SELECT id, {_PENDING_FIELDS} FROM audit_pending WHERE org_id = %s ORDER BY id",
                (self.org,),
            )
        ]

    def newest_entry_time(self) -> str | None:
        row = self._one(
            "SELECT time FROM audit_log WHERE org_id = %s ORDER BY seq DESC LIMIT 1", (self.org,)
        )
        return None if row is None else str(row[0])

    def audit_page(
        self, filters: AuditFilter, limit: int, before: int | None, after: int | None
    ) -> list[AuditPageRow]:
        conditions = ["a.org_id = %s"]
        params: list[Any] = [self.org]
        for column, value in (
            ("a.actor", filters.actor),
            ("a.action", filters.action),
            ("a.env", filters.env),
        ):
            if value is not None:
                conditions.append(f"{column} = %s")
                params.append(value)
        if filters.since is not None:
            conditions.append("a.time >= %s")
            params.append(filters.since)
        if filters.name is not None:
            conditions.append(
                "EXISTS (SELECT 1 FROM jsonb_array_elements_text(a.names::jsonb) j(value) "
                "WHERE j.value = %s)"
            )
            params.append(filters.name)
        if after is not None:
            conditions.append("a.seq > %s")
            params.append(after)
            order = "ASC"
        else:
            if before is not None:
                conditions.append("a.seq < %s")
                params.append(before)
            order = "DESC"
        columns = ", ".join(f"a.{c.strip()}" for c in _ENTRY_FIELDS.split(","))
        sql = (
            f"SELECT {columns}, a.mac, p.mac FROM audit_log a "
            "LEFT JOIN audit_log p ON p.org_id = a.org_id AND p.seq = a.seq - 1 "
            f"WHERE {' AND '.join(conditions)} ORDER BY a.seq {order} LIMIT %s"
        )
        return [
            AuditPageRow(AuditEntryRow._make(row[:11]), row[11])
            for row in self._all(sql, (*params, limit))
        ]

    def audit_chain(self) -> Iterator[ChainRow]:
        # In batches, through a server-side cursor of the open transaction;
        # the NUL separators are joined here (PostgreSQL text holds no NUL).
        query = f"SELECT {_ENTRY_FIELDS}, mac FROM audit_log WHERE org_id = %s ORDER BY seq"
        with self._connect() as conn, conn.cursor(name="crate_audit_chain") as cursor:
            cursor.itersize = 2000
            cursor.execute(query, (self.org,))
            for row in cursor:
                yield ChainRow(row[0], row[3], row[6], "\0".join(map(str, row[:10])), row[10])

    # -- tokens ---------------------------------------------------------------------------

    def has_token(self, name: str) -> bool:
        row = self._one("SELECT 1 FROM tokens WHERE org_id = %s AND name = %s", (self.org, name))
        return row is not None

    def tokens(self) -> list[TokenRow]:
        return [
            TokenRow._make(row)
            for row in self._all(
                f"SELECT {_TOKEN_FIELDS} FROM tokens WHERE org_id = %s ORDER BY name", (self.org,)
            )
        ]

    def token_by_hash(self, digest: bytes) -> TokenRow | None:
        row = self._one(
            f"SELECT {_TOKEN_FIELDS} FROM tokens WHERE org_id = %s AND hash = %s",
            (self.org, digest),
        )
        return None if row is None else TokenRow._make(row)

    def token_hash(self, name: str) -> bytes | None:
        row = self._one("SELECT hash FROM tokens WHERE org_id = %s AND name = %s", (self.org, name))
        return None if row is None else bytes(row[0])

    def is_revoked(self, digest: bytes) -> bool:
        row = self._one(
            "SELECT 1 FROM token_revocations WHERE org_id = %s AND hash = %s", (self.org, digest)
        )
        return row is not None

    def revocations(self) -> list[RevocationRow]:
        return [
            RevocationRow._make(row)
            for row in self._all(
                "SELECT hash, name, revoked_at, actor, mac FROM token_revocations "
                "WHERE org_id = %s",
                (self.org,),
            )
        ]

    # -- writes (inside write() only) ---------------------------------------------------------

    def init_org(self, org: str, created_at: str) -> None:
        self._run("UPDATE orgs SET created_at = %s WHERE id = %s", (created_at, self.org))

    def insert_data_key(self, row: WrappedKeyRow) -> None:
        # A trigger drops every environment snapshot of the org (sealed under older DEKs).
        self._run(
            f"INSERT INTO org_deks (org_id, {_KEY}) VALUES (%s, %s, %s, %s, %s)", (self.org, *row)
        )

    def insert_audit_key(self, row: WrappedKeyRow) -> None:
        self._run(
            f"INSERT INTO org_audit_keys (org_id, {_KEY}) VALUES (%s, %s, %s, %s, %s)",
            (self.org, *row),
        )

    def insert_rsa_key(self, row: RsaKeyRow) -> None:
        self._run(
            f"INSERT INTO org_rsa_keys (org_id, {_RSA}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (self.org, *row),
        )

    def _rewrap(
        self, table: str, column: str, key: str, value: object, master: int, wrapped: bytes
    ) -> None:
        self._run(
            f"UPDATE {table} SET master_version = %s, {column} = %s "
            f"WHERE org_id = %s AND {key} = %s",
            (master, wrapped, self.org, value),
        )

    def rewrap_data_key(self, version: int, master_version: int, wrapped: bytes) -> None:
        self._rewrap("org_deks", "wrapped", "version", version, master_version, wrapped)

    def rewrap_audit_key(self, version: int, master_version: int, wrapped: bytes) -> None:
        self._rewrap("org_audit_keys", "wrapped", "version", version, master_version, wrapped)

    def rewrap_rsa_key(self, kid: str, master_version: int, wrapped_private: bytes) -> None:
        self._rewrap("org_rsa_keys", "wrapped_private", "kid", kid, master_version, wrapped_private)

    def delete_data_keys(self, versions: Sequence[int]) -> None:
        self._many(
            "DELETE FROM org_deks WHERE org_id = %s AND version = %s",
            [(self.org, v) for v in versions],
        )

    def add_environments(self, names: Sequence[str], created_at: str) -> None:
        self._many(
            "INSERT INTO environments (org_id, name, created_at) VALUES (%s, %s, %s)",
            [(self.org, name, created_at) for name in names],
        )

    def delete_environment(self, env: str) -> None:
        # Its secrets and snapshot go by ON DELETE CASCADE, their versions by
        # the cascade from each secret.
        self._run("DELETE FROM environments WHERE org_id = %s AND name = %s", (self.org, env))

    def allow_name(self, row: AllowedNameRow) -> None:
        self._run(
            "INSERT INTO allowed_names (org_id, name, allowed_at, actor, mac) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (org_id, name) DO UPDATE SET "
            "allowed_at = EXCLUDED.allowed_at, actor = EXCLUDED.actor, mac = EXCLUDED.mac",
            (self.org, *row),
        )

    def end_allowance(self, row: EndedAllowanceRow) -> None:
        self._run("DELETE FROM allowed_names WHERE org_id = %s AND name = %s", (self.org, row.name))
        self._run(
            "INSERT INTO allowed_names_ended (org_id, name, allowed_at, ended_at, actor, mac) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (self.org, *row),
        )

    def insert_head(self, env: str, head: HeadFields) -> int:
        # A trigger drops the environment's snapshot on every change of a head.
        cursor = self._run(
            "INSERT INTO secrets (org_id, env, name, version, deleted, tags, updated_at, actor, "
            "mac) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (self.org, env, *head),
        )
        return int(cursor.fetchone()[0])

    def update_head(self, secret_id: int, head: HeadFields) -> None:
        self._run(
            "UPDATE secrets SET version = %s, deleted = %s, tags = %s, updated_at = %s, "
            "actor = %s, mac = %s WHERE org_id = %s AND id = %s",
            (*head[1:], self.org, secret_id),
        )

    def insert_version(self, secret_id: int, row: NewVersion) -> None:
        self._run(
            "INSERT INTO secret_versions (org_id, secret_id, version, action, org_dek_version, "
            "wrapped_dek, ciphertext, tags, created_at, actor, mac) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (self.org, secret_id, *row),
        )

    def rewrap_versions(self, rows: Sequence[VersionRewrap]) -> None:
        # A trigger drops the snapshots of the environments concerned.
        self._many(
            "UPDATE secret_versions SET org_dek_version = %s, wrapped_dek = %s, mac = %s "
            "WHERE org_id = %s AND secret_id = %s AND version = %s",
            [(r.dek_version, r.wrapped_dek, r.mac, self.org, r.secret_id, r.version) for r in rows],
        )

    def put_snapshot(self, env: str, row: SnapshotRow) -> None:
        self._run(
            "INSERT INTO env_snapshots (org_id, env, org_dek_version, wrapped_dek, ciphertext) "
            "SELECT %s, %s, %s, %s, %s "
            "WHERE (SELECT max(version) FROM org_deks WHERE org_id = %s) = %s "
            "AND EXISTS (SELECT 1 FROM environments WHERE org_id = %s AND name = %s) "
            "ON CONFLICT (org_id, env) DO UPDATE SET org_dek_version = EXCLUDED.org_dek_version, "
            "wrapped_dek = EXCLUDED.wrapped_dek, ciphertext = EXCLUDED.ciphertext",
            (self.org, env, *row, self.org, row.dek_version, self.org, env),
        )

    def insert_audit_entry(self, row: AuditEntryRow) -> None:
        from psycopg import errors

        try:
            # A savepoint, so that a refused entry leaves the transaction usable.
            with self._connect() as conn, conn.transaction():
                conn.execute(
                    f"INSERT INTO audit_log (org_id, {_ENTRY_FIELDS}, mac) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (self.org, *row),
                )
        except errors.UniqueViolation:
            raise AuditSeqTaken(row.seq) from None

    def clear_pending(self) -> None:
        self._run("DELETE FROM audit_pending WHERE org_id = %s", (self.org,))

    def add_pending(self, fields: PendingFields) -> None:
        self._run(
            f"INSERT INTO audit_pending (org_id, {_PENDING_FIELDS}) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (self.org, *fields),
        )

    def write_anchor(self, row: AnchorRow) -> None:
        self._run(
            "INSERT INTO audit_anchor (org_id, seq, mac, enabled, tag) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (org_id) DO UPDATE SET seq = EXCLUDED.seq, mac = EXCLUDED.mac, "
            "enabled = EXCLUDED.enabled, tag = EXCLUDED.tag",
            (self.org, *row),
        )

    def insert_token(self, row: TokenRow) -> None:
        self._run(
            f"INSERT INTO tokens (org_id, {_TOKEN_FIELDS}) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (self.org, *row),
        )

    def revoke_token(self, row: RevocationRow) -> None:
        self._run("DELETE FROM tokens WHERE org_id = %s AND name = %s", (self.org, row.name))
        self._run(
            "INSERT INTO token_revocations (org_id, hash, name, revoked_at, actor, mac) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (org_id, hash) DO NOTHING",
            (self.org, *row),
        )

    # -- copying an org -------------------------------------------------------------------

    def export_rows(self, table: str) -> Iterator[tuple[object, ...]]:
        columns = EXPORT_TABLES[table]
        if table == "secret_versions":
            fields = ", ".join(f"v.{c}" for c in columns[2:])
            query = (
                f"SELECT s.env, s.name, {fields} FROM secret_versions v "
                "JOIN secrets s ON s.id = v.secret_id WHERE v.org_id = %s "
                "ORDER BY s.env, s.name, v.version"
            )
        else:
            order = "id" if table == "audit_pending" else ", ".join(columns[:1])
            query = f"SELECT {', '.join(columns)} FROM {table} WHERE org_id = %s ORDER BY {order}"
        with self._connect() as conn, conn.cursor(name=f"crate_export_{table}") as cursor:
            cursor.execute(query, (self.org,))
            yield from cursor

    def import_rows(self, table: str, rows: Iterable[tuple[object, ...]]) -> None:
        columns = EXPORT_TABLES[table]
        marks = ", ".join(["%s"] * len(columns))
        if table == "secret_versions":
            query = (
                f"INSERT INTO secret_versions (org_id, secret_id, {', '.join(columns[2:])}) "
                "VALUES (%s, (SELECT id FROM secrets WHERE org_id = %s AND env = %s "
                f"AND name = %s), {', '.join(['%s'] * (len(columns) - 2))})"
            )
            self._many(query, [(self.org, self.org, *row) for row in rows])
            return
        query = f"INSERT INTO {table} (org_id, {', '.join(columns)}) VALUES (%s, {marks})"
        if table == "audit_anchor":
            query += (
                " ON CONFLICT (org_id) DO UPDATE SET seq = EXCLUDED.seq, mac = EXCLUDED.mac, "
                "enabled = EXCLUDED.enabled, tag = EXCLUDED.tag"
            )
        self._many(query, [(self.org, *row) for row in rows])
