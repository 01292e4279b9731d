"""API tokens of an org (crate_cli/vault/tokens.py), against the storage
interface's rows: what a token row holds, and the edited, moved, revoked or
expired rows that authenticate nothing."""

from __future__ import annotations

import hashlib
import json

import pytest

from crate_cli.clock import utc_now
from crate_cli.errors import Conflict, InvalidInput, NotFound, TokenExpired, Unauthorized
from crate_cli.vault import tokens
from crate_cli.vault.keys import OrgKeys
from tests.support.org_keys import TESTER, newest_entry

LATER = "2999-01-01T00:00:00.000000Z"


def create(keys: OrgKeys, name: str = "ci", role: str = "reader", **kwargs: object) -> str:
    options: dict = {"envs": [], "tags": [], "expires_at": "", **kwargs}
    token, _ = tokens.create(
        keys,
        name,
        role,
        options["envs"],
        options["tags"],
        options["expires_at"],
        "tester@unit",
        utc_now(),
    )
    return token


def test_a_token_has_the_documented_form() -> None:
    made = {tokens.new_token() for _ in range(20)}
    assert len(made) == 20
    for token in made:
        assert token.startswith(tokens.PREFIX) and len(token) == len(tokens.PREFIX) + 43
        assert tokens.looks_like_token(token)
    assert not tokens.looks_like_token("crate_" + "!" * 43)
    assert not tokens.looks_like_token("crate_short")


def test_the_row_keeps_the_hash_and_scope_never_the_token(keys: OrgKeys) -> None:
    token = create(keys, role="writer", envs=["prod", "dev"], tags=["db"])
    (row,) = keys.store.direct.tokens()
    assert row.hash == hashlib.sha256(token.encode()).digest()
    assert (row.name, row.role, json.loads(row.envs), json.loads(row.tags)) == (
        "ci",
        "writer",
        ["dev", "prod"],
        ["db"],
    )
    assert all(token not in str(field) for field in row)
    info = tokens.authenticate(keys, token, utc_now())
    assert (info.name, info.role, info.envs, info.tags) == ("ci", "writer", ["dev", "prod"], ["db"])
    assert [t.name for t in tokens.list_tokens(keys)] == ["ci"]
    entry = newest_entry(keys)
    assert entry.action == "token-create"
    assert token not in entry.details


def test_a_name_is_taken_once_and_environments_must_exist(keys: OrgKeys) -> None:
    create(keys)
    with pytest.raises(Conflict, match="already has a token named 'ci'"):
        create(keys)
    with pytest.raises(NotFound, match="environment 'qa' does not exist"):
        create(keys, "other", envs=["qa"])
    with pytest.raises(InvalidInput, match="unknown role 'owner'"):
        create(keys, "third", role="owner")
    assert [row.name for row in keys.store.direct.tokens()] == ["ci"]


def test_an_unknown_or_malformed_token_is_unauthorized(keys: OrgKeys) -> None:
    create(keys)
    for attempt in (tokens.new_token(), "crate_not-a-token", ""):
        with pytest.raises(Unauthorized):
            tokens.authenticate(keys, attempt, utc_now())


def test_a_row_with_a_mac_copied_from_another_grants_nothing(keys: OrgKeys) -> None:
    create(keys, "reader-token", role="reader")
    (row,) = keys.store.direct.tokens()
    mine = tokens.new_token()
    forged = row._replace(name="forged", role="admin", hash=hashlib.sha256(mine.encode()).digest())
    with keys.store.write() as db:
        db.insert_token(forged)
    with pytest.raises(Unauthorized):
        tokens.authenticate(keys, mine, utc_now())


def test_a_revoked_token_stays_revoked_when_its_row_is_put_back(keys: OrgKeys) -> None:
    token = create(keys)
    (row,) = keys.store.direct.tokens()
    tokens.revoke(keys, "ci", TESTER)
    assert keys.store.direct.tokens() == []
    (revocation,) = keys.store.direct.revocations()
    assert (revocation.hash, revocation.name) == (row.hash, "ci")
    assert revocation.mac == keys.revocation_mac(
        revocation.hash, revocation.name, revocation.revoked_at, revocation.actor
    )
    entry = newest_entry(keys)
    assert (entry.action, json.loads(entry.details)) == (
        "token-revoke",
        {"token": "ci", "recorded": revocation.revoked_at},
    )
    with keys.store.write() as db:  # the authentic row, copied back from a backup
        db.insert_token(row)
    with pytest.raises(Unauthorized):
        tokens.authenticate(keys, token, utc_now())
    with pytest.raises(NotFound):
        tokens.revoke(keys, "missing", TESTER)


def test_a_token_expires_at_its_time(keys: OrgKeys) -> None:
    token = create(keys, expires_at="2030-01-01T00:00:00.000000Z")
    assert tokens.authenticate(keys, token, "2029-12-31T23:59:59.999999Z").name == "ci"
    with pytest.raises(TokenExpired, match="expired at 2030-01-01"):
        tokens.authenticate(keys, token, "2030-01-01T00:00:00.000000Z")
    forever = create(keys, "forever")
    assert tokens.authenticate(keys, forever, LATER).expires_at == ""
