"""The server role's operations on secrets: sealed stores, reads, the
ephemeral retrieval, history, deletion and rollback (DESIGN §2-§5).

Values arrive sealed to the org key (a JWE per value, or one for a batch)
and are unsealed here, checked, and encrypted under the 3-tier hierarchy;
reads authenticate every row they use and leave as a bundle encrypted to
the client's ephemeral key. Each function takes the org's keys
(vault/keys.py); the facade (vault/service.py) finds them by org name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from crate_cli.clock import utc_now
from crate_cli.errors import (
    Forbidden,
    IntegrityError,
    InvalidInput,
    InvalidSealedValue,
    NotFound,
)
from crate_cli.records import Record
from crate_cli.vault import audit, crypto, jwe, snapshots
from crate_cli.vault.environments import check_steering, require_env
from crate_cli.vault.keys import Caller, OrgKeys
from crate_cli.vault.names import check_env, check_secret_name, check_tags, check_value
from crate_cli.vault.storage.interface import (
    HeadFields,
    HeadRow,
    NewVersion,
    OrgReader,
    OrgWriter,
    ValueRow,
)

if TYPE_CHECKING:
    from crate_cli.vault.references import Key

DEFAULT_MAX_VALUE_BYTES = 64 * 1024
# The largest version number storage holds (a signed 64-bit integer).
MAX_VERSION = 2**63 - 1
NO_SCOPE: frozenset[str] = frozenset()
# What made a version: a store, a deletion (a tombstone) or a rollback.
VersionAction = Literal["set", "delete", "rollback"]


class SealedItem(Record):
    """A value to store, still sealed, as received from a client."""

    name: str
    tags: list[str] | None  # None keeps the tags the secret already has


class SecretRecord(Record):
    name: str
    env: str
    version: int
    tags: list[str]
    updated_at: str
    actor: str
    deleted: bool
    warnings: list[str] = []  # noqa: RUF012 - never mutated

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "name": self.name,
            "environment": self.env,
            "version": self.version,
            "tags": self.tags,
            "updated_at": self.updated_at,
            "actor": self.actor,
        }
        if self.warnings:
            wire["warnings"] = self.warnings
        return wire


class SecretValue(Record):
    """A decrypted value, as a retrieval returns it."""

    name: str
    version: int
    value: str


class ValueColumns(Record):
    """Decrypted values as three lists of equal length, in name order: a whole
    environment's can be 10,000 long, and lists make no object per secret."""

    names: list[str]
    versions: list[int]
    values: list[str]


class Scope(Record):
    """What a token may reach: environments and tags (empty: no limit)."""

    envs: frozenset[str] = NO_SCOPE
    tags: frozenset[str] = NO_SCOPE


class Limits(Record):
    """The settings a store obeys."""

    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    rotate_every: float | None = None  # seconds between org DEK rotations


UNSCOPED = Scope()
NO_LIMITS = Limits()


def _tags(text: str) -> list[str]:
    """Tags from a row whose MAC was checked (so a failure means a bug or old damage)."""
    try:
        tags = json.loads(text)
    except ValueError:
        raise IntegrityError() from None
    if not isinstance(tags, list):
        raise IntegrityError()
    return [str(t) for t in tags]


def _outside(scope: frozenset[str], tags: list[str]) -> bool:
    """Whether a secret with `tags` is outside a token's tag scope (empty: no limit)."""
    return bool(scope) and scope.isdisjoint(tags)


def _scope_text(scope: frozenset[str]) -> str:
    return ", ".join(sorted(scope))


def _record(row: HeadRow, env: str) -> SecretRecord:
    return SecretRecord(
        row.name, env, row.version, _tags(row.tags), row.updated_at, row.actor, bool(row.deleted)
    )


# -- sealed store ---------------------------------------------------------------------------


