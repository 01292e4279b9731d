"""The Crate protocol at the API core (DESIGN §4), with real vaults and keys.

Requests are built by hand, as a hostile or buggy client could send them,
and go straight to `ApiCore.handle`. A store is accepted only as a JWE
(RSA-OAEP-256/A256GCM) sealed to the org's key for exactly that org, env and
name; every rejection must leave the vault unchanged. A retrieval answers
only to the client's ephemeral key and echoes its nonce.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from crate_cli.errors import IntegrityError
from crate_cli.session import Session
from crate_cli.vault import jwe
from crate_cli.vault.api import MAX_RETRIEVE_NAMES, ApiCore, Principal, Request, Response
from crate_cli.vault.storage.interface import AuditFilter

ORG = "personal"
SECRETS = f"/organization/{ORG}/secrets"
PLAINTEXT = "plaintext-that-must-never-be-stored-3c9e"
_MISSING = object()  # a field left out of a request body


class Api:
    """A caller of the API core, as a transport would be."""

    def __init__(self, session: Session) -> None:
        assert session.org() == ORG
        self.core = ApiCore(session.service)
        self.principal = Principal(actor="tester@integration", client="test")
        reply = self.ok("GET", f"{SECRETS}/public-key")
        assert reply["alg"] == "RSA-OAEP-256"
        self.kid: str = reply["key_id"]
        self.org_public = load_pem_public_key(reply["public_key_pem"].encode("ascii"))

    def call(
        self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None
    ) -> Response:
        wire = None if body is None else json.loads(json.dumps(body))
        return self.core.handle(Request(method, path, self.principal, query or {}, wire))

    def ok(self, method: str, path: str, body: Any = None, **query: str) -> dict[str, Any]:
        response = self.call(method, path, body, query)
        assert response.status in (200, 201), response
        return response.body

    def seal(self, value: str | bytes, key: Any = None, **header: Any) -> str:
        """A JWE of `value`; header defaults to this org, env dev, kid of the org key."""
        fields = {"kid": self.kid, "org": ORG, "env": "dev"}
        fields.update(header)
        fields = {k: v for k, v in fields.items() if v is not None}
        raw = value.encode("utf-8") if isinstance(value, str) else value
        return jwe.encrypt(key or self.org_public, raw, fields)

    def names(self, env: str = "dev") -> list[str]:
        return [s["name"] for s in self.ok("GET", SECRETS, env=env)["secrets"]]

    def retrieve(
        self, names: list[str], key: Any, nonce: str, env: str = "dev", **more: Any
    ) -> Response:
        body = {
            "environment": env,
            "names": names,
            "public_key": jwe.public_jwk(key.public_key()),
            "nonce": nonce,
            **more,
        }
        return self.call("POST", f"{SECRETS}/retrieve", body)


@pytest.fixture
def api(personal_home, session: Session) -> Api:
    return Api(session)


@pytest.fixture(scope="module")
def client_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def assert_error(response: Response, status: int, code: str) -> None:
    assert response.status == status, response
    assert response.body["error"]["code"] == code, response
    assert PLAINTEXT not in json.dumps(response.body)


def assert_nothing_stored(api: Api, *names: str) -> None:
    for env in ("dev", "staging", "prod"):
        assert api.names(env) == []
    for name in names:
        history = api.call("GET", f"{SECRETS}/{name}/versions", query={"env": "dev"})
        assert history.status == 404, history


def store_body(api: Api, name: str = "DB_URL", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "environment": "dev",
        "encrypted_value": api.seal(PLAINTEXT, name=name),
        "sealed": True,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not _MISSING}


# -- the well-formed request works (so every rejection below is meaningful) ------------


def test_well_formed_sealed_store_round_trips(api: Api, client_key) -> None:
    reply = api.ok("PUT", SECRETS, store_body(api, tags=["db"]))
    assert (reply["name"], reply["environment"], reply["version"]) == ("DB_URL", "dev", 1)
    assert api.names() == ["DB_URL"]

    response = api.retrieve(["DB_URL"], client_key, "n" * 24)
    bundle = json.loads(jwe.decrypt(client_key, response.body["bundle"]).plaintext)
    assert bundle["secrets"][0]["value"] == PLAINTEXT


def test_well_formed_sealed_batch_store(api: Api) -> None:
    token = api.seal(json.dumps({"A": "one", "B": "two"}))
    body = {
        "environment": "dev",
        "sealed": True,
        "secrets": [{"name": "A"}, {"name": "B"}],
        "encrypted_values": token,
    }
    reply = api.ok("PUT", SECRETS, body)
    assert [s["name"] for s in reply["secrets"]] == ["A", "B"]
    assert api.names() == ["A", "B"]


# -- stores that are not sealed -----------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"encrypted_value": _MISSING, "sealed": _MISSING, "value": PLAINTEXT},
        {"encrypted_value": _MISSING, "value": PLAINTEXT},
        {"value": PLAINTEXT},
        {"sealed": False},
        {"sealed": _MISSING},
        {"sealed": "true"},
        {"sealed": 1},
        {"encrypted_value": _MISSING},
    ],
    ids=[
        "plaintext-only",
        "plaintext-claiming-sealed",
        "plaintext-beside-jwe",
        "sealed-false",
        "sealed-missing",
        "sealed-string",
        "sealed-one",
        "no-encrypted-value",
    ],
)
def test_unsealed_store_is_refused(api: Api, overrides: dict[str, Any]) -> None:
    response = api.call("PUT", SECRETS, store_body(api, **overrides))
    assert_error(response, 400, "sealed_transport_required")
    assert_nothing_stored(api, "DB_URL")


@pytest.mark.parametrize(
    "body", [None, [], "DB_URL=x", 42], ids=["no-body", "list", "string", "number"]
)
def test_store_body_that_is_not_an_object(api: Api, body: Any) -> None:
    assert_error(api.call("PUT", SECRETS, body), 400, "bad_request")
    assert_nothing_stored(api)


# -- sealed values that are malformed or made for something else ---------------------


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwe",
        "a.b.c.d.e",
        "....",
        42,
        {"protected": "x"},
        jwe.b64u_encode(PLAINTEXT.encode()),
    ],
    ids=["word", "five-junk-parts", "empty-parts", "number", "object", "base64-plaintext"],
)
def test_encrypted_value_that_is_not_a_jwe(api: Api, token: Any) -> None:
    response = api.call("PUT", SECRETS, store_body(api, encrypted_value=token))
    assert_error(response, 400, "invalid_sealed_value")
    assert_nothing_stored(api, "DB_URL")


@pytest.mark.parametrize(
    "header",
    [
        {"name": "OTHER"},
        {"env": "prod"},
        {"org": "acme"},
        {"name": None},
        {"env": None},
        {"org": None},
    ],
    ids=["other-name", "other-env", "other-org", "no-name", "no-env", "no-org"],
)
def test_jwe_for_another_target(api: Api, header: dict[str, Any]) -> None:
    fields = {"name": "DB_URL", **header}
    response = api.call(
        "PUT", SECRETS, store_body(api, encrypted_value=api.seal(PLAINTEXT, **fields))
    )
    assert_error(response, 400, "invalid_sealed_value")
    assert_nothing_stored(api, "DB_URL", "OTHER")


def test_jwe_sealed_for_name_a_sent_for_name_b(api: Api) -> None:
    token = api.seal(PLAINTEXT, name="A")
    response = api.call("PUT", SECRETS, store_body(api, "B", encrypted_value=token))
    assert_error(response, 400, "invalid_sealed_value")
    assert "A" in response.body["error"]["message"]
    assert_nothing_stored(api, "A", "B")


def test_relay_rewriting_the_target_in_the_header(api: Api) -> None:
    """The header is authenticated: editing its `name` breaks the JWE instead of moving it."""
    token = api.seal(PLAINTEXT, name="A")
    header = json.loads(jwe.b64u_decode(token.split(".")[0]))
    header["name"] = "B"
    forged_header = jwe.b64u_encode(json.dumps(header, separators=(",", ":")).encode())
    forged = ".".join([forged_header, *token.split(".")[1:]])

    response = api.call("PUT", SECRETS, store_body(api, "B", encrypted_value=forged))
    assert_error(response, 400, "invalid_sealed_value")
    assert_nothing_stored(api, "A", "B")


def test_wrong_kid(api: Api) -> None:
    token = api.seal(PLAINTEXT, name="DB_URL", kid="not-the-org-key-id")
    response = api.call("PUT", SECRETS, store_body(api, encrypted_value=token))
    assert_error(response, 400, "invalid_sealed_value")
    assert_nothing_stored(api, "DB_URL")


def test_missing_kid(api: Api) -> None:
    token = jwe.encrypt(
        api.org_public, PLAINTEXT.encode(), {"org": ORG, "env": "dev", "name": "DB_URL"}
    )
    response = api.call("PUT", SECRETS, store_body(api, encrypted_value=token))
    assert_error(response, 400, "invalid_sealed_value")
    assert_nothing_stored(api, "DB_URL")


@pytest.mark.parametrize("bits", [2048, 3072])
def test_jwe_encrypted_to_another_rsa_key(api: Api, bits: int) -> None:
    """Right kid and target, but encrypted to a key that is not the org's."""
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    token = api.seal(PLAINTEXT, key=stranger.public_key(), name="DB_URL")
    response = api.call("PUT", SECRETS, store_body(api, encrypted_value=token))
    assert_error(response, 400, "invalid_sealed_value")
    assert_nothing_stored(api, "DB_URL")


