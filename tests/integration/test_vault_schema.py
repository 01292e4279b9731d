"""The schema check in process (crate_cli/vault/storage/sqlite/schema.py):
what crate itself creates at each schema version passes it, and vaults are
opened with `trusted_schema` off. Planted objects, refused through the CLI
and a running server, are in tests/e2e/test_vault_schema.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from crate_cli.vault.storage.sqlite import schema as store
from crate_cli.vault.storage.sqlite.store import SqliteOrgStore


def test_an_unchanged_vault_of_every_schema_version_passes(tmp_path: Path) -> None:
    """What crate itself creates, at each schema version, is what it expects."""
    for version in range(1, store.SCHEMA_VERSION + 1):
        conn = sqlite3.connect(tmp_path / f"v{version}.vault")
        for script in [store._SCHEMA_V1, *(store.MIGRATIONS[v] for v in range(1, version))]:
            for statement in store._split_script(script):
                conn.execute(statement)
        store.check_schema(conn, tmp_path, version)
        conn.close()


def test_trusted_schema_is_off(acme_home: Path) -> None:
    opened = SqliteOrgStore.open(acme_home / "orgs" / "acme.vault")
    try:
        assert opened.conn.execute("PRAGMA trusted_schema").fetchone() == (0,)
    finally:
        opened.close()
