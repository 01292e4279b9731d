"""Environment snapshots (crate_cli/vault/snapshots.py) on real vault files.

A whole-environment read leaves a sealed snapshot of what it served, and the
next one opens it instead of every row. These tests check that the snapshot
is really used, that it never serves anything but the current, authentic
values (stale, replayed, moved or damaged snapshots fall back to the rows),
that writes and key changes drop it, and that filtered reads leave it alone.
Attackers are played with raw SQL on the vault file or on a PostgreSQL
store, as in test_vault_integrity: every test runs on both backends.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crate_cli.errors import IntegrityError
from crate_cli.vault import snapshots
from crate_cli.vault.storage.sqlite.queries import HEAD_MACS
from tests.support.homes import STORE_BACKENDS
from tests.support.vault_state import restore_triggers

Sql = Callable[..., list[tuple[object, ...]]]
Retrieve = Callable[..., dict[str, str]]
# The triggers that drop a snapshot when what it copies changes, by table (PostgreSQL's).
PG_SNAPSHOT_TRIGGERS = {
    "secrets": "env_snapshots_stale_secrets",
    "secret_versions": "env_snapshots_stale_versions",
    "org_deks": "env_snapshots_stale_keys",
}


@pytest.fixture(params=STORE_BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> str:
    """Every test here runs on org acme in the home's SQLite file and in a
    PostgreSQL store (tests/support/homes.py)."""
    return str(request.param)


DEV_NOW = {
    "API_KEY": "dev-api-key-7d41a0c3b9",
    "DB_URL": "postgres://dev-db.internal/app?password=dev-9f2c1e",
    "ROTATED": "rotated-value-version-two",
}
PROD_NOW = {"DB_URL": "postgres://prod-db.internal/app?password=prod-4be87a"}


def snapshot_rows(sql: Sql) -> dict[str, tuple[object, ...]]:
    rows = sql("SELECT env, org_dek_version, wrapped_dek, ciphertext FROM env_snapshots")
    return {str(r[0]): r for r in rows}


def restore_row(sql: Sql, backend: str, row: tuple[object, ...], env: str | None = None) -> None:
    """Put a snapshot row back (or under another env), as an attacker could."""
    if backend == "sqlite":
        sql(
            "INSERT OR REPLACE INTO env_snapshots (env, org_dek_version, wrapped_dek, ciphertext) "
            "VALUES (?, ?, ?, ?)",
            (env or row[0], *row[1:]),
        )
        return
    sql(
        "INSERT INTO env_snapshots (org_id, env, org_dek_version, wrapped_dek, ciphertext) "
        "SELECT id, ?, ?, ?, ? FROM orgs WHERE name = 'acme' ON CONFLICT (org_id, env) DO UPDATE "
        "SET org_dek_version = EXCLUDED.org_dek_version, wrapped_dek = EXCLUDED.wrapped_dek, "
        "ciphertext = EXCLUDED.ciphertext",
        (env or row[0], *row[1:]),
    )


def drop_triggers(sql: Sql, backend: str) -> None:
    """What someone editing the vault need not keep: the triggers that drop
    snapshots (dropped from the file; disabled by a PostgreSQL store's owner)."""
    if backend == "sqlite":
        for (name,) in sql(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'env_snapshots_%'"
        ):
            sql(f"DROP TRIGGER {name}")
        return
    for table, name in PG_SNAPSHOT_TRIGGERS.items():
        sql(f"ALTER TABLE {table} DISABLE TRIGGER {name}")


def put_back_triggers(sql: Sql, backend: str) -> None:
    """The triggers as crate made them, so that the vault looks untouched."""
    if backend == "sqlite":
        restore_triggers(sql)
        return
    for table, name in PG_SNAPSHOT_TRIGGERS.items():
        sql(f"ALTER TABLE {table} ENABLE TRIGGER {name}")


def corrupt_value(sql: Sql, env: str, name: str) -> None:
    """Flip the last byte of the current version's ciphertext of `name`."""
    where = (
        "secret_id = (SELECT id FROM secrets WHERE env = ? AND name = ?) "
        "AND version = (SELECT version FROM secrets WHERE env = ? AND name = ?)"
    )
    ((blob,),) = sql(f"SELECT ciphertext FROM secret_versions WHERE {where}", (env, name) * 2)
    assert isinstance(blob, bytes)
    changed = blob[:-1] + bytes([blob[-1] ^ 1])
    sql(f"UPDATE secret_versions SET ciphertext = ? WHERE {where}", (changed, *(env, name) * 2))


def test_a_whole_read_leaves_a_sealed_snapshot_that_the_next_one_serves(
    acme_home: Path, retrieve: Retrieve, vault_sql: Sql, store_backend: str
) -> None:
    assert snapshot_rows(vault_sql) == {}
    assert retrieve("acme", "dev", []) == DEV_NOW
    rows = snapshot_rows(vault_sql)
    assert list(rows) == ["dev"]
    ((newest,),) = vault_sql("SELECT max(version) FROM org_deks")
    assert rows["dev"][1] == newest
    sealed = rows["dev"][3]
    assert isinstance(sealed, bytes)
    for value in DEV_NOW.values():
        assert value.encode() not in sealed
    if store_backend == "sqlite":  # nor anywhere in the file (PostgreSQL's rows: as above)
        assert b"dev-api-key" not in (acme_home / "orgs" / "acme.vault").read_bytes()

    # The rows behind the snapshot are damaged (triggers gone, so it stays):
    # a whole read opens only the snapshot and still serves the true values,
    # while a read by name goes to the rows and fails closed.
    drop_triggers(vault_sql, store_backend)
    corrupt_value(vault_sql, "dev", "DB_URL")
    put_back_triggers(vault_sql, store_backend)
    assert retrieve("acme", "dev", []) == DEV_NOW
    with pytest.raises(IntegrityError):
        retrieve("acme", "dev", ["DB_URL"])


def test_a_write_drops_the_snapshot_and_the_next_read_serves_the_new_value(
    retrieve: Retrieve, vault_sql: Sql, fresh_session: Callable[[], Any]
) -> None:
    retrieve("acme", "dev", [])
    retrieve("acme", "prod", [])
    assert set(snapshot_rows(vault_sql)) == {"dev", "prod"}
    with fresh_session() as s:
        s.client("acme").store("dev", [("API_KEY", "changed-api-key")])
    assert set(snapshot_rows(vault_sql)) == {"prod"}  # only the env written to
    assert retrieve("acme", "dev", []) == {**DEV_NOW, "API_KEY": "changed-api-key"}
    with fresh_session() as s:
        s.client("acme").delete("dev", "ROTATED")
    assert set(snapshot_rows(vault_sql)) == {"prod"}
    assert retrieve("acme", "dev", []) == {
        "API_KEY": "changed-api-key",
        "DB_URL": DEV_NOW["DB_URL"],
    }


def test_an_older_snapshot_put_back_does_not_open(
    retrieve: Retrieve, vault_sql: Sql, fresh_session: Callable[[], Any], store_backend: str
) -> None:
    retrieve("acme", "dev", [])
    old = snapshot_rows(vault_sql)["dev"]
    with fresh_session() as s:
        s.client("acme").store("dev", [("API_KEY", "newer-api-key")])
    now = {**DEV_NOW, "API_KEY": "newer-api-key"}
    assert retrieve("acme", "dev", []) == now
    restore_row(vault_sql, store_backend, old)
    assert retrieve("acme", "dev", []) == now
    # The read fell back to the rows and sealed a new snapshot over the old one.
    assert snapshot_rows(vault_sql)["dev"][3] != old[3]


def test_a_snapshot_moved_to_another_environment_does_not_open(
    retrieve: Retrieve, vault_sql: Sql, store_backend: str
) -> None:
    retrieve("acme", "dev", [])
    restore_row(vault_sql, store_backend, snapshot_rows(vault_sql)["dev"], env="prod")
    assert retrieve("acme", "prod", []) == PROD_NOW


def test_a_damaged_snapshot_falls_back_to_the_rows(
    retrieve: Retrieve, vault_sql: Sql, store_backend: str
) -> None:
    retrieve("acme", "dev", [])
    row = snapshot_rows(vault_sql)["dev"]
    sealed = row[3]
    assert isinstance(sealed, bytes)
    restore_row(vault_sql, store_backend, (*row[:3], sealed[:-1] + bytes([sealed[-1] ^ 1])))
    assert retrieve("acme", "dev", []) == DEV_NOW
    restore_row(vault_sql, store_backend, (*row[:3], sealed[: len(sealed) // 2]))
    assert retrieve("acme", "dev", []) == DEV_NOW


def test_a_head_changed_under_a_snapshot_fails_closed(retrieve: Retrieve, vault_sql: Sql) -> None:
    """With the triggers in place, editing a head row drops the snapshot, so the
    read checks the rows and refuses the edited one."""
    retrieve("acme", "dev", [])
    vault_sql("UPDATE secrets SET tags = '[\"x\"]' WHERE env = 'dev' AND name = 'API_KEY'")
    assert "dev" not in snapshot_rows(vault_sql)
    with pytest.raises(IntegrityError):
        retrieve("acme", "dev", [])


def test_an_older_head_restored_under_a_snapshot_reads_the_rows(
    retrieve: Retrieve, vault_sql: Sql, fresh_session: Callable[[], Any], store_backend: str
) -> None:
    """Even with the triggers gone, a head whose MAC changed (an older authentic
    row copied back) makes the snapshot stale: the rows decide, and refuse it."""
    columns = "version, deleted, tags, updated_at, actor, mac"
    (old_head,) = vault_sql(f"SELECT {columns} FROM secrets WHERE env = 'dev' AND name = 'API_KEY'")
    with fresh_session() as s:
        s.client("acme").store("dev", [("API_KEY", "newer-api-key")])
    assert retrieve("acme", "dev", [])["API_KEY"] == "newer-api-key"
    drop_triggers(vault_sql, store_backend)
    vault_sql(
        "UPDATE secrets SET version = ?, deleted = ?, tags = ?, updated_at = ?, actor = ?, "
        "mac = ? WHERE env = 'dev' AND name = 'API_KEY'",
        tuple(old_head),
    )
    put_back_triggers(vault_sql, store_backend)
    assert "dev" in snapshot_rows(vault_sql)
    with pytest.raises(IntegrityError):
        retrieve("acme", "dev", [])


def test_filtered_reads_neither_use_nor_leave_a_snapshot(
    retrieve: Retrieve, vault_sql: Sql, fresh_session: Callable[[], Any]
) -> None:
    assert retrieve("acme", "dev", ["API_KEY"]) == {"API_KEY": DEV_NOW["API_KEY"]}
    with fresh_session() as s:
        client = s.client("acme")
        assert [r.value for r in client.retrieve("dev", tags=["none-has-it"])] == []
        (old,) = client.retrieve("dev", ["ROTATED"], versions={"ROTATED": 1})
        assert old.value == "rotated-value-version-one"
    assert snapshot_rows(vault_sql) == {}


def test_rotating_the_org_key_drops_snapshots_and_an_old_one_is_not_used(
    retrieve: Retrieve, vault_sql: Sql, fresh_session: Callable[[], Any], store_backend: str
) -> None:
    retrieve("acme", "dev", [])
    old = snapshot_rows(vault_sql)["dev"]
    with fresh_session() as s:
        s.service.rotate_org("acme")
    assert snapshot_rows(vault_sql) == {}
    # Put back under the old org DEK (still present until pruned): not used,
    # since only a snapshot under the newest org DEK is.
    restore_row(vault_sql, store_backend, old)
    assert retrieve("acme", "dev", []) == DEV_NOW
    ((newest,),) = vault_sql("SELECT max(version) FROM org_deks")
    assert snapshot_rows(vault_sql)["dev"][1] == newest != old[1]
    with fresh_session() as s:
        assert s.service.prune_org_deks("acme") == [old[1]]
    restore_row(vault_sql, store_backend, old)  # its key is gone now: still only the rows decide
    assert retrieve("acme", "dev", []) == DEV_NOW


def test_deleting_an_environment_deletes_its_snapshot(
    retrieve: Retrieve, vault_sql: Sql, fresh_session: Callable[[], Any]
) -> None:
    retrieve("acme", "prod", [])
    assert "prod" in snapshot_rows(vault_sql)
    with fresh_session() as s:
        s.client("acme").delete_environment("prod")
    assert snapshot_rows(vault_sql) == {}


def test_load_opens_only_for_the_digest_and_key_version_it_was_sealed_with(
    acme_home: Path, retrieve: Retrieve, fresh_session: Callable[[], Any], store_backend: str
) -> None:
    retrieve("acme", "dev", [])
    with fresh_session() as s:
        keys = s.service.org("acme")
        with keys.store.read() as db:
            digest = snapshots.heads_digest(db, "dev")
            version = keys.current_dek_version(db)
            served = snapshots.load(db, keys, "dev", digest, version)
            assert served is not None
            names, versions, values = served
            assert dict(zip(names, values, strict=True)) == DEV_NOW
            assert versions == [1, 1, 2]
            assert snapshots.load(db, keys, "dev", "0" * 64, version) is None
            assert snapshots.load(db, keys, "dev", digest, version + 1) is None
            assert snapshots.load(db, keys, "prod", digest, version) is None
            assert snapshots.heads_digest(db, "prod") != digest
    if store_backend == "sqlite":
        # The digest reads an index alone: no table lookup per secret (SQLite's
        # plan; PostgreSQL's follows its statistics, a table scan once it knows
        # how small this table is).
        with fresh_session() as s:
            conn = s.service.org("acme").store.conn
            plan = conn.execute("EXPLAIN QUERY PLAN " + HEAD_MACS, ("dev",)).fetchall()
            assert "COVERING INDEX secrets_head_macs" in str(plan)
