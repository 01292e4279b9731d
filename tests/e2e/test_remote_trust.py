"""A relay in the middle, and the end of offline access (issue 17, items 6 and 8).

A real `crate server` on 127.0.0.1 and an active relay in front of it
(tests/support/relay.py) that swaps the org key, opens retrievals and re-seals them,
or changes a value: with the org key pinned at `crate login`, the client
learns of each trick (exit 5) and the relay learns no value. Then logging
out, and a revoked token, end what the offline copies allow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from crate_cli.errors import ExitCode
from tests.support.crate_runner import CrateRunner, Result, assert_clean_error
from tests.support.crate_server import CrateServer
from tests.support.relay import Relay

pytestmark = pytest.mark.e2e

VALUE = "pinned-org-value-5e2b"
NEW = "stored-through-the-relay-7c1d"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CrateServer]:
    served = CrateServer(tmp_path / "server-home")
    served.crate("secrets", "set", f"A={VALUE}", check=True)
    served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def relay(server: CrateServer) -> Iterator[Relay]:
    middle = Relay(server.url)
    middle.start()
    try:
        yield middle
    finally:
        middle.stop()


def fingerprint(server: CrateServer) -> str:
    done = server.crate("org", "fingerprint", check=True)
    text = done.stdout.strip()
    assert text.startswith("SHA256:") and len(text) == 7 + 43
    return text


def login(crate: CrateRunner, url: str, token: str, *args: str) -> Result:
    return crate("login", "--server", url, *args, input=token + "\n")


def test_the_server_shows_each_orgs_fingerprint(server: CrateServer) -> None:
    assert f"crate: organization 'personal''s key is {fingerprint(server)}" in server.output()


def test_login_with_the_fingerprint_refuses_a_swapped_key(
    crate: CrateRunner, server: CrateServer, relay: Relay
) -> None:
    token = server.token("dev", "admin")
    relay.mode = "swap-key"
    refused = login(crate, relay.url, token, "--fingerprint", fingerprint(server))
    assert_clean_error(refused, ExitCode.INTEGRITY, hidden=(token,))
    assert f"SHA256:{relay.kid}, not the {fingerprint(server)} you gave" in refused.stderr
    assert not (crate.home / "login.json").exists()  # nothing was saved
    relay.mode = "honest"
    done = login(crate, relay.url, token, "--fingerprint", fingerprint(server))
    assert done.returncode == 0, done
    assert f"organization 'personal''s key is {fingerprint(server)}" in done.stderr


def test_first_use_is_said_and_a_later_swap_is_refused(
    crate: CrateRunner, server: CrateServer, relay: Relay
) -> None:
    token = server.token("dev", "admin")
    first = login(crate, relay.url, token)
    assert first.returncode == 0, first
    assert f"trusting organization 'personal''s key {fingerprint(server)} on first use" in (
        first.stderr
    )
    relay.mode = "swap-key"
    again = login(crate, relay.url, token)
    assert_clean_error(again, ExitCode.INTEGRITY)
    assert f"but {fingerprint(server)} was pinned before" in again.stderr
    assert f"--fingerprint SHA256:{relay.kid}" in again.stderr


def test_a_relay_learns_nothing_and_changes_nothing_undetected(
    crate: CrateRunner, server: CrateServer, relay: Relay
) -> None:
    token = server.token("dev", "admin")
    login(crate, relay.url, token, "--fingerprint", fingerprint(server))

    for mode in ("swap-key", "tamper"):
        relay.mode = mode
        relay.stolen.clear()
        # Retrievals: the relay swaps the client's key and re-seals the answer.
        for args in (("secrets", "get", "A"), ("run", "--", "printenv", "A"), ("secrets", "fetch")):
            result = crate(*args)
            assert_clean_error(result, ExitCode.INTEGRITY, hidden=(VALUE, "changed-by"))
            assert "not signed by organization 'personal''s pinned key" in result.stderr
        # It did open them (the server signs for the key it was sent): that is
        # why the client refuses what it re-sealed. A relay that holds the
        # token can retrieve the values itself (SECURITY.md); this one learned
        # them only because it had the token's request to replay.
        assert relay.stolen
    # Stores: sealed to the pinned key, never to the relay's, which cannot open them.
    relay.mode = "swap-key"
    relay.seen.clear()
    done = crate("secrets", "set", f"B={NEW}")
    assert done.returncode == 0, done
    assert all(NEW.encode() not in body for body in relay.seen)
    relay.mode = "honest"
    assert crate("secrets", "get", "B", check=True).stdout == NEW


def test_a_pin_is_also_kept_for_a_token_in_the_environment(
    crate: CrateRunner, server: CrateServer, relay: Relay
) -> None:
    token = server.token("ci", "reader")
    env = {"CRATE_SERVER": relay.url, "CRATE_TOKEN": token}
    first = crate("secrets", "get", "A", env=env)
    assert (first.returncode, first.stdout) == (0, VALUE), first
    assert "on first use" in first.stderr
    quiet = crate("secrets", "get", "A", env=env)
    assert "on first use" not in quiet.stderr
    relay.mode = "swap-key"
    caught = crate("secrets", "get", "A", env=env)
    assert_clean_error(caught, ExitCode.INTEGRITY, hidden=(VALUE,))


# -- item 8: the end of offline access ------------------------------------------------


def copies(crate: CrateRunner) -> list[Path]:
    return sorted((crate.home / "fallback").rglob("*.copy"))


def test_logout_ends_offline_access(crate: CrateRunner, server: CrateServer) -> None:
    token = server.token("dev", "admin")
    login(crate, server.url, token)
    assert crate("run", "--", "printenv", "A", check=True).stdout == f"{VALUE}\n"
    assert copies(crate)
    out = crate("logout", check=True)
    assert "offline copies are gone" in out.stderr
    assert copies(crate) == []
    # Logged in again (a new login), with the server down: nothing to fall back on.
    login(crate, server.url, token)
    server.stop()
    down = crate("run", "--", "printenv", "A")
    assert_clean_error(down, ExitCode.ERROR, hidden=(VALUE,))
    assert "no offline copy" in down.stderr


def test_copies_are_bound_to_the_login_that_made_them(
    crate: CrateRunner, server: CrateServer
) -> None:
    mine, other = server.token("mine", "admin"), server.token("other", "reader")
    login(crate, server.url, mine)
    crate("run", "--", "true", check=True)
    # Another home uses the other token from its environment, with no login.
    bare = CrateRunner(crate.home.parent / "bare-home")
    env = {"CRATE_SERVER": server.url, "CRATE_TOKEN": other}
    bare("run", "--", "true", env=env, check=True)
    server.stop()
    for args in (("run", "--", "printenv", "A"), ("secrets", "fetch")):
        borrowed = crate(*args, env=env)
        assert_clean_error(borrowed, ExitCode.ERROR, hidden=(VALUE,))
        assert "no offline copy" in borrowed.stderr
    only = crate("run", "--fallback-only", "--", "printenv", "A", env=env)
    assert_clean_error(only, ExitCode.NOT_FOUND, hidden=(VALUE,))
    assert "no offline copy" in only.stderr
    # Without a stored login, --fallback-only has nothing it may read (the
    # token's own copy serves only as a fallback, when the server is down).
    alone = bare("run", "--fallback-only", "--", "printenv", "A", env=env)
    assert_clean_error(alone, ExitCode.USAGE, hidden=(VALUE,))
    assert "--fallback-only reads the offline copy of a login" in alone.stderr
    # The login's own copy is still there for the login.
    assert crate("run", "--fallback-only", "--", "printenv", "A").stdout == f"{VALUE}\n"


def test_a_revoked_token_ends_offline_access(crate: CrateRunner, server: CrateServer) -> None:
    token = server.token("laptop", "admin")
    login(crate, server.url, token)
    crate("run", "--", "true", check=True)
    assert copies(crate)
    server.crate("token", "revoke", "laptop", check=True)
    refused = crate("run", "--", "printenv", "A")
    assert_clean_error(refused, ExitCode.DENIED, hidden=(VALUE,))
    assert copies(crate) == []
    server.stop()
    for args in (("run", "--", "printenv", "A"), ("run", "--fallback-only", "--", "true")):
        gone = crate(*args)
        assert gone.returncode != 0
        assert VALUE not in gone.stdout + gone.stderr
    assert json.loads((crate.home / "login.json").read_text())["server"] == server.url


# -- a second attack review: what the signature and the pins cover -----------------------


def test_a_relay_cannot_change_what_a_retrieval_selects(
    crate: CrateRunner, server: CrateServer, relay: Relay
) -> None:
    """Roll a rotated secret back to its first version, or drop a tag filter:
    the signature covers the selection the client sent."""
    server.crate("secrets", "set", "A=rotated-value-v2", check=True)
    server.crate("secrets", "set", "TAGGED=db-only", "--tag", "db", check=True)
    login(crate, relay.url, server.token("dev", "reader"), "--fingerprint", fingerprint(server))
    assert crate("secrets", "get", "A", check=True).stdout == "rotated-value-v2"
    relay.mode = "versions"
    for args in (("secrets", "get", "A"), ("run", "--", "printenv", "A"), ("secrets", "fetch")):
        rolled = crate(*args)
        assert_clean_error(rolled, ExitCode.INTEGRITY, hidden=(VALUE, "rotated-value-v2"))
        assert "not signed by organization 'personal''s pinned key" in rolled.stderr
    relay.mode = "drop-tags"
    widened = crate("secrets", "fetch", "--tags", "db")
    assert_clean_error(widened, ExitCode.INTEGRITY, hidden=(VALUE, "rotated-value-v2"))


def test_a_relay_cannot_retag_what_is_stored(
    crate: CrateRunner, server: CrateServer, relay: Relay
) -> None:
    """The tags are sealed with the value: changed on the way, the store is refused."""
    login(crate, relay.url, server.token("dev", "writer"), "--fingerprint", fingerprint(server))
    relay.mode = "retag"
    for args in (("DB_ONLY=db-only-secret", "--tag", "db"), ("X=1", "Y=2", "--tag", "db")):
        refused = crate("secrets", "set", *args)
        assert_clean_error(refused, ExitCode.USAGE, hidden=("db-only-secret",))
        assert "not the ones sealed with it" in refused.stderr
    relay.mode = "honest"
    crate("secrets", "set", "DB_ONLY=db-only-secret", "--tag", "db", check=True)
    listed = json.loads(server.crate("secrets", "list", "--json", check=True).stdout)
    assert {r["name"]: r["tags"] for r in listed}["DB_ONLY"] == ["db"]


def test_a_second_org_on_a_pinned_server_needs_its_fingerprint(
    crate: CrateRunner, server: CrateServer
) -> None:
    """A relay that names another org in /whoami (unsigned) would be trusted
    on first use: on a server with pins, a new org's key needs its fingerprint."""
    login(crate, server.url, server.token("dev", "admin"))
    server.crate("org", "create", "second", check=True)
    token = server.token("second-dev", "admin", "--org", "second")
    second = server.crate("org", "fingerprint", "--org", "second", check=True).stdout.strip()
    refused = login(crate, server.url, token)
    assert_clean_error(refused, ExitCode.INTEGRITY, hidden=(token,))
    assert "which was never pinned there" in refused.stderr
    done = login(crate, server.url, token, "--fingerprint", second)
    assert done.returncode == 0, done
    # The same without a login: the first org is pinned on first use, the second is not.
    ci = CrateRunner(crate.home.parent / "ci-home")
    first = ci(
        "env", "list", env={"CRATE_SERVER": server.url, "CRATE_TOKEN": server.token("ci", "reader")}
    )
    assert first.returncode == 0, first
    env_only = ci("env", "list", env={"CRATE_SERVER": server.url, "CRATE_TOKEN": token})
    assert_clean_error(env_only, ExitCode.INTEGRITY)
    assert "which was never pinned there" in env_only.stderr


