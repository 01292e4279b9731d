"""One org in a PostgreSQL store: the PostgreSQL side of storage/interface.py's
OrgStore, for several `crate server` replicas sharing one database.

Coordination (docs/ARCHITECTURE.md, "A team's store on PostgreSQL"):

- A write is one READ COMMITTED transaction that first locks the org's row in
  `orgs` (`UPDATE … RETURNING`, which also bumps the org's change counter):
  one writer per org at a time across every replica, and every read of the
  transaction sees all that was committed before it took the lock, as SQLite's
  `BEGIN IMMEDIATE` gives. Under contention this measured far better than
  SERIALIZABLE (../shared/notes/postgres.md).
- A read is one REPEATABLE READ READ ONLY transaction: one snapshot.
- Every write records a random write id in the same transaction. When the
  connection drops during COMMIT, the store asks again, under the org's lock,
  whether that id exists: the change was saved, or it was not and the whole
  request may run again (StoreRetry), never applied twice.
- A connection lost before the transaction's body ran is replaced at once,
  with backoff, for a few seconds (a restarted or failed-over primary).
- `lock_timeout` and `idle_in_transaction_session_timeout` bound how long a
  writer waits and how long a stuck one holds the lock; they become Conflict
  and StoreUnavailable.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from crate_cli.errors import (
    Conflict,
    CrateError,
    InvalidInput,
    NotFound,
    StoreRetry,
    StoreUnavailable,
    VaultCorrupted,
)
from crate_cli.vault.storage.interface import note_commit
from crate_cli.vault.storage.postgres.queries import PostgresRows

if TYPE_CHECKING:
    from psycopg import Connection

LOCK_TIMEOUT_S = 30
IDLE_IN_TRANSACTION_S = 60
# How long a transaction keeps trying to get a working connection before it
# fails (a restart under load took 3-5 s here), and how long a write whose
# COMMIT lost its connection keeps asking whether it was saved.
RECONNECT_S = 8.0
# A process's first contact with the store: a wrong address or a stopped
# server is reported soon, not after RECONNECT_S.
FIRST_CONTACT_S = 2.0
CONFIRM_S = 15.0
# Write ids older than this are dropped (by one write in PRUNE_ONE_IN).
WRITE_ID_KEEP_S = 3600
PRUNE_ONE_IN = 64

# SQLSTATEs of a connection that is gone: class 08, and the server shutting down.
_GONE_STATES = ("57P01", "57P02", "57P03")


def connection_lost(error: BaseException, conn: Connection[Any] | None = None) -> bool:
    """Whether `error` means the connection (or the server) went away, so that
    the transaction it was in did not happen."""
    if isinstance(error, PoolTimeout):
        return True
    if not isinstance(error, psycopg.OperationalError):
        return False
    if conn is not None and conn.broken:
        return True
    state = error.sqlstate
    return state is None or state.startswith("08") or state in _GONE_STATES


def translate(error: psycopg.Error | PoolTimeout, where: str) -> CrateError:
    """A PostgreSQL fault as the crate error a user sees. Only the primary
    message is used: PostgreSQL's DETAIL lines may quote row values."""
    primary = getattr(getattr(error, "diag", None), "message_primary", None) or type(error).__name__
    if isinstance(error, pg_errors.LockNotAvailable):
        return Conflict(
            f"{where} stayed busy for {LOCK_TIMEOUT_S} s", "another writer holds it; try again"
        )
    if isinstance(error, pg_errors.SerializationFailure | pg_errors.DeadlockDetected):
        return StoreRetry(f"{where}: the store asked to run the change again ({primary})")
    if connection_lost(error):
        return StoreRetry(f"the connection to {where} was lost; nothing was changed")
    if isinstance(error, pg_errors.IdleInTransactionSessionTimeout | pg_errors.QueryCanceled):
        return StoreUnavailable(f"{where}: the store ended a slow transaction ({primary})")
    if isinstance(error, pg_errors.ReadOnlySqlTransaction):
        return StoreUnavailable(
            f"{where} is a read-only standby; nothing was changed",
            "point the store at the primary, e.g. list every host with "
            "target_session_attrs=read-write in the URL",
        )
    if isinstance(error, pg_errors.InsufficientPrivilege):
        return CrateError(
            f"{where} refused: {primary}",
            "the store's owner gives a replica's role what it needs: crate store grant ROLE",
        )
    if isinstance(error, psycopg.DataError):  # a value out of PostgreSQL's range
        return InvalidInput(f"a value is out of range for {where} ({primary})")
    if isinstance(error, psycopg.IntegrityError):
        return Conflict(f"the change conflicts with the contents of {where} ({primary})")
    if isinstance(error, pg_errors.DiskFull | pg_errors.InsufficientResources):
        return CrateError(f"no space left to write {where}; nothing was changed")
    return VaultCorrupted(
        f"{where} is damaged or is not a crate store ({primary}); it was left untouched",
        "restore it from a backup",
    )