def test_sealed_value_breaking_the_value_rules(api: Api) -> None:
    """Properly sealed, but the value itself is refused: NUL, bad UTF-8, too large."""
    for raw, status, code in [
        (b"a\x00b", 400, "bad_request"),
        (b"\xff\xfe", 400, "bad_request"),
        (b"x" * (64 * 1024 + 1), 413, "payload_too_large"),
    ]:
        token = api.seal(raw, name="DB_URL")
        assert_error(api.call("PUT", SECRETS, store_body(api, encrypted_value=token)), status, code)
    assert_nothing_stored(api, "DB_URL")


# -- the batch form ----------------------------------------------------------------------


def batch_body(api: Api, listed: list[str], sealed: dict[str, str] | str) -> dict[str, Any]:
    token = api.seal(sealed if isinstance(sealed, str) else json.dumps(sealed))
    return {
        "environment": "dev",
        "sealed": True,
        "secrets": [{"name": n} for n in listed],
        "encrypted_values": token,
    }


@pytest.mark.parametrize(
    ("listed", "sealed"),
    [
        (["A", "B"], {"A": "1", "C": "3"}),
        (["A"], {"A": "1", "B": "2"}),
        (["A", "B"], {"A": "1"}),
        (["A", "A"], {"A": "1"}),
        (["A"], {"A": 1}),
        (["A"], '["A", "1"]'),
        (["A"], "not json"),
    ],
    ids=[
        "other-names",
        "extra-sealed",
        "missing-sealed",
        "duplicate-listed",
        "non-text-value",
        "json-list",
        "not-json",
    ],
)
def test_batch_that_does_not_match_its_list(
    api: Api, listed: list[str], sealed: dict[str, Any] | str
) -> None:
    response = api.call("PUT", SECRETS, batch_body(api, listed, sealed))
    assert_error(response, 400, "invalid_sealed_value")
    assert_nothing_stored(api, "A", "B", "C")