def public_key(keys: OrgKeys) -> dict[str, str]:
    import base64

    from cryptography.hazmat.primitives.serialization import load_der_public_key

    kid, der = keys.active_public_key()
    # The public key is stored in clear: it must be the one whose private
    # half the master key protects (and whose AAD names this kid), or a
    # rewritten row would have clients seal values to someone else's key.
    try:
        matches = (
            load_der_public_key(der).public_numbers()  # type: ignore[union-attr]
            == keys.private_key(kid).public_key().public_numbers()
        )
    except (ValueError, TypeError, AttributeError):
        matches = False
    if not matches:
        raise IntegrityError()
    text = base64.b64encode(der).decode("ascii")
    body = "".join(text[i : i + 64] + "\n" for i in range(0, len(text), 64))  # RFC 7468
    pem = f"-----BEGIN PUBLIC KEY-----\n{body}-----END PUBLIC KEY-----\n"
    return {"public_key_pem": pem, "key_id": kid, "alg": jwe.ALG}


def _unseal(
    keys: OrgKeys, token: object, env: str, name: str | None, tags: list[list[str] | None]
) -> bytes:
    """The plaintext of a value sealed to the org key for exactly this org,
    env and name (None: a batch). A JWE whose protected header names the
    tags (crate's client always does) must name the ones each item of the
    request carries (`tags`): a relay cannot re-tag what it cannot open."""
    if not isinstance(token, str):
        raise InvalidSealedValue("the sealed value must be a JWE compact string")
    try:
        header = jwe.parse_header(token)
    except IntegrityError as e:
        raise InvalidSealedValue(e.message) from None
    target = {"org": header.get("org"), "env": header.get("env"), "name": header.get("name")}
    expected = {"org": keys.org, "env": env, "name": name}
    if target != expected:
        raise InvalidSealedValue(
            "the sealed value was made for another target "
            f"({_target_text(target)}), not {_target_text(expected)}",
            "seal it again for this organization, environment and name",
        )
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise InvalidSealedValue("the sealed value has no key id (kid)")
    if "tags" in header and any(header["tags"] != t for t in tags):
        raise InvalidSealedValue(
            "the tags sent with the value are not the ones sealed with it",
            "a relay may have changed the request; seal it again",
        )
    private = keys.private_key(kid)
    try:
        return jwe.decrypt(private, token).plaintext
    except IntegrityError:
        raise InvalidSealedValue(
            "the sealed value could not be opened with the organization's key"
        ) from None


def _target_text(target: dict[str, Any]) -> str:
    parts: Iterable[Any] = (target.get("org"), target.get("env"), target.get("name"))
    return "/".join(str(p) for p in parts if p is not None) or "no target"


def _unseal_batch(
    keys: OrgKeys, env: str, batch: tuple[list[SealedItem], str], max_bytes: int
) -> list[tuple[SealedItem, str]]:
    """crate's extension: one JWE whose plaintext is a JSON object of name to
    value, sealed to (org, env), holding exactly the listed names."""
    items, token = batch
    raw = _unseal(keys, token, env, None, [i.tags for i in items])
    try:
        mapping = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        mapping = None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise InvalidSealedValue("a sealed batch must hold a JSON object of name to text")
    names = [i.name for i in items]
    if sorted(mapping) != sorted(names) or len(set(names)) != len(names):
        raise InvalidSealedValue("the sealed batch does not hold exactly the listed names")
    out = []
    for item in items:
        check_secret_name(item.name)
        text = mapping[item.name]
        out.append((item, check_value(item.name, text.encode("utf-8"), max_bytes)))
    return out


def unseal_values(
    keys: OrgKeys,
    env: str,
    items: list[tuple[SealedItem, str]] | None,
    batch: tuple[list[SealedItem], str] | None,
    max_bytes: int,
) -> list[tuple[SealedItem, str]]:
    """The values a store carries, unsealed and checked: each name once, with
    valid tags, at least one value."""
    values: list[tuple[SealedItem, str]] = []
    for item, token in items or []:
        check_secret_name(item.name)
        raw = _unseal(keys, token, env, item.name, [item.tags])
        values.append((item, check_value(item.name, raw, max_bytes)))
    if batch is not None:
        values += _unseal_batch(keys, env, batch, max_bytes)
    seen: set[str] = set()
    for item, _ in values:
        if item.name in seen:
            raise InvalidInput(f"secret {item.name} is given more than once")
        seen.add(item.name)
        if item.tags is not None:
            check_tags(item.tags)
    if not values:
        raise InvalidInput("nothing to store")
    return values


