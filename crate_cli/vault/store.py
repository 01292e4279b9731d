"""One SQLite file per organization (DESIGN §3).

WAL mode, a busy timeout, `PRAGMA user_version` for the schema version with
forward migrations, 0600 files in a 0700 folder, values as BLOBs. Names,
tags, versions and times are stored in clear; values and keys never are.

Every change runs in one `BEGIN IMMEDIATE` transaction (`OrgStore.write()`),
which takes the write lock up front: two crate processes writing at once
queue behind the busy timeout instead of losing an update.

SQLite faults become crate errors here: a file that is not a vault, or is
damaged, raises `VaultCorrupted` (exit 5) and is never modified; a vault
written by a newer crate raises `UnsupportedVersion`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from crate_cli.errors import Conflict, CrateError, NotFound, UnsupportedVersion, VaultCorrupted

SCHEMA_VERSION = 5
BUSY_TIMEOUT_MS = 30_000
# The first 16 bytes of every SQLite 3 file.
SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA_V1 = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
CREATE TABLE org_deks (
    version INTEGER PRIMARY KEY,
    master_version INTEGER NOT NULL,
    wrapped BLOB NOT NULL,
    created_at TEXT NOT NULL
) STRICT;
CREATE TABLE org_rsa_keys (
    kid TEXT PRIMARY KEY,
    master_version INTEGER NOT NULL,
    public_der BLOB NOT NULL,
    wrapped_private BLOB NOT NULL,
    created_at TEXT NOT NULL,
    active INTEGER NOT NULL
) STRICT;
CREATE TABLE org_audit_keys (
    version INTEGER PRIMARY KEY,
    master_version INTEGER NOT NULL,
    wrapped BLOB NOT NULL,
    created_at TEXT NOT NULL
) STRICT;
CREATE TABLE environments (
    name TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
) STRICT;
CREATE TABLE secrets (
    id INTEGER PRIMARY KEY,
    env TEXT NOT NULL REFERENCES environments(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    tags TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    mac BLOB NOT NULL,
    UNIQUE (env, name)
) STRICT;
CREATE TABLE secret_versions (
    secret_id INTEGER NOT NULL REFERENCES secrets(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    action TEXT NOT NULL,
    org_dek_version INTEGER,
    wrapped_dek BLOB,
    ciphertext BLOB,
    tags TEXT NOT NULL,
    created_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (secret_id, version)
) STRICT;
CREATE INDEX secret_versions_by_org_dek ON secret_versions (org_dek_version);
"""

# API tokens (crate_cli/vault/tokens.py): only a hash of each token; the row
# is MAC'd under the org row key, so an edited role or scope is refused.
_TOKENS_TABLE = """
CREATE TABLE tokens (
    name TEXT PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    role TEXT NOT NULL,
    envs TEXT NOT NULL,
    tags TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    mac BLOB NOT NULL
) STRICT;
"""

# The audit log (crate_cli/vault/audit.py): an HMAC chain of entries that
# triggers keep append-only (INSERT OR REPLACE deletes without firing DELETE
# triggers, hence the INSERT one), an anchor row holding the newest sequence number
# and MAC (authenticated, with the module's on/off switch), and entries
# recorded while the master key was locked (a failed unlock), which the next
# unlocked writer chains in. A vault migrated from schema 2 gets an anchor
# with no tag, which its first entry authenticates.
_AUDIT_TABLES = """
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    env TEXT NOT NULL,
    names TEXT NOT NULL,
    outcome TEXT NOT NULL,
    request_id TEXT NOT NULL,
    client TEXT NOT NULL,
    details TEXT NOT NULL,
    mac BLOB NOT NULL
) STRICT;
CREATE TRIGGER audit_log_append_only_replace BEFORE INSERT ON audit_log
WHEN EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_append_only_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_append_only_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TABLE audit_anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    mac BLOB NOT NULL,
    enabled INTEGER NOT NULL,
    tag BLOB NOT NULL
) STRICT;
INSERT INTO audit_anchor (id, seq, mac, enabled, tag) VALUES (1, 0, X'', 0, X'');
CREATE TABLE audit_pending (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    env TEXT NOT NULL,
    names TEXT NOT NULL,
    outcome TEXT NOT NULL,
    request_id TEXT NOT NULL,
    client TEXT NOT NULL,
    details TEXT NOT NULL
) STRICT;
"""

