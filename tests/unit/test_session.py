"""Which store a Session opens (crate_cli/session.py): --store, else
CRATE_STORE, else the `store` setting; the home's SQLite files, PostgreSQL
(its backend imported only then), or a clear refusal that never shows a
password.

The PostgreSQL backend is its own package; these tests of the choice stand
a fake module in for it, or hide it."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from crate_cli.config import CrateHome, Settings
from crate_cli.errors import CrateError, ExitCode, InvalidInput
from crate_cli.session import Session, open_storage
from crate_cli.vault.storage.registry_file import FileRegistry
from crate_cli.vault.storage.sqlite import SqliteStorage

POSTGRES = "crate_cli.vault.storage.postgres"
PASSWORD = "hunter2"


@pytest.fixture
def home(tmp_path: Path) -> CrateHome:
    root = tmp_path / "home"
    return CrateHome(root, root)


@pytest.fixture(autouse=True)
def no_store_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Session, "store_option", None)


class FakePostgresStorage:
    """Stands in for the backend: records the URL; its registry is a file
    outside the home (`shared`, set by the fixture)."""

    shared = Path("/nonexistent")

    def __init__(self, url: str) -> None:
        self.url = url
        self.registry = FileRegistry(CrateHome(self.shared, self.shared))

    def master_registry(self) -> FileRegistry:
        return self.registry


@pytest.fixture
def fake_postgres(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> types.ModuleType:
    monkeypatch.setattr(FakePostgresStorage, "shared", tmp_path / "shared")
    module = types.ModuleType(POSTGRES)
    module.PostgresStorage = FakePostgresStorage  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, POSTGRES, module)
    return module


def _session(home: CrateHome, environ: dict[str, str] | None = None) -> Session:
    return Session(environ={"CRATE_HOME": str(home.data_dir), **(environ or {})})


@pytest.mark.parametrize("store", ["", "sqlite", "SQLite"])
def test_the_homes_files_by_default(home: CrateHome, store: str) -> None:
    storage = open_storage(home, store)
    assert isinstance(storage, SqliteStorage)
    assert storage.master_registry().location == str(home.keys_dir / "master.json")


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://crate:{PASSWORD}@db/vault",
        f"postgres://crate:{PASSWORD}@db/vault",
        f"PostgreSQL://crate:{PASSWORD}@db/vault",
    ],
)
def test_a_postgresql_url_opens_the_postgres_backend_with_it(
    home: CrateHome, url: str, fake_postgres: types.ModuleType
) -> None:
    storage = open_storage(home, url)
    assert isinstance(storage, FakePostgresStorage)
    assert storage.url == url


def test_a_postgresql_url_imports_the_postgres_backend(
    home: CrateHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The module itself missing is not hidden behind another message."""
    monkeypatch.setitem(sys.modules, POSTGRES, None)  # type: ignore[arg-type]
    with pytest.raises(ModuleNotFoundError) as e:
        open_storage(home, f"postgresql://u:{PASSWORD}@127.0.0.1:1/x")
    assert e.value.name == POSTGRES


class _NeedsPsycopg(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """The backend as it imports without psycopg installed."""

    def find_spec(
        self, name: str, path: object, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name == POSTGRES else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        raise ModuleNotFoundError("No module named 'psycopg'", name="psycopg")


def test_without_psycopg_the_error_says_what_to_install(
    home: CrateHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, POSTGRES, raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NeedsPsycopg(), *sys.meta_path])
    with pytest.raises(CrateError) as e:
        open_storage(home, f"postgresql://u:{PASSWORD}@db/x")
    assert "psycopg" in e.value.message
    assert "crate-cli[postgres]" in (e.value.hint or "")
    assert PASSWORD not in e.value.render()


@pytest.mark.parametrize(
    "store",
    [
        f"bogus://u:{PASSWORD}@x/y",
        f"mysql://root:{PASSWORD}@db/x",
        f"postgresql:u:{PASSWORD}@db/x",  # no //
        f"sqlite://u:{PASSWORD}@file",
        f"u:{PASSWORD}@db",
        f"postgresql+psycopg://u:{PASSWORD}@db/x",
        " sqlite",
    ],
)
def test_anything_else_is_refused_without_its_password(home: CrateHome, store: str) -> None:
    with pytest.raises(InvalidInput) as e:
        open_storage(home, store)
    error = e.value
    assert error.exit_code == ExitCode.USAGE
    assert error.message.startswith("unknown store ")
    assert "sqlite" in error.message and "postgresql://" in error.message
    assert "--store" in (error.hint or "") and "CRATE_STORE" in (error.hint or "")
    for text in (error.message, str(error), repr(error), error.render(), error.hint or ""):
        assert PASSWORD not in text
    assert "\n" not in error.message


def test_store_option_beats_crate_store_beats_the_setting(
    home: CrateHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    Settings.update(home, "store", "from-setting://x")
    env = {"CRATE_STORE": "from-env://x"}
    assert _session(home).store == "from-setting://x"
    assert _session(home, {"CRATE_STORE": ""}).store == "from-setting://x"
    assert _session(home, env).store == "from-env://x"
    monkeypatch.setattr(Session, "store_option", "from-option://x")
    assert _session(home, env).store == "from-option://x"
    # An explicit --store sqlite is the home's files, whatever else says.
    monkeypatch.setattr(Session, "store_option", "sqlite")
    assert isinstance(_session(home, env).storage, SqliteStorage)


def test_without_any_it_is_the_homes_files(home: CrateHome) -> None:
    session = _session(home)
    assert session.store == ""
    assert session.local_store
    assert isinstance(session.storage, SqliteStorage)
    assert session.master.location == str(home.keys_dir / "master.json")


def test_the_session_refuses_an_unknown_store_before_anything_is_made(home: CrateHome) -> None:
    session = _session(home, {"CRATE_STORE": f"bogus://u:{PASSWORD}@x"})
    with pytest.raises(InvalidInput):
        session.init("file")
    assert not home.data_dir.exists()


def test_the_master_keys_use_the_stores_registry(
    home: CrateHome, tmp_path: Path, fake_postgres: types.ModuleType
) -> None:
    shared = tmp_path / "shared"
    session = _session(home, {"CRATE_STORE": f"postgresql://u:{PASSWORD}@db/x"})
    assert not session.local_store
    assert isinstance(session.storage, FakePostgresStorage)
    assert session.master.registry is session.storage.registry
    assert session.master.location == str(shared / "keys" / "master.json")


def test_another_store_never_uses_the_homes_agent(home: CrateHome) -> None:
    """The agent serves the home's files; its socket is found by home."""
    session = _session(home, {"CRATE_STORE": f"postgresql://u:{PASSWORD}@db/x"})
    assert session.agent is None
    assert "storage" not in session.__dict__  # deciding that opened no store
