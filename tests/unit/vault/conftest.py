"""An open org for each test of the vault's operations (tests/support/org_keys.py),
on each storage backend: every test that takes `keys` (or `backend`) runs on
the home's SQLite files and on a real PostgreSQL database."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from crate_cli.vault.keys import OrgKeys
from tests.support.org_keys import SQLITE, Backend, make_home, open_org

TEMPLATE_DB = "crate_ops_template"


@pytest.fixture(scope="session")
def org_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("org-template") / "home"
    make_home(root)
    return root


@pytest.fixture(scope="session")
def pg_org_template(postgres: object, org_template: Path) -> str:
    """A database with org `acme` under the template home's master key (its
    registry copied into the store), which each test's database copies."""
    from crate_cli.vault.orgs import create_org
    from crate_cli.vault.storage.postgres import close_pool

    postgres.create_database(TEMPLATE_DB)  # type: ignore[attr-defined]
    backend = Backend(postgres.dsn(TEMPLATE_DB))  # type: ignore[attr-defined]
    assert backend.url is not None
    registry = backend.storage(org_template).master_registry()
    with registry.locked():
        registry.save((org_template / "keys" / "master.json").read_bytes())
    create_org(backend.storage(org_template), backend.master(org_template), "acme")
    close_pool(backend.url)  # a template database must have no connection
    return TEMPLATE_DB


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The storage of this test's org: SQLite, or a fresh copy of the template database."""
    if request.param == "sqlite":
        yield SQLITE
        return
    from crate_cli.vault.storage.postgres import close_pool

    cluster = request.getfixturevalue("postgres")
    template = request.getfixturevalue("pg_org_template")
    name = f"ops_{os.urandom(6).hex()}"
    cluster.create_database(name, template=template)
    backend = Backend(cluster.dsn(name))
    try:
        yield backend
    finally:
        assert backend.url is not None
        close_pool(backend.url)
        cluster.drop_database(name)


@pytest.fixture
def home(org_template: Path, tmp_path: Path) -> Path:
    """A private copy of the template home."""
    root = tmp_path / "home"
    shutil.copytree(org_template, root)
    return root


@pytest.fixture
def keys(home: Path, backend: Backend) -> Iterator[OrgKeys]:
    """Org `acme` of this test's home, with its keys, on this test's backend."""
    with open_org(home, backend=backend) as opened:
        yield opened
