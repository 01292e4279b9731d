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
    GET    /organization/{org}/audit?since=&actor=&action=&env=&name=&limit=&before=&after=
  * GET    /organization/{org}/audit/verify
  * PUT    /organization/{org}/audit/module               {"enabled"}
  * GET    /organization/{org}/allowed-names              steering names allowed (PATH ...)
  * PUT    /organization/{org}/allowed-names/{name}
  * DELETE /organization/{org}/allowed-names/{name}
  * GET    /whoami                                      who the caller is

Each route needs a permission (`read`, `write` or `admin`); a principal has a
role that grants some of them, optionally limited to environments and tags
(DESIGN §5). Local callers (the CLI in-process, the agent) are admins; the
HTTP server authenticates a bearer token per request against the org named
in the path.

Errors are `{"error": {"code", "message", "hint"}}` with the status and
stable code of the `CrateError` raised.

Every call on an org lands in its audit log (crate_cli/vault/audit.py): the
service records what succeeded, inside the change's own transaction or right
after a read; the core records what was denied or failed, with the request's
id. Successful reads of the public key, the environments and the audit log
itself are not recorded.
"""

import os
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from crate_cli.errors import (
    CrateError,
    Forbidden,
    InvalidInput,
    KeystoreError,
    NotFound,
    SealedTransportRequired,
    TokenExpired,
    Unauthorized,
)
from crate_cli.vault import audit, jwe
from crate_cli.vault.audit import Caller
from crate_cli.vault.names import ENV_RE, SECRET_RE
from crate_cli.vault.service import OrgKeys, SealedItem, VaultService

MAX_RETRIEVE_NAMES = 1000
# How long an org found not to exist is taken as such (a new org is served
# after at most this long).
UNKNOWN_ORG_TTL = 5.0
MAX_UNKNOWN_ORGS = 4096
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

    def caller(self, request_id: str) -> Caller:
        return Caller(self.actor, self.client, request_id)

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
    request_id: str = ""  # made up by the core when the transport has none


class Response(NamedTuple):
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()  # extra HTTP headers (Allow on a 405)


class Call(NamedTuple):
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


Handler = Callable[["ApiCore", Call], Response]


class Route(NamedTuple):
    method: str
    pattern: tuple[str, ...]  # a segment `{x}` matches any one segment
    need: str | None  # the permission; None: any authenticated caller
    action: str | None  # its audit action (None: not an org operation)
    handler: Handler


_ROUTES: list[Route] = []


def route(
    method: str, pattern: str, need: str | None, action: str | None = None
) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _ROUTES.append(Route(method, tuple(pattern.split("/")), need, action, fn))
        return fn

    return register


def routes() -> list[tuple[str, str]]:
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


class Denials:
    """Refusals of callers without a valid token (401, 429), counted in memory
    per org and written as one `unauthenticated` entry per org and interval
    (`ApiCore.write_denials`), instead of one locked write per refusal: a
    stranger's guesses neither amplify into audit writes nor time them.

    One object for every thread of a server (the counts are under a lock).
    At most `max_orgs` orgs are counted per interval, plus every org in
    `known` (the orgs that exist): names made up by a stranger cannot crowd
    out a real org's count.
    """

    MAX_ADDRESSES = 16  # per org and interval; further ones are only counted

    def __init__(self, max_orgs: int = 1024) -> None:
        import threading

        self._lock = threading.Lock()
        self._tallies: dict[str, dict[str, Any]] = {}
        self.max_orgs = max_orgs
        self.known: frozenset[str] = frozenset()
        self.dropped = 0  # refusals for orgs beyond max_orgs (they cannot exist)

    def count(self, org: str, address: str, code: str) -> None:
        from crate_cli.vault.masterkey import utc_now

        now = utc_now()
        with self._lock:
            tally = self._tallies.get(org)
            if tally is None:
                if len(self._tallies) >= self.max_orgs and org not in self.known:
                    self.dropped += 1
                    return
                tally = self._tallies[org] = {
                    "count": 0,
                    "addresses": {},
                    "errors": {},
                    "first": now,
                    "last": now,
                }
            tally["count"] += 1
            addresses: dict[str, int] = tally["addresses"]
            if address in addresses or len(addresses) < self.MAX_ADDRESSES:
                addresses[address] = addresses.get(address, 0) + 1
            else:
                tally["other_addresses"] = tally.get("other_addresses", 0) + 1
            errors: dict[str, int] = tally["errors"]
            errors[code] = errors.get(code, 0) + 1
            tally["last"] = now

    def drain(self) -> dict[str, dict[str, Any]]:
        """The counts since the last drain, per org; counting starts afresh."""
        with self._lock:
            tallies, self._tallies = self._tallies, {}
            return tallies


class ApiCore:
    def __init__(
        self,
        service: VaultService,
        orgs: frozenset[str] | None = None,
        denials: Denials | None = None,
    ) -> None:
        """`orgs` limits what is served (None: every org of the home).
        `denials` counts the refusals of callers without a valid token (the
        HTTP server's) for one summary entry per org; without it, each is
        recorded on its own."""
        self.service = service
        self.orgs = orgs
        self.denials = denials
        self._decoy: OrgKeys | None = None
        # Orgs found not to exist, until when (monotonic): see _known_unknown.
        self._unknown: dict[str, float] = {}

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

    def _call(self, request: Request, r: Route, params: dict[str, str]) -> Response:
        principal: Principal | None = None
        noted: dict[str, Any] = {}
        try:
            principal = self._principal(request, params.get("org"))
            self._authorize(principal, params.get("org"), r.need, r.action)
            return r.handler(self, Call(request, principal, params, noted))
        except CrateError as e:
            if r.action is not None and "org" in params:
                self._record_refusal(request, params["org"], r.action, principal, noted, e)
            raise

    def _record_refusal(
        self,
        request: Request,
        org: str,
        action: str,
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

    @staticmethod
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

    def authenticate(self, request: Request) -> Principal | None:
        """Who sends `request` (the HTTP server asks before the request takes a
        place among those in flight): the owner of its token for the org in its
        path, or None when no route matches (its 404 or 405 needs no token).
        Raises Unauthorized, the same way whether or not the org exists."""
        found = self.find_route(request)
        if found is None:
            return None
        return self._authenticate(request.token, found[1].get("org"))

    def _known_unknown(self, org: str) -> bool:
        """Whether `org` was found not to exist in the last few seconds: a
        stranger's guesses then cost a dict lookup, as a known org does,
        rather than a failed open of its file (measurably slower)."""
        until = self._unknown.get(org)
        if until is None:
            return False
        if until < time.monotonic():
            del self._unknown[org]
            return False
        return True

    def _decoy_keys(self) -> OrgKeys | None:
        """A served org's keys, to look tokens up in for orgs that do not exist."""
        if self._decoy is not None:
            return self._decoy
        from crate_cli.vault.orgs import list_orgs

        candidates = sorted(self.orgs) if self.orgs is not None else list_orgs(self.service.home)
        for org in candidates:
            try:
                self._decoy = self.service.org(org)
            except CrateError:
                continue
            return self._decoy
        return None

    def warm_auth(self) -> None:
        """Open every served org's vault now, so that a stranger's first request
        to an org costs what later ones do (an open, cold vault is slower)."""
        from crate_cli.vault.orgs import list_orgs

        for org in sorted(self.orgs) if self.orgs is not None else list_orgs(self.service.home):
            try:
                self.service.org(org).row_key()
            except CrateError:
                continue
        self._decoy_keys()

    def write_denials(self, denials: Denials) -> int:
        """Write what `denials` counted since last time: one `unauthenticated`
        entry per org that exists and is served (made-up orgs have no log to
        write to). Returns the number of entries written."""
        from crate_cli.vault.orgs import list_orgs

        written = 0
        existing = set(list_orgs(self.service.home))
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

    def _served(self, org: str) -> None:
        if self.orgs is not None and org not in self.orgs:
            raise NotFound(f"organization {org!r} is not served here")

    def _principal(self, request: Request, org: str | None) -> Principal:
        """The caller: the transport's, or the owner of the request's token."""
        if request.principal is None:
            return self._authenticate(request.token, org)
        if org is not None:
            self._served(org)
        return request.principal

    def _authorize(
        self, principal: Principal, org: str | None, need: str | None, action: str | None
    ) -> None:
        """Check the caller against the route's permission and org."""
        if principal.org is not None and org is not None and principal.org != org:
            raise Forbidden(f"token {principal.token!r} belongs to organization {principal.org!r}")
        if need is not None and need not in GRANTS.get(principal.role, frozenset()):
            raise Forbidden(
                f"token {principal.token!r} has the role {principal.role}, which cannot "
                + (
                    "read or manage the audit log"
                    if action and action.startswith("audit")
                    else _NEEDS_TEXT[need]
                )
            )

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
        # An org that does not exist or is not served answers as a bad token
        # does, after the same work: the token is looked up in a served org's
        # vault (a decoy) and the result thrown away, so that neither the
        # answer nor its time tells a stranger which orgs exist.
        keys: OrgKeys | None = None
        if (self.orgs is None or org in self.orgs) and not self._known_unknown(org):
            try:
                keys = self.service.org(org)
            except NotFound:
                if len(self._unknown) >= MAX_UNKNOWN_ORGS:
                    self._unknown.clear()
                self._unknown[org] = time.monotonic() + UNKNOWN_ORG_TTL
                keys = None
        lookup = keys if keys is not None else self._decoy_keys()
        try:
            if lookup is None:
                raise invalid  # no org is served: there is nothing to tell apart
            info = tokens.authenticate(lookup, token, utc_now())
        except TokenExpired:
            if keys is None:
                raise invalid from None
            raise
        except Unauthorized:
            raise invalid from None  # the same answer whether or not the org exists
        if keys is None:
            raise invalid  # a token of the decoy org: not valid here
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

    @route("GET", "/organization/{org}/secrets/public-key", None, "public-key")
    def _public_key(self, call: Call) -> Response:
        return Response(200, self.service.public_key(call.params["org"]))

    @route("PUT", "/organization/{org}/secrets", "write", "store")
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
        env = call.env(_field(body, "environment", str))
        scope = call.principal.tags
        if "encrypted_values" in body:
            entries = _field(body, "secrets", list)
            items = []
            for entry in entries:
                name = _field(entry, "name", str)
                tags = entry.get("tags")
                items.append(SealedItem(name, None if tags is None else _str_list(tags, "tags")))
            call.noted["names"] = [i.name for i in items]
            records = self.service.store_sealed(
                p["org"],
                env,
                None,
                (items, _field(body, "encrypted_values", str)),
                call.caller,
                tag_scope=scope,
                env_scope=call.principal.envs,
            )
            return Response(200, {"secrets": [r.to_wire() for r in records]})
        tags = body.get("tags")
        item = SealedItem(
            _field(body, "name", str), None if tags is None else _str_list(tags, "tags")
        )
        call.noted["names"] = [item.name]
        (record,) = self.service.store_sealed(
            p["org"],
            env,
            [(item, body["encrypted_value"])],
            None,
            call.caller,
            tag_scope=scope,
            env_scope=call.principal.envs,
        )
        return Response(200, record.to_wire())

    @route("GET", "/organization/{org}/secrets", "read", "list")
    def _list(self, call: Call) -> Response:
        env = call.env(_query_env(call.query))
        records = self.service.list_secrets(
            call.params["org"], env, _query_tags(call.query), call.principal.tags, call.caller
        )
        return Response(200, {"secrets": [r.to_wire() for r in records]})

    @route("POST", "/organization/{org}/secrets/retrieve", "read", "retrieve")
    def _retrieve(self, call: Call) -> Response:
        body = call.body
        env = call.env(_field(body, "environment", str))
        names = _str_list(body.get("names"), "names")
        if len(names) > MAX_RETRIEVE_NAMES:
            raise InvalidInput(f"at most {MAX_RETRIEVE_NAMES} names per retrieval")
        call.noted["names"] = names
        versions_raw = _field(body, "versions", dict, required=False) or {}
        versions: dict[str, int] = {}
        for name, v in versions_raw.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InvalidInput("versions must map names to positive integers")
            versions[name] = v
        nonce = _field(body, "nonce", str)
        if not 16 <= len(nonce) <= 128:
            raise InvalidInput("the nonce must be 16 to 128 characters")
        layout = _field(body, "layout", str, required=False)
        if layout not in (None, "rows", "columns"):
            raise InvalidInput("layout must be rows or columns")
        signature = _field(body, "signature", str, required=False)
        if signature not in (None, jwe.SIGNATURE_ALG):
            raise InvalidInput(f"signature must be {jwe.SIGNATURE_ALG}")
        answer = self.service.retrieve(
            call.params["org"],
            env,
            names,
            _str_list(body.get("tags"), "tags"),
            versions,
            _field(body, "public_key", dict),
            nonce,
            call.principal.tags,
            call.caller,
            columns=layout == "columns",
            signed=signature is not None,
            layout=layout,
        )
        return Response(200, answer)

    @route("DELETE", "/organization/{org}/secrets/{name}", "write", "delete")
    def _delete(self, call: Call) -> Response:
        env = call.env(_query_env(call.query))
        call.noted["names"] = [call.params["name"]]
        r = self.service.delete(
            call.params["org"],
            env,
            call.params["name"],
            call.caller,
            call.principal.tags,
        )
        return Response(200, {"name": r.name, "environment": r.env, "version": r.version})

    @route("GET", "/organization/{org}/secrets/{name}/versions", "read", "history")
    def _history(self, call: Call) -> Response:
        env = call.env(_query_env(call.query))
        name = call.params["name"]
        call.noted["names"] = [name]
        versions = self.service.history(
            call.params["org"], env, name, call.principal.tags, call.caller
        )
        return Response(200, {"name": name, "environment": env, "versions": versions})

    @route("POST", "/organization/{org}/secrets/{name}/rollback", "write", "rollback")
    def _rollback(self, call: Call) -> Response:
        call.noted["names"] = [call.params["name"]]
        to = _field(call.body, "to", int)
        env = call.env(_field(call.body, "environment", str))
        r = self.service.rollback(
            call.params["org"],
            env,
            call.params["name"],
            to,
            call.caller,
            call.principal.tags,
            call.principal.envs,
        )
        return Response(200, r.to_wire())

    @route("GET", "/organization/{org}/environments", "read", "env-list")
    def _envs(self, call: Call) -> Response:
        envs = self.service.list_envs(call.params["org"])
        allowed = call.principal.envs
        return Response(200, {"environments": [e for e in envs if not allowed or e in allowed]})

    @route("POST", "/organization/{org}/environments", "admin", "env-create")
    def _create_env(self, call: Call) -> Response:
        name = call.env(_field(call.body, "name", str))
        self.service.create_env(call.params["org"], name, call.caller)
        return Response(201, {"name": name})

    @route("DELETE", "/organization/{org}/environments/{env}", "admin", "env-delete")
    def _delete_env(self, call: Call) -> Response:
        env = call.env(call.params["env"])
        if call.principal.tags:
            raise Forbidden(
                f"token {call.principal.token!r} is limited to tags and cannot delete a whole "
                "environment"
            )
        removed = self.service.delete_env(call.params["org"], env, call.caller)
        return Response(200, {"name": env, "secrets_deleted": removed})

    # -- steering names an admin allowed (vault/names.py) ---------------------

    def _org_wide(self, call: Call, what: str) -> str:
        """The org of a call that spans the whole org: refused to a token
        limited to environments or tags."""
        p = call.principal
        if p.envs or p.tags:
            raise Forbidden(
                f"token {p.token!r} is limited to environments or tags and cannot {what}"
            )
        return call.params["org"]

    @route("GET", "/organization/{org}/allowed-names", "read", "allowed-names")
    def _allowed_names(self, call: Call) -> Response:
        return Response(200, {"names": self.service.allowed_names(call.params["org"])})

    @route("PUT", "/organization/{org}/allowed-names/{name}", "admin", "name-allow")
    def _allow_name(self, call: Call) -> Response:
        name = call.params["name"]
        call.noted["names"] = [name]
        org = self._org_wide(call, "allow names for the whole organization")
        changed = self.service.allow_name(org, name, call.caller)
        return Response(200, {"name": name, "allowed": True, "changed": changed})

    @route("DELETE", "/organization/{org}/allowed-names/{name}", "admin", "name-disallow")
    def _disallow_name(self, call: Call) -> Response:
        name = call.params["name"]
        call.noted["names"] = [name]
        org = self._org_wide(call, "change the names allowed in the whole organization")
        changed = self.service.allow_name(org, name, call.caller, allow=False)
        return Response(200, {"name": name, "allowed": False, "changed": changed})

    # -- the audit module -----------------------------------------------------

    def _audit_keys(self, call: Call) -> OrgKeys:
        """The org's keys, for a principal that may see its whole audit log."""
        return self.service.org(self._org_wide(call, "see the organization's audit log"))

    @route("GET", "/organization/{org}/audit", "admin", "audit-log")
    def _audit_log(self, call: Call) -> Response:
        keys = self._audit_keys(call)
        q = call.query
        filters = audit.Filters(
            since=_query_time(q, "since"),
            actor=q.get("actor") or None,
            action=q.get("action") or None,
            env=q.get("env") or None,
            name=q.get("name") or None,
        )
        limit = _query_int(q, "limit", 100, 1, MAX_AUDIT_PAGE) or 100
        before = _query_int(q, "before", None, 1, None)
        after = _query_int(q, "after", None, 0, None)
        if before is not None and after is not None:
            raise InvalidInput("give before= or after=, not both")
        if not audit.is_enabled(keys):
            raise Forbidden(
                f"the audit module of organization {keys.org!r} is disabled; entries are "
                "recorded, but reading them needs the module",
                f"an admin enables it with: crate audit enable --org {keys.org}",
            )
        entries, more = audit.query(keys, filters, limit=limit, before=before, after=after)
        return Response(200, {"entries": [e.to_wire() for e in entries], "more": more})

    @route("GET", "/organization/{org}/audit/verify", "admin", "audit-verify")
    def _audit_verify(self, call: Call) -> Response:
        result = audit.verify(self._audit_keys(call))
        return Response(
            200,
            {
                "entries": result.entries,
                "head_mac": result.head_mac.hex(),
                "pending": result.pending,
            },
        )

    @route("PUT", "/organization/{org}/audit/module", "admin", "audit-module")
    def _audit_module(self, call: Call) -> Response:
        keys = self._audit_keys(call)
        enabled = _field(call.body, "enabled", bool)
        changed = audit.set_enabled(keys, call.caller, enabled)
        return Response(200, {"enabled": enabled, "changed": changed})


MAX_AUDIT_PAGE = 10_000


def _query_int(
    query: Mapping[str, str], name: str, default: int | None, low: int, high: int | None
) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise InvalidInput(f"{name}= must be a whole number")
    value = int(raw)
    if value < low or (high is not None and value > high):
        bound = f" and at most {high}" if high is not None else ""
        raise InvalidInput(f"{name}= must be at least {low}{bound}")
    return value


def _query_time(query: Mapping[str, str], name: str) -> str | None:
    """A UTC time (ISO 8601) from the query, in the audit log's own format."""
    raw = query.get(name)
    if not raw:
        return None
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{name}= must be an ISO 8601 time, e.g. 2026-11-29T10:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
