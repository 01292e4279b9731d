"""Fixtures shared by every layer.

Every test gets its own CRATE_HOME under tmp_path: no test touches a real home.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from crate_cli.session import Session

if TYPE_CHECKING:
    from keyring_service import SecretService
    from tpm_simulator import Swtpm

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """The path of an external tool a test needs.

    In CI a missing tool fails the test (scripts/test installs them); on a
    developer's laptop the test skips and says why.
    """
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI but is not installed")
        pytest.skip(f"{name} is not installed")
    return path


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
    for var in ("CRATE_ORG", "CRATE_ENV", "CRATE_PASSPHRASE", "CRATE_MASTER_KEY"):
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
    import tempfile

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
    """A running swtpm on a fresh state (see tests/tpm_simulator.py)."""
    from tpm_simulator import Swtpm

    tpm = Swtpm()
    try:
        tpm.start()
        yield tpm
    finally:
        tpm.close()


@pytest.fixture
def keyring_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[SecretService]:
    """gnome-keyring on a private D-Bus (see tests/keyring_service.py)."""
    from keyring_service import SecretService

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


def crate_executable() -> list[str]:
    """How e2e tests start crate: CRATE_BIN (the frozen binary) or the installed script."""
    explicit = os.environ.get("CRATE_BIN")
    if explicit:
        return [str(Path(explicit).absolute())]
    beside = Path(sys.executable).parent / "crate"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("crate")
    if found:
        return [found]
    return [sys.executable, "-m", "crate_cli"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class CrateRunner:
    """Runs crate in a subprocess against one CRATE_HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.argv0 = crate_executable()

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        base = {
            k: v for k, v in os.environ.items() if not k.startswith("CRATE_") or k == "CRATE_BIN"
        }
        base["CRATE_HOME"] = str(self.home)
        base["CRATE_KEYSTORE"] = "file"  # see the crate_home fixture
        base.update(extra or {})
        return base

    def __call__(
        self,
        *args: str,
        input: str | bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = False,
    ) -> Result:
        proc = subprocess.run(
            [*self.argv0, *args],
            input=input.encode() if isinstance(input, str) else input,
            capture_output=True,
            env=self.env(env),
            timeout=120,
        )
        result = Result(
            proc.returncode,
            proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"),
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"crate {' '.join(args)} failed: {result}")
        return result


def assert_clean_error(result: Result, code: int, *, hidden: tuple[str, ...] = ()) -> None:
    """An error as crate promises it: the exit code, one or two `crate:` lines on
    stderr starting with `crate: error:`, nothing on stdout, no traceback, and
    none of the `hidden` secret values anywhere."""
    assert result.returncode == code, result
    # First use announces what it created before anything else: not part of the error.
    lines = [
        line
        for line in result.stderr.strip().splitlines()
        if not line.startswith(("crate: created ", "crate: selected "))
    ]
    assert 1 <= len(lines) <= 2, result.stderr
    assert lines[0].startswith("crate: error: "), result.stderr
    assert all(line.startswith("crate: ") for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == "", result.stdout
    for value in hidden:
        assert value not in result.stderr, f"secret value leaked on stderr: {result.stderr}"


@pytest.fixture
def crate(crate_home: Path) -> CrateRunner:
    return CrateRunner(crate_home)