@contextlib.contextmanager
def store_errors(where: str) -> Iterator[None]:
    """Turn PostgreSQL faults into crate errors naming `where`."""
    try:
        yield
    except (psycopg.Error, PoolTimeout) as e:
        raise translate(e, where) from None


def backoff(attempt: int) -> float:
    """Seconds to wait before attempt `attempt` + 1: doubling from 50 ms, at
    most 1 s, with jitter so that replicas do not retry in step."""
    return float(min(0.05 * 2**attempt, 1.0) * (0.5 + random.random()))  # noqa: S311 (jitter)


def get_connection(
    pool: ConnectionPool[Any], where: str, begin: str, patience: float = RECONNECT_S
) -> Connection[Any]:
    """A pooled connection with `begin` run on it; a lost connection is
    replaced until `patience` seconds have passed (then StoreUnavailable)."""
    deadline = time.monotonic() + patience
    attempt = 0
    while True:
        conn: Connection[Any] | None = None
        try:
            conn = pool.getconn(timeout=max(0.1, deadline - time.monotonic()))
            conn.execute(begin)
            return conn
        except (psycopg.Error, PoolTimeout) as e:
            if conn is not None:
                pool.putconn(conn)  # a broken connection is discarded
            if not connection_lost(e, conn):
                raise translate(e, where) from None
            if time.monotonic() + backoff(attempt) > deadline:
                raise StoreUnavailable(
                    f"cannot reach {where} ({type(e).__name__})",
                    "check that PostgreSQL is running and reachable, then try again",
                ) from None
        time.sleep(backoff(attempt))
        attempt += 1


def finish(pool: ConnectionPool[Any], conn: Connection[Any], statement: str) -> None:
    """End the transaction (`COMMIT` or `ROLLBACK`) and give the connection back."""
    try:
        conn.execute(statement)
    finally:
        pool.putconn(conn)


@contextlib.contextmanager
def transaction(
    pool: ConnectionPool[Any],
    where: str,
    begin: str = "BEGIN ISOLATION LEVEL READ COMMITTED",
    patience: float = RECONNECT_S,
) -> Iterator[Connection[Any]]:
    """One transaction on a pooled connection (the store's own work: creating,
    deleting, migrating, the registry): rolled back if the block raises, else
    committed. A connection lost during COMMIT leaves it unknown whether the
    change was saved, and StoreUnavailable says so (never StoreRetry, which
    promises nothing was)."""
    conn = get_connection(pool, where, begin, patience)
    try:
        with store_errors(where):
            yield conn
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            finish(pool, conn, "ROLLBACK")
        raise
    try:
        finish(pool, conn, "COMMIT")
    except (psycopg.Error, PoolTimeout) as e:
        if connection_lost(e, conn):
            raise StoreUnavailable(
                f"the connection to {where} was lost while saving; the change may have been saved",
                "check (e.g. crate org list) before doing it again",
            ) from None
        raise translate(e, where) from None