# Environment snapshots (crate_cli/vault/snapshots.py): each environment's
# live values, sealed as one blob under its own DEK, so that a read of a
# whole environment opens one blob instead of one per secret. A snapshot is
# bound to its environment's head rows by their MACs (a stale or replayed one
# does not open); these triggers drop it as soon as its environment, or the
# set of org DEKs, changes, so that no stale copy of a value lingers. The
# index covers the digest's query (env, name order, mac) without a table
# lookup per secret.
_SNAPSHOT_TABLE = """
CREATE TABLE env_snapshots (
    env TEXT PRIMARY KEY REFERENCES environments(name) ON DELETE CASCADE,
    org_dek_version INTEGER NOT NULL,
    wrapped_dek BLOB NOT NULL,
    ciphertext BLOB NOT NULL
) STRICT;
CREATE INDEX secrets_head_macs ON secrets (env, name, mac);
CREATE TRIGGER env_snapshots_stale_insert AFTER INSERT ON secrets
BEGIN
    DELETE FROM env_snapshots WHERE env = NEW.env;
END;
CREATE TRIGGER env_snapshots_stale_update AFTER UPDATE ON secrets
BEGIN
    DELETE FROM env_snapshots WHERE env IN (OLD.env, NEW.env);
END;
CREATE TRIGGER env_snapshots_stale_delete AFTER DELETE ON secrets
BEGIN
    DELETE FROM env_snapshots WHERE env = OLD.env;
END;
CREATE TRIGGER env_snapshots_stale_versions AFTER UPDATE ON secret_versions
BEGIN
    DELETE FROM env_snapshots
    WHERE env = (SELECT env FROM secrets WHERE id = NEW.secret_id);
END;
CREATE TRIGGER env_snapshots_stale_keys AFTER INSERT ON org_deks
BEGIN
    DELETE FROM env_snapshots;
END;
"""

# Org policy (schema 5): the steering names an admin allowed for the org
# (vault/names.py: PATH, LD_PRELOAD ...) and the allowances that ended, so
# that an allowance copied back from a backup stays ended; and the tokens
# revoked, by hash, so that a token row copied back stays revoked. All are
# MAC'd under the org row key; ended allowances and revocations are
# permanent (the triggers, and `crate audit verify`'s cross-check).
_POLICY_TABLES = """
CREATE TABLE allowed_names (
    name TEXT PRIMARY KEY,
    allowed_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    mac BLOB NOT NULL
) STRICT;
CREATE TABLE token_revocations (
    hash BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    revoked_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    mac BLOB NOT NULL
) STRICT;
CREATE TRIGGER token_revocations_permanent_update BEFORE UPDATE ON token_revocations
BEGIN
    SELECT RAISE(ABORT, 'a revocation is permanent');
END;
CREATE TRIGGER token_revocations_permanent_delete BEFORE DELETE ON token_revocations
BEGIN
    SELECT RAISE(ABORT, 'a revocation is permanent');
END;
CREATE TABLE allowed_names_ended (
    name TEXT NOT NULL,
    allowed_at TEXT NOT NULL,
    ended_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (name, allowed_at)
) STRICT;
CREATE TRIGGER allowed_names_ended_permanent_update BEFORE UPDATE ON allowed_names_ended
BEGIN
    SELECT RAISE(ABORT, 'an ended allowance is permanent');
END;
CREATE TRIGGER allowed_names_ended_permanent_delete BEFORE DELETE ON allowed_names_ended
BEGIN
    SELECT RAISE(ABORT, 'an ended allowance is permanent');
END;
"""

# How many connections this process has open per vault path, and the lock
# that serialises opening and closing (see OrgStore._open).
_OPEN: dict[str, int] = {}
_OPENING = threading.Lock()
# One lock per vault path for the write transactions of this process's
# threads (a server's workers): they queue on it and take over at once,
# where SQLite's busy handler would have them sleep and poll (1, 2, 5, 10 …
# ms). Other processes still meet SQLite's lock and its busy timeout.
_WRITERS: dict[str, threading.Lock] = {}

# Forward migrations: MIGRATIONS[n] turns schema n into n + 1.
MIGRATIONS: dict[int, str] = {
    1: _TOKENS_TABLE,
    2: _AUDIT_TABLES,
    3: _SNAPSHOT_TABLE,
    4: _POLICY_TABLES,
}


