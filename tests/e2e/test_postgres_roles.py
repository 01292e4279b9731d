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


def test_a_revocation_cannot_be_removed_by_pretending_its_org_deleted(
    app_url: str, pg_url: str, tmp_path: Path
) -> None:
    owner = CrateRunner(tmp_path / "owner")
    env = {"CRATE_STORE": pg_url, "CRATE_PASSPHRASE": "p4ss-word-long"}
    owner("token", "create", "ci", "--role", "reader", "--org", "acme", env=env, check=True)
    owner("token", "revoke", "ci", "--org", "acme", env=env, check=True)
    with psycopg.connect(app_url) as conn:
        # Tombstone the org, delete its revocation, bring it back: refused at the last step.
        conn.execute("UPDATE orgs SET deleted_at = 'now' WHERE name = 'acme'")
        conn.execute("DELETE FROM token_revocations")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="deletion final"):
            conn.execute("UPDATE orgs SET deleted_at = NULL WHERE name = 'acme'")
    with psycopg.connect(app_url) as conn:
        # A temporary table named orgs must not stand in for crate's.
        org_id = conn.execute("SELECT id FROM orgs WHERE name = 'acme'").fetchone()[0]
        conn.execute("CREATE TEMP TABLE orgs (id bigint, deleted_at text)")
        conn.execute("INSERT INTO pg_temp.orgs VALUES (%s, 'x')", (org_id,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permanent"):
            conn.execute("DELETE FROM public.token_revocations")
    with psycopg.connect(app_url) as conn:
        assert conn.execute("SELECT count(*) FROM token_revocations").fetchone() == (1,)
        assert conn.execute("SELECT deleted_at FROM orgs WHERE name = 'acme'").fetchone() == (None,)


def test_a_function_planted_on_the_path_never_runs_as_crate(
    postgres: PostgresCluster, app_url: str, pg_url: str, tmp_path: Path
) -> None:
    """Where others may create in the public schema (PostgreSQL 14 and older
    allow it by default), a function shadowing a built-in one crate calls
    must not run: crate resolves names in pg_catalog first."""
    role = app_url.split("://", 1)[1].split(":", 1)[0]
    postgres.admin_sql(f"GRANT CREATE ON SCHEMA public TO {role}", dbname=database_name(pg_url))
    with psycopg.connect(app_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.loot (who text)")
        conn.execute("GRANT INSERT ON public.loot TO PUBLIC")
        conn.execute(
            "CREATE FUNCTION public.hashtextextended(text, integer) RETURNS bigint "
            "LANGUAGE sql AS $$ INSERT INTO public.loot VALUES (current_user) RETURNING 1 $$"
        )
        conn.execute("GRANT EXECUTE ON FUNCTION public.hashtextextended(text, integer) TO PUBLIC")
    owner = CrateRunner(tmp_path / "owner")
    env = {"CRATE_STORE": pg_url, "CRATE_PASSPHRASE": "p4ss-word-long"}
    owner("keys", "rotate", "master", env=env, check=True)  # takes the store-wide lock
    owner("secrets", "set", "A", "-", "--org", "acme", input="v", env=env, check=True)
    with psycopg.connect(app_url) as conn:
        assert conn.execute("SELECT count(*) FROM public.loot").fetchone() == (0,)
