"""API tokens against a real `crate server` (DESIGN §5).

One server per module, in its own home with three orgs: `personal` (the one
most tests use), `beta` (another org, for cross-org use of a token) and
`gamma` (whose token rows the tampering tests edit in SQLite, which leaves
`crate token list` failing for that org only). Tokens are made with the real
`crate token create` while the server runs; requests go through the real
client (HttpTransport + SecretsClient) or, where the exact HTTP status or a
malformed header matters, through http.client by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from crate_cli.client.ephemeral import EphemeralKey
from crate_cli.client.secrets import SecretsClient
from crate_cli.client.transport.http import HttpTransport
from crate_cli.errors import Forbidden, TokenExpired, Unauthorized
from crate_cli.vault.tokens import new_token
from tests.support.crate_runner import CrateRunner, Result, assert_clean_error
from tests.support.crate_server import CrateServer

pytestmark = pytest.mark.e2e

ORG = "personal"
OTHER_ORG = "beta"
TAMPER_ORG = "gamma"
TOKEN_RE = re.compile(r"crate_[0-9A-Za-z]{43}")
ROLES = ("admin", "writer", "reader")

MATRIX_ENV = "matrix"
SEED, SEED_VALUE = "SEED", "matrix-seed-value-5d1e"

# Tag scope: what the reader sees (env `tagged`) and what the writer may change
# (env `tagged-w`).
TAG_ENV, TAG_WRITE_ENV = "tagged", "tagged-w"
TAGGED = {
    "T_A1": (["team-a"], "a1-value-81c2"),
    "T_A2": (["shared", "team-a"], "a2-value-44f0"),
    "T_B1": (["team-b"], "b1-value-09ad"),
    "T_U1": (None, "u1-value-e7b3"),
}


class Served:
    """The module's server and home, with a client per token."""

    def __init__(self, home: Path, server: CrateServer) -> None:
        self.home = home
        self.server = server
        self.crate = CrateRunner(home)
        self.key = EphemeralKey()  # one retrieval key for the module: RSA is slow
        self.issued: dict[str, str] = {}  # token name -> token (every org)
        self._transports: list[HttpTransport] = []

    @property
    def url(self) -> str:
        return self.server.url

    def token(self, name: str, role: str, *options: str) -> str:
        token = self.server.token(name, role, *options)
        self.issued[name] = token
        return token

    def client(self, token: str | None, org: str = ORG) -> SecretsClient:
        transport = HttpTransport(self.url, token)
        self._transports.append(transport)
        return SecretsClient(transport, org)

    def retrieve(
        self,
        client: SecretsClient,
        env: str,
        names: list[str] | None = None,
        tags: list[str] | None = None,
    ) -> dict[str, str]:
        found = client.retrieve(env, names, tags, ephemeral=self.key)
        return {s.name: s.value for s in found}

    def close(self) -> None:
        for transport in self._transports:
            transport.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("tokens") / "crate-home"
    runner = CrateRunner(home)  # CRATE_HOME=home, CRATE_KEYSTORE=file, no other CRATE_*
    runner("env", "list", check=True)  # first use: master key, org `personal` selected
    runner("org", "create", OTHER_ORG, check=True)
    runner("org", "create", TAMPER_ORG, check=True)
    # One worker: with several, the server loses its SQLite locks and stops seeing
    # the CLI's changes (see test_revocation_survives_several_workers below).
    # Many refusals from 127.0.0.1 on purpose: more than an address's 20 at once.
    server = CrateServer(home, "--workers", "1", "--auth-failure-burst", "1000")
    server.start()
    s = Served(home, server)
    try:
        yield s
    finally:
        s.close()
        server.stop()


@pytest.fixture(scope="module")
def admin(served: Served) -> SecretsClient:
    client = served.client(served.token("admin-main", "admin"))
    for env in (MATRIX_ENV, TAG_ENV, TAG_WRITE_ENV, "scratch"):
        client.create_environment(env)
    client.store(MATRIX_ENV, [(SEED, SEED_VALUE)])
    for name, (tags, value) in TAGGED.items():
        client.store(TAG_ENV, [(name, value)], tags)
    client.store("dev", [("SCOPED_DEV", "dev-value-13aa")])
    client.store("prod", [("SCOPED_PROD", "prod-value-72fe")])
    client.store("prod", [("SCOPED_PROD", "prod-value-72fe-v2")])
    return client


@pytest.fixture(scope="module")
def role_clients(served: Served, admin: SecretsClient) -> dict[str, SecretsClient]:
    clients = {"admin": admin}
    for role in ("writer", "reader"):
        clients[role] = served.client(served.token(f"{role}-main", role))
    return clients


def names_in(client: SecretsClient, env: str) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in client.list_secrets(env)}


