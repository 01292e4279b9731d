"""uvicorn's httptools protocol with the guards crate needs on a connection.

- A header timeout: a request's line and headers must arrive within
  `header_timeout` seconds of the connection opening or of the request's
  first byte, so a client that trickles headers (slowloris) is cut off.
  uvicorn itself only times out idle keep-alive connections.
- On a unix socket, the peer's credentials (SO_PEERCRED) must show the
  server's own uid; any other caller is disconnected before a byte is read.
- A cap on open connections per client address (`guard.ConnectionCounter`):
  one over it is aborted as it is made, so that one address cannot hold
  every connection the server accepts. Unix-socket peers are not counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from crate_cli.client.transport.http import peer_uid
from crate_cli.server.guard import ConnectionCounter, client_key

log = logging.getLogger("crate.server")


class GuardedProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    same_uid_only: bool = False
    per_client: ConnectionCounter | None = None  # shared by every connection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._client_key: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
            # a socket handed over by its creator may say 0: without it, Nagle
            # holds each response body back for the client's delayed ACK (40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.per_client is not None and self.client is not None:
            self._client_key = client_key(self.client[0])
            if self._client_key is not None and not self.per_client.opened(self._client_key):
                transport.abort()  # connection_lost follows, and counts it down
                return
        if self.same_uid_only and sock is not None and sock.family == socket.AF_UNIX:
            uid = peer_uid(sock)
            if uid != os.getuid():
                log.warning("refused a connection from uid %s (only uid %s)", uid, os.getuid())
                transport.abort()
                return
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # Idle between keep-alive requests is uvicorn's keep-alive timeout.
        self._cancel_header_timer()
        super().on_response_complete()

    def shutdown(self) -> None:
        """Graceful shutdown: an idle connection is dropped at once. uvicorn closes
        it politely, which on TLS waits up to 30 s for a close_notify that an
        idle client never sends; nothing is lost by aborting an idle one."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
        else:
            super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._client_key is not None and self.per_client is not None:
            self.per_client.closed(self._client_key)
            self._client_key = None
        super().connection_lost(exc)


def protocol_class(
    header_timeout: float, same_uid_only: bool, max_connections_per_client: int | None = None
) -> type[GuardedProtocol]:
    per_client = (
        ConnectionCounter(max_connections_per_client) if max_connections_per_client else None
    )
    return type(
        "CrateHttpProtocol",
        (GuardedProtocol,),
        {
            "header_timeout": header_timeout,
            "same_uid_only": same_uid_only,
            "per_client": per_client,
        },
    )
