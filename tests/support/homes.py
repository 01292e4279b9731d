"""Fixtures of real homes, real vault files, real keys (a pytest plugin that
tests/conftest.py loads, so every layer has them).

Building an org costs an RSA-3072 key generation, so one home with org
`acme` and a few secrets is built once per test session through the real
client (`Session.client(...).store`), and every test gets its own copy of it.

Org `acme` lives where `store_backend` says: "sqlite" (the home's files, the
default), or "postgres" (a database of the session's PostgreSQL, also built
once and copied for each test, with the registry in it and the master key's
file slot in the home). A module whose tests hold on both overrides
`store_backend` with `params=STORE_BACKENDS`: only that module runs twice.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from crate_cli.session import Session
from crate_cli.vault.orgs import create_org
from tests.support.vault_state import run_pg_sql, run_sql

if TYPE_CHECKING:
    from tests.support.postgres import PostgresCluster

# What `store_backend` may be; a module that runs on both takes these as params.
STORE_BACKENDS = ["sqlite", "postgres"]
# The database every PostgreSQL test's `acme` copies (CREATE DATABASE … TEMPLATE).
PG_ACME_TEMPLATE = "crate_acme_template"

# What the template home holds: org -> env -> name -> versions (oldest first).
ACME_SECRETS: dict[str, dict[str, list[str]]] = {
    "dev": {
        "DB_URL": ["postgres://dev-db.internal/app?password=dev-9f2c1e"],
        "API_KEY": ["dev-api-key-7d41a0c3b9"],
        "ROTATED": ["rotated-value-version-one", "rotated-value-version-two"],
    },
    "prod": {
        "DB_URL": ["postgres://prod-db.internal/app?password=prod-4be87a"],
    },
}


def all_values(acme_secrets: dict[str, dict[str, list[str]]]) -> list[str]:
    """Every value the template home ever held (for checks that none leaks)."""
    return [v for names in acme_secrets.values() for vs in names.values() for v in vs]


@contextlib.contextmanager
def session_at(home: Path, store: str | None = None) -> Iterator[Session]:
    """A Session with no cached keys or connections, as a new crate process has.

    Its store is `store` ("": the home's files), by default CRATE_STORE of
    this process's environment, as a crate process with that environment
    would choose (`acme_store` sets it for a test on PostgreSQL)."""
    environ = {"CRATE_HOME": str(home), "CRATE_KEYSTORE": "file"}
    store = os.environ.get("CRATE_STORE", "") if store is None else store
    if store:
        environ["CRATE_STORE"] = store
    s = Session(environ=environ)
    try:
        yield s
    finally:
        if "service" in s.__dict__:
            s.service.close()


def build_acme(home: Path, store: str) -> None:
    """Master key v1 (a file slot in `home`), org `acme` and ACME_SECRETS,
    through the real client, in `store` ("": the home's files)."""
    with session_at(home, store) as s:
        s.init()
        create_org(s.storage, s.master, "acme")
        client = s.client("acme")
        for env, names in ACME_SECRETS.items():
            for name, versions in names.items():
                for value in versions:
                    client.store(env, [(name, value)])


@pytest.fixture(scope="session")
def acme_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("acme-template") / "crate-home"
    build_acme(home, "")
    # Every connection is closed: the WAL is checkpointed into the vault file.
    assert not list((home / "orgs").glob("*-wal"))
    return home


@pytest.fixture(scope="session")
def pg_acme_template(
    postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """The home (master key's file slot) and the database (registry, org
    `acme`) that each PostgreSQL test copies: (home, database name)."""
    from crate_cli.vault.storage.postgres import close_pool

    home = tmp_path_factory.mktemp("acme-pg-template") / "crate-home"
    if not postgres.running:  # a test stopped the shared server
        postgres.start()
    postgres.create_database(PG_ACME_TEMPLATE)
    url = postgres.dsn(PG_ACME_TEMPLATE)
    build_acme(home, url)
    close_pool(url)  # a template database must have no connection
    assert not (home / "orgs").exists()  # nothing of the org is in the home
    return home, PG_ACME_TEMPLATE


@pytest.fixture(scope="session")
def personal_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home after implicit first use: master key v1, org `personal` selected, no secrets."""
    home = tmp_path_factory.mktemp("personal-template") / "crate-home"
    with session_at(home, "") as s:
        assert s.org() == "personal"
    return home


@pytest.fixture
def personal_home(personal_template: Path, crate_home: Path) -> Path:
    """A private copy of the first-use home at CRATE_HOME (for `session` and `crate`)."""
    shutil.copytree(personal_template, crate_home)
    return crate_home


@pytest.fixture
def store_backend() -> str:
    """Where `acme_home` keeps org acme: "sqlite" here; a module that holds on
    both backends overrides this fixture with `params=STORE_BACKENDS`."""
    return "sqlite"


@pytest.fixture
def acme_store(
    store_backend: str,
    crate_home: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    """The store of this test's org `acme`: "" (the home's files), or the URL
    of a private copy of the template database, set as CRATE_STORE (which
    `session_at` follows); dropped afterwards. (The `crate` fixture's
    processes get no CRATE_STORE: the e2e tests stay on SQLite.)"""
    if store_backend == "sqlite":
        yield ""
        return
    assert store_backend == "postgres", store_backend
    from crate_cli.vault.storage.postgres import close_pool

    cluster: PostgresCluster = request.getfixturevalue("postgres")
    _, template = request.getfixturevalue("pg_acme_template")
    if not cluster.running:
        cluster.start()
    name = f"acme_{os.urandom(6).hex()}"
    cluster.create_database(name, template=template)
    url = cluster.dsn(name)
    monkeypatch.setenv("CRATE_STORE", url)
    try:
        yield url
    finally:
        close_pool(url)
        if cluster.running:
            cluster.drop_database(name)


@pytest.fixture
def acme_home(acme_store: str, crate_home: Path, request: pytest.FixtureRequest) -> Path:
    """A private copy of the template home at CRATE_HOME (so the `crate`
    fixture uses it, on SQLite), with org `acme` in `acme_store`."""
    if acme_store:
        template, _ = request.getfixturevalue("pg_acme_template")
    else:
        template = request.getfixturevalue("acme_template")
    shutil.copytree(template, crate_home)
    return crate_home


@pytest.fixture
def vault_sql(acme_home: Path, acme_store: str) -> Callable[..., list[tuple[object, ...]]]:
    """Run one SQL statement directly on an org's vault file, or on the
    test's PostgreSQL database, and commit it, as an attacker could.

    The statements are SQLite's, with `?` placeholders, naming no `org_id`:
    on PostgreSQL they run as written while `org` is the store's only org
    (run_pg_sql). With several orgs in a store, a statement scopes itself
    (names org_id) and passes `org=None` (PostgreSQL only)."""

    def run(
        sql: str, params: tuple[object, ...] = (), org: str | None = "acme"
    ) -> list[tuple[object, ...]]:
        if acme_store:
            return run_pg_sql(acme_store, sql, params, org)
        assert org is not None, "org=None is for a PostgreSQL store"
        return run_sql(acme_home / "orgs" / f"{org}.vault", sql, params)

    return run


@pytest.fixture
def acme_secrets() -> dict[str, dict[str, list[str]]]:
    """The template's secrets: env -> name -> values, oldest first."""
    return ACME_SECRETS


@pytest.fixture
def fresh_session(crate_home: Path) -> Callable[[], contextlib.AbstractContextManager[Session]]:
    """`with fresh_session() as s:` opens CRATE_HOME as a new crate process would."""
    return lambda: session_at(crate_home)


@pytest.fixture
def retrieve(crate_home: Path) -> Callable[..., dict[str, str]]:
    """Read values through the real client in a fresh Session: {name: value}."""

    def run(org: str, env: str, names: list[str]) -> dict[str, str]:
        with session_at(crate_home) as s:
            return {r.name: r.value for r in s.client(org).retrieve(env, names)}

    return run