class PostgresOrgStore:
    """An open org of a PostgreSQL store. Use `write()` for every change."""

    def __init__(
        self,
        pool: ConnectionPool[Any],
        org: str,
        org_id: int,
        location: str,
        pinned: Connection[Any] | None = None,
    ) -> None:
        self.org = org
        self.org_id = org_id
        self.location = location
        self._pool = pool
        # The connection of the open transaction (None: none is open). A store
        # `pinned` to one lives inside another's transaction (an org being created).
        self._conn: Connection[Any] | None = pinned
        self._pinned = pinned is not None
        self._after: list[Callable[[], None]] = []
        self._rows = PostgresRows(self._in_transaction, org_id)
        self._direct = PostgresRows(self._any_connection, org_id)

    # -- connections ------------------------------------------------------------------

    @contextlib.contextmanager
    def _in_transaction(self) -> Iterator[Connection[Any]]:
        assert self._conn is not None, "only inside read() or write()"
        yield self._conn

    @contextlib.contextmanager
    def _any_connection(self) -> Iterator[Connection[Any]]:
        if self._conn is not None:
            yield self._conn
            return
        with self.errors(), self._pool.connection(timeout=RECONNECT_S) as conn:
            yield conn

    @property
    def direct(self) -> PostgresRows:
        return self._direct

    def errors(self) -> contextlib.AbstractContextManager[None]:
        return store_errors(self.location)

    # -- transactions -----------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[PostgresRows]:
        """One write transaction under the org's lock: all of the block's
        changes, or none."""
        if self._conn is not None:
            # Inside the transaction that creates the org: a savepoint.
            with self.errors(), self._conn.transaction():
                yield self._rows
            if not self._pinned:
                return
            self._run_after()
            return
        try:
            write_id = os.urandom(12).hex()
            conn = self._lock(write_id)
            self._conn = conn
            try:
                with self.errors():
                    yield self._rows
                    if random.randrange(PRUNE_ONE_IN) == 0:  # noqa: S311 (sampling)
                        self._prune_write_ids(conn)
            except BaseException:
                self._conn = None
                with contextlib.suppress(psycopg.Error):
                    finish(self._pool, conn, "ROLLBACK")
                raise
            self._conn = None
            self._commit(conn, write_id)
        finally:
            self._run_after()

    def _lock(self, write_id: str) -> Connection[Any]:
        """Begin, take the org's row lock, bump its change counter and record
        the write id, in one round trip after BEGIN."""
        conn = get_connection(self._pool, self.location, "BEGIN ISOLATION LEVEL READ COMMITTED")
        try:
            with self.errors():
                row = conn.execute(
                    "WITH w AS (INSERT INTO write_ids (org_id, id) VALUES (%s, %s)) "
                    "UPDATE orgs SET changes = changes + 1 "
                    "WHERE id = %s AND deleted_at IS NULL RETURNING id",
                    (self.org_id, write_id, self.org_id),
                ).fetchone()
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                finish(self._pool, conn, "ROLLBACK")
            raise
        if row is None:
            with contextlib.suppress(psycopg.Error):
                finish(self._pool, conn, "ROLLBACK")
            raise NotFound(f"organization {self.org!r} was deleted")
        return conn

    def _commit(self, conn: Connection[Any], write_id: str) -> None:
        try:
            finish(self._pool, conn, "COMMIT")
            note_commit()
        except (psycopg.Error, PoolTimeout) as e:
            if not connection_lost(e, conn):
                raise translate(e, self.location) from None
            saved = self._confirm(write_id)
            if saved is None:
                raise StoreUnavailable(
                    f"the connection to {self.location} was lost while saving a change, and the "
                    "store could not be asked whether it was saved",
                    "check the change (e.g. crate secrets history) before making it again",
                ) from None
            if not saved:
                raise StoreRetry(
                    f"the connection to {self.location} was lost; the change was not saved"
                ) from None
            note_commit()

    def _confirm(self, write_id: str) -> bool | None:
        """Whether the write `write_id` was committed, asked under the org's
        lock (so that a COMMIT still in flight has ended); None if the store
        cannot be reached within CONFIRM_S."""
        deadline = time.monotonic() + CONFIRM_S
        attempt = 0
        while time.monotonic() < deadline:
            with contextlib.suppress(psycopg.Error, PoolTimeout, StoreUnavailable):
                conn = get_connection(self._pool, self.location, "BEGIN")
                try:
                    conn.execute("SELECT 1 FROM orgs WHERE id = %s FOR UPDATE", (self.org_id,))
                    row = conn.execute(
                        "SELECT 1 FROM write_ids WHERE org_id = %s AND id = %s",
                        (self.org_id, write_id),
                    ).fetchone()
                finally:
                    finish(self._pool, conn, "ROLLBACK")
                return row is not None
            time.sleep(backoff(attempt))
            attempt += 1
        return None

    def _prune_write_ids(self, conn: Connection[Any]) -> None:
        conn.execute(
            "DELETE FROM write_ids WHERE org_id = %s AND at < now() - make_interval(secs => %s)",
            (self.org_id, WRITE_ID_KEEP_S),
        )

    @contextlib.contextmanager
    def read(self) -> Iterator[PostgresRows]:
        """A consistent snapshot for several reads."""
        if self._conn is not None:
            yield self._rows  # inside a write: its own view
            return
        try:
            conn = get_connection(
                self._pool, self.location, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
            )
            self._conn = conn
            try:
                with self.errors():
                    yield self._rows
            finally:
                self._conn = None
                with self.errors():
                    finish(self._pool, conn, "ROLLBACK")
        finally:
            self._run_after()

    def prefetch(self) -> None:
        """Nothing to warm: PostgreSQL's shared buffers are the server's."""

    def pending_removal_hint(self, entry_id: int) -> str:
        delete = (
            f"DELETE FROM audit_pending WHERE id = {int(entry_id)} AND org_id = {int(self.org_id)}"
        )
        return f"psql (as the store's owner) -c '{delete}'"

    def after_transaction(self, action: Callable[[], None]) -> None:
        """Run `action` once the open transaction has ended, or now if there is
        none; a CrateError from it is dropped."""
        if self._conn is not None:
            self._after.append(action)
        else:
            with contextlib.suppress(CrateError):
                action()

    def _run_after(self) -> None:
        if self._conn is not None and not self._pinned:
            return
        while self._after:
            with contextlib.suppress(CrateError):
                self._after.pop(0)()

    def close(self) -> None:
        """Nothing to close: connections go back to the storage's pool."""
