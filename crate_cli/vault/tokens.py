"""API tokens of an organization (DESIGN §5).

A token is `crate_` followed by 43 base62 characters (32 random bytes). The
vault keeps only its SHA-256 hash with the token's role and scope, in a row
MAC'd under the org row key: editing the role, scope or expiry in SQLite, or
copying a row to another name, makes the token fail to authenticate.
Revoking deletes the row and records the token's hash in
`token_revocations` (MAC'd, kept for good), so a row copied back from a
backup stays revoked; `crate audit verify` checks that every revocation the
log recorded still has its record.

Lookup is by hash. The hash of a 256-bit random token reveals nothing an
attacker can use, and the stored hash is still compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

from crate_cli.errors import (
    Conflict,
    IntegrityError,
    InvalidInput,
    NotFound,
    TokenExpired,
    Unauthorized,
)
from crate_cli.records import Record
from crate_cli.vault import audit, crypto
from crate_cli.vault.keys import ROLES, Caller, OrgKeys, Role
from crate_cli.vault.names import check_env, check_tags, check_token_name
from crate_cli.vault.storage.interface import RevocationRow, TokenRow

PREFIX = "crate_"
BODY_CHARS = 43  # 62**43 > 2**256
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class TokenInfo(Record):
    """What a token may do; never the token itself."""

    name: str
    org: str
    role: Role
    envs: list[str]  # empty: every environment
    tags: list[str]  # empty: every secret; else secrets carrying one of them
    created_at: str
    expires_at: str  # "" for never
    actor: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "organization": self.org,
            "role": self.role,
            "environments": self.envs,
            "tags": self.tags,
            "created_at": self.created_at,
            "expires_at": self.expires_at or None,
            "created_by": self.actor,
        }

    def expired(self, now: str) -> bool:
        return bool(self.expires_at) and self.expires_at <= now


def new_token() -> str:
    n = int.from_bytes(os.urandom(32), "big")
    chars = []
    for _ in range(BODY_CHARS):
        n, r = divmod(n, 62)
        chars.append(_ALPHABET[r])
    return PREFIX + "".join(reversed(chars))


def looks_like_token(text: str) -> bool:
    body = text[len(PREFIX) :]
    return text.startswith(PREFIX) and len(body) == BODY_CHARS and all(c in _ALPHABET for c in body)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


def _message(keys: OrgKeys, fields: tuple[Any, ...], digest: bytes) -> bytes:
    """What a token row's MAC covers: its seven fields, then its hash."""
    return crypto.mac_message(crypto.API_TOKEN, keys.org, *fields, digest.hex())


def _info(keys: OrgKeys, row: TokenRow) -> TokenInfo:
    """A token row, its MAC checked (IntegrityError if it was edited)."""
    fields, digest = row[:7], row.hash
    if not isinstance(digest, bytes):
        raise Unauthorized("the API token is not valid")
    crypto.verify_mac(keys.row_key(), _message(keys, fields, digest), row.mac)
    name, role, envs, tags, created_at, expires_at, actor = fields
    known = [r for r in ROLES if r == role]
    if not known:
        raise IntegrityError()  # an authentic row holds a role crate checked
    return TokenInfo(
        name, keys.org, known[0], json.loads(envs), json.loads(tags), created_at, expires_at, actor
    )


def parse_role(text: str) -> Role:
    """`text` as a role, or InvalidInput naming the roles there are."""
    for role in ROLES:
        if text == role:
            return role
    raise InvalidInput(f"unknown role {text!r}: use one of {', '.join(ROLES)}")


def create(
    keys: OrgKeys,
    name: str,
    role: str,
    envs: list[str],
    tags: list[str],
    expires_at: str,
    actor: str,
    now: str,
    client: str = "cli",
) -> tuple[str, TokenInfo]:
    """A new token for `keys.org`: (the token, shown once, and what it may do)."""
    check_token_name(name)
    checked = parse_role(role)
    envs = sorted({check_env(e) for e in envs})
    tags = check_tags(tags)
    token = new_token()
    digest = token_hash(token)
    fields = (name, role, json.dumps(envs), json.dumps(tags), now, expires_at, actor)
    with keys.store.write() as db:
        if db.has_token(name):
            raise Conflict(
                f"organization {keys.org!r} already has a token named {name!r}",
                f"revoke it first (crate token revoke {name}) or choose another name",
            )
        for env in envs:
            if not db.has_environment(env):
                raise NotFound(f"environment {env!r} does not exist in organization {keys.org!r}")
        tag = crypto.mac(keys.row_key(), _message(keys, fields, digest))
        db.insert_token(TokenRow(*fields, digest, tag))
        details: dict[str, Any] = {"token": name, "role": role, "environments": envs, "tags": tags}
        if expires_at:
            details["expires_at"] = expires_at
        audit.append(db, keys, Caller(actor, client), "token-create", details=details)
    return token, TokenInfo(name, keys.org, checked, envs, tags, now, expires_at, actor)


def list_tokens(keys: OrgKeys) -> list[TokenInfo]:
    return [_info(keys, row) for row in keys.store.direct.tokens()]


def revoke(keys: OrgKeys, name: str, caller: Caller) -> None:
    """Delete the token's row and record its hash as revoked (MAC'd, permanent):
    the row copied back from a backup authenticates nothing."""
    from crate_cli.clock import utc_now

    check_token_name(name)
    with keys.store.write() as db:
        digest = db.token_hash(name)
        if digest is None:
            raise NotFound(
                f"organization {keys.org!r} has no token named {name!r}",
                "list them with: crate token list",
            )
        now = utc_now()
        tag = keys.revocation_mac(digest, name, now, caller.actor)
        db.revoke_token(RevocationRow(digest, name, now, caller.actor, tag))
        # `recorded`: `crate audit verify` checks that the record is still there.
        audit.append(db, keys, caller, "token-revoke", details={"token": name, "recorded": now})


def authenticate(keys: OrgKeys, token: str, now: str) -> TokenInfo:
    """What `token` may do in this org; Unauthorized when it is unknown,
    revoked (its row is gone) or expired. Read on every request, so a
    revocation or expiry takes effect on the next one."""
    denied = Unauthorized(
        "the API token is not valid for this organization (unknown, revoked or mistyped)",
        "ask an admin for a token: crate token create NAME --role reader",
    )
    if not looks_like_token(token):
        raise denied
    digest = token_hash(token)
    row = keys.store.direct.token_by_hash(digest)
    if row is None or not hmac.compare_digest(row.hash, digest):
        raise denied
    if keys.store.direct.is_revoked(digest):
        raise denied  # a revoked token's row, put back
    try:
        info = _info(keys, row)
    except IntegrityError:
        raise denied from None  # an edited row grants nothing
    if info.expired(now):
        raise TokenExpired(
            f"the API token {info.name!r} expired at {info.expires_at}",
            "ask an admin for a new one",
        )
    return info
