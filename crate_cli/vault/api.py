"""The API core: (method, path, query, body, principal) to (status, body).

One framework-free function that every transport wraps unchanged: the
in-process loopback today, the HTTP server and the local agent later. Bodies
are JSON values (dicts, lists, strings), already parsed; the core checks
their shape itself, because they come from the wire.

Routes (DESIGN §4; the ones marked * are crate's extensions):

    GET    /organization/{org}/secrets/public-key
    PUT    /organization/{org}/secrets                    sealed store
    GET    /organization/{org}/secrets?env=&tags=         list, never values
    POST   /organization/{org}/secrets/retrieve           ephemeral retrieval
    DELETE /organization/{org}/secrets/{name}?env=
    GET    /organization/{org}/secrets/{name}/versions?env=
  * POST   /organization/{org}/secrets/{name}/rollback    {"environment", "to"}
  * GET    /organization/{org}/environments
  * POST   /organization/{org}/environments               {"name"}
  * DELETE /organization/{org}/environments/{env}
  * GET    /whoami                                      who the caller is

Each route needs a permission (`read`, `write` or `admin`); a principal has a
role that grants some of them, optionally limited to environments and tags
(DESIGN §5). Local callers (the CLI in-process, the agent) are admins; the
HTTP server authenticates a bearer token per request against the org named
in the path.

Errors are `{"error": {"code", "message", "hint"}}` with the status and
stable code of the `CrateError` raised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from crate_cli.errors import (
    CrateError,
    Forbidden,
    InvalidInput,
    NotFound,
    SealedTransportRequired,
    TokenExpired,
    Unauthorized,
)
from crate_cli.vault.service import SealedItem, VaultService

MAX_RETRIEVE_NAMES = 1000
# What each role may do.
GRANTS = {
    "admin": frozenset({"read", "write", "admin"}),
    "writer": frozenset({"read", "write"}),
    "reader": frozenset({"read"}),
}
_NEEDS_TEXT = {
    "read": "read secrets",
    "write": "change secrets",
    "admin": "manage environments",
}


class Principal(NamedTuple):
    """Who is calling: the actor recorded in history, through which client, and
    what they may do (empty envs or tags: no limit)."""

    actor: str
    client: str = "cli"
    role: str = "admin"
    envs: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    token: str | None = None  # the token's name, for a token principal
    org: str | None = None  # the org a token belongs to

    def allow_env(self, env: str) -> None:
        if self.envs and env not in self.envs:
            raise Forbidden(
                f"token {self.token!r} is limited to the environments "
                f"{', '.join(sorted(self.envs))}, not {env!r}"
            )


class Request(NamedTuple):
    """One API call. `principal` is None when the caller must authenticate
    with `token` (the HTTP server); transports that know the caller set it."""

    method: str
    path: str
    principal: Principal | None
    query: Mapping[str, str] = MappingProxyType({})
    body: Any = None
    token: str | None = None


class Response(NamedTuple):
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()  # extra HTTP headers (Allow on a 405)


class Call(NamedTuple):
    """A routed request: its authenticated principal and path parameters."""

    request: Request
    principal: Principal
    params: dict[str, str]

    @property
    def body(self) -> Any:
        return self.request.body

    @property
    def query(self) -> Mapping[str, str]:
        return self.request.query


Handler = Callable[["ApiCore", Call], Response]
# (method, path segments, permission, handler); a segment `{x}` matches any
# one segment; permission None means any authenticated caller.
_ROUTES: list[tuple[str, tuple[str, ...], str | None, Handler]] = []


def route(method: str, pattern: str, need: str | None) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _ROUTES.append((method, tuple(pattern.split("/")), need, fn))
        return fn

    return register


def routes() -> list[tuple[str, str]]:
    """(method, path pattern) of every route, for the OpenAPI check."""
    return [(method, "/".join(pattern)) for method, pattern, _, _ in _ROUTES]


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


def error_response(error: CrateError) -> Response:
    return Response(
        error.http_status,
        {"error": {"code": error.api_code, "message": error.message, "hint": error.hint}},
    )


def _field(body: Any, name: str, kind: type, required: bool = True) -> Any:
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    if name not in body or body[name] is None:
        if required:
            raise InvalidInput(f"the request needs the field {name!r}")
        return None
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInput(f"the field {name!r} must be of type {kind.__name__}")
    return value


def _str_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"the field {what!r} must be a list of strings")
    return list(value)


def _query_tags(query: Mapping[str, str]) -> list[str]:
    raw = query.get("tags", "")
    return [t for t in raw.split(",") if t]


def _query_env(query: Mapping[str, str]) -> str:
    env = query.get("env")
    if not env:
        raise InvalidInput("the query needs env=ENVIRONMENT")
    return env


class ApiCore:
    def __init__(self, service: VaultService, orgs: frozenset[str] | None = None) -> None:
        """`orgs` limits what is served (None: every org of the home)."""
        self.service = service
        self.orgs = orgs

    def handle(self, request: Request) -> Response:
        """Route a request; every CrateError becomes its JSON error response."""
        try:
            allowed: list[str] = []
            segments = request.path.split("/")
            for method, pattern, need, fn in _ROUTES:
                params = _match(pattern, segments)
                if params is None:
                    continue
                allowed.append(method)
                if method == request.method:
                    principal = self._authorize(request, params.get("org"), need)
                    return fn(self, Call(request, principal, params))
            if allowed:
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
            raise NotFound(f"no such API path: {request.path}")
        except CrateError as e:
            return error_response(e)

    def _served(self, org: str) -> None:
        if self.orgs is not None and org not in self.orgs:
            raise NotFound(f"organization {org!r} is not served here")

    def _authorize(self, request: Request, org: str | None, need: str | None) -> Principal:
        """The caller, checked against the route's permission and org."""
        principal = request.principal
        if principal is None:
            principal = self._authenticate(request.token, org)
        elif org is not None:
            self._served(org)
        if principal.org is not None and org is not None and principal.org != org:
            raise Forbidden(f"token {principal.token!r} belongs to organization {principal.org!r}")
        if need is not None and need not in GRANTS.get(principal.role, frozenset()):
            raise Forbidden(
                f"token {principal.token!r} has the role {principal.role}, which cannot "
                f"{_NEEDS_TEXT[need]}"
            )
        return principal

    def _authenticate(self, token: str | None, org: str | None) -> Principal:
        from crate_cli.vault import tokens
        from crate_cli.vault.masterkey import utc_now

        if not token:
            raise Unauthorized(
                "this server needs an API token (Authorization: Bearer crate_...)",
                "log in with: crate login --server URL",
            )
        invalid = Unauthorized(
            "the API token is not valid here (unknown, revoked or mistyped)",
            "ask an admin of the server for a token: crate token create NAME --role reader",
        )
        if org is None:
            from crate_cli.vault.orgs import list_orgs

            # /whoami: the token says which org it belongs to.
            for candidate in list_orgs(self.service.home):
                try:
                    return self._authenticate(token, candidate)
                except TokenExpired:
                    raise
                except Unauthorized:
                    pass
            raise invalid
        if self.orgs is not None and org not in self.orgs:
            raise invalid  # not served: no token can be valid for it
        try:
            keys = self.service.org(org)
        except NotFound:
            raise invalid from None  # an unknown org is not revealed to strangers
        try:
            info = tokens.authenticate(keys, token, utc_now())
        except TokenExpired:
            raise
        except Unauthorized:
            raise invalid from None  # the same answer whether or not the org exists
        return Principal(
            actor=f"token:{info.name}",
            client="server",
            role=info.role,
            envs=frozenset(info.envs),
            tags=frozenset(info.tags),
            token=info.name,
            org=org,
        )

    # -- routes -------------------------------------------------------------

    @route("GET", "/whoami", None)
    def _whoami(self, call: Call) -> Response:
        p = call.principal
        body: dict[str, Any] = {
            "actor": p.actor,
            "client": p.client,
            "role": p.role,
            "organization": p.org,
            "environments": sorted(p.envs),
            "tags": sorted(p.tags),
            "token": p.token,
        }
        return Response(200, body)

    @route("GET", "/organization/{org}/secrets/public-key", None)
    def _public_key(self, call: Call) -> Response:
        return Response(200, self.service.public_key(call.params["org"]))

    @route("PUT", "/organization/{org}/secrets", "write")
    def _store(self, call: Call) -> Response:
        p, body = call.params, call.body
        if not isinstance(body, dict):
            raise InvalidInput("the request body must be a JSON object")
        if (
            body.get("sealed") is not True
            or "value" in body
            or ("encrypted_value" not in body and "encrypted_values" not in body)
        ):
            raise SealedTransportRequired(
                "secrets must be stored sealed: encrypt the value to the organization's public "
                "key (JWE RSA-OAEP-256/A256GCM) and send sealed=true; plaintext is rejected",
            )
        env = _field(body, "environment", str)
        call.principal.allow_env(env)
        scope = call.principal.tags
        if "encrypted_values" in body:
            entries = _field(body, "secrets", list)
            items = []
            for entry in entries:
                name = _field(entry, "name", str)
                tags = entry.get("tags")
                items.append(SealedItem(name, None if tags is None else _str_list(tags, "tags")))
            records = self.service.store_sealed(
                p["org"],
                env,
                None,
                (items, _field(body, "encrypted_values", str)),
                call.principal.actor,
                tag_scope=scope,
            )
            return Response(200, {"secrets": [r.to_wire() for r in records]})
        tags = body.get("tags")
        item = SealedItem(
            _field(body, "name", str), None if tags is None else _str_list(tags, "tags")
        )
        (record,) = self.service.store_sealed(
            p["org"],
            env,
            [(item, body["encrypted_value"])],
            None,
            call.principal.actor,
            tag_scope=scope,
        )
        return Response(200, record.to_wire())

    @route("GET", "/organization/{org}/secrets", "read")
    def _list(self, call: Call) -> Response:
        env = _query_env(call.query)
        call.principal.allow_env(env)
        records = self.service.list_secrets(
            call.params["org"], env, _query_tags(call.query), call.principal.tags
        )
        return Response(200, {"secrets": [r.to_wire() for r in records]})

    @route("POST", "/organization/{org}/secrets/retrieve", "read")
    def _retrieve(self, call: Call) -> Response:
        body = call.body
        env = _field(body, "environment", str)
        call.principal.allow_env(env)
        names = _str_list(body.get("names"), "names")
        if len(names) > MAX_RETRIEVE_NAMES:
            raise InvalidInput(f"at most {MAX_RETRIEVE_NAMES} names per retrieval")
        versions_raw = _field(body, "versions", dict, required=False) or {}
        versions: dict[str, int] = {}
        for name, v in versions_raw.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InvalidInput("versions must map names to positive integers")
            versions[name] = v
        nonce = _field(body, "nonce", str)
        if not 16 <= len(nonce) <= 128:
            raise InvalidInput("the nonce must be 16 to 128 characters")
        bundle = self.service.retrieve(
            call.params["org"],
            env,
            names,
            _str_list(body.get("tags"), "tags"),
            versions,
            _field(body, "public_key", dict),
            nonce,
            call.principal.tags,
        )
        return Response(200, {"bundle": bundle})

    @route("DELETE", "/organization/{org}/secrets/{name}", "write")
    def _delete(self, call: Call) -> Response:
        env = _query_env(call.query)
        call.principal.allow_env(env)
        r = self.service.delete(
            call.params["org"],
            env,
            call.params["name"],
            call.principal.actor,
            call.principal.tags,
        )
        return Response(200, {"name": r.name, "environment": r.env, "version": r.version})

    @route("GET", "/organization/{org}/secrets/{name}/versions", "read")
    def _history(self, call: Call) -> Response:
        env = _query_env(call.query)
        call.principal.allow_env(env)
        name = call.params["name"]
        versions = self.service.history(call.params["org"], env, name, call.principal.tags)
        return Response(200, {"name": name, "environment": env, "versions": versions})

    @route("POST", "/organization/{org}/secrets/{name}/rollback", "write")
    def _rollback(self, call: Call) -> Response:
        to = _field(call.body, "to", int)
        env = _field(call.body, "environment", str)
        call.principal.allow_env(env)
        r = self.service.rollback(
            call.params["org"],
            env,
            call.params["name"],
            to,
            call.principal.actor,
            call.principal.tags,
        )
        return Response(200, r.to_wire())

    @route("GET", "/organization/{org}/environments", "read")
    def _envs(self, call: Call) -> Response:
        envs = self.service.list_envs(call.params["org"])
        allowed = call.principal.envs
        return Response(200, {"environments": [e for e in envs if not allowed or e in allowed]})

    @route("POST", "/organization/{org}/environments", "admin")
    def _create_env(self, call: Call) -> Response:
        name = _field(call.body, "name", str)
        call.principal.allow_env(name)
        self.service.create_env(call.params["org"], name)
        return Response(201, {"name": name})

    @route("DELETE", "/organization/{org}/environments/{env}", "admin")
    def _delete_env(self, call: Call) -> Response:
        call.principal.allow_env(call.params["env"])
        if call.principal.tags:
            raise Forbidden(
                f"token {call.principal.token!r} is limited to tags and cannot delete a whole "
                "environment"
            )
        removed = self.service.delete_env(call.params["org"], call.params["env"])
        return Response(200, {"name": call.params["env"], "secrets_deleted": removed})
