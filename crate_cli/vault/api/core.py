"""The API core: (method, path, query, body, principal) to (status, body).

One framework-free function that every transport wraps unchanged: the
in-process loopback, the HTTP server and the local agent. Bodies are JSON
values (dicts, lists, strings), already parsed; the routes check their
shape themselves, because they come from the wire.

The core finds the route, authenticates and authorizes the caller (auth.py),
calls the handler (routes.py), turns every CrateError into its JSON error
response and records what was denied or failed in the org's audit log.
"""

import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from crate_cli.errors import (
    CrateError,
    Forbidden,
    KeystoreError,
    NotFound,
    StoreRetry,
    Unauthorized,
)
from crate_cli.records import Record
from crate_cli.vault import audit
from crate_cli.vault.api.auth import Denials, Permission, Principal, TokenCheck, authorize
from crate_cli.vault.audit import Action
from crate_cli.vault.keys import Caller
from crate_cli.vault.names import ENV_RE, SECRET_RE
from crate_cli.vault.service import VaultService
from crate_cli.vault.storage.interface import counting_commits

MAX_RETRIEVE_NAMES = 1000
# How many times a request that met StoreRetry (a lost connection, a
# deadlock: nothing applied) runs again, after 50, 100, 200 ms (with jitter).
STORE_RETRIES = 3


class Request(Record):
    """One API call. `principal` is None when the caller must authenticate
    with `token` (the HTTP server); transports that know the caller set it."""

    method: str
    path: str
    principal: Principal | None
    query: Mapping[str, str] = MappingProxyType({})
    body: Any = None
    token: str | None = None
    request_id: str = ""  # made up by the core when the transport has none


class Response(Record):
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()  # extra HTTP headers (Allow on a 405)


class Call(Record):
    """A routed request: its authenticated principal and path parameters.
    Handlers note the environment and names they act on in `noted`, for the
    audit entry of a denial or failure."""

    request: Request
    principal: Principal
    params: dict[str, str]
    noted: dict[str, Any]

    @property
    def body(self) -> Any:
        return self.request.body

    @property
    def query(self) -> Mapping[str, str]:
        return self.request.query

    @property
    def caller(self) -> Caller:
        return self.principal.caller(self.request.request_id)

    def env(self, env: str) -> str:
        """Note the environment acted on and check the principal may use it."""
        self.noted["env"] = env
        self.principal.allow_env(env)
        return env

    def org_wide(self, what: str) -> str:
        """The org of a call that spans the whole org (refused to a token
        limited to environments or tags)."""
        self.principal.org_wide(what)
        return self.params["org"]


Handler = Callable[[VaultService, Call], Response]


class Route(Record):
    method: str
    pattern: tuple[str, ...]  # a segment `{x}` matches any one segment
    need: Permission | None  # None: any authenticated caller
    action: Action | None  # its audit action (None: not an org operation)
    handler: Handler


# Filled by routes.py as it is imported (the package imports it).
_ROUTES: list[Route] = []


def route(
    method: str, pattern: str, need: Permission | None, action: Action | None = None
) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _ROUTES.append(Route(method, tuple(pattern.split("/")), need, action, fn))
        return fn

    return register


def route_table() -> list[tuple[str, str]]:
    """(method, path pattern) of every route, for the OpenAPI check."""
    return [(r.method, "/".join(r.pattern)) for r in _ROUTES]


