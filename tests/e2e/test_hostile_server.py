"""Text from a server never reaches the terminal with control characters (issue 17, item 14).

A real HTTP server on 127.0.0.1, written here to be hostile: its error
messages and hints, and the names, tags, actors and times in its answers,
carry escape sequences (clear the screen, set the window title, hide text,
reorder text with bidi controls). crate shows them escaped, on stdout and on
stderr alike.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.crate_runner import CrateRunner

pytestmark = pytest.mark.e2e

TOKEN = "crate_" + "A" * 43
NASTY = "\x1b]0;owned\x07\x1b[2J\x1b[8m\u202e\x9b31m"
RAW = ("\x1b", "\x07", "\u202e", "\x9b")


class Hostile(BaseHTTPRequestHandler):
    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/whoami":
            self._answer(
                200,
                {
                    "organization": "personal",
                    "actor": f"evil{NASTY}",
                    "role": "admin",
                    "environments": [],
                    "tags": [],
                    "token": "t",
                },
            )
        elif self.path.startswith("/organization/personal/secrets?"):
            row = {
                "name": f"A{NASTY}",
                "environment": "dev",
                "version": 1,
                "tags": [f"t{NASTY}"],
                "updated_at": f"now{NASTY}",
                "actor": f"a{NASTY}",
            }
            self._answer(200, {"secrets": [row]})
        else:
            self._refuse()

    def do_DELETE(self) -> None:
        self._refuse()

    def _refuse(self) -> None:
        self._answer(
            403,
            {
                "error": {
                    "code": "forbidden",
                    "message": f"denied{NASTY}",
                    "hint": f"run {NASTY}this",
                }
            },
        )

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "args",
    [
        ("secrets", "list"),
        ("secrets", "list", "--json"),
        ("secrets", "delete", "GONE", "--yes"),
        ("env", "list"),
    ],
)
def test_a_servers_text_is_shown_escaped(
    crate: CrateRunner, hostile: str, args: tuple[str, ...]
) -> None:
    env = {"CRATE_SERVER": hostile, "CRATE_TOKEN": TOKEN, "COLUMNS": "300"}
    result = crate(*args, env=env)
    shown = result.stdout + result.stderr
    for raw in RAW:
        assert raw not in shown, (args, shown)
    # Shown escaped (JSON output escapes the backslash once more).
    assert "\\x1b]0;owned\\x07" in shown.replace("\\\\", "\\"), shown
    if "delete" in args or "env" in args:
        assert result.returncode == 4
        assert "denied\\x1b]0;owned" in result.stderr