def _connect(path: Path, create: bool) -> sqlite3.Connection:
    mode = "rwc" if create else "rw"
    # as_uri() escapes '#', '?' and '%', which SQLite would read as URI syntax.
    conn = sqlite3.connect(
        f"{path.absolute().as_uri()}?mode={mode}",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    # A vault is a file anyone with write access can edit: its schema (views,
    # triggers, defaults) may call no function or virtual table that is not
    # harmless, and, where Python can ask for it, SQLite refuses writes to its
    # own schema tables (defensive mode). check_schema() refuses foreign objects.
    conn.execute("PRAGMA trusted_schema = OFF")
    defensive = getattr(sqlite3, "SQLITE_DBCONFIG_DEFENSIVE", None)
    if defensive is not None and hasattr(conn, "setconfig"):
        conn.setconfig(defensive, True)
    return conn


def _damaged(path: Path, error: Exception) -> VaultCorrupted:
    return VaultCorrupted(
        f"vault {path} is damaged or is not a crate vault ({error}); it was left untouched",
        "restore it from a backup",
    )


class OrgStore:
    """An open org vault file. Use `write()` for every change."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn
        self._key: str | None = None  # counted in _OPEN while open
        self._after: list[Callable[[], None]] = []
        # SQLite's schema cookie when check_schema last passed (None: not yet).
        # A long-running process (a server, the agent) keeps its connection:
        # a trigger planted meanwhile is caught by the next write, before it
        # could fire.
        self._schema_seen: int | None = None

    @classmethod
    def open(cls, path: Path) -> OrgStore:
        """Open an existing vault, checking that it is one this crate can read."""
        with _OPENING:
            return cls._open(path)

    @classmethod
    def _open(cls, path: Path) -> OrgStore:
        key = str(path.absolute())
        if not _OPEN.get(key):
            # Closing any descriptor of a file drops every POSIX lock this
            # process holds on it, SQLite's included: with another connection
            # open (a server's other worker), SQLite would then think it is
            # alone, checkpoint and delete the WAL under it. So the magic is
            # read only while this process has no connection to the file.
            try:
                with open(path, "rb") as f:
                    magic = f.read(len(SQLITE_MAGIC))
            except FileNotFoundError:
                raise NotFound(f"no vault at {path}") from None
            if magic != SQLITE_MAGIC:
                raise _damaged(path, ValueError("not an SQLite file"))
        elif not path.exists():
            raise NotFound(f"no vault at {path}")
        conn: sqlite3.Connection | None = None
        try:
            conn = _connect(path, create=False)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise UnsupportedVersion(
                    f"vault {path} has schema version {version}, newer than this crate "
                    f"understands ({SCHEMA_VERSION}); it was left untouched",
                    "upgrade crate to use this vault",
                )
            if version < 1:
                raise _damaged(path, ValueError("no crate schema"))
            check_schema(conn, path, version)
        except BaseException as e:
            if conn is not None:
                conn.close()
            if isinstance(e, sqlite3.DatabaseError):
                raise _damaged(path, e) from None
            raise
        _OPEN[key] = _OPEN.get(key, 0) + 1
        store = cls(path, conn)
        store._key = key
        store._schema_seen = store._schema_cookie()
        if version < SCHEMA_VERSION:
            store._migrate(version)
        return store

    def _schema_cookie(self) -> int:
        return int(self.conn.execute("PRAGMA schema_version").fetchone()[0])

    @classmethod
    def create(cls, path: Path) -> OrgStore:
        """Create a new vault at `path` (which must not exist) with the current schema."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        conn = _connect(path, create=True)
        conn.execute("PRAGMA journal_mode = WAL")
        store = cls(path, conn)
        with _OPENING:
            store._key = str(path.absolute())
            _OPEN[store._key] = _OPEN.get(store._key, 0) + 1
        with store.write():
            for statement in _split_script(
                _SCHEMA_V1 + "".join(MIGRATIONS[v] for v in sorted(MIGRATIONS))
            ):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        store._schema_seen = store._schema_cookie()
        return store

    def _migrate(self, version: int) -> None:
        with self.write():
            current = self.conn.execute("PRAGMA user_version").fetchone()[0]
            while current < SCHEMA_VERSION:
                for statement in _split_script(MIGRATIONS[current]):
                    self.conn.execute(statement)
                current += 1
                self.conn.execute(f"PRAGMA user_version = {current}")
        self._schema_seen = self._schema_cookie()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of the block's changes, or none."""
        try:
            with self._writer(), self.errors():
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    self._recheck_schema()
                    yield self.conn
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
        finally:
            self._run_after()

    def _recheck_schema(self) -> None:
        """Inside a write transaction (the schema cannot change under it): if
        the schema changed since it was checked, check it again."""
        if self._schema_seen is None:
            return
        cookie = self._schema_cookie()
        if cookie != self._schema_seen:
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            check_schema(self.conn, self.path, version)
            self._schema_seen = cookie

    def _writer(self) -> threading.Lock:
        key = self._key or str(self.path.absolute())
        lock = _WRITERS.get(key)
        if lock is None:
            # setdefault is atomic: racing threads end up with the same lock.
            # (Not under _OPENING: open() migrates, and so writes, holding it.)
            lock = _WRITERS.setdefault(key, threading.Lock())
        return lock

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several reads."""
        try:
            with self.errors():
                self.conn.execute("BEGIN")
                try:
                    yield self.conn
                finally:
                    self.conn.execute("COMMIT")
        finally:
            self._run_after()

    def after_transaction(self, action: Callable[[], None]) -> None:
        """Run `action` once this connection's transaction has ended (committed
        or rolled back), or now if there is none: what must be written even
        when the transaction that met it fails (a failed unlock's audit
        entry). A CrateError from it is dropped."""
        if self.conn.in_transaction:
            self._after.append(action)
        else:
            with contextlib.suppress(CrateError):
                action()

    def _run_after(self) -> None:
        if self.conn.in_transaction:
            return
        while self._after:
            with contextlib.suppress(CrateError):
                self._after.pop(0)()

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn SQLite faults into crate errors with the file's name."""
        try:
            yield
        except sqlite3.IntegrityError as e:
            raise Conflict(f"the change conflicts with the vault's contents ({e})") from None
        except sqlite3.OperationalError as e:
            text = str(e)
            if "locked" in text or "busy" in text:
                raise Conflict(
                    f"vault {self.path} stayed busy for {BUSY_TIMEOUT_MS // 1000} s",
                    "another crate process holds it; try again",
                ) from None
            if "full" in text:
                raise CrateError(
                    f"no space left to write {self.path}; nothing was changed"
                ) from None
            raise _damaged(self.path, e) from None
        except sqlite3.DatabaseError as e:
            raise _damaged(self.path, e) from None

    def close(self) -> None:
        with _OPENING:
            self.conn.close()
            if self._key is not None:
                _OPEN[self._key] -= 1
                self._key = None


