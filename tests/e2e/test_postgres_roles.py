"""The role replicas connect as cannot touch the audit log (issue 19): the
tables' owner makes the store and runs `crate store grant ROLE`; replicas
then work as ROLE, which may add and read audit entries and nothing else
on them: not UPDATE, DELETE or TRUNCATE, and not the owner's DDL that
would disable the trigger guarding them."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from crate_cli.errors import ExitCode
from tests.support.crate_runner import CrateRunner
from tests.support.postgres import PostgresCluster, database_name

pytestmark = pytest.mark.e2e

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def app_url(postgres: PostgresCluster, pg_url: str, tmp_path: Path) -> str:
    """The store made by its owner (crate_app), and the URL of a role it was granted to."""
    role = f"replica_{secrets.token_hex(4)}"
    password = secrets.token_hex(12)
    postgres.admin_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    owner = CrateRunner(tmp_path / "owner")
    (tmp_path / "owner").mkdir(mode=0o700)
    env = {
        "CRATE_STORE": pg_url,
        "CRATE_KEYSTORE": "passphrase",
        "CRATE_PASSPHRASE": "p4ss-word-long",
    }
    owner("org", "create", "acme", env=env, check=True)
    granted = owner("store", "grant", role, "--show", env=env, check=True)
    assert "GRANT SELECT, INSERT ON" in granted.stdout and "audit_log" in granted.stdout
    return postgres.dsn(database_name(pg_url), user=role, password=password)


def test_a_granted_role_serves_everything_a_replica_does(app_url: str, tmp_path: Path) -> None:
    crate = CrateRunner(tmp_path / "replica")
    (tmp_path / "replica").mkdir(mode=0o700)
    env = {"CRATE_STORE": app_url, "CRATE_PASSPHRASE": "p4ss-word-long"}
    crate("secrets", "set", "API_KEY", "-", "--org", "acme", input="v1", env=env, check=True)
    got = crate("secrets", "get", "API_KEY", "--org", "acme", env=env, check=True)
    assert got.stdout == "v1"
    crate("token", "create", "ci", "--role", "reader", "--org", "acme", env=env, check=True)
    crate("token", "revoke", "ci", "--org", "acme", env=env, check=True)
    crate("org", "create", "other", env=env, check=True)
    crate("org", "delete", "other", "--yes", env=env, check=True)
    crate("audit", "verify", "--org", "acme", env=env, check=True)


@pytest.mark.parametrize(
    "attack",
    [
        "UPDATE audit_log SET actor = 'nobody'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log CASCADE",
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
        "DROP TRIGGER audit_log_append_only ON audit_log",
        "UPDATE token_revocations SET name = 'x'",
        "CREATE TABLE planted (id int)",
    ],
)
def test_the_granted_role_cannot_rewrite_history(app_url: str, attack: str) -> None:
    with psycopg.connect(app_url, autocommit=True) as conn:
        before = conn.execute(
            "SELECT count(*), string_agg(mac, ''::bytea ORDER BY org_id, seq) FROM audit_log"
        ).fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(attack)
        assert (
            conn.execute(
                "SELECT count(*), string_agg(mac, ''::bytea ORDER BY org_id, seq) FROM audit_log"
            ).fetchone()
            == before
        )


def test_granting_on_the_home_s_files_is_refused(crate: CrateRunner) -> None:
    result = crate("store", "grant", "someone")
    assert result.returncode == ExitCode.USAGE
    assert "only a PostgreSQL store" in result.stderr
