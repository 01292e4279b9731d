"""Schema migrations: a vault of an older schema is brought up to date when opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from crate_cli.clock import utc_now
from crate_cli.session import Session
from crate_cli.vault import crypto, tokens
from crate_cli.vault.storage.sqlite.schema import SCHEMA_VERSION, expected_schema
from crate_cli.vault.storage.sqlite.store import SqliteOrgStore


def _downgrade_to_v1(path: Path, session: Session, org: str) -> None:
    """What a vault written by schema 1 looks like: no tokens, audit or
    snapshot tables, and the audit key under its first label (no log had begun)."""
    db = sqlite3.connect(path)
    version, master_version, wrapped = db.execute(
        "SELECT version, master_version, wrapped FROM org_audit_keys"
    ).fetchone()
    master = session.master.unlock(master_version)
    chained = crypto.aad(crypto.ORG_AUDIT_KEY_CHAINED, org, version)
    plain = crypto.aad(crypto.ORG_AUDIT_KEY, org, version)
    key = crypto.unwrap_key(master, wrapped, chained)
    db.execute(
        "UPDATE org_audit_keys SET wrapped = ? WHERE version = ?",
        (crypto.wrap_key(master, key, plain), version),
    )
    # Every object that schema 1 did not have, triggers and indexes first.
    v1 = expected_schema(1)
    for kind in ("trigger", "index", "table"):
        for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = ? AND name NOT LIKE 'sqlite%'", (kind,)
        ).fetchall():
            if name not in v1:
                db.execute(f"DROP {kind.upper()} {name}")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()


def test_v1_vault_gains_tokens_table_and_keeps_secrets(session: Session, crate_home: Path) -> None:
    org = session.org()
    session.client(org).store("dev", [("KEPT", "value-1")])
    session.close()
    vault = crate_home / "orgs" / f"{org}.vault"
    _downgrade_to_v1(vault, session, org)

    store = SqliteOrgStore.open(vault)
    try:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        for table in ("tokens", "audit_log", "env_snapshots"):
            assert store.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
        triggers = {
            r[0]
            for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        }
        assert len(triggers) == 3 + 5 + 2 + 2  # the audit log's, the snapshots', the policy's
        indexes = store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        assert "secrets_head_macs" in {r[0] for r in indexes}
    finally:
        store.close()

    fresh = Session(environ=dict(session.environ))
    try:
        (secret,) = fresh.client(org).retrieve("dev", ["KEPT"])
        assert secret.value == "value-1"
        (whole,) = fresh.client(org).retrieve("dev")
        assert whole.value == "value-1"
        vault_rows = fresh.service.org(org).store.conn.execute("SELECT env FROM env_snapshots")
        assert [r[0] for r in vault_rows] == ["dev"]
        token, _ = tokens.create(
            fresh.service.org(org), "ci", "reader", [], [], "", "tester", utc_now()
        )
        assert tokens.authenticate(fresh.service.org(org), token, utc_now()).role == "reader"
    finally:
        fresh.close()
