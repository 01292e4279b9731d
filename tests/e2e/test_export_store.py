"""Moving a team over: `crate org export-store --to postgresql://…` copies a
home's orgs into a real PostgreSQL with every key, version, token and audit
entry as they are, so that the same secrets read back, the same history
shows, and `crate audit verify` passes there (issue 19)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crate_cli.errors import ExitCode
from tests.support.crate_runner import CrateRunner

pytestmark = pytest.mark.e2e


@pytest.fixture
def home_with_orgs(crate: CrateRunner) -> CrateRunner:
    """A home with two orgs: versions, a deletion, a token, a revoked token."""
    crate("secrets", "set", "API_KEY", "-", input="first", check=True)
    crate("audit", "enable", check=True)
    crate("secrets", "set", "API_KEY", "-", input="second", check=True)
    crate("secrets", "set", "GONE", "-", input="soon deleted", check=True)
    crate("secrets", "delete", "GONE", "--yes", check=True)
    crate("secrets", "set", "DB_URL", "-", "--env", "prod", input="postgres://db", check=True)
    crate("token", "create", "ci", "--role", "reader", check=True)
    crate("token", "create", "old", "--role", "reader", check=True)
    crate("token", "revoke", "old", check=True)
    crate("org", "create", "other", check=True)
    crate("secrets", "set", "B", "-", "--org", "other", input="b-value", check=True)
    return crate


def as_json(result: object) -> object:
    return json.loads(str(result.stdout))  # type: ignore[attr-defined]


def test_an_exported_store_reads_and_verifies_as_the_home_did(
    home_with_orgs: CrateRunner, pg_url: str
) -> None:
    crate = home_with_orgs
    on_pg = {"CRATE_STORE": pg_url}
    before = {
        "history": as_json(crate("secrets", "history", "API_KEY", "--json", check=True)),
        "tokens": as_json(crate("token", "list", "--json", check=True)),
        "log": as_json(crate("audit", "log", "--json", check=True)),
        "verify": as_json(crate("audit", "verify", "--json", check=True)),
    }

    result = crate("org", "export-store", "--to", pg_url, check=True)
    password = pg_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert password not in result.stdout + result.stderr
    assert "audit log verified" in result.stderr

    # First the chain, before any read on the copy appends to it: the same
    # entries, to the same newest MAC.
    verified = as_json(crate("audit", "verify", "--json", env=on_pg, check=True))
    assert verified == before["verify"]
    log = as_json(crate("audit", "log", "--json", env=on_pg, check=True))
    assert all(entry in log for entry in before["log"])  # type: ignore[operator, union-attr]
    assert crate("secrets", "get", "API_KEY", env=on_pg, check=True).stdout == "second"
    got = crate("secrets", "get", "B", "--org", "other", env=on_pg, check=True).stdout
    assert got == "b-value"
    history = as_json(crate("secrets", "history", "API_KEY", "--json", env=on_pg, check=True))
    assert history == before["history"]
    assert as_json(crate("token", "list", "--json", env=on_pg, check=True)) == before["tokens"]
    # The copy is a working store: a write there chains on.
    crate("secrets", "set", "API_KEY", "-", input="third", env=on_pg, check=True)
    after = as_json(crate("audit", "verify", "--json", env=on_pg, check=True))
    assert after["entries"] > before["verify"]["entries"]  # type: ignore[index]
    assert crate("secrets", "get", "API_KEY", env=on_pg, check=True).stdout == "third"


def test_exporting_an_org_twice_is_refused_and_changes_nothing(
    home_with_orgs: CrateRunner, pg_url: str
) -> None:
    crate = home_with_orgs
    on_pg = {"CRATE_STORE": pg_url}
    crate("org", "export-store", "--to", pg_url, "--org", "personal", check=True)
    before = as_json(crate("audit", "verify", "--json", env=on_pg, check=True))
    again = crate("org", "export-store", "--to", pg_url)
    assert again.returncode == ExitCode.CONFLICT
    assert "already; nothing was copied" in again.stderr
    assert as_json(crate("audit", "verify", "--json", env=on_pg, check=True)) == before
    listed = as_json(crate("org", "list", "--json", env=on_pg, check=True))
    assert [o["name"] for o in listed] == ["personal"]  # type: ignore[attr-defined, index]


def test_a_store_under_another_master_key_is_refused(
    home_with_orgs: CrateRunner, pg_url: str, tmp_path: Path
) -> None:
    stranger = CrateRunner(tmp_path / "stranger")
    (tmp_path / "stranger").mkdir(mode=0o700)
    stranger("org", "create", "theirs", env={"CRATE_STORE": pg_url}, check=True)
    refused = home_with_orgs("org", "export-store", "--to", pg_url)
    assert refused.returncode == ExitCode.CONFLICT
    assert "other master keys" in refused.stderr
    listed = as_json(stranger("org", "list", "--json", env={"CRATE_STORE": pg_url}, check=True))
    assert [o["name"] for o in listed] == ["theirs"]  # type: ignore[attr-defined, index]
