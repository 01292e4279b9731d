"""Tampering with a vault must fail closed (DESIGN §2), on both storage backends.

Each test edits a real org vault with raw SQL, as someone with access to it
could: the vault file with sqlite3, or the rows of a PostgreSQL store with
psycopg as the tables' owner (`vault_sql`; every test runs on both, see
`store_backend`). It then reads it back through the real client in a fresh
Session (no cached keys). Any modification or move of a ciphertext must
surface as `IntegrityError` (exit 5): never a wrong value, never another
error class, never a traceback. The same failures through the CLI, in new
processes, are in tests/e2e/test_vault_integrity.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from crate_cli.errors import ExitCode, IntegrityError
from tests.support.homes import STORE_BACKENDS, all_values
from tests.support.vault_state import VERSION_ROW, Sql, flip, read_cell, write_cell

Retrieve = Callable[..., dict[str, str]]


@pytest.fixture(params=STORE_BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> str:
    """Every test here tampers with org acme in the home's SQLite file and in a
    PostgreSQL store (tests/support/homes.py)."""
    return str(request.param)


def renumber(sql: Sql, env: str, name: str, old: int, new: int) -> None:
    """Change the number of one version row (not the head pointer)."""
    sql(f"UPDATE secret_versions SET version = ? WHERE {VERSION_ROW}", (new, env, name, old))


def swap_ciphertexts(
    sql: Sql, a: tuple[str, str, int | None], b: tuple[str, str, int | None]
) -> None:
    """Exchange the wrapped DEK and ciphertext of two version rows."""
    cells = {
        key: {col: read_cell(sql, col, *key) for col in ("wrapped_dek", "ciphertext")}
        for key in (a, b)
    }
    for src, dst in ((a, b), (b, a)):
        for col in ("wrapped_dek", "ciphertext"):
            write_cell(sql, col, *dst[:2], cells[src][col], version=dst[2])


def assert_fails_closed(info: pytest.ExceptionInfo[IntegrityError], secrets: list[str]) -> None:
    """Exactly IntegrityError (exit 5), and no value in anything it says."""
    assert type(info.value) is IntegrityError
    assert info.value.exit_code == ExitCode.INTEGRITY
    for value in secrets:
        assert value not in info.value.diagnostics()


def assert_integrity_failure(
    retrieve: Retrieve, org: str, env: str, names: list[str], secrets: list[str]
) -> None:
    with pytest.raises(IntegrityError) as info:
        retrieve(org, env, names)
    assert_fails_closed(info, secrets)


# -- the template reads back untouched (the baseline every test departs from) -------


def test_untouched_copy_reads_back(acme_home: Path, retrieve: Retrieve, acme_secrets) -> None:
    for env, names in acme_secrets.items():
        got = retrieve("acme", env, [])
        assert got == {name: versions[-1] for name, versions in names.items()}


# -- bit flips ---------------------------------------------------------------------


@pytest.mark.parametrize("column", ["ciphertext", "wrapped_dek"])
@pytest.mark.parametrize("index", [0, 5, 20, -1], ids=["format-byte", "nonce", "body", "tag"])
def test_flipped_bit_fails_closed(
    acme_home: Path, vault_sql: Sql, retrieve: Retrieve, acme_secrets, column: str, index: int
) -> None:
    blob = read_cell(vault_sql, column, "dev", "DB_URL")
    write_cell(vault_sql, column, "dev", "DB_URL", flip(blob, index))

    assert_integrity_failure(retrieve, "acme", "dev", ["DB_URL"], all_values(acme_secrets))
    # Reading everything fails too: no partial bundle without the damaged secret.
    assert_integrity_failure(retrieve, "acme", "dev", [], all_values(acme_secrets))
    # The failure is local to the damaged row.
    assert retrieve("acme", "dev", ["API_KEY"]) == {"API_KEY": acme_secrets["dev"]["API_KEY"][-1]}


def test_truncated_ciphertext_fails_closed(
    acme_home: Path, vault_sql: Sql, retrieve: Retrieve, acme_secrets
) -> None:
    blob = read_cell(vault_sql, "ciphertext", "dev", "DB_URL")
    write_cell(vault_sql, "ciphertext", "dev", "DB_URL", blob[:-16])
    assert_integrity_failure(retrieve, "acme", "dev", ["DB_URL"], all_values(acme_secrets))


# -- ciphertexts moved to another place ------------------------------------------------


def test_swap_between_secrets_of_one_env(
    acme_home: Path, vault_sql: Sql, retrieve: Retrieve, acme_secrets
) -> None:
    swap_ciphertexts(vault_sql, ("dev", "DB_URL", None), ("dev", "API_KEY", None))
    values = all_values(acme_secrets)
    assert_integrity_failure(retrieve, "acme", "dev", ["DB_URL"], values)
    assert_integrity_failure(retrieve, "acme", "dev", ["API_KEY"], values)


def test_swap_between_environments(
    acme_home: Path, vault_sql: Sql, retrieve: Retrieve, acme_secrets
) -> None:
    swap_ciphertexts(vault_sql, ("dev", "DB_URL", None), ("prod", "DB_URL", None))
    values = all_values(acme_secrets)
    assert_integrity_failure(retrieve, "acme", "dev", ["DB_URL"], values)
    assert_integrity_failure(retrieve, "acme", "prod", ["DB_URL"], values)


def test_older_version_replayed_as_current(
    acme_home: Path, vault_sql: Sql, retrieve: Retrieve, acme_secrets
) -> None:
    """Copying version 1's ciphertext into version 2's row must not serve version 1."""
    for col in ("wrapped_dek", "ciphertext"):
        write_cell(
            vault_sql, col, "dev", "ROTATED", read_cell(vault_sql, col, "dev", "ROTATED", 1), 2
        )
    assert_integrity_failure(retrieve, "acme", "dev", ["ROTATED"], all_values(acme_secrets))


def test_renamed_secret(acme_home: Path, vault_sql: Sql, retrieve: Retrieve, acme_secrets) -> None:
    vault_sql("UPDATE secrets SET name = 'RENAMED' WHERE env = 'dev' AND name = 'DB_URL'")
    assert_integrity_failure(retrieve, "acme", "dev", ["RENAMED"], all_values(acme_secrets))
    assert_integrity_failure(retrieve, "acme", "dev", [], all_values(acme_secrets))


def test_secret_moved_to_another_environment(
    acme_home: Path, vault_sql: Sql, retrieve: Retrieve, acme_secrets
) -> None:
    assert ("staging",) in vault_sql("SELECT name FROM environments")  # made with the org
    vault_sql("UPDATE secrets SET env = 'staging' WHERE env = 'dev' AND name = 'API_KEY'")
    assert_integrity_failure(retrieve, "acme", "staging", ["API_KEY"], all_values(acme_secrets))


def test_version_number_changed(
    acme_home: Path, vault_sql: Sql, retrieve: Retrieve, acme_secrets
) -> None:
    """Renumbering the head version consistently in both tables still fails (AAD has it)."""
    renumber(vault_sql, "dev", "ROTATED", 2, 7)
    vault_sql("UPDATE secrets SET version = 7 WHERE env = 'dev' AND name = 'ROTATED'")
    assert_integrity_failure(retrieve, "acme", "dev", ["ROTATED"], all_values(acme_secrets))


def test_version_numbers_exchanged(
    acme_home: Path, vault_sql: Sql, retrieve: Retrieve, acme_secrets
) -> None:
    """Relabel v1 as v2 and v2 as v1: the head now points at the old ciphertext."""
    for old, new in ((1, 99), (2, 1), (99, 2)):
        renumber(vault_sql, "dev", "ROTATED", old, new)
    assert_integrity_failure(retrieve, "acme", "dev", ["ROTATED"], all_values(acme_secrets))


def test_head_pointer_moved_back_to_older_version(
    acme_home: Path, vault_sql: Sql, retrieve: Retrieve, acme_secrets
) -> None:
    vault_sql("UPDATE secrets SET version = 1 WHERE env = 'dev' AND name = 'ROTATED'")
    assert_integrity_failure(retrieve, "acme", "dev", ["ROTATED"], all_values(acme_secrets))


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("wrapped_dek", None),
        ("ciphertext", None),
        ("org_dek_version", None),
        ("org_dek_version", 2),
    ],
    ids=["null-wrapped-dek", "null-ciphertext", "null-dek-version", "dangling-dek-version"],
)
def test_structurally_damaged_row(
    acme_home: Path, vault_sql: Sql, retrieve: Retrieve, acme_secrets, column: str, value: object
) -> None:
    write_cell(vault_sql, column, "dev", "DB_URL", value)
    assert_integrity_failure(retrieve, "acme", "dev", ["DB_URL"], all_values(acme_secrets))


def test_damaged_tags_column(acme_home: Path, vault_sql: Sql, fresh_session, acme_secrets) -> None:
    """Text that is not JSON (both backends keep tags as text)."""
    vault_sql("UPDATE secrets SET tags = 'not json' WHERE env = 'dev' AND name = 'DB_URL'")
    with fresh_session() as s, pytest.raises(IntegrityError) as info:
        s.client("acme").list_secrets("dev")
    assert_fails_closed(info, all_values(acme_secrets))


# -- org keys ----------------------------------------------------------------------


def test_tampered_org_dek(
    acme_home: Path, vault_sql: Sql, retrieve: Retrieve, acme_secrets, fresh_session
) -> None:
    ((wrapped,),) = vault_sql("SELECT wrapped FROM org_deks WHERE version = 1")
    vault_sql("UPDATE org_deks SET wrapped = ? WHERE version = 1", (flip(wrapped, 30),))
    values = all_values(acme_secrets)
    for env in ("dev", "prod"):
        assert_integrity_failure(retrieve, "acme", env, [], values)

    # A store needs the org DEK too: it fails and writes nothing.
    with fresh_session() as s, pytest.raises(IntegrityError) as info:
        s.client("acme").store("dev", [("NEW_ONE", "new-value-never-stored")])
    assert_fails_closed(info, [*values, "new-value-never-stored"])
    assert vault_sql("SELECT count(*) FROM secrets WHERE name = 'NEW_ONE'") == [(0,)]


def test_tampered_org_rsa_key_blocks_sealed_store(
    acme_home: Path, vault_sql: Sql, retrieve: Retrieve, acme_secrets, fresh_session
) -> None:
    ((wrapped,),) = vault_sql("SELECT wrapped_private FROM org_rsa_keys")
    vault_sql("UPDATE org_rsa_keys SET wrapped_private = ?", (flip(wrapped, 40),))
    before = vault_sql("SELECT env, name, version FROM secrets ORDER BY env, name")

    values = all_values(acme_secrets)

    with fresh_session() as s, pytest.raises(IntegrityError) as info:
        s.client("acme").store("dev", [("DB_URL", "replacement-value-never-stored")])
    assert_fails_closed(info, [*values, "replacement-value-never-stored"])

    with fresh_session() as s, pytest.raises(IntegrityError) as info:
        s.client("acme").store("dev", [("X1", "one"), ("X2", "two")])  # the batch form
    assert_fails_closed(info, values)

    assert vault_sql("SELECT env, name, version FROM secrets ORDER BY env, name") == before
    # Retrieval does not use the RSA key: the stored values are still readable.
    assert retrieve("acme", "dev", ["DB_URL"]) == {"DB_URL": acme_secrets["dev"]["DB_URL"][-1]}


def copy_org_rows(sql: Sql, source: str, target: str) -> None:
    """PostgreSQL's copy of a vault under another name: a new `orgs` row named
    `target`, holding a copy of every row of `source` (audit log included),
    each secret's versions under the copy of the secret. Every statement
    names the orgs it reads or writes (`org=None`)."""
    from crate_cli.vault.storage.postgres.schema import ORG_TABLES

    ((source_id,),) = sql(
        "SELECT id FROM orgs WHERE name = ? AND deleted_at IS NULL", (source,), org=None
    )
    ((target_id,),) = sql(
        "INSERT INTO orgs (name, created_at, changes) SELECT ?, created_at, changes FROM orgs "
        "WHERE id = ? RETURNING id",
        (target, source_id),
        org=None,
    )
    for table in (*reversed(ORG_TABLES), "audit_log"):  # parents first
        columns = [
            name
            for (name,) in sql(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "AND column_name NOT IN ('org_id', 'secret_id') AND is_identity = 'NO' "
                "ORDER BY ordinal_position",
                (table,),
                org=None,
            )
        ]
        names = ", ".join(f"t.{c}" for c in columns)
        if table == "secret_versions":
            sql(
                f"INSERT INTO secret_versions (org_id, secret_id, {', '.join(columns)}) "
                f"SELECT ?, n.id, {names} FROM secret_versions t "
                "JOIN secrets o ON o.id = t.secret_id "
                "JOIN secrets n ON n.org_id = ? AND n.env = o.env AND n.name = o.name "
                "WHERE t.org_id = ?",
                (target_id, target_id, source_id),
                org=None,
            )
        else:
            sql(
                f"INSERT INTO {table} (org_id, {', '.join(columns)}) "
                f"SELECT ?, {names} FROM {table} t WHERE t.org_id = ?",
                (target_id, source_id),
                org=None,
            )


def test_vault_copied_to_another_org(
    acme_home: Path,
    vault_sql: Sql,
    retrieve: Retrieve,
    acme_secrets,
    fresh_session,
    store_backend: str,
) -> None:
    """Every key is bound to the org's name: acme.vault served as beta.vault
    is refused, as are acme's rows copied under a new org `beta` of a store."""
    beta: str | None = "beta"  # vault_sql's org for beta's rows
    if store_backend == "sqlite":
        orgs = acme_home / "orgs"
        shutil.copyfile(orgs / "acme.vault", orgs / "beta.vault")
    else:
        copy_org_rows(vault_sql, "acme", "beta")
        beta = None  # the count below then covers every org of the store
        assert vault_sql(
            "SELECT o.name, count(*) FROM secret_versions v JOIN orgs o ON o.id = v.org_id "
            "GROUP BY o.name ORDER BY o.name",
            org=None,
        ) == [("acme", 5), ("beta", 5)]
    values = all_values(acme_secrets)

    assert_integrity_failure(retrieve, "beta", "dev", ["DB_URL"], values)
    assert_integrity_failure(retrieve, "beta", "prod", [], values)
    with fresh_session() as s, pytest.raises(IntegrityError) as info:
        s.client("beta").store("dev", [("PLANTED", "planted-value")])
    assert_fails_closed(info, [*values, "planted-value"])
    assert vault_sql("SELECT count(*) FROM secrets WHERE name = 'PLANTED'", org=beta) == [(0,)]
    # The original is unaffected.
    assert retrieve("acme", "dev", ["DB_URL"]) == {"DB_URL": acme_secrets["dev"]["DB_URL"][-1]}
