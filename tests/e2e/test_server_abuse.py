"""`crate server` against strangers: starving it, guessing tokens, probing for orgs.

Real `crate server` processes on 127.0.0.1 (tests/support/crate_server.py), attacked
over real sockets. Linux routes all of 127/8 to loopback, so binding a client
socket to 127.0.x.y gives each attacker and each teammate an address of its
own, as the server counts them.

- Slow requests without a valid token take no place among the requests in
  flight: the server authenticates a request (after reading its body under
  the size and time limits) before it counts.
- One address holds at most `--max-connections-per-client` connections and
  `--max-in-flight-per-client` requests; others are served meanwhile.
- Failed authentications are rate-limited per address (429, without a look
  at the vault), and refusals of unauthenticated callers reach an org's audit
  log as one summary entry per interval, not one write each.
- A bad token gets the same answer, after the same work, whether or not the
  org exists or is served.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import re
import select
import shutil
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import pytest

from tests.support.crate_runner import CrateRunner
from tests.support.crate_server import CrateServer

pytestmark = pytest.mark.e2e

ORG = "personal"
OTHER = "acme"  # exists in the home
NOWHERE = "no-such-org"  # does not
LIST = f"/organization/{ORG}/secrets?env=dev"
BAD_TOKEN = "crate_" + "B" * 43  # well formed, in no vault


def path_in(org: str) -> str:
    return f"/organization/{org}/secrets?env=dev"


# -- a home and servers --------------------------------------------------------------


class Template(NamedTuple):
    home: Path
    admin: str  # of personal
    reader: str  # of personal
    other_admin: str  # of acme


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    home = tmp_path_factory.mktemp("abuse-template") / "crate-home"
    crate = CrateRunner(home)
    crate("env", "list", check=True)  # first use: the master key and org personal
    crate("org", "create", OTHER, check=True)
    for org in (ORG, OTHER):
        crate("audit", "enable", "--org", org, check=True)
    admin = crate("token", "create", "admin", "--role", "admin", check=True).stdout.strip()
    reader = crate("token", "create", "reader", "--role", "reader", check=True).stdout.strip()
    other = crate("token", "create", "a-admin", "--role", "admin", "--org", OTHER, check=True)
    return Template(home, admin, reader, other.stdout.strip())


def copy_home(template: Template, where: Path) -> Path:
    home = where / "crate-home"
    shutil.copytree(template.home, home)
    return home


@contextlib.contextmanager
def running(home: Path, *args: str) -> Iterator[CrateServer]:
    server = CrateServer(home, *args)
    server.start()
    try:
        yield server
    finally:
        code = server.stop()
        assert code == 0, server.output()
        assert "Traceback" not in server.output(), server.output()


# -- raw HTTP from a chosen address ---------------------------------------------------


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def code(self) -> str:
        return str(json.loads(self.raw)["error"]["code"])


def where(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def request(
    url: str,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    source: str = "127.0.0.1",
    conn: http.client.HTTPConnection | None = None,
) -> Reply:
    """One request from `source` (on `conn`, kept alive, if given)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    own = conn is None
    if conn is None:
        host, port = where(url)
        conn = http.client.HTTPConnection(host, port, timeout=30, source_address=(source, 0))
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        reply = Reply(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        if own:
            conn.close()
    assert b"Traceback" not in reply.raw
    return reply


def dial(url: str, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(where(url))
    return sock


def slow_request(url: str, source: str, token: str | None) -> socket.socket:
    """A request whose headers arrived and whose body is still on its way."""
    sock = dial(url, source)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    sock.sendall(
        f"POST /organization/{ORG}/secrets/retrieve HTTP/1.1\r\nHost: x\r\n{auth}"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
    )
    return sock


def read_reply(sock: socket.socket, timeout: float = 10.0) -> Reply:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "truncated answer"
        rest += chunk
    return Reply(int(lines[0].split()[1]), headers, rest[:length])


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closed `sock` (without answering) within `within` s."""
    readable, _, _ = select.select([sock], [], [], within)
    if not readable:
        return False
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        return True
    assert data == b"", f"the server sent something: {data!r}"
    return True


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# -- the audit log, read by the CLI beside the server ---------------------------------


def audit_log(home: Path, org: str) -> list[dict[str, Any]]:
    result = CrateRunner(home)("audit", "log", "--json", "--limit", "0", "--org", org, check=True)
    entries: list[dict[str, Any]] = json.loads(result.stdout)
    return entries


def summarised(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The `unauthenticated` entries of a log, added up; every other anonymous
    entry is a refusal recorded on its own, which must not exist."""
    alone = [e for e in entries if e["actor"] == "anonymous" and e["action"] != "unauthenticated"]
    assert not alone, f"{len(alone)} refusals recorded one by one, the first: {alone[0]}"
    total: dict[str, Any] = {
        "entries": 0,
        "count": 0,
        "addresses": collections.Counter(),
        "errors": collections.Counter(),
    }
    for e in entries:
        if e["action"] != "unauthenticated":
            continue
        assert (e["actor"], e["client"], e["outcome"]) == ("anonymous", "server", "denied"), e
        assert (e["environment"], e["names"]) == (None, []), e
        details = e["details"]
        assert set(details) <= {"count", "addresses", "errors", "first", "last", "other_addresses"}
        assert details["first"] <= details["last"] <= e["time"], e
        assert (
            sum(details["addresses"].values()) + details.get("other_addresses", 0)
            == (details["count"])
        )
        assert sum(details["errors"].values()) == details["count"], e
        total["entries"] += 1
        total["count"] += details["count"]
        total["addresses"].update(details["addresses"])
        total["errors"].update(details["errors"])
    return total


# -- 1. strangers do not take places; one address does not hold them all --------------


@pytest.fixture(scope="module")
def limited(template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with 4 places in flight, and time to hold slow connections."""
    home = copy_home(template, tmp_path_factory.mktemp("limited"))
    args = ("--max-in-flight", "4", "--workers", "2", "--header-timeout", "30")
    with running(home, *args, "--body-timeout", "30") as server:
        yield server.url


def test_slow_strangers_take_no_place_from_teammates(limited: str, template: Template) -> None:
    """32 requests without a valid token, their bodies still on the way, are 8
    times the server's 4 places: a teammate is still served at once."""
    url = limited
    held: list[socket.socket] = []
    try:
        for source, token in (("127.0.10.2", BAD_TOKEN), ("127.0.10.3", None)):
            held += [slow_request(url, source, token) for _ in range(16)]

            def at_cap(source: str = source) -> Reply | None:
                reply = request(url, "GET", "/healthz", source=source)
                return reply if reply.status == 503 else None

            # All 16 counted: the address's next request is refused at once.
            refused = wait_for(at_cap, 10, f"{source}: 16 slow requests never reached the cap")
            assert refused.code == "overloaded"
            assert "this address" in json.loads(refused.raw)["error"]["message"]
            assert int(refused.headers["retry-after"]) >= 1
            extra = slow_request(url, source, token)
            held.append(extra)
            answer = read_reply(extra)
            assert (answer.status, answer.code) == (503, "overloaded")
        # Meanwhile a teammate, from another address, gets every answer.
        for _ in range(3):
            assert request(url, "GET", "/healthz").status == 200
            listed = request(url, "GET", LIST, template.reader)
            assert (listed.status, json.loads(listed.raw)) == (200, {"secrets": []})
            assert request(url, "GET", "/whoami", template.admin).status == 200
        # The slow bodies, once whole, are refused as strangers.
        for sock in held[:16] + held[17:33]:
            sock.sendall(b" " * 98 + b"}")
            reply = read_reply(sock)
            assert (reply.status, reply.code) == (401, "unauthorized"), reply
    finally:
        for sock in held:
            sock.close()
    # Their places came back: the two addresses are served again.
    for source in ("127.0.10.2", "127.0.10.3"):
        assert wait_for(
            lambda source=source: request(url, "GET", "/healthz", source=source).status == 200,
            10,
            f"{source} never got its places back",
        )


def test_one_address_cannot_hold_every_connection(limited: str, template: Template) -> None:
    url = limited
    attacker, teammate = "127.0.11.2", "127.0.11.3"
    idle = [dial(url, attacker) for _ in range(32)]
    try:
        over = dial(url, attacker)
        with contextlib.closing(over):
            assert closed_by_server(over, 10), "the 33rd connection of one address was kept"
        # The 32 others are open and served.
        readable, _, _ = select.select(idle, [], [], 0.2)
        assert not readable, "the server closed connections within the cap"
        idle[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_reply(idle[0]).status == 200
        # Another address is served meanwhile.
        assert request(url, "GET", "/healthz", source=teammate).status == 200
        listed = request(url, "GET", LIST, template.admin, source=teammate)
        assert listed.status == 200
        # A connection that closes gives its place back.
        idle.pop().close()

        def served_again() -> bool:
            with contextlib.closing(dial(url, attacker)) as again:
                again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    return read_reply(again, timeout=5).status == 200
                except (AssertionError, ConnectionResetError):
                    return False

        wait_for(served_again, 10, "a freed connection place was never given back")
    finally:
        for sock in idle:
            sock.close()


# -- 2. failed authentications: 429, and one audit entry per interval -----------------


def test_failed_authentications_are_rate_limited_and_summed_up(
    template: Template, tmp_path: Path
) -> None:
    """The default burst (20) with a refill so slow that none comes back during
    the test; the refill itself is the next test's."""
    home = copy_home(template, tmp_path)
    before = len(audit_log(home, ORG))
    attacker, teammate = "127.0.12.2", "127.0.12.3"
    sent: collections.Counter[tuple[str, str]] = collections.Counter()  # (address, code)

    def to_list(token: str | None, source: str) -> Reply:
        reply = request(url, "GET", LIST, token, source=source)
        if reply.status in (401, 429):
            sent[(source, reply.code)] += 1
        return reply

    args = ("--auth-failure-refill", "600", "--denial-log-interval", "1")
    with running(home, *args) as server:
        url = server.url
        started = time.monotonic()
        # Twenty failures at once, then 429.
        for _ in range(20):
            assert to_list(BAD_TOKEN, attacker).status == 401
        limited = to_list(BAD_TOKEN, attacker)
        assert (limited.status, limited.code) == (429, "rate_limited")
        assert 500 <= int(limited.headers["retry-after"]) <= 600
        # Even a valid token is refused: the vault was not asked (it would have said yes).
        for token in (template.admin, template.reader, None):
            assert to_list(token, attacker).status == 429
        retrieve = {"environment": "dev", "names": ["X"]}
        refused = request(url, "POST", f"/organization/{ORG}/secrets/retrieve", None, retrieve)
        assert refused.status == 401  # from 127.0.0.1: its own bucket
        sent[("127.0.0.1", "unauthorized")] += 1
        assert request(url, "GET", "/healthz", source=attacker).status == 200  # no token needed
        # Another address is not affected.
        assert to_list(template.admin, teammate).status == 200
        assert to_list(BAD_TOKEN, teammate).status == 401
        # An authenticated caller's refusal is still recorded on its own (403).
        store = {"environment": "dev", "name": "X", "sealed": True, "encrypted_value": "x"}
        forbidden = request(url, "PUT", f"/organization/{ORG}/secrets", template.reader, store)
        assert (forbidden.status, forbidden.code) == (403, "forbidden")
        # A made-up org: refused alike, and no log (nor vault) comes to exist for it.
        assert request(url, "GET", path_in(NOWHERE), BAD_TOKEN, source=teammate).status == 401

        # While the server runs, the refusals reach the log as summaries.
        expected = sum(sent.values())
        wait_for(
            lambda: summarised(audit_log(home, ORG)[before:])["count"] == expected,
            20,
            "the refusals were not summed up in the log",
        )
        # And the last ones before a stop are written at the stop.
        for _ in range(3):
            assert to_list(None, teammate).status == 401
        seconds = time.monotonic() - started
    log = audit_log(home, ORG)[before:]
    total = summarised(log)
    assert total["count"] == sum(sent.values())
    assert total["addresses"] == {
        a: sum(n for (s, _), n in sent.items() if s == a) for a in {s for s, _ in sent}
    }
    assert total["errors"] == {
        "unauthorized": sum(n for (_, c), n in sent.items() if c == "unauthorized"),
        "rate_limited": 4,
    }
    # One entry a second at most, and one at the stop.
    assert 2 <= total["entries"] <= seconds + 2, (total, seconds)
    own = [e for e in log if e["actor"] == "token:reader"]
    assert [(e["action"], e["outcome"], e["details"]) for e in own] == [
        ("store", "denied", {"error": "forbidden"})
    ]
    assert not (home / "orgs" / f"{NOWHERE}.vault").exists()
    assert BAD_TOKEN not in json.dumps(log)


def test_an_address_regains_one_try_per_refill(template: Template, tmp_path: Path) -> None:
    home = copy_home(template, tmp_path)
    args = ("--auth-failure-burst", "2", "--auth-failure-refill", "2")
    with running(home, *args) as server:
        url = server.url
        source = "127.0.13.2"

        def bad() -> Reply:
            return request(url, "GET", LIST, BAD_TOKEN, source=source)

        assert [bad().status, bad().status] == [401, 401]
        limited = bad()
        assert limited.status == 429
        wait = int(limited.headers["retry-after"])
        assert 1 <= wait <= 2
        time.sleep(wait + 0.2)
        # One more try has come back (a valid token would have passed too), not two.
        assert bad().status == 401
        assert bad().status == 429


# -- 3. a bad token on an existing org is answered as on a made-up one -------------------


def comparable(reply: Reply) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in reply.headers.items() if k not in ("x-request-id", "date")}
    return reply.status, headers, reply.raw


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed_pairs(url: str, token: str, existing: str, count: int) -> tuple[float, float]:
    """Median time (ms) of `count` requests with `token` on an existing org and on
    a made-up one, interleaved on two kept-alive connections."""
    host, port = where(url)
    conns = [http.client.HTTPConnection(host, port, timeout=30) for _ in range(2)]
    times: dict[str, list[float]] = {existing: [], NOWHERE: []}
    try:
        for i in range(count + 10):
            order = (existing, NOWHERE) if i % 2 else (NOWHERE, existing)
            for conn, org in zip(conns, order, strict=True):
                start = time.perf_counter()
                reply = request(url, "GET", path_in(org), token, conn=conn)
                elapsed = time.perf_counter() - start
                assert reply.status == 401, reply
                if i >= 10:  # the first ones warm both paths up
                    times[org].append(elapsed)
    finally:
        for conn in conns:
            conn.close()
    return median_ms(times[existing]), median_ms(times[NOWHERE])


@pytest.mark.parametrize("scoped", [False, True], ids=["every-org", "only-personal"])
def test_an_existing_org_answers_and_times_like_a_made_up_one(
    template: Template, tmp_path: Path, scoped: bool
) -> None:
    """Unscoped, acme and personal exist; scoped to personal, acme is not served.
    Either way a stranger cannot tell them from an org that does not exist."""
    home = copy_home(template, tmp_path)
    before = {org: len(audit_log(home, org)) for org in (ORG, OTHER)}
    args = ("--auth-failure-burst", "100000", "--denial-log-interval", "3600")
    existing = OTHER if scoped else ORG
    with running(home, *args, *(("--org", ORG) if scoped else ())) as server:
        url = server.url
        for token in (
            BAD_TOKEN,
            template.other_admin if not scoped else template.admin,  # valid elsewhere
            template.admin[:-1] + "x",  # one character off
            "not-a-token",
            None,
        ):
            there = request(url, "GET", path_in(existing), token)
            nowhere = request(url, "GET", path_in(NOWHERE), token)
            assert there.status == 401, there
            assert comparable(there) == comparable(nowhere), (token, there, nowhere)
        stranger, made_up = timed_pairs(url, BAD_TOKEN, existing, 100)
        # The same work either way: equal medians, within a generous 2 ms.
        assert abs(stranger - made_up) < 2.0, (stranger, made_up)
        # Nothing was written per request, not even to the org that exists.
        for org in (ORG, OTHER):
            assert summarised(audit_log(home, org)[before[org] :])["entries"] == 0
    # At the stop, one summary entry for the org that exists and is served.
    after = summarised(audit_log(home, existing)[before[existing] :])
    if scoped:  # acme is not served here: nothing of this server goes to its log
        assert after["entries"] == 0
    else:
        assert (after["entries"], after["count"]) == (1, 5 + 110), after
        assert after["errors"] == {"unauthorized": 115}
        assert after["addresses"] == {"127.0.0.1": 115}
    assert not (home / "orgs" / f"{NOWHERE}.vault").exists()


# -- 4. the options -------------------------------------------------------------------


def test_the_limits_are_options_of_crate_server(crate: CrateRunner) -> None:
    result = crate("server", "--help", check=True)
    text = " ".join(result.stdout.split())
    for option, default in (
        ("--max-connections-per-client", "32"),
        ("--max-in-flight-per-client", "16"),
        ("--auth-failure-burst", "20"),
        ("--auth-failure-refill", "3.0"),
        ("--denial-log-interval", "10.0"),
    ):
        found = re.search(re.escape(option) + r" [A-Z]+ [^\[]*\[default: ([^\]]+)\]", text)
        assert found and found.group(1) == default, (option, text)
    for option in ("--max-connections-per-client", "--max-in-flight-per-client"):
        refused = crate("server", option, "0")
        assert refused.returncode == 2 and option in refused.stderr, refused
