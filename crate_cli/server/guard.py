"""Per-client limits of `crate server`: what one address may hold or try.

- `client_key`: the address a limit counts against. An IPv4 address as it
  is; an IPv6 address by its /64 prefix, since whoever has one IPv6 address
  usually has the whole /64 (and an IPv4-mapped one as the IPv4 address).
- `ConnectionCounter`: open connections per client (the protocol aborts a
  connection over the cap as soon as it is made).
- `AuthFailures`: a token bucket of failed authentications per client; an
  empty bucket makes the app answer 429 without looking at the vault.

Everything here runs on the event loop's thread only: no locks.
Unix-socket peers have no address and are never counted.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable

log = logging.getLogger("crate.server")


def client_key(host: str | None) -> str | None:
    """What a per-client limit counts: an IPv4 address, an IPv6 /64, else the text."""
    if not host:
        return None
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class ConnectionCounter:
    """Open connections per client, capped at `cap`."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open: dict[str, int] = {}
        self._warned: set[str] = set()

    def opened(self, key: str) -> bool:
        """Count a new connection; False when it is over the client's cap (the
        caller aborts it, and still calls `closed`)."""
        count = self.open.get(key, 0) + 1
        self.open[key] = count
        if count <= self.cap:
            return True
        if key not in self._warned:  # once until the client is back under its cap
            self._warned.add(key)
            log.warning("client %s holds %d connections already: refusing more", key, self.cap)
        return False

    def closed(self, key: str) -> None:
        count = self.open.get(key, 0) - 1
        if count <= 0:
            self.open.pop(key, None)
        else:
            self.open[key] = count
        if count < self.cap:
            self._warned.discard(key)


class AuthFailures:
    """Failed authentications per client, as token buckets: each client may
    fail `burst` times at once, and regains one failure every `refill`
    seconds. Only failures take from the bucket; a request that finds it
    empty is refused before its token is looked at.

    Requests already past the check when the bucket empties still take
    from it, so it can go below zero (down to -burst): a client that sent
    many at once waits longer, instead of gaining from the race.
    """

    MAX_CLIENTS = 100_000  # then the full buckets (no recent failure) are forgotten

    def __init__(
        self, burst: int, refill: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.refill = refill
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key: (level, when)

    def _level(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return float(self.burst)
        level, when = entry
        return min(float(self.burst), level + (now - when) / self.refill)

    def wait(self, key: str) -> int:
        """0 when `key` may try (and maybe fail) now, else whole seconds to wait."""
        level = self._level(key, self.clock())
        if level >= 1:
            return 0
        return max(1, math.ceil((1 - level) * self.refill))

    def fail(self, key: str) -> None:
        now = self.clock()
        self._buckets[key] = (max(self._level(key, now) - 1, -float(self.burst)), now)
        if len(self._buckets) > self.MAX_CLIENTS:
            self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        for key in [k for k in self._buckets if self._level(k, now) >= self.burst]:
            del self._buckets[key]
