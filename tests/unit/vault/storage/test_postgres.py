"""The PostgreSQL store's own guarantees, on a real PostgreSQL
(tests/support/postgres.py): the schema and its migrations, rows typed as
SQLite's, names in byte order, append-only and permanent tables at the
database, atomic org creation, deletion, the org lock, and what a lost
connection does to a write. The operations themselves are tested over both
backends (tests/unit/vault/conftest.py's `keys`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crate_cli.config import CrateHome
from crate_cli.errors import Conflict, NotFound, StoreRetry, UnsupportedVersion
from crate_cli.vault import audit
from crate_cli.vault.keys import OrgKeys
from crate_cli.vault.masterkey import MasterKeys
from crate_cli.vault.orgs import create_org
from tests.support.org_keys import ORG, TESTER, store

psycopg = pytest.importorskip("psycopg")

from crate_cli.vault.storage.postgres import (  # noqa: E402
    PostgresStorage,
    close_pools,
    migrate,
)
from crate_cli.vault.storage.postgres import store as pg_store  # noqa: E402


@pytest.fixture
def storage(pg_url: str) -> Iterator[PostgresStorage]:
    yield PostgresStorage(pg_url)
    close_pools()


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement on the store, committed, as someone with the app's
    database role could run it."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return list(cursor.fetchall()) if cursor.description else []


@pytest.fixture
def master(tmp_path: Path, storage: PostgresStorage) -> MasterKeys:
    home = CrateHome(tmp_path / "home", tmp_path / "home")
    master = MasterKeys(home, environ={}, registry=storage.master_registry())
    master.create_first("file", list_orgs=storage.list_orgs)
    return master


@pytest.fixture
def keys(storage: PostgresStorage, master: MasterKeys) -> Iterator[OrgKeys]:
    create_org(storage, master, ORG)
    opened = OrgKeys(
        ORG, storage.open_org(ORG), master, TESTER, on_unlock_failure=audit.record_unlock_failure
    )
    yield opened
    opened.store.close()


# -- schema -----------------------------------------------------------------------------


def test_the_schema_is_made_once_by_replicas_starting_together(pg_url: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            PostgresStorage(f"{pg_url}?application_name=r{threading.get_ident()}").prepare()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    close_pools()
    assert errors == []
    assert sql(pg_url, "SELECT version FROM crate_schema") == [(1,)]


def test_a_store_of_a_newer_schema_is_refused_and_left_untouched(
    storage: PostgresStorage, pg_url: str
) -> None:
    storage.prepare()
    close_pools()
    sql(pg_url, "UPDATE crate_schema SET version = 99")
    with pytest.raises(UnsupportedVersion, match="newer than this crate"):
        PostgresStorage(pg_url).prepare()
    assert sql(pg_url, "SELECT version FROM crate_schema") == [(99,)]


def test_migrating_a_current_store_changes_nothing(storage: PostgresStorage) -> None:
    storage.prepare()
    migrate(storage.pool, storage.location)
    assert storage.list_orgs() == []


# -- rows as SQLite holds them ------------------------------------------------------------


def test_rows_come_back_with_sqlite_s_types(keys: OrgKeys) -> None:
    store(keys, "dev", {"API_KEY": "v1"})
    head = keys.store.direct.head("dev", "API_KEY")
    assert head is not None
    assert type(head.deleted) is int and type(head.version) is int
    assert type(head.mac) is bytes and type(head.tags) is str
    (version,) = keys.store.direct.versions(head.secret_id)
    assert type(version.deleted) is int and version.deleted == 0
    anchor = keys.store.direct.anchor()
    assert anchor is not None and type(anchor.enabled) is int


def test_names_are_in_the_byte_order_of_their_utf8(keys: OrgKeys) -> None:
    names = ["b", "B", "_Z", "a1", "A_LONGER_NAME", "Z"]
    store(keys, "dev", dict.fromkeys(names, "v"))
    heads = keys.store.direct.heads("dev")
    assert [h.name for h in heads] == sorted(names, key=lambda n: n.encode())
    assert keys.store.direct.head_macs("dev") == b"".join(h.mac for h in heads)


def test_an_audit_name_filter_finds_entries_naming_the_secret(keys: OrgKeys) -> None:
    from crate_cli.vault.storage.interface import AuditFilter

    store(keys, "dev", {"ONE": "1", "TWO": "2"})
    store(keys, "dev", {"TWO": "3"})
    with keys.store.read() as db:
        pages = db.audit_page(AuditFilter(name="ONE"), 10, None, None)
    assert len(pages) == 1 and "ONE" in pages[0].entry.names


def test_the_audit_chain_verifies_on_postgresql(keys: OrgKeys) -> None:
    for i in range(5):
        store(keys, "dev", {"K": str(i)})
    verified = audit.verify(keys)
    assert verified.entries == 6  # the org's creation, then five stores


# -- the database keeps the log append-only --------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET actor = 'someone-else'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log CASCADE",
    ],
)
def test_audit_rows_cannot_be_changed_or_removed(
    keys: OrgKeys, pg_url: str, statement: str
) -> None:
    before = sql(pg_url, "SELECT * FROM audit_log ORDER BY org_id, seq")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        sql(pg_url, statement)
    assert sql(pg_url, "SELECT * FROM audit_log ORDER BY org_id, seq") == before


def test_a_revocation_is_permanent_while_its_org_lives(keys: OrgKeys, pg_url: str) -> None:
    from crate_cli.vault import tokens

    tokens.create(keys, "ci", "reader", [], [], "", "tester", "2026-01-01T00:00:00.000000Z")
    tokens.revoke(keys, "ci", TESTER)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permanent"):
        sql(pg_url, "DELETE FROM token_revocations")
    assert len(sql(pg_url, "SELECT * FROM token_revocations")) == 1


# -- orgs -----------------------------------------------------------------------------------


def test_an_org_whose_creation_fails_leaves_nothing(storage: PostgresStorage, pg_url: str) -> None:
    storage.prepare()

    def broken(org_store: Any) -> None:
        with org_store.write() as db:
            db.add_environments(["dev"], "2026-01-01T00:00:00.000000Z")
        raise RuntimeError("the power went out")

    with pytest.raises(RuntimeError):
        storage.create_org("half", broken)
    assert storage.list_orgs() == []
    assert sql(pg_url, "SELECT count(*) FROM environments") == [(0,)]
    assert sql(pg_url, "SELECT count(*) FROM orgs") == [(0,)]


def test_two_replicas_creating_one_org_do_not_both_succeed(pg_url: str, master: MasterKeys) -> None:
    outcomes: list[str] = []

    def create(n: int) -> None:
        replica = PostgresStorage(f"{pg_url}?application_name=replica{n}")
        try:
            create_org(replica, master, "shared")
            outcomes.append("created")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=create, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    close_pools()
    assert sorted(outcomes) == ["conflict", "conflict", "created"]
    assert sql(pg_url, "SELECT count(*) FROM orgs WHERE deleted_at IS NULL") == [(1,)]


def test_a_deleted_org_keeps_its_audit_log_and_frees_its_name(
    keys: OrgKeys, storage: PostgresStorage, master: MasterKeys, pg_url: str
) -> None:
    store(keys, "dev", {"K": "v"})
    entries = sql(pg_url, "SELECT count(*) FROM audit_log")[0][0]
    storage.delete_org(ORG)
    assert storage.list_orgs() == []
    with pytest.raises(NotFound):
        storage.open_org(ORG)
    with pytest.raises(NotFound, match="was deleted"), keys.store.write():
        pass
    assert sql(pg_url, "SELECT count(*) FROM secret_versions") == [(0,)]
    assert sql(pg_url, "SELECT count(*) FROM org_deks") == [(0,)]
    assert sql(pg_url, "SELECT count(*) FROM audit_log")[0][0] == entries
    create_org(storage, master, ORG)  # the name is free again, with new keys
    assert storage.list_orgs() == [ORG]
    with pytest.raises(NotFound):
        storage.delete_org("nope")


def test_the_org_marker_changes_with_every_write(keys: OrgKeys, storage: PostgresStorage) -> None:
    before = storage.org_marker(ORG)
    store(keys, "dev", {"K": "v"})
    assert storage.org_marker(ORG) != before


# -- the org lock and lost connections -----------------------------------------------------


def test_writers_of_one_org_wait_for_each_other(keys: OrgKeys, pg_url: str) -> None:
    """A second writer (another replica) waits for the first one's commit,
    then sees its change: nothing is lost."""
    order: list[str] = []
    other = PostgresStorage(f"{pg_url}?application_name=second")
    second_store = other.open_org(ORG)
    started = threading.Event()

    def second() -> None:
        started.wait()
        with second_store.write() as db:
            order.append(f"second saw {db.count_secrets('dev')}")

    thread = threading.Thread(target=second)
    thread.start()
    with keys.store.write() as db:
        started.set()
        time.sleep(0.3)
        store_row(db)
        order.append("first")
    thread.join()
    assert order == ["first", "second saw 1"]


def store_row(db: Any) -> None:
    from crate_cli.vault.storage.interface import HeadFields

    db.insert_head("dev", HeadFields("RAW", 1, 0, "[]", "t", "a", b"m"))


def test_a_writer_that_waits_too_long_gets_a_conflict(
    keys: OrgKeys, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    org_id = keys.store.org_id  # type: ignore[attr-defined]
    close_pools()
    monkeypatch.setattr("crate_cli.vault.storage.postgres.LOCK_TIMEOUT_S", 1)
    monkeypatch.setattr(pg_store, "LOCK_TIMEOUT_S", 1)
    fresh = PostgresStorage(pg_url).open_org(ORG)
    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT 1 FROM orgs WHERE id = %s FOR UPDATE", (org_id,))
        started = time.monotonic()
        with pytest.raises(Conflict, match="stayed busy"), fresh.write():
            pass
        assert 0.8 < time.monotonic() - started < 10
    close_pools()


def test_a_connection_lost_mid_write_applies_nothing_and_asks_for_a_retry(
    keys: OrgKeys, pg_url: str
) -> None:
    with pytest.raises(StoreRetry), keys.store.write() as db:
        store_row(db)
        pid = db._one("SELECT pg_backend_pid()", ())[0]
        sql(pg_url, "SELECT pg_terminate_backend(%s)", (pid,))
        db.has_environment("dev")  # the connection is gone
    assert keys.store.direct.head("dev", "RAW") is None
    with keys.store.write() as db:  # the pool has a working connection again
        store_row(db)
    assert keys.store.direct.head("dev", "RAW") is not None


def test_a_commit_whose_answer_was_lost_is_confirmed_not_repeated(
    keys: OrgKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COMMIT reaches the server but its answer does not: the write id
    says it was saved, so the request is not run again."""
    real_finish = pg_store.finish

    def finish_then_lose(pool: Any, conn: Any, statement: str) -> None:
        real_finish(pool, conn, statement)
        if statement == "COMMIT":
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(pg_store, "finish", finish_then_lose)
    with keys.store.write() as db:
        store_row(db)
    monkeypatch.undo()
    assert keys.store.direct.head("dev", "RAW") is not None


