"""`crate server`'s options, checked before anything is bound or unlocked
(server/serve.py plan_endpoint), in the order they are told about."""

from __future__ import annotations

from pathlib import Path

import pytest

from crate_cli.errors import InvalidInput, NotFound
from crate_cli.server.app import Limits
from crate_cli.server.serve import Endpoint, Listen, plan_endpoint


def plan(
    listen: str | None = None,
    socket: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    insecure: bool = False,
    limits: Limits = Limits(),  # noqa: B008 - immutable
    connections: int = 32,
) -> Endpoint:
    return plan_endpoint(listen, socket, cert, key, insecure, limits, connections)


def test_loopback_plain_http_and_a_unix_socket_are_fine(tmp_path: Path) -> None:
    assert plan() == Endpoint(Listen("127.0.0.1", 8787), None, None)
    assert plan("[::1]:0").address == Listen("::1", 0)
    assert plan(socket=str(tmp_path / "s")) == Endpoint(None, tmp_path / "s", None)


def test_plain_http_beyond_loopback_needs_tls_or_a_stated_proxy(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"refusing plain HTTP on 0\.0\.0\.0"):
        plan("0.0.0.0:9999")
    assert plan("0.0.0.0:9999", insecure=True).tls is None
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("c")
    key.write_text("k")
    assert plan("0.0.0.0:9999", cert=str(cert), key=str(key)).tls == (str(cert), str(key))
    with pytest.raises(InvalidInput, match="both --tls-cert and --tls-key"):
        plan(cert=str(cert))
    with pytest.raises(NotFound, match="no file"):
        plan(cert=str(cert), key=str(tmp_path / "missing"))


def test_checks_come_in_the_order_they_always_did(tmp_path: Path) -> None:
    """TLS pair, TLS files, --listen or --socket, the limits, then the address."""
    with pytest.raises(InvalidInput, match="--workers must be 1-64"):
        plan("0.0.0.0:9999", limits=Limits(workers=0))
    with pytest.raises(InvalidInput, match="--workers must be 1-64"):
        plan("bad", limits=Limits(workers=0))
    with pytest.raises(InvalidInput, match="not both"):
        plan("127.0.0.1:1", socket=str(tmp_path / "s"), limits=Limits(workers=0))
    with pytest.raises(InvalidInput, match="--max-connections-per-client must be 1-512"):
        plan(connections=0)
    with pytest.raises(InvalidInput, match="invalid --listen"):
        plan("bad")
