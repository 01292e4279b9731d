"""A vault file cannot bring its own code into crate's queries (issue 17, item 17).

Someone who can write a vault file can add SQL objects to it: a trigger that
copies every new ciphertext elsewhere or rewrites rows behind crate's back, a
view, an index on an expression, or a changed body for one of crate's own
triggers (the audit log's append-only guards). Each would run inside crate's
own statements. crate must refuse such a vault (exit 5, the object named,
the file untouched) before it runs a statement on it. Real vault files,
edited with sqlite3 as an attacker would, read back through the CLI in new
processes and by a running `crate server`. The schema check and
`trusted_schema` in process are in tests/integration/test_vault_schema.py.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from tests.support.crate_runner import CrateRunner, assert_clean_error
from tests.support.vault_state import Sql

pytestmark = pytest.mark.e2e


PLANTED = {
    "a trigger that copies new values": (
        "CREATE TRIGGER leak AFTER INSERT ON secret_versions BEGIN "
        "INSERT INTO meta (key, value) VALUES (hex(randomblob(8)), hex(NEW.ciphertext)); END"
    ),
    "a trigger that rewrites the head": (
        "CREATE TRIGGER pin AFTER UPDATE ON secrets BEGIN "
        "UPDATE secrets SET version = 1 WHERE id = NEW.id; END"
    ),
    "a view": "CREATE VIEW everything AS SELECT * FROM secret_versions",
    "an index on an expression": "CREATE INDEX by_length ON secret_versions (length(ciphertext))",
    "a table of its own": "CREATE TABLE notes (text TEXT)",
}


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("sql", PLANTED.values(), ids=PLANTED.keys())
def test_a_planted_object_is_refused_before_anything_runs(
    acme_home: Path, vault_sql: Sql, crate: CrateRunner, sql: str
) -> None:
    vault = acme_home / "orgs" / "acme.vault"
    vault_sql(sql)
    before = file_hash(vault)
    for args in (
        ("secrets", "set", "NEW=fresh-value-123", "--org", "acme"),
        ("secrets", "get", "API_KEY", "--org", "acme"),
        ("secrets", "list", "--org", "acme"),
        ("run", "--org", "acme", "--", "true"),
    ):
        result = crate(*args)
        assert_clean_error(result, 5, hidden=("fresh-value-123",))
        assert "that crate did not create" in result.stderr
    assert file_hash(vault) == before  # not even an audit entry
    assert not vault_sql("SELECT 1 FROM meta WHERE length(value) > 40")


def test_a_changed_body_of_cratess_own_trigger_is_refused(
    vault_sql: Sql, crate: CrateRunner
) -> None:
    """The audit log's delete guard replaced by one that lets rows go."""
    vault_sql("DROP TRIGGER audit_log_append_only_delete")
    vault_sql(
        "CREATE TRIGGER audit_log_append_only_delete BEFORE DELETE ON audit_log "
        "WHEN 0 BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
    )
    result = crate("secrets", "list", "--org", "acme")
    assert_clean_error(result, 5)
    assert "'audit_log_append_only_delete'" in result.stderr


def test_a_dropped_guard_is_refused(vault_sql: Sql, crate: CrateRunner) -> None:
    vault_sql("DROP TRIGGER audit_log_append_only_update")
    result = crate("secrets", "list", "--org", "acme")
    assert_clean_error(result, 5)
    assert "lacks its trigger 'audit_log_append_only_update'" in result.stderr


def test_a_planted_name_reaches_the_terminal_escaped(vault_sql: Sql, crate: CrateRunner) -> None:
    vault_sql('CREATE TABLE "x\x1b]0;owned\x07\x1b[2J" (a)')
    result = crate("secrets", "list", "--org", "acme")
    assert_clean_error(result, 5)
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "\\x1b]0;owned\\x07" in result.stderr


def test_a_trigger_with_sqlite_s_own_prefix_is_refused(acme_home: Path, crate: CrateRunner) -> None:
    """`PRAGMA writable_schema` lets a trigger be named `sqlite_…`, a prefix
    SQLite keeps for its own objects: any trigger or view is someone's."""
    vault = acme_home / "orgs" / "acme.vault"
    db = sqlite3.connect(vault)
    db.execute("PRAGMA writable_schema = ON")
    db.execute(
        "CREATE TRIGGER sqlite_no_revocation BEFORE INSERT ON token_revocations "
        "BEGIN SELECT RAISE(IGNORE); END"
    )
    db.commit()
    db.close()
    for args in (("token", "list", "--org", "acme"), ("secrets", "list", "--org", "acme")):
        result = crate(*args)
        assert_clean_error(result, 5)
        assert "trigger 'sqlite_no_revocation' that crate did not create" in result.stderr


def test_a_trigger_planted_while_a_server_runs_is_caught_before_it_fires(
    acme_home: Path, vault_sql: Sql
) -> None:
    """A long-running process keeps its connection: the next write checks the
    schema again when SQLite says it changed, before the trigger could run."""
    from crate_cli.client.secrets import SecretsClient
    from crate_cli.client.transport.http import HttpTransport
    from crate_cli.errors import IntegrityError
    from tests.support.crate_server import CrateServer

    server = CrateServer(acme_home, "--org", "acme")
    token = server.token("ci", "admin", "--org", "acme")
    with server:
        client = SecretsClient(HttpTransport(server.url, token), "acme")
        client.store("dev", [("BEFORE", "fine-value")])
        vault_sql(
            "CREATE TRIGGER evil_live BEFORE INSERT ON secret_versions "
            "BEGIN SELECT RAISE(ABORT, 'evil'); END"
        )
        with pytest.raises(IntegrityError, match="trigger 'evil_live' that crate did not create"):
            client.store("dev", [("AFTER", "refused-value")])
    assert vault_sql("SELECT count(*) FROM secrets WHERE name = 'AFTER'") == [(0,)]
