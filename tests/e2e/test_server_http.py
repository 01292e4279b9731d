"""`crate server` over real HTTP: real server processes, real sockets.

Each server is a `crate server --listen 127.0.0.1:0` process (tests/support/crate_server.py)
in a copy of one template home made once per module (master key, org
`personal`, an admin and a reader token). Most tests share one server with the
default limits; the tests of a limit (timeouts, the in-flight cap), of TLS, of
shutdown and of org scoping start their own. Requests go through the real
client (SecretsClient over HttpTransport) or, where the exact status, headers
or bytes on the wire matter, through http.client or a raw socket.

Every HTTP answer read by hand must be JSON, carry no traceback and, for an
error, have the shape {"error": {"code", "message", "hint"}}; every server
must stop with exit code 0 and a log without a traceback.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import pytest

from crate_cli.client.ephemeral import EphemeralKey
from crate_cli.client.secrets import SecretsClient
from crate_cli.client.transport.http import HttpTransport
from crate_cli.errors import CrateError, ServerUnreachable, TlsFailure
from crate_cli.server.app import OPENAPI_PATH
from crate_cli.vault import jwe
from crate_cli.vault.api import MAX_RETRIEVE_NAMES
from tests.support.crate_runner import CrateRunner, Result, assert_clean_error
from tests.support.crate_server import CrateServer
from tests.support.tls_ca import make_tls

pytestmark = pytest.mark.e2e

ORG = "personal"
SECRETS = f"/organization/{ORG}/secrets"
RETRIEVE = f"{SECRETS}/retrieve"
MAX_BODY = 1024 * 1024
PLAINTEXT = "plaintext-that-must-never-be-stored-61f0c2"


# -- templates and servers ----------------------------------------------------


class Template(NamedTuple):
    home: Path
    admin: str
    reader: str


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """A home after first use, with an admin and a reader token for `personal`."""
    home = tmp_path_factory.mktemp("server-template") / "crate-home"
    runner = CrateRunner(home)
    admin = runner("token", "create", "admin", "--role", "admin", check=True).stdout.strip()
    reader = runner("token", "create", "reader", "--role", "reader", check=True).stdout.strip()
    return Template(home, admin, reader)


def copy_home(template: Template, where: Path) -> Path:
    home = where / "crate-home"
    shutil.copytree(template.home, home)
    return home


@contextlib.contextmanager
def running(home: Path, *args: str) -> Iterator[CrateServer]:
    """A started server; on the way out it must stop cleanly (exit 0, no traceback)."""
    server = CrateServer(home, *args)
    server.start()
    try:
        yield server
    finally:
        code = server.stop()
        log = server.output()
        assert code == 0, log
        assert "Traceback" not in log, log


class Served(NamedTuple):
    server: CrateServer
    admin: str
    reader: str

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, token: str | None = None, **kwargs: Any) -> SecretsClient:
        return SecretsClient(HttpTransport(self.url, token or self.admin, **kwargs), ORG)


@pytest.fixture(scope="module")
def main(template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The shared server, with the default limits."""
    with running(copy_home(template, tmp_path_factory.mktemp("main"))) as server:
        yield Served(server, template.admin, template.reader)


@pytest.fixture(scope="module")
def retrieval_key() -> EphemeralKey:
    """One ephemeral key for the retrievals that do not test the key itself (RSA is slow)."""
    key = EphemeralKey()
    key.get()
    return key


# -- raw HTTP -----------------------------------------------------------------


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]  # lowercase names
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def code(self) -> str:
        return str(self.json["error"]["code"])


