"""The in-process transport: the client calls the API core directly.

The messages are the ones an HTTP server would see: the body goes through a
JSON encode and decode on the way in and out, so nothing that could not
cross a wire can cross here.
"""

from __future__ import annotations

import json
from typing import Any

from crate_cli.errors import error_from_api
from crate_cli.vault.api import ApiCore, Principal, Request


class LoopbackTransport:
    def __init__(self, core: ApiCore, principal: Principal) -> None:
        self.core = core
        self.principal = principal

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: Any = None,
    ) -> dict[str, Any]:
        wire_body = None if body is None else json.loads(json.dumps(body))
        response = self.core.handle(
            Request(
                method=method,
                path=path,
                principal=self.principal,
                query=query or {},
                body=wire_body,
            )
        )
        payload: dict[str, Any] = json.loads(json.dumps(response.body))
        if response.status >= 400:
            error = payload.get("error") or {}
            raised = error_from_api(str(error.get("code")), str(error.get("message")))
            raised.hint = error.get("hint")
            raise raised
        return payload
