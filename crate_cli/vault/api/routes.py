"""The routes of the Crate API (DESIGN §4; the ones marked * are crate's
extensions), each a function of the service and the routed call:

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

Each route needs a permission (`read`, `write` or `admin`, auth.GRANTS) and
names its audit action. The service records what succeeded, inside the
change's own transaction or right after a read; the core records what was
denied or failed. Successful reads of the public key, the environments and
the audit log itself are not recorded.
"""

from collections.abc import Mapping
from typing import Any

from crate_cli.errors import Forbidden, InvalidInput, SealedTransportRequired
from crate_cli.vault import audit, jwe
from crate_cli.vault.api.core import MAX_RETRIEVE_NAMES, Call, Response, route
from crate_cli.vault.keys import OrgKeys
from crate_cli.vault.service import SealedItem, VaultService
from crate_cli.vault.storage.interface import AuditFilter

MAX_AUDIT_PAGE = 10_000


# -- reading the request ----------------------------------------------------------------


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
    from crate_cli.clock import parse_iso

    try:
        return parse_iso(raw)
    except ValueError:
        raise InvalidInput(f"{name}= must be an ISO 8601 time, e.g. 2026-11-29T10:00:00Z") from None


# -- who is calling ---------------------------------------------------------------------


@route("GET", "/whoami", None)
def whoami(service: VaultService, call: Call) -> Response:
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


# -- secrets ----------------------------------------------------------------------------


@route("GET", "/organization/{org}/secrets/public-key", None, "public-key")
def public_key(service: VaultService, call: Call) -> Response:
    return Response(200, service.public_key(call.params["org"]))


@route("PUT", "/organization/{org}/secrets", "write", "store")
def store(service: VaultService, call: Call) -> Response:
    body = call.body
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
    org, tags, envs = call.params["org"], call.principal.tags, call.principal.envs
    if "encrypted_values" in body:
        items = [_sealed_item(entry) for entry in _field(body, "secrets", list)]
        call.noted["names"] = [i.name for i in items]
        batch = (items, _field(body, "encrypted_values", str))
        records = service.store_sealed(
            org, env, None, batch, call.caller, tag_scope=tags, env_scope=envs
        )
        return Response(200, {"secrets": [r.to_wire() for r in records]})
    item = _sealed_item(body)
    call.noted["names"] = [item.name]
    single = [(item, body["encrypted_value"])]
    (record,) = service.store_sealed(
        org, env, single, None, call.caller, tag_scope=tags, env_scope=envs
    )
    return Response(200, record.to_wire())


def _sealed_item(entry: Any) -> SealedItem:
    name = _field(entry, "name", str)
    tags = entry.get("tags")
    return SealedItem(name, None if tags is None else _str_list(tags, "tags"))


@route("GET", "/organization/{org}/secrets", "read", "list")
def list_secrets(service: VaultService, call: Call) -> Response:
    env = call.env(_query_env(call.query))
    records = service.list_secrets(
        call.params["org"], env, _query_tags(call.query), call.principal.tags, call.caller
    )
    return Response(200, {"secrets": [r.to_wire() for r in records]})