def test_single_value_jwe_replayed_as_a_batch(api: Api) -> None:
    body = batch_body(api, ["A"], {"A": "1"})
    body["encrypted_values"] = api.seal(json.dumps({"A": "1"}), name="A")
    assert_error(api.call("PUT", SECRETS, body), 400, "invalid_sealed_value")
    assert_nothing_stored(api, "A")


def test_batch_for_another_env(api: Api) -> None:
    body = batch_body(api, ["A"], {"A": "1"})
    body["encrypted_values"] = api.seal(json.dumps({"A": "1"}), env="prod")
    assert_error(api.call("PUT", SECRETS, body), 400, "invalid_sealed_value")
    assert_nothing_stored(api, "A")


def test_batch_is_all_or_nothing(api: Api) -> None:
    """One bad value in a batch stores none of the others."""
    response = api.call("PUT", SECRETS, batch_body(api, ["A", "B"], {"A": "fine", "B": "nul\x00"}))
    assert_error(response, 400, "bad_request")
    assert_nothing_stored(api, "A", "B")


# -- ephemeral retrieval -----------------------------------------------------------------


@pytest.fixture
def stored(api: Api) -> Api:
    api.ok("PUT", SECRETS, store_body(api))
    return api


def test_bundle_opens_only_with_the_clients_key(stored: Api, client_key) -> None:
    nonce = secrets.token_urlsafe(24)
    response = stored.retrieve(["DB_URL"], client_key, nonce)
    assert response.status == 200, response
    token = response.body["bundle"]
    assert PLAINTEXT not in token

    header = jwe.parse_header(token)
    assert (header["alg"], header["enc"]) == ("RSA-OAEP-256", "A256GCM")
    bundle = json.loads(jwe.decrypt(client_key, token).plaintext)
    assert bundle["nonce"] == nonce
    assert (bundle["org"], bundle["environment"]) == (ORG, "dev")
    assert bundle["secrets"] == [{"name": "DB_URL", "value": PLAINTEXT, "version": 1}]

    for bits in (2048, 3072):
        other = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        with pytest.raises(IntegrityError):
            jwe.decrypt(other, token)