def store_sealed(
    keys: OrgKeys,
    env: str,
    items: list[tuple[SealedItem, str]] | None,
    batch: tuple[list[SealedItem], str] | None,
    caller: Caller,
    action: VersionAction = "set",
    scope: Scope = UNSCOPED,
    limits: Limits = NO_LIMITS,
) -> list[SecretRecord]:
    """Unseal and store values; all of them in one transaction, or none.

    `items` pairs each secret with its own JWE (the Crate protocol's form);
    `batch` is crate's extension for many values at once. A value's
    references must name what the writer (`scope`) can read now; a record
    carries `warnings` for a `${` that is no reference.
    """
    check_env(env)
    values = unseal_values(keys, env, items, batch, limits.max_value_bytes)
    warnings = check_references(keys, env, {item.name: text for item, text in values}, scope)
    from crate_cli.vault import rotation  # only a store can be due to rotate

    rotation.rotate_if_due(keys, limits.rotate_every, caller)
    now = utc_now()
    with keys.store.write() as db:
        require_env(db, keys.org, env)
        check_steering(db, keys, [item.name for item, _ in values])
        dek_version = keys.current_dek_version(db)
        org_dek = keys.dek(dek_version)
        out = []
        for item, text in values:
            value = (text, org_dek, dek_version)
            out.append(
                _write_version(
                    db,
                    keys,
                    env,
                    item.name,
                    value,
                    item.tags,
                    caller.actor,
                    action,
                    now,
                    scope.tags,
                )
            )
        audit.append(
            db,
            keys,
            caller,
            "store",
            env=env,
            names=[r.name for r in out],
            details={"versions": [r.version for r in out]},
        )
    return [r._replace(warnings=warnings.get(r.name, [])) for r in out]


def _head(db: OrgReader, keys: OrgKeys, env: str, name: str) -> HeadRow | None:
    """The authenticated head of one secret, or None."""
    row = db.head(env, name)
    if row is not None:
        keys.check_head(env, row)
    return row


# A new value: its text, the org DEK to wrap its DEK with, and that DEK's version.
NewValue = tuple[str, bytes, int]


def _write_version(
    db: OrgWriter,
    keys: OrgKeys,
    env: str,
    name: str,
    value: NewValue | None,
    tags: list[str] | None,
    actor: str,
    action: VersionAction,
    now: str,
    tag_scope: frozenset[str] = NO_SCOPE,
) -> SecretRecord:
    """Append one version (a value, or a tombstone when `value` is None).

    With a `tag_scope`, the secret must carry one of its tags both before
    (unless it was deleted) and after the change."""
    head = _head(db, keys, env, name)
    version = 1 if head is None else head.version + 1
    tag_list = check_tags(tags) if tags is not None else [] if head is None else _tags(head.tags)
    if tag_scope and (
        _outside(tag_scope, tag_list)
        or (head is not None and not head.deleted and _outside(tag_scope, _tags(head.tags)))
    ):
        raise Forbidden(
            f"secret {name} in {keys.org}/{env} would not carry one of this token's tags "
            f"({_scope_text(tag_scope)})",
            "a token limited to tags can change only secrets tagged with one of them",
        )
    tag_text = json.dumps(tag_list)
    deleted = int(value is None)
    fields = (name, version, deleted, tag_text, now, actor)
    new_head = HeadFields(*fields, keys.head_mac(env, fields))
    if head is None:
        secret_id = db.insert_head(env, new_head)
    else:
        secret_id = head.secret_id
        db.update_head(secret_id, new_head)
    wrapped_dek = ciphertext = dek_version = None
    if value is not None:
        text, org_dek, dek_version = value
        secret_dek = crypto.new_key()
        dek_aad, value_aad = crypto.secret_aads(keys.org, env, name, version)
        wrapped_dek = crypto.wrap_key(org_dek, secret_dek, dek_aad)
        ciphertext = crypto.encrypt(secret_dek, text.encode("utf-8"), value_aad)
    mac = keys.version_mac(env, name, (version, action, dek_version, tag_text, now, actor))
    db.insert_version(
        secret_id,
        NewVersion(
            version, action, dek_version, wrapped_dek, ciphertext, tag_text, now, actor, mac
        ),
    )
    return SecretRecord(name, env, version, tag_list, now, actor, bool(deleted))