# Indexes a vault may lack: the digest's covering index came after schema 4
# was first written, and an index only speeds a query up.
_OPTIONAL = frozenset({"secrets_head_macs"})
_expected: dict[int, dict[str, tuple[str, str]]] = {}


def expected_schema(version: int) -> dict[str, tuple[str, str]]:
    """name -> (type, SQL) of every object crate creates in a vault of schema
    `version`: SQLite keeps each CREATE statement's text as it was given."""
    found = _expected.get(version)
    if found is None:
        scripts = [_SCHEMA_V1, *(MIGRATIONS[v] for v in range(1, version))]
        found = {}
        for statement in _split_script("".join(scripts)):
            words = statement.split(None, 3)
            if words[0].upper() == "CREATE":
                found[words[2]] = (words[1].lower(), statement.rstrip(";"))
        _expected[version] = found
    return found


def _sqlite_own(kind: object, name: object, sql: object) -> bool:
    """Whether a schema row is SQLite's own: the index behind a UNIQUE or
    PRIMARY KEY (no SQL), or one of its internal tables. Any trigger or view
    is someone's, whatever its name (`PRAGMA writable_schema` lets a
    `sqlite_` name be written)."""
    if not isinstance(name, str) or not name.startswith("sqlite_"):
        return False
    if kind == "index":
        return sql is None and name.startswith("sqlite_autoindex_")
    return kind == "table" and name in ("sqlite_sequence", "sqlite_stat1", "sqlite_stat4")


def check_schema(conn: sqlite3.Connection, path: Path, version: int) -> None:
    """Refuse a vault whose schema holds what crate did not create: a view, a
    trigger or index of someone else's, or one of crate's own with another
    body. Such an object would run inside crate's own queries and writes."""
    expected = expected_schema(version)
    present = set()
    for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master"):
        if _sqlite_own(kind, name, sql):
            continue
        present.add(name)
        if expected.get(name) != (kind, sql):
            from crate_cli.display import safe_text

            raise VaultCorrupted(
                f"vault {path} holds a {safe_text(str(kind), 20)} '{safe_text(str(name), 64)}' "
                "that crate did not create: it was edited outside crate and left untouched",
                "restore it from a backup",
            )
    missing = sorted(set(expected) - present - _OPTIONAL)
    if missing:
        raise VaultCorrupted(
            f"vault {path} lacks its {expected[missing[0]][0]} {missing[0]!r}: it was edited "
            "outside crate and left untouched",
            "restore it from a backup",
        )


def _split_script(script: str) -> list[str]:
    """The statements of a schema script (a trigger's body holds `;` too)."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \n;"):
        statements.append(pending.strip())
    return statements
