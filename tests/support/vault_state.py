"""What a vault holds apart from its audit log, for tests that check a failed
command changed nothing; and what a home's files hold, searched for a value.

A refused or failed command may append to the org's audit log (a failed
unlock, a denied request): that is the log doing its job. Everything else in
the file must stay exactly as it was, which these helpers compare row by row.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

AUDIT_TABLES = frozenset({"audit_log", "audit_anchor", "audit_pending"})
# One statement on a vault file: the `vault_sql` fixture (tests/support/homes.py).
Sql = Callable[..., list[tuple[Any, ...]]]


def vault_rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table but the audit tables, sorted, by table."""
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if r[0] not in AUDIT_TABLES
        ]
        return {
            t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables
        }
    finally:
        conn.close()


def home_state(home: Path) -> dict[str, object]:
    """Hashes of every file under a crate home by relative path, with each
    vault compared by its rows outside the audit log, and SQLite's WAL and
    shared-memory files left out (their contents are the vault's)."""
    state: dict[str, object] = {}
    for p in sorted(home.rglob("*")):
        if not p.is_file() or p.name.endswith(("-wal", "-shm")):
            continue
        key = str(p.relative_to(home))
        if p.suffix == ".vault":
            state[key] = vault_rows(p)
        else:
            state[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return state


def run_sql(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement run directly on a vault file and committed, as someone
    with access to the file could (the triggers stay in place)."""
    assert path.exists(), path
    db = sqlite3.connect(path, timeout=30)
    try:
        rows = db.execute(sql, params).fetchall()
        db.commit()
    finally:
        db.close()
    return rows


def run_pg_sql(
    url: str, sql: str, params: tuple[Any, ...] = (), org: str | None = "acme"
) -> list[tuple[Any, ...]]:
    """One statement of `run_sql`'s (SQLite's `?` placeholders) run directly on
    a PostgreSQL store and committed, as its owner could (the triggers stay).

    Every row of a PostgreSQL store carries its org's `org_id`, which these
    statements do not name: one is run only while `org` is the store's only
    org (live or deleted), so it cannot touch another's rows. `org` None: the
    statement scopes itself (it names org_id, or reads no org's rows)."""
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        if org is not None:
            orgs = [name for (name,) in conn.execute("SELECT name FROM orgs ORDER BY id")]
            assert orgs == [org], f"SQL for org {org!r} on a store of orgs {orgs}: scope it"
        cursor = conn.execute(sql.replace("%", "%%").replace("?", "%s"), params)
        rows = cursor.fetchall() if cursor.description is not None else []
    # Leaving the block committed the transaction.
    return rows


def restore_triggers(sql: Any) -> None:
    """Put back, with crate's exact text, every trigger a tampering test dropped:
    a careful attacker edits rows behind the triggers and then restores them,
    so that the vault's schema looks untouched (crate refuses one that is not).
    `sql` runs one statement on the vault (the `vault_sql` fixture's shape)."""
    from crate_cli.vault.storage.sqlite.schema import expected_schema

    ((version,),) = sql("PRAGMA user_version")
    present = {name for (name,) in sql("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    for name, (kind, text) in expected_schema(version).items():
        if kind == "trigger" and name not in present:
            sql(text)


def encodings(value: str) -> dict[str, bytes]:
    """`value` as it could sit in a file: text, UTF-16, base64, hex."""
    raw = value.encode("utf-8")
    return {
        "utf-8": raw,
        "utf-16-le": value.encode("utf-16-le"),
        "base64": base64.b64encode(raw),
        "base64url": base64.urlsafe_b64encode(raw).rstrip(b"="),
        "hex": raw.hex().encode(),
    }


def files_holding(home: Path, value: str) -> list[tuple[str, str]]:
    """Every (file, encoding) under `home` that holds `value` in one of its encodings."""
    found = []
    for path in sorted(home.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            found += [(str(path), name) for name, enc in encodings(value).items() if enc in data]
    return found


# The WHERE clause of one version row: (env, name, version) as parameters.
VERSION_ROW = "secret_id = (SELECT id FROM secrets WHERE env = ? AND name = ?) AND version = ?"


def flip(blob: bytes, index: int) -> bytes:
    """`blob` with one bit changed at `index` (negative counts from the end)."""
    data = bytearray(blob)
    data[index] ^= 0x01
    return bytes(data)


def head_version(sql: Sql, env: str, name: str) -> int:
    """The version a secret's head points at (`sql`: the `vault_sql` fixture's shape)."""
    ((version,),) = sql("SELECT version FROM secrets WHERE env = ? AND name = ?", (env, name))
    assert isinstance(version, int)
    return version


def read_cell(sql: Sql, column: str, env: str, name: str, version: int | None = None) -> bytes:
    """A blob column of one version row (the head's version by default)."""
    version = version or head_version(sql, env, name)
    ((value,),) = sql(
        f"SELECT {column} FROM secret_versions WHERE {VERSION_ROW}", (env, name, version)
    )
    assert isinstance(value, bytes)
    return value


def write_cell(
    sql: Sql, column: str, env: str, name: str, value: object, version: int | None = None
) -> None:
    """Set a column of one version row (the head's version by default)."""
    version = version or head_version(sql, env, name)
    sql(f"UPDATE secret_versions SET {column} = ? WHERE {VERSION_ROW}", (value, env, name, version))
