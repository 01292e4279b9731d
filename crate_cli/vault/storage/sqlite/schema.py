"""The schema of a vault file: its tables, triggers and indexes, the
forward migrations between schema versions, and the check that a vault
holds nothing crate did not create.

The CREATE statements are compared as text with what a vault's
`sqlite_master` holds (SQLite keeps each statement as it was given): a
change of a single space here makes every existing vault look edited. Add a
migration instead, and never edit a statement once released.
"""

import sqlite3
from pathlib import Path

from crate_cli.errors import VaultCorrupted

SCHEMA_VERSION = 5
_SCHEMA_V1 = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
CREATE TABLE org_deks (
    version INTEGER PRIMARY KEY,
    master_version INTEGER NOT NULL,
    wrapped BLOB NOT NULL,
    created_at TEXT NOT NULL
) STRICT;
CREATE TABLE org_rsa_keys (
    kid TEXT PRIMARY KEY,
    master_version INTEGER NOT NULL,
    public_der BLOB NOT NULL,
    wrapped_private BLOB NOT NULL,
    created_at TEXT NOT NULL,
    active INTEGER NOT NULL
) STRICT;
CREATE TABLE org_audit_keys (
    version INTEGER PRIMARY KEY,
    master_version INTEGER NOT NULL,
    wrapped BLOB NOT NULL,
    created_at TEXT NOT NULL
) STRICT;
CREATE TABLE environments (
    name TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
) STRICT;
CREATE TABLE secrets (
    id INTEGER PRIMARY KEY,
    env TEXT NOT NULL REFERENCES environments(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    tags TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    mac BLOB NOT NULL,
    UNIQUE (env, name)
) STRICT;
CREATE TABLE secret_versions (
    secret_id INTEGER NOT NULL REFERENCES secrets(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    action TEXT NOT NULL,
    org_dek_version INTEGER,
    wrapped_dek BLOB,
    ciphertext BLOB,
    tags TEXT NOT NULL,
    created_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (secret_id, version)
) STRICT;
CREATE INDEX secret_versions_by_org_dek ON secret_versions (org_dek_version);
"""

# API tokens (crate_cli/vault/tokens.py): only a hash of each token; the row
# is MAC'd under the org row key, so an edited role or scope is refused.
_TOKENS_TABLE = """
CREATE TABLE tokens (
    name TEXT PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    role TEXT NOT NULL,
    envs TEXT NOT NULL,
    tags TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    mac BLOB NOT NULL
) STRICT;
"""

# The audit log (crate_cli/vault/audit.py): an HMAC chain of entries that
# triggers keep append-only (INSERT OR REPLACE deletes without firing DELETE
# triggers, hence the INSERT one), an anchor row holding the newest sequence number
# and MAC (authenticated, with the module's on/off switch), and entries
# recorded while the master key was locked (a failed unlock), which the next
# unlocked writer chains in. A vault migrated from schema 2 gets an anchor
# with no tag, which its first entry authenticates.
_AUDIT_TABLES = """
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    env TEXT NOT NULL,
    names TEXT NOT NULL,
    outcome TEXT NOT NULL,
    request_id TEXT NOT NULL,
    client TEXT NOT NULL,
    details TEXT NOT NULL,
    mac BLOB NOT NULL
) STRICT;
CREATE TRIGGER audit_log_append_only_replace BEFORE INSERT ON audit_log
WHEN EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_append_only_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_append_only_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TABLE audit_anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    mac BLOB NOT NULL,
    enabled INTEGER NOT NULL,
    tag BLOB NOT NULL
) STRICT;
INSERT INTO audit_anchor (id, seq, mac, enabled, tag) VALUES (1, 0, X'', 0, X'');
CREATE TABLE audit_pending (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    env TEXT NOT NULL,
    names TEXT NOT NULL,
    outcome TEXT NOT NULL,
    request_id TEXT NOT NULL,
    client TEXT NOT NULL,
    details TEXT NOT NULL
) STRICT;
"""

# Environment snapshots (crate_cli/vault/snapshots.py): each environment's
# live values, sealed as one blob under its own DEK, so that a read of a
# whole environment opens one blob instead of one per secret. A snapshot is
# bound to its environment's head rows by their MACs (a stale or replayed one
# does not open); these triggers drop it as soon as its environment, or the
# set of org DEKs, changes, so that no stale copy of a value lingers. The
# index covers the digest's query (env, name order, mac) without a table
# lookup per secret.
_SNAPSHOT_TABLE = """
CREATE TABLE env_snapshots (
    env TEXT PRIMARY KEY REFERENCES environments(name) ON DELETE CASCADE,
    org_dek_version INTEGER NOT NULL,
    wrapped_dek BLOB NOT NULL,
    ciphertext BLOB NOT NULL
) STRICT;
CREATE INDEX secrets_head_macs ON secrets (env, name, mac);
CREATE TRIGGER env_snapshots_stale_insert AFTER INSERT ON secrets
BEGIN
    DELETE FROM env_snapshots WHERE env = NEW.env;
END;
CREATE TRIGGER env_snapshots_stale_update AFTER UPDATE ON secrets
BEGIN
    DELETE FROM env_snapshots WHERE env IN (OLD.env, NEW.env);
