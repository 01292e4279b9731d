"""Secret values never reach the disk in clear (DESIGN §2), in process.

After storing a distinctive value, every file under CRATE_HOME (vaults, their
-wal and -shm files while a connection is open, keys, settings) is searched
for it in several encodings, and no cell of the vault decodes to it. The
same through the CLI, and error output, is in tests/e2e/test_secret_leaks.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.support.vault_state import files_holding

VALUE = "Zq7-leak-canary-4f1e9b2d-do-not-print"


def test_no_plaintext_on_disk_while_the_vault_is_open(personal_home: Path, session) -> None:
    client = session.client("personal")
    client.store("dev", [("CANARY", VALUE)], tags=["canary"])
    client.store("dev", [("CANARY", VALUE + "-v2"), ("OTHER", VALUE + "-other")])
    client.store("prod", [("CANARY", VALUE)])
    client.delete("dev", "OTHER")
    assert client.retrieve("dev", ["CANARY"])[0].value == VALUE + "-v2"

    # The connection is still open: the changes sit in the WAL, which is searched too.
    names = {p.name for p in personal_home.rglob("*")}
    assert "personal.vault-wal" in names
    assert files_holding(personal_home, VALUE) == []

    session.service.close()
    assert files_holding(personal_home, VALUE) == []


def test_no_plaintext_in_the_vault_database(personal_home: Path, session) -> None:
    """Not only absent as bytes: no column of any row decodes to the value."""
    session.client("personal").store("dev", [("CANARY", VALUE)])
    session.service.close()
    db = sqlite3.connect(personal_home / "orgs" / "personal.vault")
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert {"secrets", "secret_versions", "env_snapshots"} <= set(tables)
        for table in tables:
            for row in db.execute(f"SELECT * FROM {table}"):
                for cell in row:
                    text = cell.decode("latin-1") if isinstance(cell, bytes) else str(cell)
                    assert VALUE not in text, table
    finally:
        db.close()
