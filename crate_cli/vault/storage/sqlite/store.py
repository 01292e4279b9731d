"""One SQLite file per organization (DESIGN §3): the SQLite side of
storage/interface.py's OrgStore.

WAL mode, a busy timeout, `PRAGMA user_version` for the schema version with
forward migrations, 0600 files in a 0700 folder, values as BLOBs. Names,
tags, versions and times are stored in clear; values and keys never are.

Every change runs in one `BEGIN IMMEDIATE` transaction (`SqliteOrgStore.write()`),
which takes the write lock up front: two crate processes writing at once
queue behind the busy timeout instead of losing an update.

SQLite faults become crate errors here: a file that is not a vault, or is
damaged, raises `VaultCorrupted` (exit 5) and is never modified; a vault
written by a newer crate raises `UnsupportedVersion`.
"""

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from crate_cli.errors import Conflict, CrateError, NotFound, UnsupportedVersion, VaultCorrupted
from crate_cli.vault.storage.sqlite.queries import SqliteRows
from crate_cli.vault.storage.sqlite.schema import (
    _SCHEMA_V1,
    MIGRATIONS,
    SCHEMA_VERSION,
    _split_script,
    check_schema,
)

BUSY_TIMEOUT_MS = 30_000
# The first 16 bytes of every SQLite 3 file.
SQLITE_MAGIC = b"SQLite format 3\x00"


# How many connections this process has open per vault path, and the lock
# that serialises opening and closing (see SqliteOrgStore._open).
_OPEN: dict[str, int] = {}
_OPENING = threading.Lock()
# One lock per vault path for the write transactions of this process's
# threads (a server's workers): they queue on it and take over at once,
# where SQLite's busy handler would have them sleep and poll (1, 2, 5, 10 …
# ms). Other processes still meet SQLite's lock and its busy timeout.
_WRITERS: dict[str, threading.Lock] = {}


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


class SqliteOrgStore:
    """An open org vault file. Use `write()` for every change."""

    def __init__(self, path: Path, conn: sqlite3.Connection, org: str = "") -> None:
        self.path = path
        self.conn = conn
        self.org = org
        self.location = str(path)
        # The rows of the open transaction (read() and write() yield it), and
        # the same queries each turning SQLite faults into crate errors
        # (direct), for reads outside a `with`.
        self._rows = SqliteRows(conn)
        self._direct = SqliteRows(conn, self.errors)
        self._key: str | None = None  # counted in _OPEN while open
        self._after: list[Callable[[], None]] = []
        # SQLite's schema cookie when check_schema last passed (None: not yet).
        # A long-running process (a server, the agent) keeps its connection:
        # a trigger planted meanwhile is caught by the next write, before it
        # could fire.
        self._schema_seen: int | None = None

    @classmethod
    def open(cls, path: Path, org: str = "") -> "SqliteOrgStore":
        """Open an existing vault, checking that it is one this crate can read."""
        with _OPENING:
            return cls._open(path, org)

    @classmethod
    def _open(cls, path: Path, org: str) -> "SqliteOrgStore":
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
        store = cls(path, conn, org)
        store._key = key
        store._schema_seen = store._schema_cookie()
        if version < SCHEMA_VERSION:
            store._migrate(version)
        return store

    def _schema_cookie(self) -> int:
        return int(self.conn.execute("PRAGMA schema_version").fetchone()[0])

    @classmethod
    def create(cls, path: Path, org: str = "") -> "SqliteOrgStore":
        """Create a new vault at `path` (which must not exist) with the current schema."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        conn = _connect(path, create=True)
        conn.execute("PRAGMA journal_mode = WAL")
        store = cls(path, conn, org)
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
    def write(self) -> Iterator[SqliteRows]:
        """One write transaction: all of the block's changes, or none."""
        try:
            with self._writer(), self.errors():
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    self._recheck_schema()
                    yield self._rows
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
    def read(self) -> Iterator[SqliteRows]:
        """A consistent snapshot for several reads."""
        try:
            with self.errors():
                self.conn.execute("BEGIN")
                try:
                    yield self._rows
                finally:
                    self.conn.execute("COMMIT")
        finally:
            self._run_after()

    @property
    def direct(self) -> SqliteRows:
        """Reads in the open transaction if there is one, else each on its own
        (with no transaction, every statement is one: isolation_level None)."""
        return self._direct

    def prefetch(self) -> None:
        """Pull the vault's pages into SQLite's cache, so that a request that
        follows does not wait for them."""
        with self.errors():
            self.conn.execute(
                "SELECT sum(length(wrapped_dek)), sum(length(ciphertext)) FROM secret_versions"
            ).fetchone()

    def pending_removal_hint(self, entry_id: int) -> str:
        delete = f"DELETE FROM audit_pending WHERE id = {int(entry_id)}"
        return f"sqlite3 {self.path} '{delete}'"

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