END;
CREATE TRIGGER env_snapshots_stale_delete AFTER DELETE ON secrets
BEGIN
    DELETE FROM env_snapshots WHERE env = OLD.env;
END;
CREATE TRIGGER env_snapshots_stale_versions AFTER UPDATE ON secret_versions
BEGIN
    DELETE FROM env_snapshots
    WHERE env = (SELECT env FROM secrets WHERE id = NEW.secret_id);
END;
CREATE TRIGGER env_snapshots_stale_keys AFTER INSERT ON org_deks
BEGIN
    DELETE FROM env_snapshots;
END;
"""

# Org policy (schema 5): the steering names an admin allowed for the org
# (vault/names.py: PATH, LD_PRELOAD ...) and the allowances that ended, so
# that an allowance copied back from a backup stays ended; and the tokens
# revoked, by hash, so that a token row copied back stays revoked. All are
# MAC'd under the org row key; ended allowances and revocations are
# permanent (the triggers, and `crate audit verify`'s cross-check).
_POLICY_TABLES = """
CREATE TABLE allowed_names (
    name TEXT PRIMARY KEY,
    allowed_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    mac BLOB NOT NULL
) STRICT;
CREATE TABLE token_revocations (
    hash BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    revoked_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    mac BLOB NOT NULL
) STRICT;
CREATE TRIGGER token_revocations_permanent_update BEFORE UPDATE ON token_revocations
BEGIN
    SELECT RAISE(ABORT, 'a revocation is permanent');
END;
CREATE TRIGGER token_revocations_permanent_delete BEFORE DELETE ON token_revocations
BEGIN
    SELECT RAISE(ABORT, 'a revocation is permanent');
END;
CREATE TABLE allowed_names_ended (
    name TEXT NOT NULL,
    allowed_at TEXT NOT NULL,
    ended_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (name, allowed_at)
) STRICT;
CREATE TRIGGER allowed_names_ended_permanent_update BEFORE UPDATE ON allowed_names_ended
BEGIN
    SELECT RAISE(ABORT, 'an ended allowance is permanent');
END;
CREATE TRIGGER allowed_names_ended_permanent_delete BEFORE DELETE ON allowed_names_ended
BEGIN
    SELECT RAISE(ABORT, 'an ended allowance is permanent');
END;
"""

# Forward migrations: MIGRATIONS[n] turns schema n into n + 1.
MIGRATIONS: dict[int, str] = {
    1: _TOKENS_TABLE,
    2: _AUDIT_TABLES,
    3: _SNAPSHOT_TABLE,
    4: _POLICY_TABLES,
}


# Indexes a vault may lack: the digest's covering index came after schema 4
# was first written, and an index only speeds a query up.
_OPTIONAL = frozenset({"secrets_head_macs"})
_expected: dict[int, dict[str, tuple[str, str]]] = {}


def expected_schema(version: int) -> dict[str, tuple[str, str]]:
    """name -> (type, SQL) of every object crate creates in a vault of schema
    `version`: SQLite keeps each CREATE statement's text as it was given."""
    found = _expected.get(version)
    if found is None:
        scripts = [_SCHEMA_V1, *(MIGRATIONS[v] for v in range(1, version))]
        found = {}
        for statement in _split_script("".join(scripts)):
            words = statement.split(None, 3)
            if words[0].upper() == "CREATE":
                found[words[2]] = (words[1].lower(), statement.rstrip(";"))
        _expected[version] = found
    return found


def _sqlite_own(kind: object, name: object, sql: object) -> bool:
    """Whether a schema row is SQLite's own: the index behind a UNIQUE or
    PRIMARY KEY (no SQL), or one of its internal tables. Any trigger or view
    is someone's, whatever its name (`PRAGMA writable_schema` lets a
    `sqlite_` name be written)."""
    if not isinstance(name, str) or not name.startswith("sqlite_"):
        return False
    if kind == "index":
        return sql is None and name.startswith("sqlite_autoindex_")
    return kind == "table" and name in ("sqlite_sequence", "sqlite_stat1", "sqlite_stat4")


def check_schema(conn: sqlite3.Connection, path: Path, version: int) -> None:
    """Refuse a vault whose schema holds what crate did not create: a view, a
    trigger or index of someone else's, or one of crate's own with another
    body. Such an object would run inside crate's own queries and writes."""
    expected = expected_schema(version)
    present = set()
    for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master"):
        if _sqlite_own(kind, name, sql):
            continue
        present.add(name)
        if expected.get(name) != (kind, sql):
            from crate_cli.display import safe_text

            raise VaultCorrupted(
                f"vault {path} holds a {safe_text(str(kind), 20)} '{safe_text(str(name), 64)}' "
                "that crate did not create: it was edited outside crate and left untouched",
                "restore it from a backup",
            )
    missing = sorted(set(expected) - present - _OPTIONAL)
    if missing:
        raise VaultCorrupted(
            f"vault {path} lacks its {expected[missing[0]][0]} {missing[0]!r}: it was edited "
            "outside crate and left untouched",
            "restore it from a backup",
        )


def _split_script(script: str) -> list[str]:
    """The statements of a schema script (a trigger's body holds `;` too)."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \n;"):
        statements.append(pending.strip())
    return statements
