"""Fixtures of real homes, real vault files, real keys (a pytest plugin that
tests/conftest.py loads, so every layer has them).

Building an org costs an RSA-3072 key generation, so one home with org
`acme` and a few secrets is built once per test session through the real
client (`Session.client(...).store`), and every test gets its own copy of it.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crate_cli.session import Session
from crate_cli.vault.orgs import create_org
from tests.support.vault_state import run_sql

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
def session_at(home: Path) -> Iterator[Session]:
    """A Session with no cached keys or connections, as a new crate process has."""
    s = Session(environ={"CRATE_HOME": str(home), "CRATE_KEYSTORE": "file"})
    try:
        yield s
    finally:
        if "service" in s.__dict__:
            s.service.close()


@pytest.fixture(scope="session")
def acme_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("acme-template") / "crate-home"
    with session_at(home) as s:
        s.init()
        create_org(s.storage, s.master, "acme")
        client = s.client("acme")
        for env, names in ACME_SECRETS.items():
            for name, versions in names.items():
                for value in versions:
                    client.store(env, [(name, value)])
    # Every connection is closed: the WAL is checkpointed into the vault file.
    assert not list((home / "orgs").glob("*-wal"))
    return home


@pytest.fixture(scope="session")
def personal_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home after implicit first use: master key v1, org `personal` selected, no secrets."""
    home = tmp_path_factory.mktemp("personal-template") / "crate-home"
    with session_at(home) as s:
        assert s.org() == "personal"
    return home


@pytest.fixture
def personal_home(personal_template: Path, crate_home: Path) -> Path:
    """A private copy of the first-use home at CRATE_HOME (for `session` and `crate`)."""
    shutil.copytree(personal_template, crate_home)
    return crate_home


@pytest.fixture
def acme_home(acme_template: Path, crate_home: Path) -> Path:
    """A private copy of the template at CRATE_HOME (so the `crate` fixture uses it)."""
    shutil.copytree(acme_template, crate_home)
    return crate_home


@pytest.fixture
def vault_sql(acme_home: Path) -> Callable[..., list[tuple[object, ...]]]:
    """Run one SQL statement directly on an org's vault file, as an attacker could."""

    def run(
        sql: str, params: tuple[object, ...] = (), org: str = "acme"
    ) -> list[tuple[object, ...]]:
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