def test_a_commit_that_never_arrived_is_reported_as_not_saved(
    keys: OrgKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_finish = pg_store.finish

    def lose_commit(pool: Any, conn: Any, statement: str) -> None:
        if statement == "COMMIT":
            real_finish(pool, conn, "ROLLBACK")
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        real_finish(pool, conn, statement)

    monkeypatch.setattr(pg_store, "finish", lose_commit)
    with pytest.raises(StoreRetry, match="not saved"), keys.store.write() as db:
        store_row(db)
    monkeypatch.undo()
    assert keys.store.direct.head("dev", "RAW") is None


def test_an_unreachable_store_is_reported_without_its_password() -> None:
    from crate_cli.errors import StoreUnavailable

    url = "postgresql://crate:hunter2@127.0.0.1:1/crate?connect_timeout=1"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        PostgresStorage(url).list_orgs()
    close_pools()
    assert "hunter2" not in str(caught.value) and "hunter2" not in caught.value.diagnostics()
    assert "127.0.0.1" in str(caught.value)
    assert time.monotonic() - started < 6  # the first contact is not retried for long


def test_a_long_task_runs_once_at_a_time_across_replicas(pg_url: str) -> None:
    first, second = PostgresStorage(pg_url), PostgresStorage(f"{pg_url}?application_name=b")
    order: list[str] = []

    def other() -> None:
        with second.exclusive("rotate"):
            order.append("second")

    with first.exclusive("rotate"):
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.3)
        order.append("first")
    thread.join()
    close_pools()
    assert order == ["first", "second"]