# -- reads ------------------------------------------------------------------------------------


def list_secrets(
    keys: OrgKeys, env: str, tags: list[str], caller: Caller, tag_scope: frozenset[str] = NO_SCOPE
) -> list[SecretRecord]:
    want = set(check_tags(tags))
    with keys.store.read() as db:
        require_env(db, keys.org, env)
        rows = db.heads(env)
    out = []
    for row in rows:
        # Deleted rows are checked too: flipping the flag must not hide a secret.
        keys.check_head(env, row)
        if row.newest != row.version:
            raise IntegrityError()
        record = _record(row, env)
        if (
            not record.deleted
            and want.issubset(record.tags)
            and not _outside(tag_scope, record.tags)
        ):
            out.append(record)
    audit.record(
        keys,
        caller,
        "list",
        env=env,
        details={"tags": sorted(want), "count": len(out)} if want else {"count": len(out)},
    )
    return out


def read_values(
    keys: OrgKeys,
    env: str,
    names: list[str],
    tags: list[str],
    versions: dict[str, int] | None = None,
    tag_scope: frozenset[str] = NO_SCOPE,
) -> list[SecretValue]:
    """`read_columns`, one record per secret."""
    columns = read_columns(keys, env, names, tags, versions, tag_scope)
    return list(map(SecretValue._make, zip(*columns, strict=True)))


def read_columns(
    keys: OrgKeys,
    env: str,
    names: list[str],
    tags: list[str],
    versions: dict[str, int] | None = None,
    tag_scope: frozenset[str] = NO_SCOPE,
) -> ValueColumns:
    """Decrypt the selected secrets: the named ones (all when none are named)
    carrying every tag in `tags`; `versions` picks older versions by name.

    Each secret's head row is authenticated before its value is used and
    must point at the newest version of its history, so moving the version
    pointer back, flipping the deleted flag or restoring an older head row
    fails with IntegrityError instead of serving an older value.
    """
    for n in names:
        check_secret_name(n)
    for n, v in (versions or {}).items():
        if not 1 <= v <= MAX_VERSION:
            raise NotFound(f"secret {n} in {keys.org}/{env} has no version {v}")
    want = set(check_tags(tags))
    versions = versions or {}
    # A read of the whole environment is served from its snapshot when
    # one matches the heads (snapshots.py), and leaves one behind if not.
    whole = not (names or want or versions or tag_scope)
    with keys.store.read() as db:
        require_env(db, keys.org, env)
        if whole:
            digest = snapshots.heads_digest(db, env)
            dek_now = keys.current_dek_version(db)
            cached = snapshots.load(db, keys, env, digest, dek_now)
            if cached is not None:
                return ValueColumns._make(cached)
        rows = db.values(env, names, versions, bool(tag_scope))
        # The data keys those rows name, from the same snapshot: a rotation
        # and prune committed meanwhile must not make them vanish.
        for dek_version in {r.dek_version for r in rows if r.dek_version is not None}:
            keys.dek_cipher(dek_version)
    out = _open_values(keys, env, rows, names, versions, want, tag_scope)
    if whole:
        snapshots.save(keys, env, digest, dek_now, out)
    return out