def check_reply(reply: Reply) -> Reply:
    """What every answer of the server must be: JSON, no traceback, errors in shape."""
    assert b"Traceback" not in reply.raw, reply
    assert reply.headers.get("content-type") == "application/json", reply
    assert reply.headers.get("cache-control") == "no-store", reply
    body = reply.json
    assert isinstance(body, dict), reply
    if reply.status >= 400:
        assert set(body) == {"error"}, reply
        error = body["error"]
        assert set(error) == {"code", "message", "hint"}, reply
        assert isinstance(error["code"], str) and isinstance(error["message"], str), reply
        assert "Traceback" not in error["message"]
    return reply


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def request(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
    source: str | None = None,
) -> Reply:
    """One request on a fresh http.client connection (from the address `source`:
    every 127.x.y.z reaches loopback, and the server counts each apart)."""
    host, port = address(url)
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers or {})
    bind = (source, 0) if source else None
    conn = http.client.HTTPConnection(host, port, timeout=timeout, source_address=bind)
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        reply = Reply(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()
    return check_reply(reply)


def request_head(method: str, path: str, token: str, extra: str) -> bytes:
    """A request line and headers, ready for a raw socket."""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


def read_reply(sock: socket.socket, timeout: float = 10.0) -> Reply:
    """One response from a raw socket; a reset after the whole response is fine."""
    sock.settimeout(timeout)
    data = b""
    head_end = -1
    length = None
    while True:
        if head_end >= 0 and length is not None and len(data) >= head_end + 4 + length:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        data += chunk
        if head_end < 0:
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                for line in data[:head_end].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
    assert head_end >= 0 and length is not None, f"no complete HTTP response: {data!r}"
    lines = data[:head_end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    reply = Reply(status, headers, data[head_end + 4 : head_end + 4 + length])
    assert len(reply.raw) == length, f"truncated response: {data!r}"
    return check_reply(reply)


def connect(url: str) -> socket.socket:
    return socket.create_connection(address(url), timeout=10)


def in_threads(count: int, work: Callable[[int], Any], timeout: float = 60.0) -> list[Any]:
    """Run work(0..count-1) in threads started together; results (or exceptions) in order."""
    results: list[Any] = [None] * count
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        try:
            barrier.wait(10)
            results[i] = work(i)
        except BaseException as e:  # reported by the caller
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a request thread hung"
    return results


class RecordingTransport(HttpTransport):
    """HttpTransport that records the status of every exchange (retries included),
    from the client address `source` if given (plain HTTP only)."""

    def __init__(self, *args: Any, source: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.statuses: list[int] = []
        self.source = source

    def _open(self) -> Any:
        if self.source is None:
            return super()._open()
        from crate_cli.client.transport.http import _TcpConnection

        opened = _TcpConnection.__new__(_TcpConnection)
        host, port = address(self.base_url)
        opened.conn = http.client.HTTPConnection(
            host, port, timeout=self.timeout, source_address=(self.source, 0)
        )
        opened.conn.connect()
        opened.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return opened

    def _exchange(
        self, method: str, target: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes, float | None]:
        answer = super()._exchange(method, target, data, headers)
        self.statuses.append(answer[0])
        return answer


# -- sealing by hand ----------------------------------------------------------


class Sealer:
    """Seals values to the org's public key as the client does, for raw requests."""

    def __init__(self, served: Served) -> None:
        self.kid, self.key = served.client().public_key()

    def one(self, value: str, name: str, env: str = "dev") -> str:
        header = {"kid": self.kid, "org": ORG, "env": env, "name": name}
        return jwe.encrypt(self.key, value.encode("utf-8"), header)

    def batch(self, values: dict[str, str], env: str = "dev") -> str:
        plaintext = json.dumps(values).encode("utf-8")
        return jwe.encrypt(self.key, plaintext, {"kid": self.kid, "org": ORG, "env": env})

    def batch_body(self, values: dict[str, str], env: str = "dev") -> dict[str, Any]:
        return {
            "environment": env,
            "sealed": True,
            "secrets": [{"name": n} for n in values],
            "encrypted_values": self.batch(values, env),
        }


def retrieval_body(key: EphemeralKey, names: list[str], env: str = "dev") -> dict[str, Any]:
    return {
        "environment": env,
        "names": names,
        "public_key": jwe.public_jwk(key.get().public_key()),
        "nonce": jwe.b64u_encode(os.urandom(24)),
    }


def open_bundle(key: EphemeralKey, reply: Reply) -> dict[str, str]:
    assert reply.status == 200, reply
    bundle = json.loads(jwe.decrypt(key.get(), reply.json["bundle"]).plaintext)
    return {s["name"]: s["value"] for s in bundle["secrets"]}


def listed(served: Served, env: str = "dev") -> dict[str, int]:
    """name -> version of every secret in env, as the API lists them."""
    return {s["name"]: s["version"] for s in served.client().list_secrets(env)}


# -- 1. what needs a token ----------------------------------------------------


def test_healthz_and_openapi_need_no_token(main: Served) -> None:
    health = request(main.url, "GET", "/healthz")
    assert (health.status, health.json) == (200, {"status": "ok"})
    assert len(health.headers["x-request-id"]) == 16
    document = request(main.url, "GET", "/openapi.json")
    assert document.status == 200
    assert document.json == json.loads(OPENAPI_PATH.read_text())
    assert document.json["openapi"] == "3.1.0"


API_CALLS: list[tuple[str, str, Any]] = [
    ("GET", "/whoami", None),
    ("GET", f"{SECRETS}/public-key", None),
    ("GET", f"{SECRETS}?env=dev", None),
    ("PUT", SECRETS, {"name": "X", "environment": "dev", "sealed": True, "encrypted_value": "x"}),
    ("POST", RETRIEVE, {"environment": "dev", "names": ["X"]}),
    ("DELETE", f"{SECRETS}/X?env=dev", None),
    ("GET", f"{SECRETS}/X/versions?env=dev", None),
    ("POST", f"{SECRETS}/X/rollback", {"environment": "dev", "to": 1}),
    ("GET", f"/organization/{ORG}/environments", None),
    ("POST", f"/organization/{ORG}/environments", {"name": "new-env"}),
    ("DELETE", f"/organization/{ORG}/environments/staging", None),
]


def test_every_api_route_needs_a_token(main: Served) -> None:
    before = listed(main)
    for i, (method, path, body) in enumerate(API_CALLS):
        for headers in (
            {},
            {"Authorization": "Bearer crate_" + "A" * 43},  # well formed, unknown
            {"Authorization": f"Basic {main.admin}"},  # not a bearer token
            {"Authorization": "Bearer "},
        ):
            # Each route from an address of its own: an address gets 20 failures
            # at once before 429 (tests/e2e/test_server_abuse.py).
            source = f"127.0.1.{10 + i}"
            reply = request(main.url, method, path, body, headers=headers, source=source)
            assert (reply.status, reply.code) == (401, "unauthorized"), (method, path, reply)
    # Nothing was done: the staging environment and the secrets are all there.
    assert "staging" in main.client().environments()
    assert listed(main) == before


# -- 2. sealed store, ephemeral retrieval, HTTP and HTTPS ---------------------

ROUND_TRIP = {
    "RT_ASCII": "s3cr3t-value",
    "RT_UNICODE": "pässwörd ✓ 🔑 密码 — ÿ \u200b end",
    "RT_LINES": 'line one\nline two\r\n\ttabbed "quoted" \\backslash\\ {json: true}',
    "RT_LARGE": (secrets.token_urlsafe(45_000) + "€")[:59_999] + "€",  # about 60 KB
}


def test_sealed_store_and_ephemeral_retrieval_over_http(main: Served) -> None:
    assert len(ROUND_TRIP["RT_LARGE"].encode()) > 60_000
    client = main.client()
    for name, value in ROUND_TRIP.items():
        (record,) = client.store("dev", [(name, value)])
        assert (record["name"], record["version"]) == (name, 1)
    batch = {f"RT_BATCH_{i}": f"batch-value-{i}-ü-{secrets.token_hex(4)}" for i in range(5)}
    records = client.store("dev", list(batch.items()), tags=["team"])
    assert sorted(r["name"] for r in records) == sorted(batch)

    # A fresh client (its own connection and ephemeral key) reads them back.
    reader = main.client(main.reader)
    expected = {**ROUND_TRIP, **batch}
    got = reader.retrieve("dev", list(expected))
    assert {s.name: s.value for s in got} == expected
    assert all(s.version == 1 for s in got)
    assert {s.name for s in reader.retrieve("dev", tags=["team"])} == set(batch)

    # A list names the secrets and never carries a value; neither does the log.
    raw_list = request(main.url, "GET", f"{SECRETS}?env=dev", token=main.reader)
    assert set(expected) <= {s["name"] for s in raw_list.json["secrets"]}
    log = main.server.output()
    for value in expected.values():
        assert value.encode() not in raw_list.raw
        assert value not in log

    # A second version of one of them, read back as the newest.
    client.store("dev", [("RT_ASCII", "second-version")])
    (latest,) = reader.retrieve("dev", ["RT_ASCII"])
    assert (latest.value, latest.version) == ("second-version", 2)
    (first,) = reader.retrieve("dev", ["RT_ASCII"], versions={"RT_ASCII": 1})
    assert first.value == ROUND_TRIP["RT_ASCII"]


def test_sealed_store_and_retrieval_over_https(template: Template, tmp_path: Path) -> None:
    ca, cert, key = make_tls(tmp_path)
    home = copy_home(template, tmp_path)
    with running(home, "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        assert server.url.startswith("https://127.0.0.1:"), server.url
        served = Served(server, template.admin, template.reader)
        # Clients close their connections before the stop, as a polite client does.
        with contextlib.ExitStack() as connections:

            def client(token: str, ca_file: str | None) -> SecretsClient:
                transport = HttpTransport(served.url, token, ca_file=ca_file)
                connections.callback(transport.close)
                return SecretsClient(transport, ORG)

            writer = client(template.admin, str(ca))
            value = "over TLS ✓ " + secrets.token_hex(16)
            writer.store("dev", [("TLS_SECRET", value)])
            (got,) = client(template.reader, str(ca)).retrieve("dev", ["TLS_SECRET"])
            assert (got.name, got.value, got.version) == ("TLS_SECRET", value, 1)

            # Without the private CA the certificate does not verify: no token is sent.
            stranger = client(template.admin, None)
            with pytest.raises(TlsFailure) as failure:
                stranger.list_secrets("dev")
            assert "did not verify" in failure.value.message
            with pytest.raises(TlsFailure):
                stranger.store("dev", [("TLS_NEVER", "never-stored")])
            # Plain HTTP to the TLS port gets no API answer.
            plain = HttpTransport(server.url.replace("https://", "http://"), template.admin)
            connections.callback(plain.close)
            with pytest.raises(CrateError):
                plain.request("GET", f"{SECRETS}?env=dev")
            assert [s["name"] for s in writer.list_secrets("dev")] == ["TLS_SECRET"]


def test_https_server_stops_promptly_with_an_idle_client(
    template: Template, tmp_path: Path
) -> None:
    ca, cert, key = make_tls(tmp_path)
    server = CrateServer(
        copy_home(template, tmp_path), "--tls-cert", str(cert), "--tls-key", str(key)
    )
    server.start()
    idle = HttpTransport(server.url, template.admin, ca_file=str(ca))
    try:
        assert idle.request("GET", "/whoami")["token"] == "admin"
        started = time.monotonic()
        code = server.stop(timeout=5)  # SIGKILL past 5 s
        elapsed = time.monotonic() - started
    finally:
        idle.close()
        server.stop()
    assert (code, elapsed < 5) == (0, True), (code, elapsed, server.output())


# -- 3. sealed transport only -------------------------------------------------


def test_plaintext_store_is_rejected_and_nothing_is_stored(main: Served) -> None:
    sealer = Sealer(main)
    good = sealer.one(PLAINTEXT, "PLAIN_A")
    bodies: list[dict[str, Any]] = [
        {"name": "PLAIN_A", "environment": "dev", "value": PLAINTEXT},
        {"name": "PLAIN_A", "environment": "dev", "value": PLAINTEXT, "sealed": True},
        {"name": "PLAIN_A", "environment": "dev", "value": PLAINTEXT, "sealed": "true"},
        # A sealed value next to a plaintext one is still a plaintext store.
        {
            "name": "PLAIN_A",
            "environment": "dev",
            "value": PLAINTEXT,
            "sealed": True,
            "encrypted_value": good,
        },
        {"name": "PLAIN_A", "environment": "dev", "encrypted_value": good},  # no sealed flag
        {"name": "PLAIN_A", "environment": "dev", "encrypted_value": good, "sealed": False},
        {"name": "PLAIN_A", "environment": "dev", "sealed": True},  # nothing sealed
        {
            "environment": "dev",
            "sealed": True,
            "secrets": [{"name": "PLAIN_A", "value": PLAINTEXT}],
        },
    ]
    before = listed(main)
    for body in bodies:
        reply = request(main.url, "PUT", SECRETS, body, main.admin)
        assert (reply.status, reply.code) == (400, "sealed_transport_required"), (body, reply)
        assert PLAINTEXT.encode() not in reply.raw
    assert listed(main) == before
    assert "PLAIN_A" not in before
    assert PLAINTEXT not in main.server.output()


def test_sealed_value_moved_to_another_target_is_rejected(main: Served) -> None:
    sealer = Sealer(main)
    value = "moved-value-" + secrets.token_hex(8)
    for_a = sealer.one(value, "MOVED_A")
    before = {env: listed(main, env) for env in ("dev", "staging")}
    moved = [
        {"name": "MOVED_B", "environment": "dev", "sealed": True, "encrypted_value": for_a},
        # The right name in another environment, and a value sealed for prod sent to dev.
        {"name": "MOVED_A", "environment": "staging", "sealed": True, "encrypted_value": for_a},
        {
            "name": "MOVED_A",
            "environment": "dev",
            "sealed": True,
            "encrypted_value": sealer.one(value, "MOVED_A", env="prod"),
        },
        # A batch sealed for dev sent to staging, and one whose list names another secret.
        {**sealer.batch_body({"MOVED_A": value}), "environment": "staging"},
        {**sealer.batch_body({"MOVED_A": value}), "secrets": [{"name": "MOVED_B"}]},
        # A single value's JWE where a batch is expected.
        {
            "environment": "dev",
            "sealed": True,
            "secrets": [{"name": "MOVED_A"}],
            "encrypted_values": for_a,
        },
    ]
    for body in moved:
        reply = request(main.url, "PUT", SECRETS, body, main.admin)
        assert (reply.status, reply.code) == (400, "invalid_sealed_value"), (body, reply)
        assert value.encode() not in reply.raw
    assert {env: listed(main, env) for env in ("dev", "staging")} == before

    # The same JWE under the name it was sealed for is accepted: only the move was wrong.
    reply = request(
        main.url,
        "PUT",
        SECRETS,
        {"name": "MOVED_A", "environment": "dev", "sealed": True, "encrypted_value": for_a},
        main.admin,
    )
    assert reply.status == 200, reply
    assert listed(main) == {**before["dev"], "MOVED_A": 1}
    (got,) = main.client().retrieve("dev", ["MOVED_A"])
    assert got.value == value


# -- 4. sizes and shapes ------------------------------------------------------


def test_body_over_1_mib_with_content_length_is_413(main: Served) -> None:
    before = listed(main)
    for declared, sent in ((MAX_BODY + 1, b""), (5 * MAX_BODY, b"x" * 4096)):
        with contextlib.closing(connect(main.url)) as sock:
            sock.sendall(
                request_head("PUT", SECRETS, main.admin, f"Content-Length: {declared}\r\n")
            )
            sock.sendall(sent)
            reply = read_reply(sock)
        assert (reply.status, reply.code) == (413, "payload_too_large"), reply
        assert reply.headers.get("connection") == "close"
    # A real body of 1 MiB + 1 byte, sent until the server hangs up.
    body = b'{"pad": "' + b"p" * (MAX_BODY - 10) + b'"}'
    assert len(body) == MAX_BODY + 1
    with contextlib.closing(connect(main.url)) as sock:
        head = request_head("POST", RETRIEVE, main.admin, f"Content-Length: {len(body)}\r\n")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + body)
        reply = read_reply(sock)
    assert (reply.status, reply.code) == (413, "payload_too_large"), reply
    # Exactly 1 MiB is read and judged on its content (a missing field), not its size.
    body = body[:9] + body[10:]
    assert len(body) == MAX_BODY
    reply = request(main.url, "POST", RETRIEVE, token=main.admin, raw=body)
    assert (reply.status, reply.code) == (400, "bad_request"), reply
    assert listed(main) == before


def test_chunked_body_over_1_mib_is_413(main: Served) -> None:
    with contextlib.closing(connect(main.url)) as sock:
        sock.sendall(request_head("PUT", SECRETS, main.admin, "Transfer-Encoding: chunked\r\n"))
        chunk = b"c" * 65536
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent <= MAX_BODY + 2 * len(chunk):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        reply = read_reply(sock)
    assert (reply.status, reply.code) == (413, "payload_too_large"), reply
    assert reply.headers.get("connection") == "close"

    # A small chunked body is read as usual.
    with contextlib.closing(connect(main.url)) as sock:
        sock.sendall(request_head("GET", f"{SECRETS}?env=dev", main.admin, ""))
        listing = read_reply(sock)
        payload = b'{"name": "chunked-env"}'
        sock.sendall(
            request_head(
                "POST",
                f"/organization/{ORG}/environments",
                main.admin,
                "Transfer-Encoding: chunked\r\n",
            )
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
        )
        created = read_reply(sock)
    assert listing.status == 200
    assert (created.status, created.json) == (201, {"name": "chunked-env"})


def test_malformed_bodies_are_400_bad_request(main: Served, retrieval_key: EphemeralKey) -> None:
    good_retrieval = retrieval_body(retrieval_key, ["RT_ASCII"])
    sealed = {"name": "TYPES", "environment": "dev", "sealed": True, "encrypted_value": "x.y"}
    raw_bodies: list[tuple[str, str, bytes]] = [
        ("PUT", SECRETS, b"{bad json"),
        ("PUT", SECRETS, b'{"name": "A",'),
        ("PUT", SECRETS, b'{"name": "\xc3\x28"}'),  # not UTF-8
        ("PUT", SECRETS, b"[" * 100_000 + b"]" * 100_000),  # nested too deep
        ("POST", RETRIEVE, b"{'single': 'quotes'}"),
        ("POST", RETRIEVE, b"NaN-ish garbage"),
    ]
    json_bodies: list[tuple[str, str, Any]] = [
        # Not an object.
        ("PUT", SECRETS, [sealed]),
        ("PUT", SECRETS, "a string"),
        ("PUT", SECRETS, 42),
        ("POST", RETRIEVE, [good_retrieval]),
        ("POST", RETRIEVE, None),  # no body at all
        ("POST", f"/organization/{ORG}/environments", ["new"]),
        ("POST", f"{SECRETS}/RT_ASCII/rollback", "to 1"),
        # Fields of the wrong type.
        ("PUT", SECRETS, {**sealed, "environment": 5}),
        ("PUT", SECRETS, {**sealed, "name": ["TYPES"]}),
        ("PUT", SECRETS, {**sealed, "tags": "team"}),
        ("PUT", SECRETS, {**sealed, "tags": [1, 2]}),
        (
            "PUT",
            SECRETS,
            {"environment": "dev", "sealed": True, "secrets": "TYPES", "encrypted_values": "x"},
        ),
        (
            "PUT",
            SECRETS,
            {"environment": "dev", "sealed": True, "secrets": [5], "encrypted_values": "x"},
        ),
        ("POST", RETRIEVE, {**good_retrieval, "environment": ["dev"]}),
        ("POST", RETRIEVE, {**good_retrieval, "names": "RT_ASCII"}),
        ("POST", RETRIEVE, {**good_retrieval, "names": [1]}),
        ("POST", RETRIEVE, {**good_retrieval, "nonce": 12345678901234567890}),
        ("POST", RETRIEVE, {**good_retrieval, "nonce": "short"}),
        ("POST", RETRIEVE, {**good_retrieval, "versions": {"RT_ASCII": "1"}}),
        ("POST", RETRIEVE, {**good_retrieval, "versions": {"RT_ASCII": True}}),
        ("POST", RETRIEVE, {**good_retrieval, "versions": ["RT_ASCII"]}),
        ("POST", RETRIEVE, {**good_retrieval, "public_key": "-----BEGIN PUBLIC KEY-----"}),
        ("POST", RETRIEVE, {**good_retrieval, "public_key": {"kty": "RSA", "n": "AQAB"}}),
        ("POST", RETRIEVE, {**good_retrieval, "tags": "team"}),
        ("POST", f"{SECRETS}/RT_ASCII/rollback", {"environment": "dev", "to": "1"}),
        ("POST", f"{SECRETS}/RT_ASCII/rollback", {"environment": "dev", "to": True}),
        ("POST", f"/organization/{ORG}/environments", {"name": 3}),
    ]
    cases = raw_bodies + [
        (m, p, b"" if b is None else json.dumps(b).encode()) for m, p, b in json_bodies
    ]
    before = listed(main)
    for method, path, raw in cases:
        reply = request(main.url, method, path, token=main.admin, raw=raw)
        assert (reply.status, reply.code) == (400, "bad_request"), (method, path, raw[:80], reply)
    assert listed(main) == before
    # The well-formed retrieval the broken ones were made from is answered.
    assert request(main.url, "POST", RETRIEVE, good_retrieval, main.admin).status in (200, 404)


def test_at_most_1000_names_per_retrieval(main: Served, retrieval_key: EphemeralKey) -> None:
    client = main.client()
    client.create_environment("bulk")
    names = [f"BULK_{i:04d}" for i in range(MAX_RETRIEVE_NAMES)]
    client.store("bulk", [(n, f"bulk-{n}") for n in names])
    got = client.retrieve("bulk", names, ephemeral=retrieval_key)
    assert {s.name: s.value for s in got} == {n: f"bulk-{n}" for n in names}

    too_many = retrieval_body(retrieval_key, [*names, "BULK_EXTRA"], env="bulk")
    reply = request(main.url, "POST", RETRIEVE, too_many, main.admin)
    assert (reply.status, reply.code) == (400, "bad_request"), reply
    assert str(MAX_RETRIEVE_NAMES) in reply.json["error"]["message"]
    assert "bundle" not in reply.json


# -- 5. timeouts --------------------------------------------------------------

HEADER_TIMEOUT = BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def short_timeouts(
    template: Template, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    home = copy_home(template, tmp_path_factory.mktemp("timeouts"))
    args = ("--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT))
    with running(home, *args) as server:
        yield Served(server, template.admin, template.reader)


def closed_after(sock: socket.socket, trickle: bytes, every: float, limit: float) -> float | None:
    """Send `trickle` a byte at a time; seconds until the server closed the connection."""
    start = time.monotonic()
    pending = list(trickle)
    while time.monotonic() - start < limit:
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                data = b""
            assert data == b"", f"the server answered a request it never got whole: {data!r}"
            return time.monotonic() - start
        if pending:
            try:
                sock.send(bytes([pending.pop(0)]))
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start
    return None


def test_headers_that_arrive_too_slowly_are_cut_off(short_timeouts: Served) -> None:
    served = short_timeouts
    limit = HEADER_TIMEOUT + 2
    trickle = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 100
    outcome: dict[str, float | None] = {}

    def slowloris(name: str, data: bytes) -> None:
        with contextlib.closing(connect(served.url)) as sock:
            outcome[name] = closed_after(sock, data, every=0.1, limit=limit + 3)

    threads = [
        threading.Thread(target=slowloris, args=("trickle", trickle)),
        threading.Thread(target=slowloris, args=("silent", b"")),
    ]
    for t in threads:
        t.start()
    # Meanwhile (well within the header timeout) the server answers everyone else.
    time.sleep(0.1)
    assert request(served.url, "GET", "/healthz", timeout=5).status == 200
    whoami = request(served.url, "GET", "/whoami", token=served.admin, timeout=5)
    assert (whoami.status, whoami.json["token"]) == (200, "admin")
    assert not outcome, f"answered only after a slow connection was cut: {outcome}"
    for t in threads:
        t.join(limit + 5)
    for name in ("trickle", "silent"):
        elapsed = outcome.get(name)
        assert elapsed is not None, f"{name}: the connection stayed open past {limit + 3} s"
        assert HEADER_TIMEOUT - 0.2 <= elapsed <= limit, (name, elapsed)
    # The server is still healthy afterwards.
    assert request(served.url, "GET", "/healthz").status == 200


def test_body_that_arrives_too_slowly_is_408(short_timeouts: Served) -> None:
    served = short_timeouts
    for head in (
        request_head("PUT", SECRETS, served.admin, "Content-Length: 100\r\n"),
        request_head("POST", RETRIEVE, served.admin, "Transfer-Encoding: chunked\r\n"),
    ):
        with contextlib.closing(connect(served.url)) as sock:
            started = time.monotonic()
            sock.sendall(
                head + (b'{"names": ' if b"Content-Length" in head else b'a\r\n{"names": \r\n')
            )
            reply = read_reply(sock, timeout=BODY_TIMEOUT + 5)
            elapsed = time.monotonic() - started
        assert (reply.status, reply.code) == (408, "request_timeout"), reply
        assert reply.headers.get("connection") == "close"
        assert BODY_TIMEOUT - 0.2 <= elapsed <= BODY_TIMEOUT + 2, elapsed
    # A body that comes whole in time is served under the same limits.
    value = "under-short-timeouts-" + secrets.token_hex(20_000)
    served.client().store("dev", [("TIMELY", value)])
    (got,) = served.client().retrieve("dev", ["TIMELY"])
    assert got.value == value


# -- 6. the in-flight cap -----------------------------------------------------


@contextlib.contextmanager
def write_locked(home: Path, org: str = ORG) -> Iterator[None]:
    """Hold the write lock of an org's vault from this process (readers go on:
    WAL): every request that writes there waits in its worker."""
    import sqlite3

    conn = sqlite3.connect(home / "orgs" / f"{org}.vault", isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_requests_past_the_in_flight_cap_get_503_overloaded(
    template: Template, tmp_path: Path, retrieval_key: EphemeralKey
) -> None:
    home = copy_home(template, tmp_path)
    assert (home / "orgs" / f"{ORG}.vault").is_file()
    args = ("--max-in-flight", "1", "--workers", "1")
    with running(home, *args) as server:
        served = Served(server, template.admin, template.reader)
        values = {f"CAP_{i:02d}": f"cap-value-{i}-{secrets.token_hex(6)}" for i in range(40)}
        served.client().store("dev", list(values.items()))
        body = json.dumps(retrieval_body(retrieval_key, list(values))).encode()

        def retrieve(i: int) -> Reply:
            # From 30 addresses: the cap under test is the server's, not an address's.
            return request(
                served.url, "POST", RETRIEVE, token=template.reader, raw=body,
                source=f"127.0.2.{10 + i}",
            )  # fmt: skip

        def public_key() -> Reply:
            return request(served.url, "GET", f"{SECRETS}/public-key", token=template.admin)

        transport = RecordingTransport(served.url, template.admin)
        patient = SecretsClient(transport, ORG)
        patient.public_key()
        sealer = Sealer(served)
        held_body = json.dumps(sealer.batch_body({"HELD": "held-value"})).encode()

        # An authenticated store waits in the only worker for the vault's write
        # lock, and holds the only place meanwhile.
        head = request_head("PUT", SECRETS, template.admin, f"Content-Length: {len(held_body)}\r\n")
        held = connect(served.url)
        with contextlib.closing(held):
            with write_locked(home):
                held.sendall(head + held_body)
                deadline = time.monotonic() + 10
                while (probe := public_key()).status != 503:
                    assert probe.status == 200, probe
                    assert time.monotonic() < deadline, "the held request never took the place"
                    time.sleep(0.05)
                assert probe.json["error"]["message"].startswith("the server is at its limit")
                replies = in_threads(30, retrieve)
                for reply in replies:
                    assert isinstance(reply, Reply), reply
                    assert (reply.status, reply.code) == (503, "overloaded"), reply
                    assert reply.headers["retry-after"].isdigit(), reply
                    assert int(reply.headers["retry-after"]) >= 1
                # The health check says so too, without taking a place.
                assert request(served.url, "GET", "/healthz").status == 503
                # The real client, told to retry after a second, keeps trying on its
                # kept-alive connection (its sealed body unread by the 503).
                stored: list[Any] = []
                retrying = threading.Thread(
                    target=lambda: stored.append(patient.store("dev", [("RETRIED", "after 503")]))
                )
                retrying.start()
                deadline = time.monotonic() + 10
                while 503 not in transport.statuses:
                    assert time.monotonic() < deadline and retrying.is_alive(), transport.statuses
                    time.sleep(0.02)
                with pytest.raises(TimeoutError):
                    read_reply(held, timeout=0.3)  # still waiting for the lock
            # The lock is free: the held store is served in full.
            reply = read_reply(held)
            assert (reply.status, [s["name"] for s in reply.json["secrets"]]) == (200, ["HELD"])
        retrying.join(10)
        assert stored and stored[0][0]["name"] == "RETRIED", transport.statuses
        assert transport.statuses[-1] == 200 and set(transport.statuses) == {200, 503}
        (retried,) = patient.retrieve("dev", ["RETRIED"], ephemeral=retrieval_key)
        assert retried.value == "after 503"
        transport.close()

        # The place is free again; a burst gets answers or 503s, never a failure.
        assert request(served.url, "GET", "/healthz").status == 200
        replies = in_threads(30, retrieve)
        statuses = [r.status if isinstance(r, Reply) else r for r in replies]
        assert set(statuses) <= {200, 503}, statuses
        assert 200 in statuses, statuses
        for reply in replies:
            if reply.status == 503:
                assert reply.code == "overloaded" and reply.headers["retry-after"].isdigit()
            else:
                assert open_bundle(retrieval_key, reply) == values
        # No place was leaked by the rejected requests.
        assert open_bundle(retrieval_key, retrieve(0)) == values
        assert "internal error" not in server.output()


# -- 7. concurrent clients ----------------------------------------------------


@pytest.mark.slow
def test_twenty_concurrent_clients_lose_no_write(main: Served) -> None:
    env = "load"
    main.client().create_environment(env)
    clients, per_client = 20, 10
    # Twenty teammates: twenty addresses (one address has 16 requests in flight at most).
    transports = [
        RecordingTransport(main.url, main.admin, source=f"127.0.3.{10 + i}") for i in range(clients)
    ]
    written: dict[str, str] = {}

    def work(i: int) -> dict[str, str]:
        client = SecretsClient(transports[i], ORG)
        mine = {
            f"LOAD_{i:02d}_{j}": f"value {i}/{j} ✓ {secrets.token_urlsafe(24)}"
            for j in range(per_client)
        }
        for name, value in mine.items():
            (record,) = client.store(env, [(name, value)])
            assert (record["name"], record["version"]) == (name, 1)
        got = client.retrieve(env, list(mine))
        assert {s.name: s.value for s in got} == mine
        return mine

    results = in_threads(clients, work, timeout=120)
    for result in results:
        assert isinstance(result, dict), repr(result)
        written.update(result)
    statuses = [s for t in transports for s in t.statuses]
    assert all(s < 500 for s in statuses), sorted(set(statuses))
    assert len(statuses) == clients * (1 + per_client + 1)  # public key, stores, retrieval

    assert listed(main, env) == {name: 1 for name in written}
    assert len(written) == clients * per_client
    got = main.client(main.reader).retrieve(env, list(written))
    assert {s.name: s.value for s in got} == written


# -- 8. graceful shutdown -----------------------------------------------------


def test_sigterm_lets_requests_in_flight_finish(template: Template, tmp_path: Path) -> None:
    home = copy_home(template, tmp_path)
    server = CrateServer(home, "--workers", "2", "--body-timeout", "60")
    server.start()
    served = Served(server, template.admin, template.reader)
    slow: list[tuple[socket.socket, bytes, dict[str, str]]] = []
    try:
        sealer = Sealer(served)
        # Slow requests: line, headers and half the body sent before the SIGTERM.
        for j in range(3):
            values = {
                f"SLOW_{j}_{i:02d}": f"slow {j}/{i} {secrets.token_hex(8)}" for i in range(50)
            }
            body = json.dumps(sealer.batch_body(values)).encode()
            sock = connect(server.url)
            sock.sendall(
                request_head("PUT", SECRETS, template.admin, f"Content-Length: {len(body)}\r\n")
                + body[: len(body) // 2]
            )
            slow.append((sock, body, values))

        # Writers storing batch after batch until the server goes away.
        batches: dict[tuple[int, int], list[tuple[str, str]]] = {}
        answered: set[tuple[int, int]] = set()
        failures: list[BaseException] = []
        lock = threading.Lock()

        def writer(t: int) -> None:
            client = served.client(timeout=30)
            for k in range(1000):
                values = [(f"W{t}_{k:03d}_{i:03d}", f"w {t}/{k}/{i}") for i in range(300)]
                with lock:
                    batches[(t, k)] = values
                try:
                    client.store("dev", values)
                except ServerUnreachable:
                    return
                except BaseException as e:
                    failures.append(e)
                    return
                with lock:
                    answered.add((t, k))

        writers = [threading.Thread(target=writer, args=(t,), daemon=True) for t in range(4)]
        for w in writers:
            w.start()
        deadline = time.monotonic() + 20
        while len(answered) < 8:
            assert time.monotonic() < deadline and not failures, failures
            time.sleep(0.02)
        os.kill(server.pid, signal.SIGTERM)

        # Shutdown has begun when the listening socket is gone: a connection
        # is refused, or reset when the socket closed with it still queued.
        host, port = address(server.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((host, port), timeout=1).close()
            except (ConnectionRefusedError, ConnectionResetError):
                break
            assert time.monotonic() < deadline, "the server kept accepting after SIGTERM"
            time.sleep(0.02)
        assert server.proc is not None and server.proc.poll() is None, "did not wait"

        # The requests in flight are still served, in full.
        for sock, body, values in slow:
            with contextlib.closing(sock):
                sock.sendall(body[len(body) // 2 :])
                reply = read_reply(sock)
            assert reply.status == 200, reply
            assert sorted(s["name"] for s in reply.json["secrets"]) == sorted(values)
        code = server.proc.wait(30)
        for w in writers:
            w.join(30)
            assert not w.is_alive()
    finally:
        server.stop()
        for sock, _, _ in slow:
            sock.close()
    log = server.output()
    assert code == 0, log
    assert "Traceback" not in log, log
    assert "crate: server stopped" in log
    assert not failures, failures

    # Every answered write is there, and no write is there in part.
    stored = {
        s["name"]: s["version"]
        for s in json.loads(CrateRunner(home)("secrets", "list", "--json", check=True).stdout)
    }
    assert all(v == 1 for v in stored.values())
    for key, values in batches.items():
        present = [name in stored for name, _ in values]
        if key in answered:
            assert all(present), key
        else:
            assert all(present) or not any(present), f"batch {key} stored in part"
    slow_values = {name: value for _, _, values in slow for name, value in values.items()}
    assert set(slow_values) <= set(stored)
    with running(home) as again:
        reread = (
            Served(again, template.admin, template.reader)
            .client()
            .retrieve("dev", list(slow_values))
        )
    assert {s.name: s.value for s in reread} == slow_values


# -- 9. plain HTTP beyond loopback --------------------------------------------


def run_server_briefly(runner: CrateRunner, *args: str) -> Result:
    """`crate server ARGS`, which must exit on its own (a refusal) within 30 s."""
    proc = subprocess.run(
        [*runner.argv0, "server", *args], capture_output=True, env=runner.env(), timeout=30
    )
    return Result(
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "192.0.2.10:8787"])
def test_non_loopback_plain_http_is_refused(crate: CrateRunner, listen: str) -> None:
    result = run_server_briefly(crate, "--listen", listen)
    assert_clean_error(result, 2)
    assert "refusing plain HTTP" in result.stderr
    assert "--tls-cert" in result.stderr and "TLS" in result.stderr


def test_non_loopback_with_insecure_http_starts(template: Template, tmp_path: Path) -> None:
    home = copy_home(template, tmp_path)
    with running(home, "--listen", "0.0.0.0:0", "--insecure-http") as server:
        assert server.url.startswith("http://0.0.0.0:"), server.url
        port = address(server.url)[1]
        assert request(f"http://127.0.0.1:{port}", "GET", "/healthz").status == 200


# -- 10. org scoping ----------------------------------------------------------


class Orgs(NamedTuple):
    only_personal: CrateServer  # --org personal
    every: CrateServer  # every org of the home: personal and acme
    personal: str  # an admin token of personal
    acme: str  # an admin token of acme


@pytest.fixture(scope="module")
def orgs(template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orgs]:
    home = copy_home(template, tmp_path_factory.mktemp("orgs"))
    runner = CrateRunner(home)
    runner("org", "create", "acme", check=True)
    acme = runner("token", "create", "acme-admin", "--role", "admin", "--org", "acme", check=True)
    with running(home, "--org", ORG) as only_personal, running(home) as every:
        assert f"serving {ORG} on" in only_personal.output()
        assert "serving acme, personal on" in every.output()
        yield Orgs(only_personal, every, template.admin, acme.stdout.strip())


def list_in(server: CrateServer, org: str, token: str | None) -> Reply:
    return request(server.url, "GET", f"/organization/{org}/secrets?env=dev", token=token)


def test_unknown_and_unserved_orgs_answer_401(orgs: Orgs) -> None:
    for server in (orgs.only_personal, orgs.every):
        assert list_in(server, ORG, orgs.personal).json == {"secrets": []}
    unknown = list_in(orgs.only_personal, "no-such-org", orgs.personal)
    assert (unknown.status, unknown.code) == (401, "unauthorized"), unknown
    refused = unknown.json["error"]

    # Not served: no token is valid for acme there, not even acme's own, and an
    # unserved org answers exactly like one that does not exist.
    for org, token in (("acme", orgs.personal), ("acme", orgs.acme)):
        reply = list_in(orgs.only_personal, org, token)
        assert (reply.status, reply.json["error"]) == (401, refused), (org, reply)
    whoami = request(orgs.only_personal.url, "GET", "/whoami", token=orgs.acme)
    assert (whoami.status, whoami.json["error"]) == (401, refused)
    whoami = request(orgs.only_personal.url, "GET", "/whoami", token=orgs.personal)
    assert (whoami.status, whoami.json["organization"]) == (200, ORG)

    # Served: a token works in its own org only; elsewhere 401, never a 403 or a 404.
    for org, token in (
        ("acme", orgs.personal),
        (ORG, orgs.acme),
        ("no-such-org", orgs.acme),
        ("no-such-org", orgs.personal),
    ):
        for server in (orgs.only_personal, orgs.every):
            reply = list_in(server, org, token)
            assert (reply.status, reply.code) == (401, "unauthorized"), (org, reply)
    assert list_in(orgs.every, "acme", orgs.acme).json == {"secrets": []}
    whoami = request(orgs.every.url, "GET", "/whoami", token=orgs.acme)
    assert (whoami.json["organization"], whoami.json["token"]) == ("acme", "acme-admin")

    # Without a token, unknown, unserved and existing orgs answer alike.
    anonymous = [
        list_in(server, org, None)
        for server in (orgs.only_personal, orgs.every)
        for org in ("acme", "no-such-org", ORG)
    ]
    assert all(r.status == 401 for r in anonymous)
    assert len({r.raw for r in anonymous}) == 1


def test_an_existing_org_answers_like_an_unknown_one(orgs: Orgs) -> None:
    """ApiCore._authenticate: "an unknown org is not revealed to strangers". A token
    of personal asking for acme must not learn that acme exists."""
    unknown = list_in(orgs.every, "no-such-org", orgs.personal)
    existing = list_in(orgs.every, "acme", orgs.personal)
    assert (existing.status, existing.json) == (unknown.status, unknown.json)
    # The same from the other side: acme's token asking for personal.
    unknown = list_in(orgs.every, "no-such-org", orgs.acme)
    existing = list_in(orgs.every, ORG, orgs.acme)
    assert (existing.status, existing.json) == (unknown.status, unknown.json)
