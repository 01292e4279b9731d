"""check_server_url: what the client accepts as a server, and what it never echoes."""

from __future__ import annotations

import pytest

from crate_cli.client.transport.http import check_server_url
from crate_cli.errors import InvalidInput

TOKEN = "crate_" + "Ab3" * 14 + "x"


@pytest.mark.parametrize(
    ("url", "hidden"),
    [
        (TOKEN, TOKEN),  # a token pasted where the URL belongs
        ("https://alice:hunter2-secret@vault.example", "hunter2-secret"),
        (f"https://vault.example/?token={TOKEN}", TOKEN),
    ],
)
def test_a_bad_url_is_refused_without_echoing_it(url: str, hidden: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_server_url(url)
    assert hidden not in info.value.diagnostics()


def test_plain_http_only_to_loopback() -> None:
    assert check_server_url("http://127.0.0.1:8787/") == "http://127.0.0.1:8787"
    assert check_server_url("http://localhost:1") == "http://localhost:1"
    assert check_server_url("https://vault.example:8787") == "https://vault.example:8787"
    with pytest.raises(InvalidInput, match="plain HTTP"):
        check_server_url("http://10.1.2.3:8787")