def _open_values(
    keys: OrgKeys,
    env: str,
    rows: list[ValueRow],
    names: list[str],
    versions: dict[str, int],
    want: set[str],
    tag_scope: frozenset[str],
) -> ValueColumns:
    """The values of `rows`, each head authenticated, within the scope and
    carrying the tags wanted; NotFound for a named secret not served."""
    org = keys.org
    out = ValueColumns([], [], [])
    found: set[str] = set()
    # The loop runs once per secret (10,000 in a big vault): the tags are
    # parsed only when a filter needs them, the rest is set up once.
    filtered = bool(want or tag_scope)
    verify_head = keys.head_macs(env).verify
    open_value = crypto.secret_opener(org, env, keys.dek_cipher)
    for row in rows:
        verify_head(row[:6], row.head_mac)
        name, head_version, deleted = row[:3]
        version, dek_version, wrapped, blob, newest = row[7:12]
        if newest != head_version:
            raise IntegrityError()
        explicit = name in versions
        if deleted and not explicit:
            continue
        found.add(name)
        if filtered and not _in_scope(keys, env, row, name in names, want, tag_scope):
            continue
        if version is None or not 1 <= version <= head_version:
            if explicit:
                raise NotFound(f"secret {name} in {org}/{env} has no version {versions[name]}")
            raise IntegrityError()  # the head points at a version that is not there
        if blob is None:
            if explicit:
                raise NotFound(f"version {version} of {name} in {org}/{env} is a deletion")
            raise IntegrityError()  # a live head whose version holds no value
        if dek_version is None:
            raise IntegrityError()  # a value with no data key to open it
        value = open_value(name, version, dek_version, wrapped, blob)
        out.names.append(name)
        out.versions.append(version)
        out.values.append(value.decode("utf-8"))
    missing = [n for n in names if n not in found]
    if missing:
        raise NotFound(
            f"no secret {', '.join(missing)} in {org}/{env}",
            "list them with: crate secrets list",
        )
    return out


def _in_scope(
    keys: OrgKeys,
    env: str,
    row: ValueRow,
    named: bool,
    want: set[str],
    tag_scope: frozenset[str],
) -> bool:
    """Whether a read serves `row` under a token's tag scope and the tags
    wanted: False skips it; asked for by name, it is an error instead."""
    org, name, version = keys.org, row.name, row.version
    tags = _tags(row.tags)
    if _outside(tag_scope, tags):
        if named:
            raise Forbidden(
                f"secret {name} in {org}/{env} carries none of this token's tags "
                f"({_scope_text(tag_scope)})"
            )
        return False
    if tag_scope and version is not None:
        # A scope holds for the version read, by its own tags: a secret
        # deleted and stored again, or re-tagged, does not open its older
        # versions to the new tags' holders.
        keys.check_version(env, name, (version, *row[12:18]))
        if _outside(tag_scope, _tags(str(row.version_tags))):
            raise Forbidden(
                f"version {version} of secret {name} in {org}/{env} carries none "
                f"of this token's tags ({_scope_text(tag_scope)})"
            )
    if want and not want.issubset(tags):
        if named:
            raise NotFound(
                f"secret {name} in {org}/{env} does not carry every tag of "
                f"{', '.join(sorted(want))}"
            )
        return False
    return True


def client_key(client_jwk: object) -> Any:
    """The client's ephemeral public key from its JWK; InvalidInput (a bad
    request, not a damaged vault) for anything else. Checked before the org
    is opened, as every shape check of a request is."""
    try:
        return jwe.public_key_from_jwk(client_jwk)
    except IntegrityError as e:
        raise InvalidInput(e.message) from None


def retrieve(
    keys: OrgKeys,
    env: str,
    names: list[str],
    tags: list[str],
    versions: dict[str, int] | None,
    public: Any,
    nonce: str,
    caller: Caller,
    tag_scope: frozenset[str] = NO_SCOPE,
    columns: bool = False,
    signed: bool = False,
    layout: str | None = None,
) -> dict[str, Any]:
    """The ephemeral retrieval: selected values, encrypted to the client's key,
    as `{"bundle": JWE}`. The audit entry (with the names returned) commits
    before the answer leaves. The bundle holds the secrets as `secrets:
    [{name, value, version}]`, or with `columns` as three lists `names`,
    `values`, `versions`, which are encoded and parsed three times faster.
    With `signed`, the answer also carries the org key's signature over
    the bundle, this client key, this nonce and the selection as the
    request gave it (`layout` its member, jwe.signed_message). `public` is
    the client's key (client_key)."""
    selected = read_columns(keys, env, names, tags, versions, tag_scope)
    served = selected.names
    details: dict[str, Any] = {}
    if tags:
        details["tags"] = sorted(tags)
    if versions:
        details["versions"] = {
            n: v for n, v in zip(served, selected.versions, strict=True) if n in versions
        }
    audit.record(keys, caller, "retrieve", env=env, names=served, details=details)
    bundle: dict[str, Any] = {"org": keys.org, "environment": env, "nonce": nonce}
    if columns:
        bundle["names"] = served
        bundle["values"] = selected.values
        bundle["versions"] = selected.versions
    else:
        bundle["secrets"] = [
            {"name": n, "value": value, "version": v} for n, v, value in zip(*selected, strict=True)
        ]
    plaintext = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    answer: dict[str, Any] = {"bundle": jwe.encrypt(public, plaintext)}
    if signed:
        selection = jwe.selection_digest(env, names, tags, versions or {}, layout)
        answer["signature"] = _signature(keys, public, nonce, selection, answer["bundle"])
    return answer


