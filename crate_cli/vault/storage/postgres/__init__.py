"""Orgs in one PostgreSQL database, shared by every `crate server` replica
(storage/interface.py's Storage; selected by `--store`, CRATE_STORE or the
`store` setting; psycopg is imported only here).

Each process keeps one connection pool per store address. The schema is
created, or migrated, on first use under an advisory lock (schema.py). An
org is created in one transaction with everything `initialise` writes, so it
appears whole or not at all, and two replicas creating the same name cannot
both succeed (the unique index on live names). Deleting an org removes its
rows but the audit log's, which is append-only: the org's row stays as a
tombstone and its name is free again.

The master-key registry is one row of the store (PostgresRegistry), so
every replica unlocks the same master key versions.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool

from crate_cli.clock import utc_now
from crate_cli.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    StoreUnavailable,
    UnsupportedVersion,
)
from crate_cli.vault.names import check_org
from crate_cli.vault.storage.interface import OrgStore
from crate_cli.vault.storage.postgres.schema import (
    _SCHEMA_V1,
    APP_GRANTS,
    MIGRATION_LOCK,
    MIGRATIONS,
    ORG_TABLES,
    SCHEMA_VERSION,
)
from crate_cli.vault.storage.postgres.store import (
    FIRST_CONTACT_S,
    IDLE_IN_TRANSACTION_S,
    LOCK_TIMEOUT_S,
    RECONNECT_S,
    PostgresOrgStore,
    store_errors,
    transaction,
)
from crate_cli.vault.storage.urls import redact_store_url

if TYPE_CHECKING:
    from psycopg import Connection

POOL_SIZE = 16
# TCP keepalives: a peer that vanished (a partition) is noticed in ~20 s
# instead of the kernel's two hours.
_CONNECT_ARGS: dict[str, Any] = {
    "autocommit": True,
    "application_name": "crate",
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
}

_POOLS: dict[str, ConnectionPool[Any]] = {}
_POOLS_LOCK = threading.Lock()


def _configure(conn: Connection[Any]) -> None:
    """Every new connection: the timeouts, and names resolved in a fixed
    order, PostgreSQL's own first, then the schema crate's tables are in
    (the connection's current one: the URL or the role may choose it), the
    session's temporary tables last (schema.py says why)."""
    from psycopg import sql

    schema = conn.execute("SELECT current_schema()").fetchone()
    path: sql.Composable = sql.SQL("pg_catalog, pg_temp")
    if schema is not None and schema[0] is not None:
        path = sql.SQL("pg_catalog, {}, pg_temp").format(sql.Identifier(schema[0]))
    conn.execute(
        sql.SQL("SET search_path = {}; SET lock_timeout = {}; ").format(
            path, sql.Literal(f"{LOCK_TIMEOUT_S}s")
        )
        + sql.SQL("SET idle_in_transaction_session_timeout = {}").format(
            sql.Literal(f"{IDLE_IN_TRANSACTION_S}s")
        )
    )


def crate_schema(conn: Connection[Any]) -> str | None:
    """The schema crate's tables are (or will be) in: the one after pg_catalog
    on the path _configure set (None: it does not exist)."""
    row = conn.execute("SELECT (pg_catalog.current_schemas(false))[2]").fetchone()
    return None if row is None or row[0] is None else str(row[0])


def _pool_for(url: str, where: str) -> ConnectionPool[Any]:
    """This process's pool for `url`, made (and the schema migrated) on first use."""
    with _POOLS_LOCK:
        pool = _POOLS.get(url)
        if pool is None:
            _quiet_pool_log()
            pool = ConnectionPool(
                url,
                min_size=1,
                max_size=POOL_SIZE,
                kwargs=_CONNECT_ARGS,
                configure=_configure,
                open=True,
                name="crate",
                reconnect_timeout=RECONNECT_S,
            )
            try:
                migrate(pool, where)
            except StoreUnavailable as e:
                pool.close()
                raise _diagnosed(url, where, e) from None
            except BaseException:
                pool.close()
                raise
            _POOLS[url] = pool
        return pool


def _diagnosed(url: str, where: str, error: StoreUnavailable) -> StoreUnavailable:
    """Why the first contact failed, as libpq says it (the pool keeps the
    reason to itself): one direct attempt, its first line (libpq never
    repeats a password)."""
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        password = urlsplit(url).password if "://" in url else None
        if password and password in reason:
            reason = type(e).__name__  # never, as far as libpq goes; still checked
        return StoreUnavailable(f"cannot reach {where}: {reason}", error.hint)
    return error


def _quiet_pool_log() -> None:
    """The pool's background workers log connection failures, which Python
    would print on stderr with no handler set: crate reports them itself."""
    import logging

    log = logging.getLogger("psycopg.pool")
    if not log.handlers:
        log.addHandler(logging.NullHandler())
        log.propagate = False


def close_pool(url: str) -> None:
    """Close this process's pool for `url`, if it has one."""
    with _POOLS_LOCK:
        pool = _POOLS.pop(url, None)
    if pool is not None:
        pool.close()


def close_pools() -> None:
    """Close every pool of this process (tests, and a server shutting down)."""
    with _POOLS_LOCK:
        for pool in _POOLS.values():
            pool.close()
        _POOLS.clear()


def _scalar(conn: Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the one row `sql` returns."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def migrate(pool: ConnectionPool[Any], where: str) -> None:
    """Create the schema, or bring it to SCHEMA_VERSION, under an advisory
    lock: replicas that start together migrate once."""
    with transaction(pool, where, "BEGIN", FIRST_CONTACT_S) as conn:
        conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s::bigint)", (MIGRATION_LOCK,))
        schema = crate_schema(conn)
        if schema is None:
            raise UnsupportedVersion(
                f"{where} has no schema to keep crate's tables in",
                "create one the connecting role owns, or name it in the URL "
                "(options=-csearch_path=SCHEMA)",
            )
        from psycopg import sql

        conn.execute(
            sql.SQL("SET LOCAL search_path = {}, pg_catalog, pg_temp").format(
                sql.Identifier(schema)
            )
        )
        version = 0
        if _scalar(conn, "SELECT to_regclass('crate_schema')") is not None:
            version = int(_scalar(conn, "SELECT version FROM crate_schema"))
        if version > SCHEMA_VERSION:
            raise UnsupportedVersion(
                f"{where} has schema version {version}, newer than this crate understands "
                f"({SCHEMA_VERSION}); it was left untouched",
                "upgrade crate on this machine to use this store",
            )
        if version == 0:
            quoted = sql.Identifier(schema).as_string(conn)
            conn.execute(_SCHEMA_V1.replace("@SCHEMA@", quoted))
            conn.execute("INSERT INTO crate_schema (id, version) VALUES (1, 1)")
            version = 1
        while version < SCHEMA_VERSION:
            conn.execute(MIGRATIONS[version])
            version += 1
            conn.execute("UPDATE crate_schema SET version = %s WHERE id = 1", (version,))


class PostgresStorage:
    """The orgs of one PostgreSQL store (storage/interface.py's Storage)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.location = f"the store {redact_store_url(url)}"

    @property
    def pool(self) -> ConnectionPool[Any]:
        return _pool_for(self.url, self.location)

    def _where(self, org: str) -> str:
        return f"organization {org!r} in {self.location}"

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        with store_errors(self.location), self.pool.connection(timeout=RECONNECT_S) as conn:
            return conn.execute(sql, params).fetchone()

    def list_orgs(self) -> list[str]:
        with store_errors(self.location), self.pool.connection(timeout=RECONNECT_S) as conn:
            rows = conn.execute(
                "SELECT name FROM orgs WHERE deleted_at IS NULL ORDER BY name"
            ).fetchall()
        return [row[0] for row in rows]

    def _org_id(self, org: str) -> int | None:
        row = self._one(
            "SELECT id FROM orgs WHERE name = %s AND deleted_at IS NULL", (check_org(org),)
        )
        return None if row is None else int(row[0])

    def org_exists(self, org: str) -> bool:
        return self._org_id(org) is not None

    def prepare(self) -> None:
        """Reach the store and make sure its schema is current."""
        _ = self.pool

    def org_marker(self, org: str) -> Hashable:
        row = self._one(
            "SELECT id, changes FROM orgs WHERE name = %s AND deleted_at IS NULL", (check_org(org),)
        )
        return None if row is None else (int(row[0]), int(row[1]))

    def open_org(self, org: str) -> PostgresOrgStore:
        org_id = self._org_id(org)
        if org_id is None:
            raise NotFound(f"organization {org!r} does not exist in {self.location}")
        return PostgresOrgStore(self.pool, org, org_id, self._where(org))

    def create_org(self, org: str, initialise: Callable[[OrgStore], None]) -> None:
        check_org(org)
        pool = self.pool
        with transaction(pool, self.location) as conn:
            try:
                org_id = int(
                    _scalar(
                        conn,
                        "INSERT INTO orgs (name, created_at) VALUES (%s, %s) RETURNING id",
                        (org, utc_now()),
                    )
                )
            except pg_errors.UniqueViolation:
                raise Conflict(f"organization {org!r} already exists") from None
            conn.execute(
                "INSERT INTO audit_anchor (org_id, seq, mac, enabled, tag) "
                "VALUES (%s, 0, ''::bytea, 0, ''::bytea)",
                (org_id,),
            )
            initialise(PostgresOrgStore(pool, org, org_id, self._where(org), pinned=conn))

    def delete_org(self, org: str) -> None:
        check_org(org)
        with transaction(self.pool, self.location) as conn:
            row = conn.execute(
                "UPDATE orgs SET deleted_at = %s WHERE name = %s AND deleted_at IS NULL "
                "RETURNING id",
                (utc_now(), org),
            ).fetchone()
            if row is None:
                raise NotFound(f"organization {org!r} does not exist")
            for table in ORG_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE org_id = %s", (row[0],))

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """A session-level advisory lock on a connection of its own, held with
        no transaction open (so no idle-in-transaction timeout ends it); the
        server drops it if this process dies."""
        pool = self.pool
        with store_errors(self.location), pool.connection(timeout=RECONNECT_S) as conn:
            conn.execute(
                "SELECT pg_catalog.pg_advisory_lock(pg_catalog.hashtextextended(%s::text, 0))",
                (f"crate:{name}",),
            )
            try:
                yield
            finally:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(
                        "SELECT pg_catalog.pg_advisory_unlock("
                        "pg_catalog.hashtextextended(%s::text, 0))",
                        (f"crate:{name}",),
                    )

    def grant_app_role(self, role: str) -> list[str]:
        """Give `role` what a replica needs and no more (run as the tables'
        owner): every row it writes, but audit rows only to add and read, so
        that neither UPDATE, DELETE nor TRUNCATE of the log, nor disabling its
        trigger (the owner's DDL), is open to it. Returns the statements run."""
        from psycopg import sql

        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
            raise InvalidInput(
                f"not a role name crate grants to: {role[:64]!r}",
                "use lower-case letters, digits and _ (a PostgreSQL role created beforehand)",
            )
        who = sql.Identifier(role)
        statements = [
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(self._schema()), who),
            sql.SQL("GRANT SELECT ON crate_schema TO {}").format(who),
            *(
                sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(rights), sql.Identifier(table), who)
                for table, rights in APP_GRANTS.items()
            ),
            sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
                sql.Identifier(self._schema()), who
            ),
        ]
        done = []
        pool = self.pool
        with store_errors(self.location), pool.connection(RECONNECT_S) as conn, conn.transaction():
            for statement in statements:
                conn.execute(statement)
                done.append(statement.as_string(conn))
        return done

    def _schema(self) -> str:
        with store_errors(self.location), self.pool.connection(timeout=RECONNECT_S) as conn:
            schema = crate_schema(conn)
        assert schema is not None  # prepare() made the tables there
        return schema

    def master_registry(self) -> PostgresRegistry:
        return PostgresRegistry(self)


class PostgresRegistry:
    """The master-key registry as the one row of `master_registry`
    (storage/interface.py's RegistryStore); `locked()` holds that row's lock."""

    def __init__(self, storage: PostgresStorage) -> None:
        self._storage = storage
        self.location = f"the master-key registry in {storage.location}"
        self._local = threading.local()

    def _conn(self) -> Connection[Any] | None:
        conn: Connection[Any] | None = getattr(self._local, "conn", None)
        return conn

    def load(self) -> bytes | None:
        conn = self._conn()
        if conn is not None:
            with store_errors(self.location):
                row = conn.execute("SELECT document FROM master_registry WHERE id = 1").fetchone()
        else:
            row = self._storage._one("SELECT document FROM master_registry WHERE id = 1")
        return None if row is None or row[0] is None else bytes(row[0])

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with transaction(self._storage.pool, self.location) as conn:
            conn.execute("SELECT 1 FROM master_registry WHERE id = 1 FOR UPDATE")
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    def save(self, data: bytes) -> None:
        conn = self._conn()
        assert conn is not None, "save() only inside locked()"
        with store_errors(self.location):
            conn.execute(
                "UPDATE master_registry SET document = %s, updated_at = %s WHERE id = 1",
                (data, utc_now()),
            )