@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_the_bundle_comes_in_the_layout_asked_for(stored: Api, client_key, layout: str) -> None:
    api = stored
    sealed = api.seal("second-value", name="API_KEY")
    api.ok("PUT", SECRETS, store_body(api, name="API_KEY", encrypted_value=sealed))
    response = api.retrieve([], client_key, "n" * 24, layout=layout)
    assert response.status == 200, response
    bundle = json.loads(jwe.decrypt(client_key, response.body["bundle"]).plaintext)
    members = {"org", "environment", "nonce"}
    if layout == "columns":
        assert set(bundle) == members | {"names", "values", "versions"}
        assert bundle["names"] == ["API_KEY", "DB_URL"]
        assert bundle["values"] == ["second-value", PLAINTEXT]
        assert bundle["versions"] == [1, 1]
    else:
        assert set(bundle) == members | {"secrets"}
        assert [s["name"] for s in bundle["secrets"]] == ["API_KEY", "DB_URL"]


@pytest.mark.parametrize("layout", ["", "Columns", 5, None, ["columns"]])
def test_an_unknown_layout_is_a_bad_request(stored: Api, client_key, layout: object) -> None:
    response = stored.retrieve(["DB_URL"], client_key, "n" * 24, layout=layout)
    if layout is None:  # an absent member: the old layout
        assert response.status == 200, response
        return
    assert_error(response, 400, "bad_request")
    assert "bundle" not in response.body


def test_each_retrieval_echoes_its_own_nonce(stored: Api, client_key) -> None:
    first, second = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    bundles = [
        json.loads(
            jwe.decrypt(
                client_key, stored.retrieve(["DB_URL"], client_key, n).body["bundle"]
            ).plaintext
        )
        for n in (first, second)
    ]
    assert [b["nonce"] for b in bundles] == [first, second]


@pytest.mark.parametrize("nonce", ["short", "x" * 129, ""], ids=["short", "long", "empty"])
def test_nonce_out_of_bounds(stored: Api, client_key, nonce: str) -> None:
    assert_error(stored.retrieve(["DB_URL"], client_key, nonce), 400, "bad_request")