def _match(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    """Path parameters if `segments` fit `pattern` (no regex: cheaper to import)."""
    if len(pattern) != len(segments):
        return None
    params = {}
    for want, got in zip(pattern, segments, strict=True):
        if want.startswith("{"):
            if not got:
                return None
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params


def find_route(request: Request) -> tuple[Route, dict[str, str]] | None:
    """The route a request calls and its path parameters (None: no route
    has this path and method). Pure: it touches no vault."""
    segments = request.path.split("/")
    for r in _ROUTES:
        if r.method == request.method:
            params = _match(r.pattern, segments)
            if params is not None:
                return r, params
    return None


def error_response(error: CrateError) -> Response:
    return Response(
        error.http_status,
        {"error": {"code": error.api_code, "message": error.message, "hint": error.hint}},
    )


def _not_allowed(request: Request, allowed: list[str]) -> Response:
    return Response(
        405,
        {
            "error": {
                "code": "method_not_allowed",
                "message": f"{request.method} is not allowed on {request.path}",
                "hint": None,
            }
        },
        (("allow", ", ".join(allowed)),),
    )


class ApiCore:
    def __init__(
        self,
        service: VaultService,
        orgs: frozenset[str] | None = None,
        denials: Denials | None = None,
    ) -> None:
        """`orgs` limits what is served (None: every org of the storage).
        `denials` counts the refusals of callers without a valid token (the
        HTTP server's) for one summary entry per org; without it, each is
        recorded on its own."""
        self.service = service
        self.orgs = orgs
        self.denials = denials
        self.tokens = TokenCheck(service, orgs)

    def handle(self, request: Request) -> Response:
        """Route a request; every CrateError becomes its JSON error response."""
        if not request.request_id:
            request = request._replace(request_id=os.urandom(8).hex())
        try:
            allowed: list[str] = []
            segments = request.path.split("/")
            for r in _ROUTES:
                params = _match(r.pattern, segments)
                if params is None:
                    continue
                allowed.append(r.method)
                if r.method == request.method:
                    return self._call(request, r, params)
            if allowed:
                return _not_allowed(request, allowed)
            raise NotFound(f"no such API path: {request.path}")
        except CrateError as e:
            return error_response(e)

    def _call(self, request: Request, r: Route, params: dict[str, str]) -> Response:
        principal: Principal | None = None
        noted: dict[str, Any] = {}
        try:
            principal = self._principal(request, params.get("org"))
            authorize(principal, params.get("org"), r.need, r.action)
            return self._run(r, Call(request, principal, params, noted))
        except CrateError as e:
            if r.action is not None and "org" in params:
                self._record_refusal(request, params["org"], r.action, principal, noted, e)
            raise

    def _run(self, r: Route, call: Call) -> Response:
        """The route's handler, run again when the store says that nothing of
        it was applied (StoreRetry) and none of its writes committed."""
        attempt = 0
        while True:
            with counting_commits() as count:
                try:
                    return r.handler(self.service, call)
                except StoreRetry:
                    if count.commits or attempt >= STORE_RETRIES:
                        raise
            import time

            time.sleep(0.05 * 2**attempt * (0.5 + os.urandom(1)[0] / 255))
            attempt += 1

    def _principal(self, request: Request, org: str | None) -> Principal:
        """The caller: the transport's, or the owner of the request's token."""
        if request.principal is None:
            return self.tokens.authenticate(request.token, org)
        if org is not None:
            self.tokens.served(org)
        return request.principal

    def _record_refusal(
        self,
        request: Request,
        org: str,
        action: Action,
        principal: Principal | None,
        noted: dict[str, Any],
        error: CrateError,
    ) -> None:
        """Record a denied or failed call in the org's log, when the org is
        served here and exists. A failed unlock is recorded where it happens;
        a log that cannot be written does not hide the call's own error."""
        if isinstance(error, KeystoreError) or (self.orgs is not None and org not in self.orgs):
            return
        if principal is None and self.denials is not None and isinstance(error, Unauthorized):
            self.denials.count(org, "", error.api_code)  # summed up, not one write each
            return
        if principal is None:
            known = request.principal
            principal = Principal("anonymous", known.client if known else "server")
        env = noted.get("env", "")
        names = [n for n in noted.get("names", ()) if isinstance(n, str) and SECRET_RE.fullmatch(n)]
        outcome = "denied" if isinstance(error, (Unauthorized, Forbidden)) else "failed"
        try:
            keys = self.service.org(org)
            audit.record(
                keys,
                principal.caller(request.request_id),
                action,
                env=env if isinstance(env, str) and ENV_RE.fullmatch(env) else "",
                names=names[:MAX_RETRIEVE_NAMES],
                outcome=outcome,
                details={"error": error.api_code},
            )
        except CrateError:
            pass

    def authenticate(self, request: Request) -> Principal | None:
        """Who sends `request` (the HTTP server asks before the request takes a
        place among those in flight): the owner of its token for the org in its
        path, or None when no route matches (its 404 or 405 needs no token).
        Raises Unauthorized, the same way whether or not the org exists."""
        found = find_route(request)
        if found is None:
            return None
        return self.tokens.authenticate(request.token, found[1].get("org"))

    def warm_auth(self) -> None:
        """Open every served org's vault now (TokenCheck.warm)."""
        self.tokens.warm()

    def write_denials(self, denials: Denials) -> int:
        """Write what `denials` counted since last time: one `unauthenticated`
        entry per org that exists and is served (made-up orgs have no log to
        write to). Returns the number of entries written."""
        written = 0
        existing = set(self.service.list_orgs())
        denials.known = frozenset(existing if self.orgs is None else existing & set(self.orgs))
        for org, tally in sorted(denials.drain().items()):
            if org not in denials.known:
                continue
            try:
                audit.record(
                    self.service.org(org),
                    Caller("anonymous", "server", os.urandom(8).hex()),
                    "unauthenticated",
                    outcome="denied",
                    details=tally,
                )
                written += 1
            except CrateError as e:
                # The server's log says what the org's log could not hold.
                import logging

                logging.getLogger("crate.server").error(
                    "could not record %d unauthenticated requests in the audit log of %s (%s)",
                    tally["count"],
                    org,
                    type(e).__name__,
                )
        return written
