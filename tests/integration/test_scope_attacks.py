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

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CrateRunner
from crate_server import CrateServer

from crate_cli.client import SecretsClient
from crate_cli.ephemeral import EphemeralKey
from crate_cli.errors import Forbidden
from crate_cli.transport.http import HttpTransport

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
