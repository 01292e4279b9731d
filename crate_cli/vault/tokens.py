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
from typing import TYPE_CHECKING, Any, NamedTuple

from crate_cli.errors import (
    Conflict,
    IntegrityError,
    InvalidInput,
    NotFound,
    TokenExpired,
    Unauthorized,
)
from crate_cli.vault import audit, crypto
from crate_cli.vault.audit import Caller
from crate_cli.vault.names import check_env, check_tags, check_token_name

if TYPE_CHECKING:
    from crate_cli.vault.service import OrgKeys

PREFIX = "crate_"
BODY_CHARS = 43  # 62**43 > 2**256
ROLES = ("admin", "writer", "reader")
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_COLUMNS = "name, role, envs, tags, created_at, expires_at, actor, hash, mac"


class TokenInfo(NamedTuple):
    """What a token may do; never the token itself."""

    name: str
    org: str
    role: str
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


def _mac(keys: OrgKeys, fields: tuple[Any, ...], digest: bytes) -> bytes:
    return crypto.mac(
        keys.row_key(), crypto.mac_message(crypto.API_TOKEN, keys.org, *fields, digest.hex())
    )


def _info(keys: OrgKeys, row: tuple[Any, ...]) -> TokenInfo:
    """A token row, its MAC checked (IntegrityError if it was edited)."""
    fields, digest, tag = row[:7], row[7], row[8]
    if not isinstance(digest, bytes):
        raise Unauthorized("the API token is not valid")
    crypto.verify_mac(
        keys.row_key(),
        crypto.mac_message(crypto.API_TOKEN, keys.org, *fields, digest.hex()),
        tag,
    )
    name, role, envs, tags, created_at, expires_at, actor = fields
    return TokenInfo(
        name, keys.org, role, json.loads(envs), json.loads(tags), created_at, expires_at, actor
    )


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
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    envs = sorted({check_env(e) for e in envs})
    tags = check_tags(tags)
    token = new_token()
    digest = token_hash(token)
    fields = (name, role, json.dumps(envs), json.dumps(tags), now, expires_at, actor)
    with keys.store.write() as db:
        if db.execute("SELECT 1 FROM tokens WHERE name = ?", (name,)).fetchone():
            raise Conflict(
                f"organization {keys.org!r} already has a token named {name!r}",
                f"revoke it first (crate token revoke {name}) or choose another name",
            )
        for env in envs:
            if db.execute("SELECT 1 FROM environments WHERE name = ?", (env,)).fetchone() is None:
                raise NotFound(f"environment {env!r} does not exist in organization {keys.org!r}")
        db.execute(
            f"INSERT INTO tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            (*fields, digest, _mac(keys, fields, digest)),
        )
        details: dict[str, Any] = {"token": name, "role": role, "environments": envs, "tags": tags}
        if expires_at:
            details["expires_at"] = expires_at
        audit.append(db, keys, Caller(actor, client), "token-create", details=details)
    return token, TokenInfo(name, keys.org, role, envs, tags, now, expires_at, actor)


def list_tokens(keys: OrgKeys) -> list[TokenInfo]:
    with keys.store.errors():
        rows = keys.store.conn.execute(
            f"SELECT {_COLUMNS} FROM tokens ORDER BY name"  # noqa: S608
        ).fetchall()
    return [_info(keys, row) for row in rows]


def revocation_mac(keys: OrgKeys, digest: bytes, name: str, revoked_at: str, actor: str) -> bytes:
    return crypto.mac(
        keys.row_key(),
        crypto.mac_message(
            crypto.TOKEN_REVOCATION, keys.org, digest.hex(), name, revoked_at, actor
        ),
    )


def revoke(keys: OrgKeys, name: str, caller: Caller) -> None:
    """Delete the token's row and record its hash as revoked (MAC'd, permanent):
    the row copied back from a backup authenticates nothing."""
    from crate_cli.vault.masterkey import utc_now

    check_token_name(name)
    with keys.store.write() as db:
        row = db.execute("SELECT hash FROM tokens WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(
                f"organization {keys.org!r} has no token named {name!r}",
                "list them with: crate token list",
            )
        digest = bytes(row[0])
        db.execute("DELETE FROM tokens WHERE name = ?", (name,))
        now = utc_now()
        db.execute(
            "INSERT OR IGNORE INTO token_revocations (hash, name, revoked_at, actor, mac) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                digest,
                name,
                now,
                caller.actor,
                revocation_mac(keys, digest, name, now, caller.actor),
            ),
        )
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
    with keys.store.errors():
        row = keys.store.conn.execute(
            f"SELECT {_COLUMNS} FROM tokens WHERE hash = ?",  # noqa: S608
            (digest,),
        ).fetchone()
    if row is None or not hmac.compare_digest(row[7], digest):
        raise denied
    with keys.store.errors():
        revoked = keys.store.conn.execute(
            "SELECT 1 FROM token_revocations WHERE hash = ?", (digest,)
        ).fetchone()
    if revoked is not None:
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
