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
from typing import Any

from crate_cli.errors import InvalidInput, NotFound
from crate_cli.records import Record
from crate_cli.server.app import CrateApp, Limits

DEFAULT_LISTEN = "127.0.0.1:8787"
MAX_CONNECTIONS = 512


class Listen(Record):
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


class Endpoint(Record):
    """Where `crate server` listens, and with which certificate: checked."""

    address: Listen | None  # None: on the unix socket
    socket_path: Path | None
    tls: tuple[str, str] | None  # (certificate chain, private key), PEM files

    def bind(self) -> socket.socket:
        if self.socket_path is not None:
            return bind_unix(self.socket_path)
        assert self.address is not None
        return bind_tcp(self.address)

    def describe(self, sock: socket.socket) -> str:
        """The URL teammates use (with the port a port 0 got)."""
        if self.socket_path is not None:
            return f"unix:{self.socket_path}"
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{shown}:{port}"


def plan_endpoint(
    listen: str | None,
    socket_path: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    insecure_http: bool,
    limits: Limits,
    max_connections_per_client: int,
) -> Endpoint:
    """The server's endpoint from its options, with its limits checked too
    (check_limits), in the order the options are told about. Plain HTTP is
    refused beyond loopback (tokens would cross the network in clear)
    unless the operator says a TLS proxy sits in front (`insecure_http`)."""
    from crate_cli.client.transport.http import is_loopback_host

    if bool(tls_cert) != bool(tls_key):
        raise InvalidInput("give both --tls-cert and --tls-key, or neither")
    for path in (tls_cert, tls_key):
        if path and not Path(path).is_file():
            raise NotFound(f"no file {path}")
    if socket_path and listen:
        raise InvalidInput("give --listen or --socket, not both")
    check_limits(limits, max_connections_per_client)
    tls = (tls_cert, tls_key) if tls_cert and tls_key else None
    if socket_path:
        return Endpoint(None, Path(socket_path), tls)
    address = parse_listen(listen or DEFAULT_LISTEN)
    if not is_loopback_host(address.host) and not tls and not insecure_http:
        raise InvalidInput(
            f"refusing plain HTTP on {address.host}: tokens would cross the network in clear",
            "give --tls-cert and --tls-key, or --insecure-http if a TLS proxy sits in front",
        )
    return Endpoint(address, None, tls)


def check_limits(limits: Limits, max_connections_per_client: int) -> None:
    """Refuse limits outside what the server can honour, naming the option."""
    if not 1 <= limits.workers <= 64 or not 1 <= limits.max_in_flight <= 10_000:
        raise InvalidInput("--workers must be 1-64 and --max-in-flight 1-10000")
    if not 1 <= max_connections_per_client <= MAX_CONNECTIONS:
        raise InvalidInput(f"--max-connections-per-client must be 1-{MAX_CONNECTIONS}")
    if not 1 <= limits.max_in_flight_per_client <= 10_000:
        raise InvalidInput("--max-in-flight-per-client must be 1-10000")
    if limits.auth_failure_burst < 1 or not 0 < limits.auth_failure_refill <= 3600:
        raise InvalidInput(
            "--auth-failure-burst must be at least 1 and --auth-failure-refill 0-3600 seconds"
        )
    if not 0.1 <= limits.denial_log_interval <= 3600:
        raise InvalidInput("--denial-log-interval must be 0.1-3600 seconds")


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