@pytest.fixture(scope="module")
def bad_jwks() -> list[Any]:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    good = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with_private = dict(jwe.public_jwk(good.public_key()))
    with_private["d"] = jwe.b64u_encode(good.private_numbers().d.to_bytes(256, "big"))
    n = good.public_key().public_numbers().n
    q = secrets.randbits(2047) | (1 << 2046) | 1  # 3 * q: 2048 or 2049 bits, odd

    def raw(modulus: int | bytes, exponent: int | bytes = 65537) -> dict[str, str]:
        def encode(v: int | bytes) -> str:
            return jwe.b64u_encode(
                v if isinstance(v, bytes) else v.to_bytes((v.bit_length() + 7) // 8, "big")
            )

        return {"kty": "RSA", "n": encode(modulus), "e": encode(exponent)}

    return [
        jwe.public_jwk(weak.public_key()),
        with_private,
        {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "RSA", "n": 12345, "e": "AQAB"},
        raw(n + 1),  # an even modulus
        raw(3 * q),  # a small factor
        raw(1009 * (q >> 8 | 1) * 257),  # small factors near the bound
        raw(b"\x00" + n.to_bytes(256, "big")),  # a leading zero byte
        raw(secrets.randbits(8200) | (1 << 8199) | 1),  # too large
        raw(n, 65538),  # an even exponent
        raw(n, 1),
        raw(n, 2**33 + 1),
        raw(n, b"\x00\x01\x00\x01"),  # an exponent with a leading zero
    ]


BAD_JWK_IDS = [
    "rsa-1024",
    "private-members",
    "ec-key",
    "n-not-text",
    "even-modulus",
    "factor-3",
    "factors-257-1009",
    "leading-zero-n",
    "rsa-8200",
    "even-exponent",
    "exponent-1",
    "exponent-too-large",
    "leading-zero-e",
]


@pytest.mark.parametrize("index", range(len(BAD_JWK_IDS)), ids=BAD_JWK_IDS)
def test_unacceptable_client_key_gets_no_bundle(stored: Api, bad_jwks, index: int) -> None:
    body = {
        "environment": "dev",
        "names": ["DB_URL"],
        "public_key": bad_jwks[index],
        "nonce": "n" * 24,
    }
    response = stored.call("POST", f"{SECRETS}/retrieve", body)
    assert response.status >= 400, response
    assert "bundle" not in response.body
    assert PLAINTEXT not in json.dumps(response.body)


@pytest.mark.parametrize("index", range(len(BAD_JWK_IDS)), ids=BAD_JWK_IDS)
def test_unacceptable_client_key_is_a_client_error(stored: Api, bad_jwks, index: int) -> None:
    """Refused (400) before anything is read: the audit log records a failed
    retrieval, never one that served something."""
    from crate_cli.vault import audit

    keys = stored.core.service.org(ORG)
    before, _ = audit.query(keys, AuditFilter(action="retrieve"), limit=1000)
    body = {
        "environment": "dev",
        "names": ["DB_URL"],
        "public_key": bad_jwks[index],
        "nonce": "n" * 24,
    }
    assert_error(stored.call("POST", f"{SECRETS}/retrieve", body), 400, "bad_request")
    after, _ = audit.query(keys, AuditFilter(action="retrieve"), limit=1000)
    (new,) = after[len(before) :]
    assert (new.outcome, new.names, new.details) == ("failed", ["DB_URL"], {"error": "bad_request"})


def test_too_many_names(stored: Api, client_key) -> None:
    names = [f"N_{i}" for i in range(MAX_RETRIEVE_NAMES + 1)]
    response = stored.retrieve(names, client_key, "n" * 24)
    assert_error(response, 400, "bad_request")
    assert str(MAX_RETRIEVE_NAMES) in response.body["error"]["message"]

    # At the limit the request is accepted and only fails on the missing names.
    response = stored.retrieve(names[:MAX_RETRIEVE_NAMES], client_key, "n" * 24)
    assert_error(response, 404, "not_found")


def test_unknown_environment(stored: Api, client_key) -> None:
    assert_error(stored.retrieve(["DB_URL"], client_key, "n" * 24, env="qa"), 404, "not_found")
    assert_error(stored.call("GET", SECRETS, query={"env": "qa"}), 404, "not_found")
    body = store_body(
        stored, environment="qa", encrypted_value=stored.seal(PLAINTEXT, env="qa", name="DB_URL")
    )
    assert_error(stored.call("PUT", SECRETS, body), 404, "not_found")
    assert "qa" not in stored.ok("GET", f"/organization/{ORG}/environments")["environments"]


def test_unknown_org(api: Api) -> None:
    response = api.call("GET", "/organization/nobody/secrets", query={"env": "dev"})
    assert_error(response, 404, "not_found")


# -- routing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", "/organization", f"/organization/{ORG}", f"/organization/{ORG}/secretz", "/admin"],
)
def test_unknown_route(api: Api, path: str) -> None:
    assert_error(api.call("GET", path), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", SECRETS),
        ("PUT", f"{SECRETS}/public-key"),
        ("GET", f"{SECRETS}/retrieve"),
        ("PUT", f"{SECRETS}/DB_URL/versions"),
        ("PATCH", f"/organization/{ORG}/environments"),
    ],
)
def test_wrong_method(api: Api, method: str, path: str) -> None:
    assert_error(api.call(method, path, body={}), 405, "method_not_allowed")
    assert_nothing_stored(api)