def _signature(
    keys: OrgKeys, public: Any, nonce: str, selection: str, bundle: str
) -> dict[str, str]:
    """The org key's signature over a retrieval's answer (jwe.signed_message)."""
    kid, _ = keys.active_public_key()
    message = jwe.signed_message(keys.org, kid, jwe.thumbprint(public), nonce, selection, bundle)
    return {
        "alg": jwe.SIGNATURE_ALG,
        "kid": kid,
        "value": jwe.sign(keys.private_key(kid), message),
    }


def history(
    keys: OrgKeys, env: str, name: str, caller: Caller, tag_scope: frozenset[str] = NO_SCOPE
) -> list[dict[str, Any]]:
    """Every version's metadata (no values), each row authenticated; a removed
    version shows as a gap and fails with IntegrityError. With a
    `tag_scope`, only the versions whose own tags are in it are listed."""
    org = keys.org
    check_secret_name(name)
    with keys.store.read() as db:
        require_env(db, org, env)
        head = _head(db, keys, env, name)
        if head is None:
            raise NotFound(f"no secret {name} in {org}/{env}")
        if _outside(tag_scope, _tags(head.tags)):
            raise Forbidden(
                f"secret {name} in {org}/{env} carries none of this token's tags "
                f"({_scope_text(tag_scope)})"
            )
        rows = db.versions(head.secret_id)
    if [r.version for r in rows] != list(range(1, head.version + 1)):
        raise IntegrityError()
    out = []
    for row in rows:
        keys.check_version(env, name, row)
        if _outside(tag_scope, _tags(row.tags)):
            continue  # a version of other tags (before a re-tag or a re-creation)
        out.append(
            {
                "version": row.version,
                "action": row.action,
                "deleted": bool(row.deleted),
                "tags": _tags(row.tags),
                "created_at": row.created_at,
                "actor": row.actor,
            }
        )
    audit.record(keys, caller, "history", env=env, names=[name])
    return out


# -- changes without a value from the client ----------------------------------------------


def delete(
    keys: OrgKeys, env: str, name: str, caller: Caller, tag_scope: frozenset[str] = NO_SCOPE
) -> SecretRecord:
    check_secret_name(name)
    with keys.store.write() as db:
        require_env(db, keys.org, env)
        head = _head(db, keys, env, name)
        if head is None or head.deleted:
            raise NotFound(f"no secret {name} in {keys.org}/{env}")
        record = _write_version(
            db, keys, env, name, None, None, caller.actor, "delete", utc_now(), tag_scope
        )
        audit.append(
            db, keys, caller, "delete", env=env, names=[name], details={"version": record.version}
        )
    return record


def rollback(
    keys: OrgKeys, env: str, name: str, to: int, caller: Caller, scope: Scope = UNSCOPED
) -> SecretRecord:
    """Write the value of version `to` as a new version (history is kept).
    Its references must name what this writer can read now, as a store's."""
    check_secret_name(name)
    (old,) = read_values(keys, env, [name], [], {name: to}, scope.tags)
    check_references(keys, env, {name: old.value}, scope)
    with keys.store.write() as db:
        check_steering(db, keys, [name])
        dek_version = keys.current_dek_version(db)
        value = (old.value, keys.dek(dek_version), dek_version)
        record = _write_version(
            db, keys, env, name, value, None, caller.actor, "rollback", utc_now(), scope.tags
        )
        audit.append(
            db,
            keys,
            caller,
            "rollback",
            env=env,
            names=[name],
            details={"to": to, "version": record.version},
        )
    return record


# -- references between secrets (vault/references.py) ---------------------------------------