def test_a_value_out_of_postgresql_s_range_is_bad_input_not_damage(keys: OrgKeys) -> None:
    from crate_cli.errors import InvalidInput

    store(keys, "dev", {"A": "v"})
    with pytest.raises(InvalidInput, match="out of range"):
        keys.store.direct.values("dev", ["A"], {"A": 10**20})


def test_a_read_only_standby_says_so(make_postgres: Any, tmp_path: Path) -> None:
    from crate_cli.errors import StoreUnavailable

    primary = make_postgres()
    primary.create_database("team")
    primary_storage = PostgresStorage(primary.dsn("team"))
    primary_storage.prepare()
    standby = primary.standby(synchronous=False)
    try:
        on_standby = PostgresStorage(standby.dsn("team"))
        assert on_standby.list_orgs() == []  # reads work
        with pytest.raises(StoreUnavailable, match="read-only standby") as caught:
            on_standby.create_org("acme", lambda store: None)
        assert "target_session_attrs=read-write" in (caught.value.hint or "")
    finally:
        close_pools()
        standby.close()


def test_a_lost_commit_of_the_store_s_own_work_says_it_may_have_been_saved(
    storage: PostgresStorage, master: MasterKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating an org whose COMMIT answer is lost: never "nothing was changed"
    (it was), but "may have been saved"."""
    from crate_cli.errors import StoreUnavailable

    real_finish = pg_store.finish

    def finish_then_lose(pool: Any, conn: Any, statement: str) -> None:
        real_finish(pool, conn, statement)
        if statement == "COMMIT":
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(pg_store, "finish", finish_then_lose)
    with pytest.raises(StoreUnavailable, match="may have been saved"):
        create_org(storage, master, "lost")
    monkeypatch.undo()
    assert storage.list_orgs() == ["lost"]
