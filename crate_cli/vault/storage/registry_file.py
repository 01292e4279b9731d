"""The master-key registry as a file of the home: `keys/master.json`
(storage/interface.py's RegistryStore, for the SQLite storage).

Written whole and atomically (a 0600 temporary file in the same folder,
fsync, rename), and changed only under an exclusive lock on `keys/.lock`,
which every crate process of the home takes for a read-change-write.
"""

from contextlib import AbstractContextManager
from pathlib import Path

from crate_cli.config import CrateHome, file_lock, write_private_file

REGISTRY_FILE = "master.json"
LOCK_FILE = ".lock"


class FileRegistry:
    """`keys/master.json` of one crate home."""

    def __init__(self, home: CrateHome) -> None:
        self.path: Path = home.keys_dir / REGISTRY_FILE
        self.location = str(self.path)

    def load(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def locked(self) -> AbstractContextManager[None]:
        return file_lock(self.path.parent / LOCK_FILE)

    def save(self, data: bytes) -> None:
        write_private_file(self.path, data)