def check_references(
    keys: OrgKeys, env: str, values: dict[str, str], scope: Scope
) -> dict[str, list[str]]:
    """Refuse values whose references, followed through the values they
    reach, name a secret the writer cannot read now (another environment
    than its token's, tags outside its scope), or never end (a cycle, or
    deeper than MAX_DEPTH): a value may not make the server hand a reader
    what its writer could not read (DESIGN §9). Returns warnings by name:
    a `${` that is not a reference, a reference to nothing (yet)."""
    from crate_cli.vault import references

    warnings: dict[str, list[str]] = {}
    known: dict[Key, str] = {}
    for name, text in values.items():
        if not references.has_references(text):
            continue
        known[(env, name)] = text
        if references.malformed(text):
            warnings[name] = [
                f"the value of {name} holds a ${{ that is not a reference (${{NAME}} or "
                "${env.NAME}): it stays as text; write $${ for a literal ${"
            ]
    if not known:
        return warnings
    batch = {(env, name): text for name, text in values.items()}
    holder = {key: key for key in known}  # what each value was reached from
    starts = frontier = list(known)
    while frontier:
        reached = []
        for key in frontier:
            for ref in references.references(known[key], key[0]):
                holder.setdefault(ref, holder[key])
                if ref in known:
                    continue
                value = batch.get(ref)
                if value is None:
                    value = _reference_target(keys, ref, holder[ref], env, scope, warnings)
                if value is not None:
                    known[ref] = value
                    reached.append(ref)
        frontier = [key for key in reached if references.has_references(known[key])]
    done: set[Key] = set()
    for start in starts:
        _check_chain(start, known, env, [], done)
    return warnings


def _reference_target(
    keys: OrgKeys,
    ref: Key,
    start: Key,
    env: str,
    scope: Scope,
    warnings: dict[str, list[str]],
) -> str | None:
    """The value a reference names, read with the writer's scope (None if
    there is none yet); an error naming the secret whose value holds the
    reference when the writer could not read it. A reference to nothing
    is refused to a writer limited to tags (what appears there later may
    carry tags it cannot read) and is a warning for any other."""
    from crate_cli.vault import references

    ref_env, ref_name = ref
    shown = f"the value of {start[1]} refers to {references.show(ref, env)}"
    if scope.envs and ref_env not in scope.envs:
        raise Forbidden(
            f"{shown}, in environment {ref_env!r}, which this token may not read",
            "a value may refer only to secrets its writer can read",
        )
    try:
        (found,) = read_values(keys, ref_env, [ref_name], [], None, scope.tags)
    except Forbidden:
        raise Forbidden(
            f"{shown}, which this token may not read; nothing was stored",
            "a value may refer only to secrets its writer can read",
        ) from None
    except NotFound:
        if scope.tags:
            raise Forbidden(
                f"{shown}, which does not exist: a token limited to tags may refer only "
                "to secrets it can read now; nothing was stored",
                "store it first (or in the same command), or write $${ for a literal ${",
            ) from None
        warnings.setdefault(start[1], []).append(
            f"{shown}, which does not exist (yet): run and fetch fail on it until it "
            "does; write $${ for a literal ${"
        )
        return None
    return found.value


def _check_chain(
    key: Key,
    known: dict[Key, str],
    env: str,
    chain: list[Key],
    done: set[Key],
) -> None:
    """Refuse references from `key` that come back to a secret on the way
    (a cycle) or go deeper than MAX_DEPTH; `known` holds every value reached,
    `done` the secrets already shown to end (each is walked once)."""
    from crate_cli.vault import references

    if key in done:
        return
    if key in chain:
        loop = " -> ".join(references.show(k, env) for k in [*chain[chain.index(key) :], key])
        raise InvalidInput(
            f"secret references would form a cycle: {loop}; nothing was stored",
            "change one of these values to break the cycle",
        )
    if len(chain) > references.MAX_DEPTH:
        raise InvalidInput(
            f"secret references from {references.show(chain[0], env)} would nest more than "
            f"{references.MAX_DEPTH} deep; nothing was stored"
        )
    for ref in references.references(known.get(key, ""), key[0]):
        _check_chain(ref, known, env, [*chain, key], done)
    done.add(key)