def raw(
    served: Served,
    method: str,
    path: str,
    authorization: str | None = None,
    body: Any = None,
) -> tuple[int, dict[str, Any]]:
    """One request by hand: (status, JSON body)."""
    parts = urlsplit(served.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    headers = {"Accept": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def vault_sql(served: Served, org: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run SQL on an org's vault file directly, as someone with file access could."""
    db = sqlite3.connect(served.home / "orgs" / f"{org}.vault", timeout=10)
    try:
        rows = db.execute(sql, params).fetchall()
        db.commit()
        return rows
    finally:
        db.close()


def whoami(client: SecretsClient) -> dict[str, Any]:
    return client.transport.request("GET", "/whoami")


# -- 1. the token itself --------------------------------------------------------


def test_tokens_have_the_documented_format_and_are_unique(
    served: Served, role_clients: dict[str, SecretsClient]
) -> None:
    more = [served.token(f"format-{i}", "reader") for i in range(3)]
    for token in [*served.issued.values(), *more]:
        assert TOKEN_RE.fullmatch(token), token
    assert len(set(served.issued.values())) == len(served.issued)


def test_token_list_never_shows_a_token(
    served: Served, role_clients: dict[str, SecretsClient]
) -> None:
    table = served.crate("token", "list", check=True)
    as_json = served.crate("token", "list", "--json", check=True)
    listed = json.loads(as_json.stdout)
    assert {"admin-main", "writer-main", "reader-main"} <= {t["name"] for t in listed}
    assert all("token" not in t for t in listed)
    assert "admin-main" in table.stdout
    for result in (table, as_json):
        text = result.stdout + result.stderr
        assert not TOKEN_RE.search(text), text
        for token in served.issued.values():
            assert token not in text
            assert token[len("crate_") :] not in text


def test_the_home_keeps_only_the_sha256_of_each_token(
    served: Served, role_clients: dict[str, SecretsClient]
) -> None:
    stored = dict(vault_sql(served, ORG, "SELECT name, hash FROM tokens"))
    files = [p for p in served.home.rglob("*") if p.is_file()]
    vault = served.home / "orgs" / f"{ORG}.vault"
    assert vault in files
    assert Path(f"{vault}-wal") in files  # the server holds the vault open in WAL mode
    blobs = {p: p.read_bytes() for p in files}
    everything = b"".join(blobs.values())
    for name, token in served.issued.items():
        if name not in stored:
            continue  # a token of another org
        digest = hashlib.sha256(token.encode("ascii")).digest()
        assert stored[name] == digest, name
        assert digest in blobs[vault] + blobs[Path(f"{vault}-wal")]
    assert {"admin-main", "writer-main", "reader-main"} <= stored.keys()
    for token in served.issued.values():
        body = token[len("crate_") :].encode()
        assert body not in everything
        for text in (token.encode(), token.encode("utf-16-le")):
            assert text not in everything
        assert token not in served.server.output()


# -- 2. what each role may do ---------------------------------------------------------


@contextlib.contextmanager
def outcome(allowed: bool, role: str, cannot: str) -> Iterator[None]:
    """Nothing raised when `allowed`; else exactly Forbidden, naming the role."""
    if allowed:
        yield
        return
    with pytest.raises(Forbidden) as denied:
        yield
    assert type(denied.value) is Forbidden
    assert f"{role}-main" in denied.value.message
    assert f"has the role {role}, which cannot {cannot}" in denied.value.message


def _public_key(
    s: Served, c: SecretsClient, admin: SecretsClient, role: str, allowed: bool
) -> None:
    with outcome(allowed, role, ""):
        body = c.transport.request("GET", f"/organization/{ORG}/secrets/public-key")
        assert "BEGIN PUBLIC KEY" in body["public_key_pem"]


def _whoami(s: Served, c: SecretsClient, admin: SecretsClient, role: str, allowed: bool) -> None:
    with outcome(allowed, role, ""):
        me = whoami(c)
        assert (me["role"], me["organization"], me["token"]) == (role, ORG, f"{role}-main")
        assert me["actor"] == f"token:{role}-main"
        assert (me["environments"], me["tags"]) == ([], [])


def _list(s: Served, c: SecretsClient, admin: SecretsClient, role: str, allowed: bool) -> None:
    with outcome(allowed, role, "read secrets"):
        assert SEED in names_in(c, MATRIX_ENV)


def _retrieve(s: Served, c: SecretsClient, admin: SecretsClient, role: str, allowed: bool) -> None:
    with outcome(allowed, role, "read secrets"):
        assert s.retrieve(c, MATRIX_ENV, [SEED]) == {SEED: SEED_VALUE}


def _history(s: Served, c: SecretsClient, admin: SecretsClient, role: str, allowed: bool) -> None:
    with outcome(allowed, role, "read secrets"):
        assert [v["version"] for v in c.history(MATRIX_ENV, SEED)] == [1]


def _store(s: Served, c: SecretsClient, admin: SecretsClient, role: str, allowed: bool) -> None:
    name = f"STORED_{role.upper()}"
    with outcome(allowed, role, "change secrets"):
        c.store(MATRIX_ENV, [(name, f"stored-by-{role}")])
    assert (name in names_in(admin, MATRIX_ENV)) == allowed
    if allowed:
        assert names_in(admin, MATRIX_ENV)[name]["actor"] == f"token:{role}-main"


def _delete(s: Served, c: SecretsClient, admin: SecretsClient, role: str, allowed: bool) -> None:
    name = f"DOOMED_{role.upper()}"
    admin.store(MATRIX_ENV, [(name, "doomed")])
    with outcome(allowed, role, "change secrets"):
        c.delete(MATRIX_ENV, name)
    assert (name in names_in(admin, MATRIX_ENV)) == (not allowed)


def _rollback(s: Served, c: SecretsClient, admin: SecretsClient, role: str, allowed: bool) -> None:
    name = f"ROLLED_{role.upper()}"
    admin.store(MATRIX_ENV, [(name, "first")])
    admin.store(MATRIX_ENV, [(name, "second")])
    with outcome(allowed, role, "change secrets"):
        c.rollback(MATRIX_ENV, name, 1)
    expected = ("first", 3) if allowed else ("second", 2)
    (got,) = admin.retrieve(MATRIX_ENV, [name], ephemeral=s.key)
    assert (got.value, got.version) == expected


def _env_list(s: Served, c: SecretsClient, admin: SecretsClient, role: str, allowed: bool) -> None:
    with outcome(allowed, role, "read secrets"):
        assert {"dev", "prod", "staging", MATRIX_ENV} <= set(c.environments())


def _env_create(
    s: Served, c: SecretsClient, admin: SecretsClient, role: str, allowed: bool
) -> None:
    env = f"made-by-{role}"
    with outcome(allowed, role, "manage environments"):
        c.create_environment(env)
    assert (env in admin.environments()) == allowed


def _env_delete(
    s: Served, c: SecretsClient, admin: SecretsClient, role: str, allowed: bool
) -> None:
    env = f"gone-by-{role}"
    admin.create_environment(env)
    admin.store(env, [("INSIDE", "inside-value")])
    with outcome(allowed, role, "manage environments"):
        assert c.delete_environment(env) == 1
    assert (env in admin.environments()) == (not allowed)


OPERATIONS: dict[str, tuple[str | None, Callable[..., None]]] = {
    # operation: (permission needed, check)
    "public-key": (None, _public_key),
    "whoami": (None, _whoami),
    "list": ("read", _list),
    "retrieve": ("read", _retrieve),
    "history": ("read", _history),
    "env-list": ("read", _env_list),
    "store": ("write", _store),
    "delete": ("write", _delete),
    "rollback": ("write", _rollback),
    "env-create": ("admin", _env_create),
    "env-delete": ("admin", _env_delete),
}
GRANTED = {
    "admin": {None, "read", "write", "admin"},
    "writer": {None, "read", "write"},
    "reader": {None, "read"},
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("role", ROLES)
def test_role_matrix(
    served: Served, role_clients: dict[str, SecretsClient], role: str, operation: str
) -> None:
    need, check = OPERATIONS[operation]
    check(served, role_clients[role], role_clients["admin"], role, need in GRANTED[role])


# -- 3. environment scope ----------------------------------------------------------


@pytest.fixture(scope="module")
def dev_only(served: Served, admin: SecretsClient) -> dict[str, SecretsClient]:
    return {
        role: served.client(served.token(f"{role}-dev", role, "--env", "dev"))
        for role in ("reader", "writer", "admin")
    }


def _limited_to_dev(error: pytest.ExceptionInfo[Forbidden], name: str, env: str) -> None:
    assert type(error.value) is Forbidden
    assert f"token {name!r} is limited to the environments dev, not {env!r}" in (
        error.value.message
    )


def test_env_scoped_token_works_in_its_env(
    served: Served, dev_only: dict[str, SecretsClient], admin: SecretsClient
) -> None:
    reader, writer = dev_only["reader"], dev_only["writer"]
    assert "SCOPED_DEV" in names_in(reader, "dev")
    assert served.retrieve(reader, "dev", ["SCOPED_DEV"]) == {"SCOPED_DEV": "dev-value-13aa"}
    assert [v["version"] for v in reader.history("dev", "SCOPED_DEV")] == [1]
    writer.store("dev", [("WRITTEN_IN_DEV", "dev-written")])
    assert served.retrieve(admin, "dev", ["WRITTEN_IN_DEV"]) == {"WRITTEN_IN_DEV": "dev-written"}
    me = whoami(reader)
    assert (me["role"], me["environments"]) == ("reader", ["dev"])


@pytest.mark.parametrize("role", ["reader", "writer", "admin"])
def test_env_scoped_token_lists_only_its_envs(
    dev_only: dict[str, SecretsClient], role: str
) -> None:
    assert dev_only[role].environments() == ["dev"]


@pytest.mark.parametrize("env", ["prod", "staging"])
def test_env_scoped_reader_is_refused_elsewhere(
    served: Served, dev_only: dict[str, SecretsClient], env: str
) -> None:
    reader = dev_only["reader"]
    reads: list[Callable[[], object]] = [
        lambda: reader.list_secrets(env),
        lambda: served.retrieve(reader, env),
        lambda: served.retrieve(reader, env, ["SCOPED_PROD"]),
        lambda: reader.history(env, "SCOPED_PROD"),
    ]
    for read in reads:
        with pytest.raises(Forbidden) as denied:
            read()
        _limited_to_dev(denied, "reader-dev", env)


def test_env_scoped_writer_cannot_change_other_envs(
    served: Served, dev_only: dict[str, SecretsClient], admin: SecretsClient
) -> None:
    writer = dev_only["writer"]
    changes: list[Callable[[], object]] = [
        lambda: writer.store("prod", [("WRITTEN_IN_PROD", "nope")]),
        lambda: writer.store("prod", [("SCOPED_PROD", "overwritten")]),
        lambda: writer.store("prod", [("BATCH_A", "a"), ("BATCH_B", "b")]),
        lambda: writer.delete("prod", "SCOPED_PROD"),
        lambda: writer.rollback("prod", "SCOPED_PROD", 1),
    ]
    for change in changes:
        with pytest.raises(Forbidden) as denied:
            change()
        _limited_to_dev(denied, "writer-dev", "prod")
    after = names_in(admin, "prod")
    assert set(after) == {"SCOPED_PROD"}
    assert after["SCOPED_PROD"]["version"] == 2
    assert served.retrieve(admin, "prod", ["SCOPED_PROD"]) == {"SCOPED_PROD": "prod-value-72fe-v2"}


@pytest.mark.parametrize("action", ["delete", "create"])
def test_env_scoped_admin_cannot_manage_other_envs(
    dev_only: dict[str, SecretsClient], admin: SecretsClient, action: str
) -> None:
    scoped = dev_only["admin"]
    with pytest.raises(Forbidden):
        if action == "delete":
            scoped.delete_environment("scratch")
        else:
            scoped.create_environment("outside-dev")


# -- 4. tag scope -------------------------------------------------------------


@pytest.fixture(scope="module")
def team_a_reader(served: Served, admin: SecretsClient) -> SecretsClient:
    return served.client(served.token("reader-team-a", "reader", "--tags", "team-a"))


@pytest.fixture(scope="module")
def team_a_writer(served: Served, admin: SecretsClient) -> SecretsClient:
    admin.store(TAG_WRITE_ENV, [("W_A1", "wa1-first")], ["team-a"])
    admin.store(TAG_WRITE_ENV, [("W_B1", "wb1-first")], ["team-b"])
    admin.store(TAG_WRITE_ENV, [("W_B1", "wb1-second")])
    admin.store(TAG_WRITE_ENV, [("W_U1", "wu1-untagged")])
    return served.client(served.token("writer-team-a", "writer", "--tags", "team-a"))


def _outside_tags(error: pytest.ExceptionInfo[Forbidden]) -> None:
    assert type(error.value) is Forbidden
    assert "this token's tags (team-a)" in error.value.message


def test_tag_scoped_reader_sees_only_its_tag(served: Served, team_a_reader: SecretsClient) -> None:
    listed = names_in(team_a_reader, TAG_ENV)
    assert set(listed) == {"T_A1", "T_A2"}
    assert served.retrieve(team_a_reader, TAG_ENV) == {
        "T_A1": TAGGED["T_A1"][1],
        "T_A2": TAGGED["T_A2"][1],
    }
    assert served.retrieve(team_a_reader, TAG_ENV, ["T_A1"]) == {"T_A1": TAGGED["T_A1"][1]}
    assert served.retrieve(team_a_reader, TAG_ENV, tags=["shared"]) == {"T_A2": TAGGED["T_A2"][1]}
    assert team_a_reader.list_secrets(TAG_ENV, ["team-b"]) == []
    assert served.retrieve(team_a_reader, TAG_ENV, tags=["team-b"]) == {}
    assert [v["version"] for v in team_a_reader.history(TAG_ENV, "T_A1")] == [1]
    me = whoami(team_a_reader)
    assert (me["role"], me["tags"], me["environments"]) == ("reader", ["team-a"], [])


@pytest.mark.parametrize(
    "names", [["T_B1"], ["T_U1"], ["T_A1", "T_B1"]], ids=["team-b", "untagged", "mixed"]
)
def test_tag_scoped_reader_is_refused_named_secrets_outside(
    served: Served, team_a_reader: SecretsClient, names: list[str]
) -> None:
    with pytest.raises(Forbidden) as denied:
        served.retrieve(team_a_reader, TAG_ENV, names)
    _outside_tags(denied)
    outside = [n for n in names if n != "T_A1"]
    with pytest.raises(Forbidden) as denied:
        team_a_reader.history(TAG_ENV, outside[0])
    _outside_tags(denied)


TAG_DENIALS: dict[str, Callable[[SecretsClient], object]] = {
    "new-untagged": lambda w: w.store(TAG_WRITE_ENV, [("W_NEW_UNTAGGED", "x")]),
    "new-team-b": lambda w: w.store(TAG_WRITE_ENV, [("W_NEW_B", "x")], ["team-b"]),
    "overwrite-b-keeping-tags": lambda w: w.store(TAG_WRITE_ENV, [("W_B1", "x")]),
    "overwrite-b-retagged-a": lambda w: w.store(TAG_WRITE_ENV, [("W_B1", "x")], ["team-a"]),
    "overwrite-untagged": lambda w: w.store(TAG_WRITE_ENV, [("W_U1", "x")], ["team-a"]),
    "strip-team-a": lambda w: w.store(TAG_WRITE_ENV, [("W_A1", "x")], ["team-b"]),
    "batch-with-one-outside": lambda w: w.store(
        TAG_WRITE_ENV, [("W_BATCH_NEW", "x"), ("W_B1", "y")], ["team-a"]
    ),
    "delete-b": lambda w: w.delete(TAG_WRITE_ENV, "W_B1"),
    "rollback-b": lambda w: w.rollback(TAG_WRITE_ENV, "W_B1", 1),
}


@pytest.mark.parametrize("attempt", list(TAG_DENIALS))
def test_tag_scoped_writer_cannot_change_outside_its_tag(
    served: Served, team_a_writer: SecretsClient, admin: SecretsClient, attempt: str
) -> None:
    before = names_in(admin, TAG_WRITE_ENV)
    with pytest.raises(Forbidden) as denied:
        TAG_DENIALS[attempt](team_a_writer)
    _outside_tags(denied)
    assert names_in(admin, TAG_WRITE_ENV) == before
    values = served.retrieve(admin, TAG_WRITE_ENV, ["W_A1", "W_B1", "W_U1"])
    assert values == {"W_A1": "wa1-first", "W_B1": "wb1-second", "W_U1": "wu1-untagged"}


def test_tag_scoped_writer_changes_secrets_carrying_its_tag(
    served: Served, team_a_writer: SecretsClient, admin: SecretsClient
) -> None:
    team_a_writer.store(TAG_WRITE_ENV, [("W_A_NEW", "new-a")], ["team-a"])
    team_a_writer.store(TAG_WRITE_ENV, [("W_A_BOTH", "both")], ["team-a", "team-b"])
    listed = names_in(admin, TAG_WRITE_ENV)
    assert listed["W_A_NEW"]["tags"] == ["team-a"]
    assert listed["W_A_BOTH"]["tags"] == ["team-a", "team-b"]
    assert set(names_in(team_a_writer, TAG_WRITE_ENV)) >= {"W_A_NEW", "W_A_BOTH"}
    assert "W_B1" not in names_in(team_a_writer, TAG_WRITE_ENV)
    team_a_writer.store(TAG_WRITE_ENV, [("W_A_NEW", "new-a-2")])  # keeps team-a
    team_a_writer.rollback(TAG_WRITE_ENV, "W_A_NEW", 1)
    assert served.retrieve(admin, TAG_WRITE_ENV, ["W_A_NEW"]) == {"W_A_NEW": "new-a"}
    team_a_writer.delete(TAG_WRITE_ENV, "W_A_BOTH")
    assert "W_A_BOTH" not in names_in(admin, TAG_WRITE_ENV)


# -- 5. expiry ---------------------------------------------------------------------


def test_token_expires_on_time(served: Served, admin: SecretsClient) -> None:
    created = served.crate(
        "token", "create", "short-lived", "--role", "reader", "--expires", "2s", "--json"
    )
    assert created.returncode == 0, created
    info = json.loads(created.stdout)
    served.issued["short-lived"] = info["token"]
    client = served.client(info["token"])
    assert "SEED" in names_in(client, MATRIX_ENV)  # works until it expires
    expires = datetime.strptime(info["expires_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    remaining = (expires - datetime.now(UTC)).total_seconds()
    assert 0 < remaining <= 2
    time.sleep(remaining + 0.2)
    for request in (lambda: client.list_secrets(MATRIX_ENV), lambda: whoami(client)):
        with pytest.raises(Unauthorized) as denied:
            request()
        assert isinstance(denied.value, Unauthorized) and not isinstance(denied.value, Forbidden)
        assert "expired" in denied.value.message
        assert "short-lived" in denied.value.message
    status, body = raw(
        served, "GET", f"/organization/{ORG}/environments", f"Bearer {info['token']}"
    )
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    assert "expired" in body["error"]["message"]
    listed = json.loads(served.crate("token", "list", "--json", check=True).stdout)
    (entry,) = [t for t in listed if t["name"] == "short-lived"]
    assert entry["expired"] is True
    assert "(expired)" in served.crate("token", "list", check=True).stdout
    assert TokenExpired.http_status == 401


@pytest.mark.parametrize("value", ["0d", "abc", "5y", "0s", "-1d", "1.5h", "d", "10000000000s"])
def test_invalid_expiry_is_refused(served: Served, value: str) -> None:
    result = served.crate("token", "create", "never-made", "--role", "reader", "--expires", value)
    assert_clean_error(result, 2)
    assert "--expires" in result.stderr
    listed = json.loads(served.crate("token", "list", "--json", check=True).stdout)
    assert "never-made" not in {t["name"] for t in listed}


# -- 6. revocation ------------------------------------------------------------


def test_revocation_applies_to_the_next_request(served: Served, admin: SecretsClient) -> None:
    client = served.client(served.token("to-revoke", "writer"))
    transport = client.transport
    assert isinstance(transport, HttpTransport)
    assert SEED in names_in(client, MATRIX_ENV)
    connection = transport._conn
    assert connection is not None  # kept alive for the next request
    revoked = served.crate("token", "revoke", "to-revoke")
    assert revoked.returncode == 0, revoked
    assert "revoked token 'to-revoke'" in revoked.stderr
    assert revoked.stdout == ""
    with pytest.raises(Unauthorized) as denied:
        client.list_secrets(MATRIX_ENV)
    assert type(denied.value) is Unauthorized
    assert "revoked" in denied.value.message
    assert transport._conn is connection  # same connection, no server restart
    with pytest.raises(Unauthorized):
        client.store(MATRIX_ENV, [("AFTER_REVOKE", "x")])
    assert "AFTER_REVOKE" not in names_in(admin, MATRIX_ENV)
    listed = json.loads(served.crate("token", "list", "--json", check=True).stdout)
    assert "to-revoke" not in {t["name"] for t in listed}


def _server_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.slow
def test_revocation_survives_several_workers(tmp_path: Path) -> None:
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs /proc to count the server's worker threads")
    home = tmp_path / "crate-home"
    CrateRunner(home)("env", "list", check=True)
    with CrateServer(home, "--workers", "4") as server:
        token = server.token("victim", "admin")
        path = f"/organization/{ORG}/environments"
        before = _server_threads(server.pid)
        first = HttpTransport(server.url, token)
        first.request("GET", path)  # worker 1 opens the vault
        first.close()

        def burst() -> None:
            for _ in range(15):
                transport = HttpTransport(server.url, token)
                transport.request("GET", path)
                transport.close()

        for _ in range(5):
            clients = [threading.Thread(target=burst) for _ in range(6)]
            for t in clients:
                t.start()
            for t in clients:
                t.join()
            if _server_threads(server.pid) >= before + 2:
                break
        else:
            pytest.skip("the server never ran two workers at once")
        # Ordinary CLI use while the server runs.
        server.crate("token", "list", check=True)
        server.crate("token", "revoke", "victim", check=True)
        after = HttpTransport(server.url, token)
        try:
            with pytest.raises(Unauthorized):
                after.request("GET", path)
        finally:
            after.close()


# -- 7. tampering, other orgs, bad credentials -------------------------------------


TAMPERING = {
    # edited column: (options at creation, its new value in SQLite)
    "role": ((), "admin"),
    "envs": (("--env", "dev"), "[]"),
    "tags": (("--tags", "team-a"), "[]"),
    "expires_at": (("--expires", "30d"), ""),
    "name": ((), "renamed-token"),
}


@pytest.mark.parametrize("column", list(TAMPERING))
def test_an_edited_token_row_grants_nothing(served: Served, column: str) -> None:
    options, new_value = TAMPERING[column]
    name = f"tamper-{column.replace('_', '-')}"
    token = served.token(name, "reader", "--org", TAMPER_ORG, *options)
    client = served.client(token, TAMPER_ORG)
    assert whoami(client)["role"] == "reader"
    assert "dev" in client.environments()
    vault_sql(
        served,
        TAMPER_ORG,
        f"UPDATE tokens SET {column} = ? WHERE name = ?",
        (new_value, name),
    )
    for request in (
        client.environments,
        lambda: whoami(client),
        lambda: client.create_environment(f"by-{name}"),
        lambda: client.list_secrets("prod"),
    ):
        with pytest.raises(Unauthorized) as denied:
            request()
        assert type(denied.value) is Unauthorized
    status, body = raw(served, "GET", f"/organization/{TAMPER_ORG}/environments", f"Bearer {token}")
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    assert (f"by-{name}",) not in vault_sql(served, TAMPER_ORG, "SELECT name FROM environments")
    for extra in ((), ("--json",)):
        result = served.crate("token", "list", "--org", TAMPER_ORG, *extra)
        assert_clean_error(result, 5, hidden=(token,))
        assert "integrity" in result.stderr


def test_a_token_row_moved_onto_another_grants_nothing(served: Served) -> None:
    strong = served.token("swap-admin", "admin", "--org", TAMPER_ORG)
    weak = served.token("swap-reader", "reader", "--org", TAMPER_ORG)
    weak_hash = hashlib.sha256(weak.encode()).digest()
    vault_sql(
        served, TAMPER_ORG, "UPDATE tokens SET hash = ? WHERE name = 'swap-reader'", (b"\0" * 32,)
    )
    vault_sql(
        served, TAMPER_ORG, "UPDATE tokens SET hash = ? WHERE name = 'swap-admin'", (weak_hash,)
    )
    for token in (weak, strong):
        with pytest.raises(Unauthorized):
            whoami(served.client(token, TAMPER_ORG))
        with pytest.raises(Unauthorized):
            served.client(token, TAMPER_ORG).create_environment("swapped-in")
    assert ("swapped-in",) not in vault_sql(served, TAMPER_ORG, "SELECT name FROM environments")


@pytest.fixture(scope="module")
def other_org(served: Served) -> SecretsClient:
    client = served.client(served.token("beta-admin", "admin", "--org", OTHER_ORG), OTHER_ORG)
    client.store("dev", [("BETA_ONLY", "beta-value-6a0b")])
    return client


def test_a_token_is_valid_only_for_its_org(
    served: Served, other_org: SecretsClient, admin: SecretsClient
) -> None:
    beta_token = served.issued["beta-admin"]
    me = whoami(other_org)
    assert (me["organization"], me["role"], me["token"]) == (OTHER_ORG, "admin", "beta-admin")
    # A personal admin token on beta's paths, and beta's token on personal's.
    for token, org in ((served.issued["admin-main"], OTHER_ORG), (beta_token, ORG)):
        intruder = served.client(token, org)
        for request in (
            lambda c=intruder: c.list_secrets("dev"),
            lambda c=intruder: served.retrieve(c, "dev"),
            lambda c=intruder: c.environments(),
            lambda c=intruder: c.transport.request(
                "GET", f"/organization/{c.org}/secrets/public-key"
            ),
            lambda c=intruder: c.store("dev", [("PLANTED", "x")]),
            lambda c=intruder: c.create_environment("planted"),
        ):
            with pytest.raises(Unauthorized) as denied:
                request()
            assert type(denied.value) is Unauthorized
            assert "BETA_ONLY" not in denied.value.message
    status, body = raw(
        served,
        "GET",
        f"/organization/{OTHER_ORG}/secrets?env=dev",
        f"Bearer {served.issued['admin-main']}",
    )
    assert status == 401
    assert set(body) == {"error"}
    assert "beta-value" not in json.dumps(body) and "BETA_ONLY" not in json.dumps(body)
    assert set(names_in(other_org, "dev")) == {"BETA_ONLY"}
    assert "planted" not in other_org.environments()
    assert "PLANTED" not in names_in(admin, "dev")


def test_an_org_that_does_not_exist_is_not_revealed(served: Served, admin: SecretsClient) -> None:
    token = served.issued["admin-main"]
    for org in ("no-such-org", OTHER_ORG):
        status, body = raw(served, "GET", f"/organization/{org}/environments", f"Bearer {token}")
        assert status == 401, body
        assert body["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer garbage",
        "Bearer crate_",
        "Basic YWRtaW46YWRtaW4=",
        "Token {admin}",
        "Bearer {admin}x",
        "Bearer {admin_prefix}",
        "Bearer {unknown}",
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/organization/{ORG}/environments"),
        ("GET", f"/organization/{ORG}/secrets/public-key"),
        ("GET", "/whoami"),
        ("POST", f"/organization/{ORG}/environments"),
    ],
    ids=["env-list", "public-key", "whoami", "env-create"],
)
def test_bad_credentials_get_401(
    served: Served,
    admin: SecretsClient,
    authorization: str | None,
    method: str,
    path: str,
) -> None:
    good = served.issued["admin-main"]
    if authorization is not None:
        authorization = authorization.format(
            admin=good, admin_prefix=good[:-1], unknown=new_token()
        )
    body = {"name": "never-created"} if method == "POST" else None
    status, reply = raw(served, method, path, authorization, body)
    assert status == 401, reply
    assert reply["error"]["code"] == "unauthorized"
    if (
        not authorization
        or not authorization.lower().startswith("bearer ")
        or (authorization.strip().lower() == "bearer")
    ):
        assert "needs an API token" in reply["error"]["message"]
    else:
        assert "not valid" in reply["error"]["message"]
    assert good not in json.dumps(reply)
    assert "never-created" not in admin.environments()


def test_clients_without_a_good_token_get_unauthorized(served: Served) -> None:
    for token in (None, "crate_garbage", new_token()):
        client = served.client(token)
        with pytest.raises(Unauthorized):
            client.list_secrets("dev")
        with pytest.raises(Unauthorized):
            client.public_key()


# -- 8. the CLI -------------------------------------------------------------------


def test_create_prints_the_token_once_and_the_role_on_stderr(served: Served) -> None:
    result = served.crate("token", "create", "cli-writer", "--role", "writer")
    assert result.returncode == 0, result
    token = result.stdout.strip()
    served.issued["cli-writer"] = token
    assert result.stdout == token + "\n"
    assert TOKEN_RE.fullmatch(token)
    assert token not in result.stderr
    assert result.stderr.startswith("crate: created writer token 'cli-writer' for 'personal'")
    assert "shown only this once" in result.stderr
    assert whoami(served.client(token))["role"] == "writer"


def test_create_describes_the_scope(served: Served) -> None:
    result = served.crate(
        "token",
        "create",
        "cli-scoped",
        "--role",
        "reader",
        "--env",
        "prod",
        "--env",
        "dev",
        "--tags",
        "team-b,team-a",
        "--expires",
        "30d",
    )
    assert result.returncode == 0, result
    served.issued["cli-scoped"] = result.stdout.strip()
    assert "created reader token 'cli-scoped'" in result.stderr
    assert "limited to environments dev, prod; tags team-a, team-b" in result.stderr
    assert ", expires 20" in result.stderr


def test_create_json_has_token_and_role(served: Served) -> None:
    result = served.crate(
        "token", "create", "cli-json", "--role", "admin", "--env", "dev", "--json"
    )
    assert result.returncode == 0, result
    info = json.loads(result.stdout)
    served.issued["cli-json"] = info["token"]
    assert TOKEN_RE.fullmatch(info["token"])
    assert info["role"] == "admin"
    assert info["name"] == "cli-json"
    assert info["organization"] == ORG
    assert info["environments"] == ["dev"]
    assert info["tags"] == []
    assert info["expires_at"] is None
    assert info["token"] not in result.stderr
    assert whoami(served.client(info["token"]))["environments"] == ["dev"]


def _token_names(served: Served) -> set[str]:
    return {t["name"] for t in json.loads(served.crate("token", "list", "--json").stdout)}


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("create", "admin-main", "--role", "reader"), 7),
        (("create", "cli-unknown-env", "--role", "reader", "--env", "nope"), 3),
        (("create", "cli-bad-env", "--role", "reader", "--env", "Bad Env"), 2),
        (("create", "cli-bad-tag", "--role", "reader", "--tags", "Team A"), 2),
        (("create", "bad name", "--role", "reader"), 2),
        (("create", "bad/name", "--role", "reader"), 2),
        (("create", "_leading", "--role", "reader"), 2),
        (("create", "x" * 64, "--role", "reader"), 2),
        (("create", "cli-superuser", "--role", "superuser"), 2),
        (("create", "cli-no-role"), 2),
        (("create", "cli-no-org", "--role", "reader", "--org", "no-such-org"), 3),
        (("revoke", "no-such-token"), 3),
        (("revoke", "bad name"), 2),
    ],
    ids=[
        "duplicate",
        "unknown-env",
        "bad-env",
        "bad-tag",
        "space-in-name",
        "slash-in-name",
        "leading-underscore",
        "name-too-long",
        "unknown-role",
        "no-role",
        "unknown-org",
        "revoke-unknown",
        "revoke-bad-name",
    ],
)
def test_cli_errors(
    served: Served, role_clients: dict[str, SecretsClient], args: tuple[str, ...], code: int
) -> None:
    before = _token_names(served)
    result: Result = served.crate("token", *args)
    assert_clean_error(result, code, hidden=tuple(served.issued.values()))
    assert not TOKEN_RE.search(result.stderr)
    assert _token_names(served) == before
