"""`crate server`: serve the Crate API over HTTP for teammates."""

from __future__ import annotations

from pathlib import Path

import click

from crate_cli.errors import InvalidInput, NotFound
from crate_cli.session import Session


@click.command()
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Address to listen on (default 127.0.0.1:8787; port 0 picks a free one).",
)
@click.option(
    "--socket", "socket_path", metavar="PATH", help="Listen on a unix socket (0600) instead."
)
@click.option("--tls-cert", metavar="FILE", help="Serve HTTPS with this certificate chain (PEM).")
@click.option("--tls-key", metavar="FILE", help="The certificate's private key (PEM).")
@click.option("--org", "orgs", multiple=True, metavar="ORG", help="Serve only these organizations.")
@click.option(
    "--insecure-http",
    is_flag=True,
    help="Allow plain HTTP on a non-loopback address (only behind a TLS proxy).",
)
@click.option("--workers", default=4, show_default=True, help="Worker threads.")
@click.option(
    "--max-in-flight",
    default=64,
    show_default=True,
    help="Authenticated requests handled or queued at once; more get 503 with Retry-After.",
)
@click.option(
    "--max-connections-per-client",
    default=32,
    show_default=True,
    help="Open connections one client address may hold (of 512 in all); more are dropped.",
)
@click.option(
    "--max-in-flight-per-client",
    default=16,
    show_default=True,
    help="Requests of one client address, from first byte to answer; more get 503.",
)
@click.option(
    "--auth-failure-burst",
    default=20,
    show_default=True,
    help="Failed authentications a client address may make at once; then 429.",
)
@click.option(
    "--auth-failure-refill",
    default=3.0,
    show_default=True,
    help="Seconds for a client address to regain one failed authentication.",
)
@click.option(
    "--denial-log-interval",
    default=10.0,
    show_default=True,
    help="Seconds between the audit entries that sum up requests refused for want of a token.",
)
@click.option(
    "--header-timeout", default=10.0, show_default=True, help="Seconds to receive headers."
)
@click.option("--body-timeout", default=10.0, show_default=True, help="Seconds to receive a body.")
def server(
    listen: str | None,
    socket_path: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    orgs: tuple[str, ...],
    insecure_http: bool,
    workers: int,
    max_in_flight: int,
    max_connections_per_client: int,
    max_in_flight_per_client: int,
    auth_failure_burst: int,
    auth_failure_refill: float,
    denial_log_interval: float,
    header_timeout: float,
    body_timeout: float,
) -> None:
    """Serve the Crate API (sealed store, ephemeral retrieval) over HTTP.

    Clients authenticate with API tokens (crate token create). Stops
    gracefully on SIGTERM or Ctrl-C: requests in flight finish first.

    Limits per client address (an IPv6 client's /64): behind a proxy every
    client has the proxy's address, so raise them there.
    """
    from crate_cli.client.transport.http import is_loopback_host
    from crate_cli.server import hardening
    from crate_cli.server.app import CrateApp, Limits
    from crate_cli.server.serve import (
        DEFAULT_LISTEN,
        MAX_CONNECTIONS,
        bind_tcp,
        bind_unix,
        parse_listen,
        run_uvicorn,
    )
    from crate_cli.vault.api import ApiCore, Denials
    from crate_cli.vault.names import check_org
    from crate_cli.vault.orgs import list_orgs

    if bool(tls_cert) != bool(tls_key):
        raise InvalidInput("give both --tls-cert and --tls-key, or neither")
    for path in (tls_cert, tls_key):
        if path and not Path(path).is_file():
            raise NotFound(f"no file {path}")
    if socket_path and listen:
        raise InvalidInput("give --listen or --socket, not both")
    if not 1 <= workers <= 64 or not 1 <= max_in_flight <= 10_000:
        raise InvalidInput("--workers must be 1-64 and --max-in-flight 1-10000")
    if not 1 <= max_connections_per_client <= MAX_CONNECTIONS:
        raise InvalidInput(f"--max-connections-per-client must be 1-{MAX_CONNECTIONS}")
    if not 1 <= max_in_flight_per_client <= 10_000:
        raise InvalidInput("--max-in-flight-per-client must be 1-10000")
    if auth_failure_burst < 1 or not 0 < auth_failure_refill <= 3600:
        raise InvalidInput(
            "--auth-failure-burst must be at least 1 and --auth-failure-refill 0-3600 seconds"
        )
    if not 0.1 <= denial_log_interval <= 3600:
        raise InvalidInput("--denial-log-interval must be 0.1-3600 seconds")
    address = parse_listen(listen or DEFAULT_LISTEN)
    if (
        not socket_path
        and not is_loopback_host(address.host)
        and not tls_cert
        and not insecure_http
    ):
        raise InvalidInput(
            f"refusing plain HTTP on {address.host}: tokens would cross the network in clear",
            "give --tls-cert and --tls-key, or --insecure-http if a TLS proxy sits in front",
        )
    # Before any key is in memory: no core dump, no same-user ptrace.
    hardening.make_undumpable()
    session = Session.for_terminal()
    session.init()
    served = sorted({check_org(o) for o in orgs}) if orgs else None
    existing = set(list_orgs(session.home))
    for org in served or []:
        if org not in existing:
            raise NotFound(f"organization {org!r} does not exist")
    # Unlock the master key now, while a prompt can still be answered.
    session.master.unlock(session.master.current().version)
    # Unlocked: the credentials leave the environment (ours, the Session's, and
    # the block /proc/PID/environ shows), so nothing started from here sees them.
    hardening.drop_credentials(session.environ, session.master.environ)
    scope = frozenset(served) if served else None
    denials = Denials()

    def make_core() -> ApiCore:
        return ApiCore(session.new_service("server"), scope, denials)

    sock = bind_unix(Path(socket_path)) if socket_path else bind_tcp(address)
    if socket_path:
        where = f"unix:{socket_path}"
    else:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        where = f"{'https' if tls_cert else 'http'}://{shown}:{port}"
    names = ", ".join(served or sorted(existing)) or "(none yet)"
    # What teammates compare with `crate login`'s fingerprint (or pass to it).
    fingerprints = [
        f"crate: organization {org!r}'s key is SHA256:{session.service.public_key(org)['key_id']}"
        for org in served or sorted(existing)
    ]
    session.close()

    def started() -> None:
        click.echo(f"crate: serving {names} on {where} (Ctrl-C or SIGTERM stops)", err=True)
        for line in fingerprints:
            click.echo(line, err=True)

    limits = Limits(
        max_in_flight=max_in_flight,
        workers=workers,
        body_timeout=body_timeout,
        max_in_flight_per_client=max_in_flight_per_client,
        auth_failure_burst=auth_failure_burst,
        auth_failure_refill=auth_failure_refill,
        denial_log_interval=denial_log_interval,
    )
    app = CrateApp(make_core, limits, denials=denials)
    try:
        run_uvicorn(
            app,
            sock,
            tls=(tls_cert, tls_key) if tls_cert and tls_key else None,
            header_timeout=header_timeout,
            max_connections_per_client=max_connections_per_client,
            started=started,
        )
    finally:
        if socket_path:
            Path(socket_path).unlink(missing_ok=True)
    click.echo("crate: server stopped", err=True)
