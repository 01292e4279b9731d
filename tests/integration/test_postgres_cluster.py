"""The throwaway PostgreSQL of tests/support/postgres.py, itself: what the
PostgreSQL storage's tests rely on. The shared cluster (`postgres`, `pg_url`)
serves the tests that only connect; the ones that stop or kill a server have
a private one (`make_postgres`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.postgres import (
    APP_USER,
    DURABLE,
    SUPERUSER,
    PostgresCluster,
    database_name,
)


def connect(url: str, **kwargs: Any) -> Any:
    """A psycopg connection (imported here: the fixtures have checked it is installed)."""
    import psycopg

    return psycopg.connect(url, connect_timeout=10, **kwargs)


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with connect(url) as conn:
        return list(conn.execute(sql).fetchall())


@pytest.fixture
def durable(make_postgres: Callable[..., PostgresCluster]) -> tuple[PostgresCluster, str]:
    """A private cluster with fsync and synchronous commits on, and a database
    whose table `kept` holds two committed rows."""
    cluster = make_postgres(DURABLE)
    url = cluster.fresh_database()
    with connect(url) as conn:
        conn.execute("CREATE TABLE kept (n integer PRIMARY KEY)")
        conn.execute("INSERT INTO kept VALUES (1), (2)")
    return cluster, url


def test_the_server_answers_on_tcp_and_on_its_socket(postgres: PostgresCluster) -> None:
    assert postgres.dsn("postgres", user=SUPERUSER).startswith("postgresql://postgres@127.0.0.1:")
    assert rows(postgres.dsn("postgres", user=SUPERUSER), "SELECT current_user") == [(SUPERUSER,)]
    over_socket = (
        f"host={postgres.socket_dir} port={postgres.port} user={SUPERUSER} dbname=postgres"
    )
    with connect(over_socket) as conn:
        assert conn.info.host == str(postgres.socket_dir)
        assert int(conn.info.server_version) >= 150000
    assert postgres.admin_sql("SHOW fsync") == [("off",)]
    assert postgres.admin_sql("SHOW max_connections") == [("200",)]


def test_crate_app_connects_with_its_password_and_owns_its_database(pg_url: str) -> None:
    assert pg_url.startswith(f"postgresql://{APP_USER}:")
    with connect(pg_url) as conn:
        conn.execute("CREATE TABLE secrets (name text PRIMARY KEY)")
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            APP_USER,
            database_name(pg_url),
        )


def test_a_wrong_or_missing_password_is_refused(postgres: PostgresCluster, pg_url: str) -> None:
    import psycopg

    name = database_name(pg_url)
    for url in (postgres.dsn(name, password="wrong"), postgres.dsn(name, password="")):
        with pytest.raises(psycopg.OperationalError, match="password"):
            connect(url)


def test_a_password_that_needs_quoting_in_the_url(postgres: PostgresCluster, pg_url: str) -> None:
    password = "p@ss:/w%rd?#'"
    quoted = password.replace("'", "''")
    postgres.admin_sql(
        f"DROP ROLE IF EXISTS quoted_user; CREATE ROLE quoted_user LOGIN PASSWORD '{quoted}'"
    )
    try:
        url = postgres.dsn(database_name(pg_url), user="quoted_user", password=password)
        assert rows(url, "SELECT current_user") == [("quoted_user",)]
    finally:
        postgres.admin_sql("DROP ROLE quoted_user")


def test_two_fresh_databases_are_independent(postgres: PostgresCluster) -> None:
    first, second = postgres.fresh_database(), postgres.fresh_database()
    try:
        assert database_name(first) != database_name(second)
        with connect(first) as conn:
            conn.execute("CREATE TABLE only_here (n integer)")
        with connect(second) as conn:
            conn.execute("CREATE TABLE only_here (n integer)")  # no clash
            conn.execute("INSERT INTO only_here VALUES (2)")
        assert rows(first, "SELECT n FROM only_here") == []
    finally:
        postgres.drop_database(database_name(first))
        postgres.drop_database(database_name(second))


def test_drop_database_ends_the_sessions_still_in_it(postgres: PostgresCluster) -> None:
    url = postgres.fresh_database()
    with connect(url) as conn:
        postgres.drop_database(database_name(url))
        assert not _answers(conn)
    existing = postgres.admin_sql(
        "SELECT 1 FROM pg_database WHERE datname = %s", [database_name(url)]
    )
    assert existing == []


def _answers(conn: Any) -> bool:
    import psycopg

    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


def test_the_private_cluster_is_durable(durable: tuple[PostgresCluster, str]) -> None:
    cluster, _ = durable
    for name in DURABLE:
        assert cluster.admin_sql(f"SHOW {name}") == [("on",)]


def test_an_immediate_stop_keeps_committed_rows(durable: tuple[PostgresCluster, str]) -> None:
    cluster, url = durable
    cluster.stop("immediate")
    cluster.start()
    assert rows(url, "SELECT n FROM kept ORDER BY n") == [(1,), (2,)]


def test_a_killed_server_recovers_committed_rows_and_drops_the_rest(
    durable: tuple[PostgresCluster, str],
) -> None:
    cluster, url = durable
    with connect(url) as committed:
        committed.execute("INSERT INTO kept VALUES (3)")
    open_transaction = connect(url)
    open_transaction.execute("INSERT INTO kept VALUES (4)")  # never committed
    cluster.kill()
    cluster.start()
    assert rows(url, "SELECT n FROM kept ORDER BY n") == [(1,), (2,), (3,)]
    assert "automatic recovery in progress" in cluster.log_tail(50)
    open_transaction.close()


def test_the_fast_settings_keep_commits_through_a_kill(
    make_postgres: Callable[..., PostgresCluster],
) -> None:
    """FAST keeps synchronous_commit on: only a power cut loses commits."""
    cluster = make_postgres()
    url = cluster.fresh_database()
    with connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (n integer)")
        for n in range(200):
            conn.execute("INSERT INTO t VALUES (%s)", [n])
    cluster.kill()
    cluster.start()
    assert rows(url, "SELECT count(*) FROM t") == [(200,)]


def test_a_restart_keeps_the_port_and_the_urls(durable: tuple[PostgresCluster, str]) -> None:
    cluster, url = durable
    port = cluster.port
    cluster.restart()
    assert cluster.port == port
    assert rows(url, "SELECT count(*) FROM kept") == [(2,)]


def test_close_stops_the_server_and_removes_its_folder() -> None:
    cluster = PostgresCluster()
    cluster.start()
    url = cluster.dsn("postgres", user=SUPERUSER)
    cluster.close()
    assert not cluster.dir.exists()
    import psycopg

    with pytest.raises(psycopg.OperationalError):
        connect(url)
