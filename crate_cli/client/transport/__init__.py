"""Client-side transports to the API core: in-process (loopback.py) and HTTP (http.py)."""

from __future__ import annotations

from typing import Any, Protocol


class Transport(Protocol):
    def request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: Any = None,
    ) -> dict[str, Any]:
        """Send one API request; return the JSON body or raise the CrateError it carries."""
        ...
