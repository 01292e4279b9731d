"""Run the API over HTTP with uvicorn: `crate server` and the agent.

crate binds the listening socket itself (so that `--listen 127.0.0.1:0`
can report the port it got, and a unix socket is created 0600 from the
start) and hands it to uvicorn, which brings TLS, keep-alive, graceful
shutdown on SIGTERM/SIGINT (in-flight requests finish) and a cap on open
connections.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from crate_cli.errors import InvalidInput
from crate_cli.server.app import CrateApp

DEFAULT_LISTEN = "127.0.0.1:8787"
MAX_CONNECTIONS = 512


class Listen(NamedTuple):
    host: str
    port: int


def parse_listen(text: str) -> Listen:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidInput(
            f"invalid --listen {text!r}: use HOST:PORT, for example {DEFAULT_LISTEN}"
        )
    return Listen(host, int(port))


def bind_tcp(listen: Listen) -> socket.socket:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listen.host, listen.port))
        sock.listen(256)
        return sock
    except OSError as e:
        sock.close()
        raise InvalidInput(
            f"cannot listen on {listen.host}:{listen.port}: {e.strerror or e}",
            "choose another port with --listen HOST:PORT",
        ) from None


def bind_unix(path: Path) -> socket.socket:
    """A unix socket at `path`, 0600 from the moment it exists."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as e:
        sock.close()
        raise InvalidInput(f"cannot listen on {path}: {e.strerror or e}") from None
    finally:
        os.umask(old)
    sock.listen(256)
    return sock


def run_uvicorn(
    app: CrateApp,
    sock: socket.socket,
    *,
    tls: tuple[str, str] | None = None,
    header_timeout: float = 10.0,
    keep_alive: float = 5.0,
    same_uid_only: bool = False,
    max_connections_per_client: int | None = None,
    access_log: bool = True,
    started: Callable[[], None] | None = None,
    server_hook: Callable[[Any], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; in-flight requests finish first."""
    import uvicorn

    from crate_cli.server.protocol import protocol_class

    config = uvicorn.Config(
        app,
        http=protocol_class(header_timeout, same_uid_only, max_connections_per_client),
        ws="none",
        lifespan="on",
        interface="asgi3",
        timeout_keep_alive=int(keep_alive),
        limit_concurrency=MAX_CONNECTIONS,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
        server_header=False,
        date_header=True,
        proxy_headers=False,
        access_log=access_log,
        log_config=None,
        log_level="info",
    )
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    server = uvicorn.Server(config)
    if server_hook is not None:
        server_hook(server)
    if started is not None:
        original = server.startup

        async def startup(sockets: list[socket.socket] | None = None) -> None:
            await original(sockets=sockets)
            if server.started:
                started()

        server.startup = startup  # type: ignore[method-assign]
    import signal

    # uvicorn handles SIGTERM/SIGINT while it runs (a graceful shutdown), then
    # raises the signal again under the handlers it found. Handlers that do
    # nothing let crate finish its own cleanup (the agent forgets the key and
    # removes its socket) and exit 0 after a requested stop.
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: None)
    server.run(sockets=[sock])
