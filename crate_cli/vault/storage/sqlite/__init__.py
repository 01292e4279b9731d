"""Orgs as SQLite files: one `orgs/ORG.vault` per organization in the home.

An org is made whole under a temporary name and then linked into place, so
a crash never leaves a half-made org under its name and two processes
creating the same org cannot both succeed. Deleting renames it away first,
for the same reasons.
"""

import contextlib
import os
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager
from pathlib import Path

from crate_cli.config import CrateHome, ensure_private_dir, file_lock, fsync_dir
from crate_cli.errors import Conflict, NotFound
from crate_cli.vault.names import check_org
from crate_cli.vault.storage.interface import OrgStore
from crate_cli.vault.storage.registry_file import FileRegistry
from crate_cli.vault.storage.sqlite.store import SqliteOrgStore

SUFFIX = ".vault"


def library_version() -> str:
    """The version of the SQLite library crate's vaults are read with."""
    import sqlite3

    return sqlite3.sqlite_version


class SqliteStorage:
    """The orgs of one crate home (storage/interface.py's Storage)."""

    def __init__(self, home: CrateHome) -> None:
        self.home = home

    def exclusive(self, name: str) -> AbstractContextManager[None]:
        return file_lock(self.home.keys_dir / f".{name}.lock")

    def master_registry(self) -> FileRegistry:
        """The home's `keys/master.json`: SQLite keeps the registry beside the
        vaults, in the home."""
        return FileRegistry(self.home)

    def list_orgs(self) -> list[str]:
        try:
            entries = os.listdir(self.home.orgs_dir)
        except FileNotFoundError:
            return []
        return sorted(e[: -len(SUFFIX)] for e in entries if e.endswith(SUFFIX))

    def _path(self, org: str) -> Path:
        """The org's vault file; the name is checked first, so that no path is
        ever built from a name that is not an org name (InvalidInput)."""
        return self.home.vault_path(check_org(org))

    def prepare(self) -> None:
        ensure_private_dir(self.home.orgs_dir)

    def org_exists(self, org: str) -> bool:
        return self._path(org).exists()

    def org_marker(self, org: str) -> Hashable:
        # A write lands in the WAL; a checkpoint then changes the file itself.
        state = []
        for path in journal_files(self._path(org))[:2]:
            try:
                info = path.stat()
                state.append((info.st_mtime_ns, info.st_size))
            except OSError:
                state.append((0, 0))
        return tuple(state)

    def open_org(self, org: str) -> SqliteOrgStore:
        return SqliteOrgStore.open(self._path(org), org)

    def create_org(self, org: str, initialise: Callable[[OrgStore], None]) -> None:
        orgs_dir = self.home.orgs_dir
        ensure_private_dir(orgs_dir)
        final = self._path(org)
        if final.exists():
            raise Conflict(f"organization {org!r} already exists")
        tmp = orgs_dir / f".{org}.{os.urandom(4).hex()}.creating"
        try:
            store = SqliteOrgStore.create(tmp, org)
            try:
                initialise(store)
            finally:
                store.close()
            try:
                os.link(tmp, final)
            except FileExistsError:
                raise Conflict(f"organization {org!r} already exists") from None
            fsync_dir(orgs_dir)  # the new name survives a power loss
        finally:
            for leftover in journal_files(tmp):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    def delete_org(self, org: str) -> None:
        path = self._path(org)
        doomed = self.home.orgs_dir / f".{org}.{os.urandom(4).hex()}.deleting"
        # One rename takes the org away at once; a crash after it leaves only a
        # hidden file, never a vault without its WAL under the org's name.
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            raise NotFound(f"organization {org!r} does not exist") from None
        fsync_dir(self.home.orgs_dir)
        for p in (*journal_files(path)[1:], doomed):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def journal_files(path: Path) -> tuple[Path, Path, Path]:
    """A vault file, its write-ahead log and its shared-memory index."""
    return (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