def test_one_server_has_one_spelling(crate: CrateRunner, server: CrateServer) -> None:
    """HTTP://127.0.0.1:0PORT/ is the server pinned as http://127.0.0.1:PORT."""
    token = server.token("dev", "reader")
    login(crate, server.url, token, "--fingerprint", fingerprint(server))
    port = server.url.rsplit(":", 1)[1]
    for spelled in (f"HTTP://127.0.0.1:0{port}/", f"http://127.0.0.1:{port}/"):
        got = crate("secrets", "get", "A", env={"CRATE_SERVER": spelled, "CRATE_TOKEN": token})
        assert (got.returncode, got.stdout) == (0, VALUE), got
        assert "first use" not in got.stderr
    for bad in (f"http://127.0.0.1:{port}#", f"http://127.0.0.1:{port}/?x=1"):
        refused = crate("secrets", "get", "A", env={"CRATE_SERVER": bad, "CRATE_TOKEN": token})
        assert_clean_error(refused, ExitCode.USAGE)


def test_a_fingerprint_in_the_environment_checks_first_use(
    crate: CrateRunner, server: CrateServer, relay: Relay
) -> None:
    """CI has no login: CRATE_FINGERPRINT makes its first use checked, not trusted."""
    token = server.token("ci", "reader")
    env = {
        "CRATE_SERVER": relay.url,
        "CRATE_TOKEN": token,
        "CRATE_FINGERPRINT": fingerprint(server),
    }
    relay.mode = "swap-key"
    refused = crate("secrets", "get", "A", env=env)
    assert_clean_error(refused, ExitCode.INTEGRITY, hidden=(VALUE,))
    assert "not the " + fingerprint(server) in refused.stderr
    relay.mode = "honest"
    got = crate("secrets", "get", "A", env=env)
    assert (got.returncode, got.stdout) == (0, VALUE), got
    assert "first use" not in got.stderr


def test_a_token_typed_as_the_server_is_not_echoed(crate: CrateRunner, server: CrateServer) -> None:
    token = server.token("dev", "reader")
    for url in (f"https://{token}", f"http://{token}", f"https://{token}.example"):
        refused = crate("secrets", "list", env={"CRATE_SERVER": url, "CRATE_TOKEN": token})
        assert_clean_error(refused, ExitCode.USAGE, hidden=(token, token.lower()))
        refused = crate("login", "--server", url, input=token + "\n")
        assert_clean_error(refused, ExitCode.USAGE, hidden=(token, token.lower()))
