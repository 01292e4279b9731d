"""The master-key registry as the home's file (storage/registry_file.py):
the RegistryStore of the SQLite storage. Its lock is the one crate always
took (`keys/.lock`), so processes of an older crate on the same home still
exclude each other with it."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
from pathlib import Path

from crate_cli.config import CrateHome
from crate_cli.vault.storage.interface import RegistryStore
from crate_cli.vault.storage.registry_file import FileRegistry
from crate_cli.vault.storage.sqlite import SqliteStorage

ROOT = Path(__file__).resolve().parents[4]


def _home(tmp_path: Path) -> CrateHome:
    root = tmp_path / "home"
    return CrateHome(root, root)


def test_a_home_without_a_registry_loads_none(tmp_path: Path) -> None:
    registry = FileRegistry(_home(tmp_path))
    assert registry.load() is None
    assert not (tmp_path / "home").exists()  # reading created nothing


def test_what_is_saved_loads_back_from_a_0600_file(tmp_path: Path) -> None:
    home = _home(tmp_path)
    registry = FileRegistry(home)
    with registry.locked():
        registry.save(b'{"format": 1, "versions": []}')
        registry.save(b'{"format": 1}')
    path = home.keys_dir / "master.json"
    assert registry.location == str(path)
    assert FileRegistry(home).load() == b'{"format": 1}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.keys_dir.stat().st_mode) == 0o700
    # Saved atomically: no temporary file is left beside it.
    assert sorted(p.name for p in home.keys_dir.iterdir()) == [".lock", "master.json"]


def test_the_sqlite_storage_keeps_its_registry_in_the_home(tmp_path: Path) -> None:
    home = _home(tmp_path)
    registry: RegistryStore = SqliteStorage(home).master_registry()
    assert isinstance(registry, FileRegistry)
    assert registry.location == str(home.keys_dir / "master.json")


PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("busy")
"""

CHANGE = """
import sys
from pathlib import Path
from crate_cli.config import CrateHome
from crate_cli.vault.storage.registry_file import FileRegistry

root = Path(sys.argv[1])
registry = FileRegistry(CrateHome(root, root))
print("started", flush=True)
with registry.locked():
    registry.save((registry.load() or b"") + b"+child")
"""


def _python(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_the_lock_excludes_another_process(tmp_path: Path) -> None:
    home = _home(tmp_path)
    registry = FileRegistry(home)
    lock = home.keys_dir / ".lock"
    with registry.locked():
        assert lock.exists()
        held = _python(PROBE, str(lock)).communicate(timeout=60)[0]
        assert held.strip() == "busy"
    released = _python(PROBE, str(lock)).communicate(timeout=60)[0]
    assert released.strip() == "free"


def test_a_change_in_another_process_waits_for_the_lock(tmp_path: Path) -> None:
    """The other process's load-change-save comes after this one's whole
    block: it reads what was saved last inside it."""
    home = _home(tmp_path)
    registry = FileRegistry(home)
    with registry.locked():
        registry.save(b"first")
        child = _python(CHANGE, str(home.data_dir))
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "started"
        registry.save(b"parent")
    child.communicate(timeout=60)
    assert child.returncode == 0
    assert registry.load() == b"parent+child"


def test_the_lock_excludes_a_holder_in_this_process(tmp_path: Path) -> None:
    """flock belongs to an open file: a second open, as another thread of a
    server would make, is excluded too."""
    home = _home(tmp_path)
    with FileRegistry(home).locked():
        fd = os.open(home.keys_dir / ".lock", os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                excluded = False
            except BlockingIOError:
                excluded = True
        finally:
            os.close(fd)
    assert excluded
