"""A relay in the middle, and the end of offline access (issue 17, items 6 and 8).

A real `crate server` on 127.0.0.1 and an active relay in front of it
(tests/relay.py) that swaps the org key, opens retrievals and re-seals them,
or changes a value: with the org key pinned at `crate login`, the client
learns of each trick (exit 5) and the relay learns no value. Then logging
out, and a revoked token, end what the offline copies allow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CrateRunner, Result, assert_clean_error
from crate_server import CrateServer
from relay import Relay

from crate_cli.errors import ExitCode

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
    assert list((crate.home / "credentials").glob("fallback-key:*"))
    out = crate("logout", check=True)
    assert "offline copies are gone" in out.stderr
    assert copies(crate) == []
    assert list((crate.home / "credentials").glob("fallback-key*")) == []
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
