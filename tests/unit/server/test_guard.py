"""The bookkeeping behind `crate server`'s per-client limits, with a clock of our own.

The servers themselves are attacked in tests/e2e/test_server_abuse.py;
here are the cases a real clock and real addresses cannot reach in a test:
IPv6 prefixes, a bucket over minutes, thousands of made-up orgs.
"""

from __future__ import annotations

import threading

import pytest

from crate_cli.server.guard import AuthFailures, ConnectionCounter, client_key
from crate_cli.vault.api import Denials


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),  # the same /64: one client
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),  # an IPv4 client of a dual-stack socket
        ("fe80::1%eth0", "fe80::/64"),
        (None, None),
        ("", None),
    ],
)
def test_an_ipv6_client_is_its_64_prefix(host: str | None, key: str | None) -> None:
    assert client_key(host) == key


def test_the_bucket_gives_burst_failures_then_one_per_refill() -> None:
    now = [1000.0]
    bucket = AuthFailures(burst=20, refill=3.0, clock=lambda: now[0])
    for _ in range(20):
        assert bucket.wait("a") == 0
        bucket.fail("a")
    assert bucket.wait("a") == 3
    assert bucket.wait("b") == 0  # another client
    now[0] += 2.0
    assert bucket.wait("a") == 1
    now[0] += 1.0
    assert bucket.wait("a") == 0
    bucket.fail("a")
    assert bucket.wait("a") == 3
    # Full again after burst * refill seconds, and no fuller.
    now[0] += 20 * 3.0 + 1000
    for _ in range(20):
        assert bucket.wait("a") == 0
        bucket.fail("a")
    assert bucket.wait("a") > 0


def test_failures_that_raced_past_the_check_are_paid_for() -> None:
    """16 requests checked while one try was left, failing after: the client waits
    for all 16, not one."""
    now = [0.0]
    bucket = AuthFailures(burst=1, refill=3.0, clock=lambda: now[0])
    assert bucket.wait("a") == 0
    for _ in range(16):
        bucket.fail("a")
    assert bucket.wait("a") == 3 * 2  # the floor is -burst: (1 - -1) * 3
    now[0] += 5.9
    assert bucket.wait("a") == 1
    now[0] += 0.2
    assert bucket.wait("a") == 0


def test_full_buckets_are_forgotten_when_too_many_clients_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(AuthFailures, "MAX_CLIENTS", 10)
    now = [0.0]
    bucket = AuthFailures(burst=2, refill=1.0, clock=lambda: now[0])
    for i in range(9):
        bucket.fail(f"old-{i}")
    now[0] += 5.0  # every old bucket is full again
    bucket.fail("recent")
    bucket.fail("recent")
    assert set(bucket._buckets) == {f"old-{i}" for i in range(9)} | {"recent"}
    bucket.fail("newest")  # the 11th: the full ones go
    assert set(bucket._buckets) == {"recent", "newest"}
    assert bucket.wait("recent") == 1


def test_connections_over_a_clients_cap_are_refused_and_counted_down() -> None:
    counter = ConnectionCounter(cap=2)
    assert [counter.opened("a"), counter.opened("a"), counter.opened("a")] == [True, True, False]
    assert counter.opened("b")
    counter.closed("a")  # the refused one
    assert not counter.opened("a")
    counter.closed("a")
    counter.closed("a")
    assert counter.opened("a")
    counter.closed("a")
    counter.closed("a")
    counter.closed("b")
    assert counter.open == {}


def test_denials_are_summed_per_org_and_address() -> None:
    denials = Denials()
    for _ in range(3):
        denials.count("acme", "10.0.0.1", "unauthorized")
    denials.count("acme", "10.0.0.2", "rate_limited")
    denials.count("beta", "10.0.0.1", "unauthorized")
    drained = denials.drain()
    assert set(drained) == {"acme", "beta"}
    acme = drained["acme"]
    assert acme["count"] == 4
    assert acme["addresses"] == {"10.0.0.1": 3, "10.0.0.2": 1}
    assert acme["errors"] == {"unauthorized": 3, "rate_limited": 1}
    assert acme["first"] <= acme["last"]
    assert denials.drain() == {}  # counting starts afresh


def test_at_most_16_addresses_are_named_per_org() -> None:
    denials = Denials()
    for i in range(40):
        denials.count("acme", f"10.0.0.{i}", "unauthorized")
    denials.count("acme", "10.0.0.3", "unauthorized")  # named already: still counted by name
    (acme,) = denials.drain().values()
    assert len(acme["addresses"]) == 16
    assert acme["addresses"]["10.0.0.3"] == 2
    assert acme["other_addresses"] == 24
    assert acme["count"] == 41


def test_made_up_orgs_cannot_crowd_out_a_real_one() -> None:
    denials = Denials(max_orgs=100)
    denials.known = frozenset({"acme"})
    for i in range(1000):
        denials.count(f"made-up-{i}", "10.0.0.1", "unauthorized")
    denials.count("acme", "10.0.0.1", "unauthorized")
    drained = denials.drain()
    assert len(drained) == 101 and drained["acme"]["count"] == 1
    assert denials.dropped == 900


def test_denials_count_from_many_threads_at_once() -> None:
    denials = Denials()

    def work() -> None:
        for _ in range(2000):
            denials.count("acme", "10.0.0.1", "unauthorized")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert denials.drain()["acme"]["count"] == 8000
