"""Fixtures shared by every layer; the helpers behind them are in tests/support.

Every test gets its own CRATE_HOME under tmp_path: no test touches a real home.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from crate_cli.session import Session
from tests.support import signals
from tests.support.crate_runner import CrateRunner
from tests.support.keyring_service import SecretService
from tests.support.postgres import PostgresCluster, database_name
from tests.support.tools import IN_CI
from tests.support.tpm_simulator import Swtpm

# The vault homes built once per session (acme_home, personal_home, ...).
pytest_plugins = ["tests.support.homes"]


def pytest_configure(config: pytest.Config) -> None:
    """Default signal dispositions for the suite and everything it starts,
    whatever it inherited (tests/support/signals.py)."""
    signals.restore_defaults()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests of the frozen binary itself run only in the pass against it
    (CRATE_BIN, see scripts/test): deselected, not skipped, elsewhere."""
    if os.environ.get("CRATE_BIN"):
        return
    frozen = [item for item in items if item.get_closest_marker("frozen")]
    if frozen:
        config.hook.pytest_deselected(items=frozen)
        items[:] = [item for item in items if not item.get_closest_marker("frozen")]


@pytest.fixture
def crate_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "crate-home"
    monkeypatch.setenv("CRATE_HOME", str(home))
    for var in ("CRATE_ORG", "CRATE_ENV", "CRATE_PASSPHRASE", "CRATE_MASTER_KEY", "CRATE_STORE"):
        monkeypatch.delenv(var, raising=False)
    # Implicit first use makes a file slot, whatever TPM or keyring this
    # machine has; the tests of `auto` itself unset this.
    monkeypatch.setenv("CRATE_KEYSTORE", "file")
    return home


@pytest.fixture
def memory_dir() -> Iterator[Path]:
    """A private (0700) folder on a memory file system, removed after the test:
    the key reserve is only used on tmpfs or ramfs, and tmp_path may be on a
    disk. /dev/shm is tmpfs on Linux; a machine without one skips (CI fails)."""
    from crate_cli.client.keyreserve import in_memory

    if not (os.path.isdir("/dev/shm") and in_memory("/dev/shm")):
        if IN_CI:
            pytest.fail("/dev/shm is not a tmpfs")
        pytest.skip("no tmpfs at /dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="crate-test-", dir="/dev/shm"))
    folder.chmod(0o700)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def swtpm() -> Iterator[Swtpm]:
    """A running swtpm on a fresh state (see tests/support/tpm_simulator.py)."""
    tpm = Swtpm()
    try:
        tpm.start()
        yield tpm
    finally:
        tpm.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL for the whole run, started by the first test
    that asks for it (see tests/support/postgres.py). Shared: a test that stops
    or kills a server uses make_postgres instead."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_url(postgres: PostgresCluster) -> Iterator[str]:
    """A new empty database for this test alone, as crate_app's URL with its
    password; dropped after the test, whatever is still connected."""
    if not postgres.running:  # a test stopped the shared server after all
        postgres.start()
    url = postgres.fresh_database()
    yield url
    if postgres.running:
        postgres.drop_database(database_name(url))


@pytest.fixture
def make_postgres() -> Iterator[Callable[..., PostgresCluster]]:
    """Start a private PostgreSQL (settings over FAST, e.g. postgres.DURABLE),
    for a test that stops, kills or reconfigures it; all closed after the test."""
    clusters: list[PostgresCluster] = []

    def make(settings: Mapping[str, str] | None = None) -> PostgresCluster:
        cluster = PostgresCluster(settings)
        clusters.append(cluster)
        cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.close()


@pytest.fixture
def keyring_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[SecretService]:
    """gnome-keyring on a private D-Bus (see tests/support/keyring_service.py)."""
    # crate must choose the backend the way keyring does, from this test's bus only.
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    service = SecretService()
    try:
        service.start()
        yield service
    finally:
        service.close()


@pytest.fixture
def session(crate_home: Path) -> Iterator[Session]:
    """An in-process Session on a fresh home (file slot, org `personal`)."""
    s = Session(environ={"CRATE_HOME": str(crate_home), "CRATE_KEYSTORE": "file"})
    yield s
    if "service" in s.__dict__:
        s.service.close()


@pytest.fixture
def crate(crate_home: Path) -> CrateRunner:
    """crate in a subprocess on this test's home (e2e tests only)."""
    return CrateRunner(crate_home)
