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

For `crate server` (no fixed principal), a request goes:

1. counted against its client address's cap of requests in flight (503
   past it), from its first byte to its answer, body reading included;
2. its body read under the size and time limits;
3. refused with 429, without a look at the vault, when its address has
   used up its failed authentications (`guard.AuthFailures`);
4. authenticated on a thread of its own (`ApiCore.authenticate`, its own
   vault connections); a 401 takes from the address's bucket;
5. only then counted against the global in-flight cap and handed to a
   worker, with its principal set.

Refusals of callers without a valid token (401, 429) are counted in memory
(`api.Denials`) and written as one audit entry per org every
`denial_log_interval` seconds and at shutdown. The agent (a fixed
principal, on a unix socket of its own uid) skips steps 1 to 4.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from crate_cli.errors import CrateError, InvalidInput, PayloadTooLarge, RateLimited, Unauthorized
from crate_cli.records import Record
from crate_cli.server.guard import AuthFailures, client_key
from crate_cli.vault.api import (
    ApiCore,
    Denials,
    Principal,
    Request,
    Response,
    error_response,
    find_route,
)

log = logging.getLogger("crate.server")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

OPENAPI_PATH = Path(__file__).with_name("openapi.json")


class Limits(Record):
    max_body: int = 1024 * 1024
    body_timeout: float = 10.0  # seconds to receive a whole body
    max_in_flight: int = 64  # authenticated requests being handled or waiting for a worker
    workers: int = 4
    retry_after: int = 1
    max_in_flight_per_client: int = 16  # per client address, from first byte to answer
    auth_failure_burst: int = 20  # failed authentications per address at once
    auth_failure_refill: float = 3.0  # seconds to regain one
    denial_log_interval: float = 10.0  # seconds between the summary audit entries


def _error(status: int, code: str, message: str) -> Response:
    return Response(status, {"error": {"code": code, "message": message, "hint": None}})


class _BodyTimeout(Exception):
    pass