@route("POST", "/organization/{org}/secrets/retrieve", "read", "retrieve")
def retrieve(service: VaultService, call: Call) -> Response:
    body = call.body
    env = call.env(_field(body, "environment", str))
    names = _str_list(body.get("names"), "names")
    if len(names) > MAX_RETRIEVE_NAMES:
        raise InvalidInput(f"at most {MAX_RETRIEVE_NAMES} names per retrieval")
    call.noted["names"] = names
    versions = _versions(_field(body, "versions", dict, required=False) or {})
    nonce = _field(body, "nonce", str)
    if not 16 <= len(nonce) <= 128:
        raise InvalidInput("the nonce must be 16 to 128 characters")
    layout = _field(body, "layout", str, required=False)
    if layout not in (None, "rows", "columns"):
        raise InvalidInput("layout must be rows or columns")
    signature = _field(body, "signature", str, required=False)
    if signature not in (None, jwe.SIGNATURE_ALG):
        raise InvalidInput(f"signature must be {jwe.SIGNATURE_ALG}")
    answer = service.retrieve(
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


def _versions(raw: dict[str, Any]) -> dict[str, int]:
    versions: dict[str, int] = {}
    for name, v in raw.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InvalidInput("versions must map names to positive integers")
        versions[name] = v
    return versions


@route("DELETE", "/organization/{org}/secrets/{name}", "write", "delete")
def delete(service: VaultService, call: Call) -> Response:
    env = call.env(_query_env(call.query))
    call.noted["names"] = [call.params["name"]]
    r = service.delete(
        call.params["org"], env, call.params["name"], call.caller, call.principal.tags
    )
    return Response(200, {"name": r.name, "environment": r.env, "version": r.version})


@route("GET", "/organization/{org}/secrets/{name}/versions", "read", "history")
def history(service: VaultService, call: Call) -> Response:
    env = call.env(_query_env(call.query))
    name = call.params["name"]
    call.noted["names"] = [name]
    versions = service.history(call.params["org"], env, name, call.principal.tags, call.caller)
    return Response(200, {"name": name, "environment": env, "versions": versions})


@route("POST", "/organization/{org}/secrets/{name}/rollback", "write", "rollback")
def rollback(service: VaultService, call: Call) -> Response:
    call.noted["names"] = [call.params["name"]]
    to = _field(call.body, "to", int)
    env = call.env(_field(call.body, "environment", str))
    r = service.rollback(
        call.params["org"],
        env,
        call.params["name"],
        to,
        call.caller,
        call.principal.tags,
        call.principal.envs,
    )
    return Response(200, r.to_wire())


# -- environments -----------------------------------------------------------------------


@route("GET", "/organization/{org}/environments", "read", "env-list")
def environments(service: VaultService, call: Call) -> Response:
    envs = service.list_envs(call.params["org"])
    allowed = call.principal.envs
    return Response(200, {"environments": [e for e in envs if not allowed or e in allowed]})


@route("POST", "/organization/{org}/environments", "admin", "env-create")
def create_env(service: VaultService, call: Call) -> Response:
    name = call.env(_field(call.body, "name", str))
    service.create_env(call.params["org"], name, call.caller)
    return Response(201, {"name": name})


@route("DELETE", "/organization/{org}/environments/{env}", "admin", "env-delete")
def delete_env(service: VaultService, call: Call) -> Response:
    env = call.env(call.params["env"])
    if call.principal.tags:
        raise Forbidden(
            f"token {call.principal.token!r} is limited to tags and cannot delete a whole "
            "environment"
        )
    removed = service.delete_env(call.params["org"], env, call.caller)
    return Response(200, {"name": env, "secrets_deleted": removed})


# -- steering names an admin allowed (vault/names.py) -----------------------------------


@route("GET", "/organization/{org}/allowed-names", "read", "allowed-names")
def allowed_names(service: VaultService, call: Call) -> Response:
    return Response(200, {"names": service.allowed_names(call.params["org"])})


@route("PUT", "/organization/{org}/allowed-names/{name}", "admin", "name-allow")
def allow_name(service: VaultService, call: Call) -> Response:
    name = call.params["name"]
    call.noted["names"] = [name]
    org = call.org_wide("allow names for the whole organization")
    changed = service.allow_name(org, name, call.caller)
    return Response(200, {"name": name, "allowed": True, "changed": changed})


@route("DELETE", "/organization/{org}/allowed-names/{name}", "admin", "name-disallow")
def disallow_name(service: VaultService, call: Call) -> Response:
    name = call.params["name"]
    call.noted["names"] = [name]
    org = call.org_wide("change the names allowed in the whole organization")
    changed = service.allow_name(org, name, call.caller, allow=False)
    return Response(200, {"name": name, "allowed": False, "changed": changed})


# -- the audit module -------------------------------------------------------------------


def _audit_keys(service: VaultService, call: Call) -> OrgKeys:
    """The org's keys, for a principal that may see its whole audit log."""
    return service.org(call.org_wide("see the organization's audit log"))


@route("GET", "/organization/{org}/audit", "admin", "audit-log")
def audit_log(service: VaultService, call: Call) -> Response:
    keys = _audit_keys(service, call)
    q = call.query
    filters = AuditFilter(
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
def audit_verify(service: VaultService, call: Call) -> Response:
    result = audit.verify(_audit_keys(service, call))
    return Response(
        200,
        {"entries": result.entries, "head_mac": result.head_mac.hex(), "pending": result.pending},
    )


@route("PUT", "/organization/{org}/audit/module", "admin", "audit-module")
def audit_module(service: VaultService, call: Call) -> Response:
    keys = _audit_keys(service, call)
    enabled = _field(call.body, "enabled", bool)
    changed = audit.set_enabled(keys, call.caller, enabled)
    return Response(200, {"enabled": enabled, "changed": changed})
