"""The HTTP adapter over the API core, in process: crate's ASGI app under
uvicorn on 127.0.0.1 in a thread (tests/support/http_server.py), reached by
the real client over HTTP. `crate server` as a command, its options, its
limits and its abuse are in tests/e2e/test_server_http.py and
test_server_abuse.py."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crate_cli.errors import Forbidden, Unauthorized
from crate_cli.server.app import OPENAPI_PATH
from tests.support.homes import session_at
from tests.support.http_server import ServedHome


@pytest.fixture
def served(acme_home: Path) -> Iterator[ServedHome]:
    with ServedHome(acme_home) as running:
        yield running


def get(served: ServedHome, path: str, token: str | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(served.url.removeprefix("http://"), timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_a_sealed_store_and_an_ephemeral_retrieval_over_http(
    served: ServedHome, acme_home: Path, acme_secrets: dict[str, dict[str, list[str]]]
) -> None:
    client = served.client(served.token("ci", "writer"))
    (record,) = client.store("dev", [("OVER_HTTP", "sent-sealed-4a1c")])
    assert (record["name"], record["version"]) == ("OVER_HTTP", 1)
    found = {s.name: s.value for s in client.retrieve("dev", [])}
    assert found == {
        **{name: values[-1] for name, values in acme_secrets["dev"].items()},
        "OVER_HTTP": "sent-sealed-4a1c",
    }
    with session_at(acme_home) as s:  # what the server wrote, read in another session
        (again,) = s.client("acme").retrieve("dev", ["OVER_HTTP"])
    assert again.value == "sent-sealed-4a1c"


def test_the_health_check_and_the_api_document_need_no_token(served: ServedHome) -> None:
    assert get(served, "/healthz") == (200, {"status": "ok"})
    status, document = get(served, "/openapi.json")
    assert status == 200
    assert document == json.loads(OPENAPI_PATH.read_text())


def test_without_a_good_token_the_api_answers_401(served: ServedHome) -> None:
    for token in (None, "garbage", "crate_" + "A" * 43):
        status, body = get(served, "/organization/acme/environments", token)
        assert status == 401, body
        assert body["error"]["code"] == "unauthorized"
        with pytest.raises(Unauthorized):
            served.client(token).list_secrets("dev")


def test_a_token_does_what_its_role_and_scope_allow(served: ServedHome) -> None:
    reader = served.client(served.token("reader-dev", "reader", envs=("dev",)))
    assert {s["name"] for s in reader.list_secrets("dev")} == {"DB_URL", "API_KEY", "ROTATED"}
    with pytest.raises(Forbidden):
        reader.store("dev", [("NOPE", "never-stored")])
    with pytest.raises(Forbidden):
        reader.retrieve("prod", [])
    admin = served.client(served.token("admin", "admin"))
    assert "NOPE" not in {s["name"] for s in admin.list_secrets("dev")}
