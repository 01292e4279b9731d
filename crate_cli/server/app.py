"""The HTTP adapter: an ASGI application over the API core.

It does what only HTTP needs: read the body within limits (size and time),
parse JSON, take the bearer token, cap the requests in flight (503 with
Retry-After past the cap), add a request id, and turn anything unexpected
into a JSON 500 that names no secret and carries no traceback. Everything
else (routing, authentication, access, the Crate protocol) is the core's.

The core is synchronous (SQLite, cryptography), so it runs on a small pool
of worker threads, each with its own `ApiCore` and vault connections; only
requests whose whole body has arrived reach a worker, so slow clients hold
no worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from crate_cli.errors import CrateError, InvalidInput, PayloadTooLarge
from crate_cli.vault.api import ApiCore, Principal, Request, Response, error_response

log = logging.getLogger("crate.server")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

OPENAPI_PATH = Path(__file__).with_name("openapi.json")


class Limits(NamedTuple):
    max_body: int = 1024 * 1024
    body_timeout: float = 10.0  # seconds to receive a whole body
    max_in_flight: int = 64  # requests being handled or waiting for a worker
    workers: int = 4
    retry_after: int = 1


def _error(status: int, code: str, message: str) -> Response:
    return Response(status, {"error": {"code": code, "message": message, "hint": None}})


class _BodyTimeout(Exception):
    pass


class CrateApp:
    """ASGI 3 application serving the API core.

    `make_core` builds one ApiCore per worker thread. `principal` is set for
    the agent (every caller is the local user) and None for the server (each
    request authenticates with its bearer token). `on_request` is called at
    the start of every request (the agent's idle clock).
    """

    def __init__(
        self,
        make_core: Callable[[], ApiCore],
        limits: Limits | None = None,
        principal: Principal | None = None,
        on_request: Callable[[], None] | None = None,
        extra: dict[str, Callable[[], dict[str, Any]]] | None = None,
    ) -> None:
        self.make_core = make_core
        self.limits = limits = limits or Limits()
        self.principal = principal
        self.on_request = on_request
        self.extra = extra or {}
        self.pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="crate-api")
        self.local = threading.local()
        self.cores: list[ApiCore] = []
        self.cores_lock = threading.Lock()
        self.in_flight = 0
        self._openapi: bytes | None = None

    # -- worker side ----------------------------------------------------------

    def _core(self) -> ApiCore:
        core: ApiCore | None = getattr(self.local, "core", None)
        if core is None:
            core = self.local.core = self.make_core()
            with self.cores_lock:
                self.cores.append(core)
        return core

    def _handle(self, request: Request) -> Response:
        try:
            return self._core().handle(request)
        except CrateError as e:
            return error_response(e)
        except Exception as e:
            # Only the type: a message could quote a value.
            log.error("internal error (%s) handling %s %s", type(e).__name__, *request[:2])
            return _error(500, "internal_error", "the server failed to handle the request")

    def close(self) -> None:
        """Finish the requests in flight, then close every vault connection."""
        self.pool.shutdown(wait=True)
        with self.cores_lock:
            for core in self.cores:
                core.service.close()
            self.cores.clear()

    # -- ASGI side ------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request_id = _request_id(scope)
        if self.on_request is not None and scope["path"] not in self.extra:
            self.on_request()  # the agent's idle clock; its status does not count
        close = False
        try:
            if self.in_flight >= self.limits.max_in_flight:
                response = _error(
                    503, "overloaded", "the server is at its limit of requests; retry shortly"
                )
            else:
                self.in_flight += 1
                try:
                    response = await self._respond(scope, receive, request_id)
                finally:
                    self.in_flight -= 1
        except _BodyTimeout:
            response = _error(408, "request_timeout", "the request body did not arrive in time")
            close = True
        except CrateError as e:
            response = error_response(e)
            close = response.status == 413
        except Exception as e:
            log.error("internal error (%s) in request %s", type(e).__name__, request_id)
            response = _error(500, "internal_error", "the server failed to handle the request")
        await self._send(send, response, request_id, close)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.get_running_loop().run_in_executor(None, self.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _send(self, send: Send, response: Response, request_id: str, close: bool) -> None:
        body = json.dumps(response.body, ensure_ascii=False, separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"x-request-id", request_id.encode()),
        ]
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        if response.status == 503:
            headers.append((b"retry-after", str(self.limits.retry_after).encode()))
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _respond(self, scope: Scope, receive: Receive, request_id: str) -> Response:
        method = scope["method"]
        path = scope["path"]
        headers = dict(scope["headers"])  # names are lowercase in ASGI
        if path in ("/healthz", "/openapi.json") or path in self.extra:
            if method != "GET":
                refused = _error(405, "method_not_allowed", f"{method} is not allowed on {path}")
                return refused._replace(headers=(("allow", "GET"),))
            if path == "/healthz":
                return Response(200, {"status": "ok"})
            if path == "/openapi.json":
                return Response(200, self.openapi())
            return Response(200, self.extra[path]())
        body = await self._read_body(headers, receive)
        try:
            query = dict(parse_qsl(scope["query_string"].decode("ascii"), errors="strict"))
        except (UnicodeDecodeError, ValueError):
            raise InvalidInput("the query string is not valid") from None
        token = None
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
        request = Request(
            method=method,
            path=path,
            principal=self.principal,
            query=query,
            body=body,
            token=token,
            request_id=request_id,
        )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._handle, request)

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> Any:
        limit = self.limits.max_body
        too_large = PayloadTooLarge(f"the request body is larger than {limit} bytes")
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                raise InvalidInput("the Content-Length header is not a number")
            if int(declared) > limit:
                raise too_large
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout
        more = True
        while more:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _BodyTimeout from None
            if message["type"] == "http.disconnect":
                raise InvalidInput("the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise InvalidInput("the request body is not valid JSON") from None

    def openapi(self) -> dict[str, Any]:
        if self._openapi is None:
            self._openapi = OPENAPI_PATH.read_bytes()
        document: dict[str, Any] = json.loads(self._openapi)
        return document


def _request_id(scope: Scope) -> str:
    """The client's X-Request-Id when it is a plain token of at most 64
    characters (a proxy's or a SIEM's correlation id), else a new one. It is
    recorded in the audit log and sent back."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if 0 < len(value) <= 64 and all(c in _ID_BYTES for c in value):
                return str(value.decode("ascii"))
            break
    return os.urandom(8).hex()


_ID_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
