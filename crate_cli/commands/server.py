"""`crate server`: serve the Crate API over HTTP for teammates."""

from __future__ import annotations

import click

from crate_cli.errors import NotFound
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
    from crate_cli.server import hardening
    from crate_cli.server.app import CrateApp, Limits
    from crate_cli.server.serve import plan_endpoint, run_uvicorn
    from crate_cli.vault.api import ApiCore, Denials

    limits = Limits(
        max_in_flight=max_in_flight,
        workers=workers,
        body_timeout=body_timeout,
        max_in_flight_per_client=max_in_flight_per_client,
        auth_failure_burst=auth_failure_burst,
        auth_failure_refill=auth_failure_refill,
        denial_log_interval=denial_log_interval,
    )
    endpoint = plan_endpoint(
        listen, socket_path, tls_cert, tls_key, insecure_http, limits, max_connections_per_client
    )
    # Before any key is in memory: no core dump, no same-user ptrace.
    hardening.make_undumpable()
    session = Session.for_terminal()
    session.init()
    served = _served_orgs(session, orgs)
    # Unlock the master key now, while a prompt can still be answered.
    session.master.unlock(session.master.current().version)
    # Unlocked: the credentials leave the environment (ours, the Session's, and
    # the block /proc/PID/environ shows), so nothing started from here sees them.
    hardening.drop_credentials(session.environ, session.master.environ)
    denials = Denials()
    scope = frozenset(served) if orgs else None

    def make_core() -> ApiCore:
        return ApiCore(session.new_service("server"), scope, denials)

    sock = endpoint.bind()
    where = endpoint.describe(sock)
    names = ", ".join(served) or "(none yet)"
    # What teammates compare with `crate login`'s fingerprint (or pass to it).
    fingerprints = [
        f"crate: organization {org!r}'s key is SHA256:{session.service.public_key(org)['key_id']}"
        for org in served
    ]
    session.close()

    def started() -> None:
        click.echo(f"crate: serving {names} on {where} (Ctrl-C or SIGTERM stops)", err=True)
        for line in fingerprints:
            click.echo(line, err=True)

    try:
        run_uvicorn(
            CrateApp(make_core, limits, denials=denials),
            sock,
            tls=endpoint.tls,
            header_timeout=header_timeout,
            max_connections_per_client=max_connections_per_client,
            started=started,
        )
    finally:
        if endpoint.socket_path is not None:
            endpoint.socket_path.unlink(missing_ok=True)
    click.echo("crate: server stopped", err=True)


def _served_orgs(session: Session, orgs: tuple[str, ...]) -> list[str]:
    """The orgs to serve: those given, each of which must exist, or all."""
    from crate_cli.vault.names import check_org

    existing = session.storage.list_orgs()
    if not orgs:
        return existing
    served = sorted({check_org(o) for o in orgs})
    for org in served:
        if org not in existing:
            raise NotFound(f"organization {org!r} does not exist")
    return served