class CrateApp:
    """ASGI 3 application serving the API core.

    `make_core` builds one ApiCore per worker thread. `principal` is set for
    the agent (every caller is the local user) and None for the server (each
    request authenticates with its bearer token, on a thread of its own,
    before it counts among the requests in flight). `on_request` is called
    at the start of every request (the agent's idle clock). `denials` is
    the object the server's cores count refusals in.
    """

    def __init__(
        self,
        make_core: Callable[[], ApiCore],
        limits: Limits | None = None,
        principal: Principal | None = None,
        on_request: Callable[[], None] | None = None,
        extra: dict[str, Callable[[], dict[str, Any]]] | None = None,
        denials: Denials | None = None,
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
        # The server's side: strangers until their token is checked.
        self.denials = denials if denials is not None else Denials()
        self.auth_pool = ThreadPoolExecutor(1, thread_name_prefix="crate-auth")
        self.failures = AuthFailures(limits.auth_failure_burst, limits.auth_failure_refill)
        self.client_in_flight: dict[str, int] = {}
        self._flusher: asyncio.Task[None] | None = None

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

    def _authenticate(self, request: Request) -> Principal | Response:
        """On the authentication thread: the caller, or the answer to a
        request no route takes (404, 405: no token needed)."""
        core = self._core()
        principal = core.authenticate(request)
        if principal is None:
            return core.handle(request)
        return principal

    def _warm(self) -> None:
        """On the authentication thread, before serving: open the served vaults."""
        try:
            core = self._core()
            core.warm_auth()
            core.write_denials(self.denials)  # nothing to write yet: learns the orgs
        except Exception as e:  # each request will say what is wrong
            log.error("could not open the served vaults ahead (%s)", type(e).__name__)

    def _write_denials(self) -> None:
        try:
            self._core().write_denials(self.denials)
        except Exception as e:
            log.error("could not record unauthenticated requests (%s)", type(e).__name__)

    def close(self) -> None:
        """Finish the requests in flight, write the denials counted since the
        last summary, then close every vault connection."""
        self.auth_pool.shutdown(wait=True)
        if self.principal is None:
            self.pool.submit(self._write_denials).result()
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
        client = None
        if self.principal is None and scope.get("client"):
            client = client_key(scope["client"][0])
        if client is not None:
            held = self.client_in_flight.get(client, 0)
            if held >= self.limits.max_in_flight_per_client:
                refused = _error(
                    503,
                    "overloaded",
                    "this address has too many requests in flight; retry shortly",
                )
                await self._send(send, refused, request_id, False)
                return
            self.client_in_flight[client] = held + 1
        try:
            close = False
            try:
                response = await self._respond(scope, receive, request_id, client)
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
        finally:
            if client is not None:
                left = self.client_in_flight.get(client, 1) - 1
                if left > 0:
                    self.client_in_flight[client] = left
                else:
                    self.client_in_flight.pop(client, None)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.principal is None:
                    await loop.run_in_executor(self.auth_pool, self._warm)
                    self._flusher = asyncio.create_task(self._write_denials_every())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._flusher is not None:
                    self._flusher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._flusher
                await loop.run_in_executor(None, self.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _write_denials_every(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.limits.denial_log_interval)
            await loop.run_in_executor(self.pool, self._write_denials)

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

    def _overloaded(self) -> Response | None:
        if self.in_flight >= self.limits.max_in_flight:
            message = "the server is at its limit of requests; retry shortly"
            return _error(503, "overloaded", message)
        return None

    async def _respond(
        self, scope: Scope, receive: Receive, request_id: str, client: str | None
    ) -> Response:
        method = scope["method"]
        path = scope["path"]
        headers = dict(scope["headers"])  # names are lowercase in ASGI
        if path in ("/healthz", "/openapi.json") or path in self.extra:
            if method != "GET":
                refused = _error(405, "method_not_allowed", f"{method} is not allowed on {path}")
                return refused._replace(headers=(("allow", "GET"),))
            overloaded = self._overloaded()  # a health check sees the saturation
            if overloaded is not None:
                return overloaded
            if path == "/healthz":
                return Response(200, {"status": "ok"})
            if path == "/openapi.json":
                return Response(200, self.openapi())
            return Response(200, self.extra[path]())
        loop = asyncio.get_running_loop()
        if self.principal is not None:
            # The agent: every caller is the local user; the request counts from its start.
            overloaded = self._overloaded()
            if overloaded is not None:
                return overloaded
            self.in_flight += 1
            try:
                request = await self._read_request(scope, receive, headers, request_id)
                return await loop.run_in_executor(self.pool, self._handle, request)
            finally:
                self.in_flight -= 1
        request = await self._read_request(scope, receive, headers, request_id)
        return await self._respond_to_stranger(request, client)

    async def _respond_to_stranger(self, request: Request, client: str | None) -> Response:
        """The server: authenticate first; only a known caller takes a place."""
        loop = asyncio.get_running_loop()
        found = find_route(request)
        org = found[1].get("org") if found is not None else None
        address = client or "unix"
        if found is not None and client is not None:
            wait = self.failures.wait(client)
            if wait:
                if org is not None:
                    self.denials.count(org, address, RateLimited.api_code)
                refused = error_response(
                    RateLimited(
                        "too many requests from this address failed to authenticate; "
                        "retry after the time in Retry-After",
                        "check the API token (crate login --server URL)",
                    )
                )
                return refused._replace(headers=(("retry-after", str(wait)),))
        try:
            outcome = await loop.run_in_executor(self.auth_pool, self._authenticate, request)
        except Unauthorized as e:
            if client is not None:
                self.failures.fail(client)
            if org is not None:
                self.denials.count(org, address, e.api_code)
            raise
        if isinstance(outcome, Response):
            return outcome  # no route: a 404 or 405
        overloaded = self._overloaded()
        if overloaded is not None:
            return overloaded
        self.in_flight += 1
        try:
            request = request._replace(principal=outcome)
            return await loop.run_in_executor(self.pool, self._handle, request)
        finally:
            self.in_flight -= 1

    async def _read_request(
        self, scope: Scope, receive: Receive, headers: dict[bytes, bytes], request_id: str
    ) -> Request:
        body = await self._read_body(headers, receive)
        try:
            query = dict(parse_qsl(scope["query_string"].decode("ascii"), errors="strict"))
        except (UnicodeDecodeError, ValueError):
            raise InvalidInput("the query string is not valid") from None
        token = None
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
        return Request(
            method=scope["method"],
            path=scope["path"],
            principal=self.principal,
            query=query,
            body=body,
            token=token,
            request_id=request_id,
        )

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
