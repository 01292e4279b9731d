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

Errors are `{"error": {"code", "message", "hint"}}` with the status and
stable code of the `CrateError` raised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from crate_cli.errors import CrateError, InvalidInput, NotFound, SealedTransportRequired
from crate_cli.vault.service import SealedItem, VaultService

MAX_RETRIEVE_NAMES = 1000


class Principal(NamedTuple):
    """Who is calling: the actor recorded in history, and through which client."""

    actor: str
    client: str = "cli"


class Request(NamedTuple):
    method: str
    path: str
    principal: Principal
    query: Mapping[str, str] = MappingProxyType({})
    body: Any = None


class Response(NamedTuple):
    status: int
    body: dict[str, Any]


Handler = Callable[["ApiCore", Request, dict[str, str]], Response]
# (method, path segments, handler); a segment `{x}` matches any one segment.
_ROUTES: list[tuple[str, tuple[str, ...], Handler]] = []


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _ROUTES.append((method, tuple(pattern.split("/")), fn))
        return fn

    return register


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
    def __init__(self, service: VaultService) -> None:
        self.service = service

    def handle(self, request: Request) -> Response:
        """Route a request; every CrateError becomes its JSON error response."""
        try:
            path_matched = False
            segments = request.path.split("/")
            for method, pattern, fn in _ROUTES:
                params = _match(pattern, segments)
                if params is None:
                    continue
                path_matched = True
                if method == request.method:
                    return fn(self, request, params)
            if path_matched:
                return Response(
                    405,
                    {
                        "error": {
                            "code": "method_not_allowed",
                            "message": f"{request.method} is not allowed on {request.path}",
                            "hint": None,
                        }
                    },
                )
            raise NotFound(f"no such API path: {request.path}")
        except CrateError as e:
            return error_response(e)

    # -- routes -------------------------------------------------------------

    @route("GET", "/organization/{org}/secrets/public-key")
    def _public_key(self, req: Request, p: dict[str, str]) -> Response:
        return Response(200, self.service.public_key(p["org"]))

    @route("PUT", "/organization/{org}/secrets")
    def _store(self, req: Request, p: dict[str, str]) -> Response:
        body = req.body
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
                req.principal.actor,
            )
            return Response(200, {"secrets": [r.to_wire() for r in records]})
        tags = body.get("tags")
        item = SealedItem(
            _field(body, "name", str), None if tags is None else _str_list(tags, "tags")
        )
        (record,) = self.service.store_sealed(
            p["org"], env, [(item, body["encrypted_value"])], None, req.principal.actor
        )
        return Response(200, record.to_wire())

    @route("GET", "/organization/{org}/secrets")
    def _list(self, req: Request, p: dict[str, str]) -> Response:
        records = self.service.list_secrets(p["org"], _query_env(req.query), _query_tags(req.query))
        return Response(200, {"secrets": [r.to_wire() for r in records]})

    @route("POST", "/organization/{org}/secrets/retrieve")
    def _retrieve(self, req: Request, p: dict[str, str]) -> Response:
        body = req.body
        env = _field(body, "environment", str)
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
            p["org"],
            env,
            names,
            _str_list(body.get("tags"), "tags"),
            versions,
            _field(body, "public_key", dict),
            nonce,
        )
        return Response(200, {"bundle": bundle})

    @route("DELETE", "/organization/{org}/secrets/{name}")
    def _delete(self, req: Request, p: dict[str, str]) -> Response:
        r = self.service.delete(p["org"], _query_env(req.query), p["name"], req.principal.actor)
        return Response(200, {"name": r.name, "environment": r.env, "version": r.version})

    @route("GET", "/organization/{org}/secrets/{name}/versions")
    def _history(self, req: Request, p: dict[str, str]) -> Response:
        env = _query_env(req.query)
        versions = self.service.history(p["org"], env, p["name"])
        return Response(200, {"name": p["name"], "environment": env, "versions": versions})

    @route("POST", "/organization/{org}/secrets/{name}/rollback")
    def _rollback(self, req: Request, p: dict[str, str]) -> Response:
        to = _field(req.body, "to", int)
        r = self.service.rollback(
            p["org"], _field(req.body, "environment", str), p["name"], to, req.principal.actor
        )
        return Response(200, r.to_wire())

    @route("GET", "/organization/{org}/environments")
    def _envs(self, req: Request, p: dict[str, str]) -> Response:
        return Response(200, {"environments": self.service.list_envs(p["org"])})

    @route("POST", "/organization/{org}/environments")
    def _create_env(self, req: Request, p: dict[str, str]) -> Response:
        name = _field(req.body, "name", str)
        self.service.create_env(p["org"], name)
        return Response(201, {"name": name})

    @route("DELETE", "/organization/{org}/environments/{env}")
    def _delete_env(self, req: Request, p: dict[str, str]) -> Response:
        removed = self.service.delete_env(p["org"], p["env"])
        return Response(200, {"name": p["env"], "secrets_deleted": removed})
