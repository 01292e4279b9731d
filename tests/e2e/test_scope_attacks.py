"""Tokens with a narrower scope, used as an attacker would (issue 17, items 2-4).

One real `crate server` for the module, on 127.0.0.1, in a home of its own.
An admin token sets the scene; narrower tokens (limited to tags or to
environments) then try to reach what their scope does not hold:

- older versions of a secret whose tags changed, or that was deleted and
  stored again under another tag (every version has its own scope);
- values behind references (`${prod.X}`) that their writer could not read;
- names that steer the processes of whoever runs `crate run` (LD_PRELOAD,
  PATH ...), which only an admin may allow, name by name.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from crate_cli.client.ephemeral import EphemeralKey
from crate_cli.client.secrets import SecretsClient
from crate_cli.client.transport.http import HttpTransport
from crate_cli.errors import Forbidden, InvalidInput, Unauthorized
from tests.support.crate_runner import CrateRunner
from tests.support.crate_server import CrateServer
from tests.support.vault_state import restore_triggers, run_sql

pytestmark = pytest.mark.e2e

ORG = "personal"


class Served:
    def __init__(self, home: Path, server: CrateServer) -> None:
        self.home = home
        self.server = server
        self.crate = CrateRunner(home)
        self.key = EphemeralKey()  # one retrieval key for the module: RSA is slow
        self.transports: list[HttpTransport] = []
        self.count = 0

    def client(self, role: str, *options: str) -> SecretsClient:
        self.count += 1
        token = self.server.token(f"t{self.count}-{role}", role, *options)
        transport = HttpTransport(self.server.url, token)
        self.transports.append(transport)
        return SecretsClient(transport, ORG)

    def values(self, client: SecretsClient, env: str, names: list[str], **kw: object) -> dict:
        found = client.retrieve(env, names, ephemeral=self.key, **kw)  # type: ignore[arg-type]
        return {s.name: s.value for s in found}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("scopes") / "crate-home"
    CrateRunner(home)("env", "list", check=True)
    server = CrateServer(home, "--workers", "1")
    server.start()
    s = Served(home, server)
    try:
        yield s
    finally:
        for transport in s.transports:
            transport.close()
        server.stop()


@pytest.fixture(scope="module")
def admin(served: Served) -> SecretsClient:
    return served.client("admin")


# -- item 3: every version has its own scope ------------------------------------------------


def test_a_secret_stored_again_under_another_tag_keeps_its_old_versions_closed(
    served: Served, admin: SecretsClient
) -> None:
    """Team A's secret is deleted, then a name of the same spelling is stored for
    team B: B's holders see the new versions only, never A's values."""
    admin.store("dev", [("SHARED_NAME", "team-a-secret-v1")], ["team-a"])
    admin.store("dev", [("SHARED_NAME", "team-a-secret-v2")])
    admin.delete("dev", "SHARED_NAME")
    admin.store("dev", [("SHARED_NAME", "team-b-value")], ["team-b"])
    team_b = served.client("writer", "--tags", "team-b")

    assert served.values(team_b, "dev", ["SHARED_NAME"]) == {"SHARED_NAME": "team-b-value"}
    for old in (1, 2):
        with pytest.raises(Forbidden, match=f"version {old} of secret SHARED_NAME"):
            served.values(team_b, "dev", ["SHARED_NAME"], versions={"SHARED_NAME": old})
        with pytest.raises(Forbidden, match=f"version {old} of secret SHARED_NAME"):
            team_b.rollback("dev", "SHARED_NAME", old)
    listed = team_b.history("dev", "SHARED_NAME")
    assert [v["version"] for v in listed] == [4]  # not A's versions, nor A's deletion
    assert all(v["tags"] == ["team-b"] for v in listed)
    # The admin still sees the whole history, and nothing was rolled back.
    assert [v["version"] for v in admin.history("dev", "SHARED_NAME")] == [1, 2, 3, 4]
    assert served.values(admin, "dev", ["SHARED_NAME"]) == {"SHARED_NAME": "team-b-value"}


def test_a_retagged_secret_keeps_its_old_versions_closed(
    served: Served, admin: SecretsClient
) -> None:
    admin.store("dev", [("RETAGGED", "ops-only-v1")], ["ops"])
    admin.store("dev", [("RETAGGED", "now-for-devs")], ["devs"])
    devs = served.client("reader", "--tags", "devs")
    assert served.values(devs, "dev", ["RETAGGED"]) == {"RETAGGED": "now-for-devs"}
    with pytest.raises(Forbidden, match="version 1 of secret RETAGGED"):
        served.values(devs, "dev", ["RETAGGED"], versions={"RETAGGED": 1})
    assert [v["version"] for v in devs.history("dev", "RETAGGED")] == [2]
    # The other way round: ops no longer sees the secret at all.
    ops = served.client("reader", "--tags", "ops")
    with pytest.raises(Forbidden):
        served.values(ops, "dev", ["RETAGGED"], versions={"RETAGGED": 1})


def test_a_version_in_scope_is_still_served(served: Served, admin: SecretsClient) -> None:
    admin.store("dev", [("KEPT_TAG", "first-value")], ["web"])
    admin.store("dev", [("KEPT_TAG", "second-value")])  # keeps its tags
    web = served.client("writer", "--tags", "web")
    assert served.values(web, "dev", ["KEPT_TAG"], versions={"KEPT_TAG": 1}) == {
        "KEPT_TAG": "first-value"
    }
    web.rollback("dev", "KEPT_TAG", 1)
    assert served.values(web, "dev", ["KEPT_TAG"]) == {"KEPT_TAG": "first-value"}
    assert [v["version"] for v in web.history("dev", "KEPT_TAG")] == [1, 2, 3]


# -- item 2: names that steer the reader's processes -----------------------------------------


def test_a_writer_cannot_store_a_name_that_steers_processes(
    served: Served, admin: SecretsClient
) -> None:
    writer = served.client("writer")
    # Names of everyday secrets are not steering names.
    writer.store(
        "dev",
        [(n, "x") for n in ("DATABASE_URL", "STRIPE_SECRET_KEY", "NODE_ENV", "SENTRY_DSN")],
    )
    for name in (
        "LD_PRELOAD",
        "PATH",
        "PYTHONPATH",
        "NODE_OPTIONS",
        "BASH_ENV",
        "GIT_SSH_COMMAND",
        "CRATE_TOKEN",
        "ld_preload",
        "Path",
        # Each of these runs code from its value alone (an outside review's
        # finding): man, bash -i, tar, make, vim.
        "MANPAGER",
        "PS0",
        "TAR_OPTIONS",
        "MAKEFLAGS",
        "VIMINIT",
        # ... and these decide whom the reader's programs trust.
        "HTTPS_PROXY",
        "REQUESTS_CA_BUNDLE",
        "SSLKEYLOGFILE",
    ):
        with pytest.raises(Forbidden, match=f"secret name {name} is refused"):
            writer.store("dev", [(name, "/tmp/evil.so")])
        # The admin too: a name is allowed once, on purpose, not by being an admin.
        with pytest.raises(Forbidden, match=f"secret name {name} is refused") as refused:
            admin.store("dev", [("SAFE_ONE", "x"), (name, "/tmp/evil.so")])
        assert (
            refused.value.hint
            == f"an admin of 'personal' can allow it: crate org allow-name {name}"
        )
    assert "SAFE_ONE" not in {s["name"] for s in admin.list_secrets("dev")}  # all or nothing


def test_only_an_unscoped_admin_allows_a_name_and_it_is_audited(
    served: Served, admin: SecretsClient
) -> None:
    writer = served.client("writer")
    with pytest.raises(Forbidden):
        writer.allow_name("JAVA_TOOL_OPTIONS")
    dev_admin = served.client("admin", "--env", "dev")
    with pytest.raises(Forbidden, match="limited to environments or tags"):
        dev_admin.allow_name("JAVA_TOOL_OPTIONS")
    with pytest.raises(InvalidInput, match="not a name crate refuses"):
        admin.allow_name("DATABASE_URL")

    assert admin.allow_name("JAVA_TOOL_OPTIONS") is True
    assert admin.allow_name("java_tool_options") is False  # the same name
    writer.store("dev", [("JAVA_TOOL_OPTIONS", "-Xmx2g")])
    assert [r["name"] for r in writer.allowed_names()] == ["JAVA_TOOL_OPTIONS"]
    served.crate("audit", "enable", check=True)
    entries = json.loads(served.crate("audit", "log", "--json", "--action", "name-allow").stdout)
    allowed = [e for e in entries if e["outcome"] == "ok"]
    assert [e["names"] for e in allowed] == [["JAVA_TOOL_OPTIONS"]]
    assert allowed[0]["actor"].startswith("token:") and allowed[0]["actor"].endswith("-admin")
    # The refused attempts are recorded too (the writer's, the scoped admin's).
    assert len([e for e in entries if e["outcome"] == "denied"]) == 2

    assert admin.allow_name("JAVA_TOOL_OPTIONS", allow=False) is True
    with pytest.raises(Forbidden):
        writer.store("dev", [("JAVA_TOOL_OPTIONS", "-Xmx4g")])
    # What was stored while allowed stays, and crate run refuses it again (e2e).
    assert "JAVA_TOOL_OPTIONS" in {s["name"] for s in admin.list_secrets("dev")}


# -- item 11: a revoked token stays revoked -----------------------------------------------------


def test_a_revoked_token_row_copied_back_grants_nothing(served: Served) -> None:
    token = served.server.token("laptop-lost", "reader")
    client = SecretsClient(HttpTransport(served.server.url, token), ORG)
    assert client.environments()
    vault = served.home / "orgs" / f"{ORG}.vault"
    (row,) = run_sql(vault, "SELECT * FROM tokens WHERE name = 'laptop-lost'")
    served.crate("token", "revoke", "laptop-lost", check=True)
    with pytest.raises(Unauthorized):
        client.environments()
    # From a backup: the row, authentic and MAC'd, put back.
    run_sql(vault, f"INSERT INTO tokens VALUES ({', '.join('?' * len(row))})", row)
    with pytest.raises(Unauthorized):
        client.environments()
    assert served.crate("audit", "verify").returncode == 0

    # The careful attacker also removes the revocation record (past its
    # triggers, put back afterwards): requests are served again, and `audit
    # verify` names the revocation whose record is gone.
    (record,) = run_sql(vault, "SELECT * FROM token_revocations WHERE name = 'laptop-lost'")
    db = sqlite3.connect(vault)
    db.execute("DROP TRIGGER token_revocations_permanent_delete")
    db.execute("DELETE FROM token_revocations WHERE name = 'laptop-lost'")
    restore_triggers(lambda sql: db.execute(sql).fetchall())
    db.commit()
    db.close()
    verify = served.crate("audit", "verify")
    assert verify.returncode == 5, verify
    assert "revoked token 'laptop-lost', but the record of that is gone" in verify.stderr
    # Put back, for the module's other tests.
    run_sql(vault, "INSERT INTO token_revocations VALUES (?, ?, ?, ?, ?)", record)
    run_sql(vault, "DELETE FROM tokens WHERE name = 'laptop-lost'")
    assert served.crate("audit", "verify").returncode == 0


# -- item 4: references are no confused deputy ----------------------------------------------


@pytest.fixture(scope="module")
def prod_secret(admin: SecretsClient) -> str:
    admin.store("prod", [("PROD_DB_PASSWORD", "prod-password-93ad")])
    admin.store("dev", [("TEAM_A_KEY", "team-a-key-55e1")], ["team-a"])
    return "prod-password-93ad"


def test_a_writer_cannot_refer_to_what_it_cannot_read(
    served: Served, admin: SecretsClient, prod_secret: str
) -> None:
    dev_writer = served.client("writer", "--env", "dev")
    with pytest.raises(Forbidden, match=r"value of LEAK refers to prod\.PROD_DB_PASSWORD"):
        dev_writer.store("dev", [("LEAK", "${prod.PROD_DB_PASSWORD}")])
    team_b = served.client("writer", "--tags", "team-b")
    with pytest.raises(Forbidden, match="value of LEAK refers to TEAM_A_KEY, which this token"):
        team_b.store("dev", [("LEAK", "x-${TEAM_A_KEY}")], ["team-b"])
    # A name that does not exist yet: what appears there later may carry tags
    # a tag-limited writer cannot read, so it is refused to such a writer...
    with pytest.raises(Forbidden, match="refers to LATER_SECRET, which does not exist"):
        team_b.store("dev", [("LEAK", "${LATER_SECRET}")], ["team-b"])
    # ... and stored with a warning for a writer who can read whatever comes.
    (dangling,) = admin.store("dev", [("DANGLING", "${LATER_SECRET}")])
    assert dangling["warnings"] == [
        "the value of DANGLING refers to LATER_SECRET, which does not exist (yet): run and "
        "fetch fail on it until it does; write $${ for a literal ${"
    ]
    # Through a value it may read, that refers further on: still refused.
    admin.store("dev", [("VIA_PROD", "${prod.PROD_DB_PASSWORD}")])
    with pytest.raises(Forbidden, match=r"value of LEAK refers to prod\.PROD_DB_PASSWORD"):
        dev_writer.store("dev", [("LEAK", "${VIA_PROD}")])
    # Nothing was stored, and what the writer may read is accepted.
    assert "LEAK" not in {s["name"] for s in admin.list_secrets("dev")}
    dev_writer.store("dev", [("BASE", "db.dev"), ("DB_URL", "postgres://${BASE}/app")])


def test_a_writer_cannot_roll_back_to_a_reference_it_cannot_read(
    served: Served, admin: SecretsClient, prod_secret: str
) -> None:
    admin.store("dev", [("ROLLED", "${prod.PROD_DB_PASSWORD}")])
    admin.store("dev", [("ROLLED", "plain-now")])
    dev_writer = served.client("writer", "--env", "dev")
    with pytest.raises(Forbidden, match=r"value of ROLLED refers to prod\.PROD_DB_PASSWORD"):
        dev_writer.rollback("dev", "ROLLED", 1)
    assert served.values(admin, "dev", ["ROLLED"]) == {"ROLLED": "plain-now"}


def test_cycles_are_refused_at_store(served: Served, admin: SecretsClient) -> None:
    with pytest.raises(InvalidInput, match="cycle: CYC_A -> CYC_B -> CYC_A"):
        admin.store("dev", [("CYC_A", "${CYC_B}"), ("CYC_B", "${CYC_A}")])
    admin.store("dev", [("CYC_C", "${CYC_D}x"), ("CYC_D", "end")])
    with pytest.raises(InvalidInput, match="cycle: CYC_D -> CYC_C -> CYC_D"):
        admin.store("dev", [("CYC_D", "${CYC_C}")])
    with pytest.raises(InvalidInput, match="cycle: SELF -> SELF"):
        admin.store("dev", [("SELF", "${SELF}")])


def test_a_dollar_brace_that_is_no_reference_is_stored_with_a_warning(
    admin: SecretsClient,
) -> None:
    (record,) = admin.store("dev", [("TEMPLATE", "echo ${HOME:-/root} $${X}")])
    assert record["warnings"] == [
        "the value of TEMPLATE holds a ${ that is not a reference (${NAME} or ${env.NAME}): "
        "it stays as text; write $${ for a literal ${"
    ]
    (plain,) = admin.store("dev", [("ESCAPED", "echo $${HOME}")])
    assert "warnings" not in plain


def test_a_reader_resolves_only_within_its_own_scope(
    served: Served, admin: SecretsClient, prod_secret: str
) -> None:
    from crate_cli.errors import UnresolvedReference
    from crate_cli.run.references import resolve_pairs

    admin.store("dev", [("FROM_PROD", "pw=${prod.PROD_DB_PASSWORD}")])
    dev_reader = served.client("reader", "--env", "dev")
    pairs = [("FROM_PROD", "pw=${prod.PROD_DB_PASSWORD}")]
    with pytest.raises(UnresolvedReference) as failed:
        resolve_pairs(dev_reader, "dev", pairs)
    assert "FROM_PROD -> prod.PROD_DB_PASSWORD" in failed.value.message
    assert "you may not read environment 'prod'" in failed.value.message
    assert prod_secret not in failed.value.message
    assert resolve_pairs(admin, "dev", pairs) == [("FROM_PROD", f"pw={prod_secret}")]


def test_an_allowance_copied_back_from_a_backup_stays_ended(
    served: Served, admin: SecretsClient
) -> None:
    """Allow a name, keep a backup of its row, disallow it, put the row back:
    the name stays refused, and a careful vandal who also removes the record
    of the end is named by `crate audit verify`."""
    vault = served.home / "orgs" / f"{ORG}.vault"
    admin.allow_name("GRADLE_OPTS")
    (row,) = run_sql(vault, "SELECT * FROM allowed_names WHERE name = 'GRADLE_OPTS'")
    admin.allow_name("GRADLE_OPTS", allow=False)
    run_sql(vault, "INSERT INTO allowed_names VALUES (?, ?, ?, ?)", row)
    assert "GRADLE_OPTS" not in [r["name"] for r in admin.allowed_names()]
    with pytest.raises(Forbidden, match="secret name GRADLE_OPTS is refused"):
        admin.store("dev", [("GRADLE_OPTS", "-Dx=y")])
    assert served.crate("audit", "verify").returncode == 0
    # Allowed again on purpose: a new allowance, over the row put back.
    assert admin.allow_name("GRADLE_OPTS") is True
    assert admin.allow_name("GRADLE_OPTS", allow=False) is True

    db = sqlite3.connect(vault)
    db.execute("DROP TRIGGER allowed_names_ended_permanent_delete")
    db.execute(
        "DELETE FROM allowed_names_ended WHERE name = 'GRADLE_OPTS' AND allowed_at = ?", (row[1],)
    )
    restore_triggers(lambda sql: db.execute(sql).fetchall())
    db.commit()
    db.close()
    run_sql(vault, "INSERT OR REPLACE INTO allowed_names VALUES (?, ?, ?, ?)", row)
    verify = served.crate("audit", "verify")
    assert verify.returncode == 5, verify
    assert "ended the allowance of the name GRADLE_OPTS, but the record of that is gone" in (
        verify.stderr
    )
