"""crate's HTTP adapter (crate_cli/server/app.py) served by uvicorn on
127.0.0.1, in a thread of the test's own process: the integration tests'
server. tests/support/crate_server.py runs `crate server` as a command.

with ServedHome(home) as served:      # a home with a vault
    token = served.token("ci", "admin")
    client = served.client(token, "acme")
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from crate_cli.client.secrets import SecretsClient
from crate_cli.client.transport.http import HttpTransport
from crate_cli.clock import utc_now
from crate_cli.server.app import CrateApp
from crate_cli.server.protocol import protocol_class
from crate_cli.server.serve import Listen, bind_tcp
from crate_cli.session import Session
from crate_cli.vault import tokens
from crate_cli.vault.api import ApiCore, Denials


class ServedHome:
    """Every org of `home`, served over HTTP on a free port of 127.0.0.1."""

    def __init__(self, home: Path) -> None:
        self.session = Session(environ={"CRATE_HOME": str(home), "CRATE_KEYSTORE": "file"})
        self.denials = Denials()
        self.app = CrateApp(self._core, denials=self.denials)
        self.sock = bind_tcp(Listen("127.0.0.1", 0))
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self.server: Any = None
        self.thread: threading.Thread | None = None

    def _core(self) -> ApiCore:
        return ApiCore(self.session.new_service("server"), None, self.denials)

    def __enter__(self) -> ServedHome:
        import uvicorn

        config = uvicorn.Config(
            self.app,
            http=protocol_class(10.0, False, None),
            ws="none",
            lifespan="on",
            interface="asgi3",
            log_config=None,
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn ended before it served"
            assert time.monotonic() < deadline, "uvicorn never started"
            time.sleep(0.01)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.server.should_exit = True
        assert self.thread is not None
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "uvicorn did not stop"
        self.sock.close()
        self.session.close()  # the app closed its own connections at shutdown

    def token(self, name: str, role: str, org: str = "acme", envs: tuple[str, ...] = ()) -> str:
        """A new API token of `org`, made in the served home."""
        token, _ = tokens.create(
            self.session.service.org(org), name, role, list(envs), [], "", "tester@unit", utc_now()
        )
        return token

    def client(self, token: str | None, org: str = "acme") -> SecretsClient:
        return SecretsClient(HttpTransport(self.url, token), org)
