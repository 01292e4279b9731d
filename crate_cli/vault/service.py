"""The server role's operations on org vaults.

`VaultService` is what the API core calls: it opens org vaults, unwraps the
org keys with the master key, unseals stored values with the org RSA key,
encrypts them under the 3-tier hierarchy, and builds retrieval bundles
encrypted to the client's ephemeral key. It speaks in names and sealed
tokens, never in plaintext coming from or going to the wire.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any, NamedTuple

from crate_cli.config import CrateHome
from crate_cli.errors import (
    Conflict,
    IntegrityError,
    InvalidInput,
    InvalidSealedValue,
    NotFound,
)
from crate_cli.vault import crypto, jwe
from crate_cli.vault.masterkey import MasterKeys, utc_now
from crate_cli.vault.names import check_env, check_org, check_secret_name, check_tags, check_value
from crate_cli.vault.store import OrgStore

DEFAULT_MAX_VALUE_BYTES = 64 * 1024


class SealedItem(NamedTuple):
    """A value to store, still sealed, as received from a client."""

    name: str
    tags: list[str] | None  # None keeps the tags the secret already has


class SecretRecord(NamedTuple):
    name: str
    env: str
    version: int
    tags: list[str]
    updated_at: str
    actor: str
    deleted: bool

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "environment": self.env,
            "version": self.version,
            "tags": self.tags,
            "updated_at": self.updated_at,
            "actor": self.actor,
        }


class SecretValue(NamedTuple):
    """A decrypted value, as a retrieval returns it."""

    name: str
    version: int
    value: str


def _record(row: sqlite3.Row | tuple[Any, ...], env: str) -> SecretRecord:
    name, version, deleted, tags, updated_at, actor = row
    return SecretRecord(name, env, version, json.loads(tags), updated_at, actor, bool(deleted))


class OrgKeys:
    """An org's vault with its keys unwrapped on first use."""

    def __init__(self, org: str, store: OrgStore, master: MasterKeys) -> None:
        self.org = org
        self.store = store
        self.master = master
        self._deks: dict[int, bytes] = {}
        self._private: dict[str, Any] = {}

    def dek(self, version: int) -> bytes:
        key = self._deks.get(version)
        if key is None:
            with self.store.errors():
                row = self.store.conn.execute(
                    "SELECT master_version, wrapped FROM org_deks WHERE version = ?", (version,)
                ).fetchone()
            if row is None:
                raise NotFound(f"org key v{version} of {self.org!r} is missing from the vault")
            master_key = self.master.unlock(row[0])
            key = crypto.unwrap_key(
                master_key, row[1], crypto.aad(crypto.ORG_DEK, self.org, version)
            )
            self._deks[version] = key
        return key

    def current_dek_version(self, db: sqlite3.Connection) -> int:
        row = db.execute("SELECT max(version) FROM org_deks").fetchone()
        if row is None or row[0] is None:
            raise NotFound(f"organization {self.org!r} has no data key")
        return int(row[0])

    def active_public_key(self) -> tuple[str, bytes]:
        with self.store.errors():
            row = self.store.conn.execute(
                "SELECT kid, public_der FROM org_rsa_keys WHERE active = 1 "
                "ORDER BY created_at DESC LIMIT 1"
            ).fetchone()
        if row is None:
            raise NotFound(f"organization {self.org!r} has no public key")
        return row[0], row[1]

    def private_key(self, kid: str) -> Any:
        key = self._private.get(kid)
        if key is None:
            with self.store.errors():
                row = self.store.conn.execute(
                    "SELECT master_version, wrapped_private FROM org_rsa_keys WHERE kid = ?",
                    (kid,),
                ).fetchone()
            if row is None:
                raise InvalidSealedValue(
                    f"the value was sealed to key {kid!r}, which organization {self.org!r} "
                    "does not have",
                    "fetch the org public key again and re-seal",
                )
            from cryptography.hazmat.primitives.serialization import load_der_private_key

            der = crypto.decrypt(
                self.master.unlock(row[0]), row[1], crypto.aad(crypto.ORG_RSA_KEY, self.org, kid)
            )
            # Generated and validated by crate itself: skip the costly re-validation.
            key = load_der_private_key(der, None, unsafe_skip_rsa_key_validation=True)
            self._private[kid] = key
        return key


class VaultService:
    """The server role over every org vault of one crate home."""

    def __init__(
        self, home: CrateHome, master: MasterKeys, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    ) -> None:
        self.home = home
        self.master = master
        self.max_value_bytes = max_value_bytes
        self._orgs: dict[str, OrgKeys] = {}

    def close(self) -> None:
        for keys in self._orgs.values():
            keys.store.close()
        self._orgs.clear()

    def org(self, org: str) -> OrgKeys:
        keys = self._orgs.get(org)
        if keys is None:
            check_org(org)
            try:
                store = OrgStore.open(self.home.vault_path(org))
            except NotFound:
                raise NotFound(
                    f"organization {org!r} does not exist",
                    "list them with: crate org list, or create it with: crate org create " + org,
                ) from None
            keys = OrgKeys(org, store, self.master)
            self._orgs[org] = keys
        return keys

    # -- environments -------------------------------------------------------

    def list_envs(self, org: str) -> list[str]:
        keys = self.org(org)
        with keys.store.errors():
            rows = keys.store.conn.execute("SELECT name FROM environments ORDER BY name")
            return [r[0] for r in rows]

    def _require_env(self, db: sqlite3.Connection, org: str, env: str) -> None:
        check_env(env)
        if db.execute("SELECT 1 FROM environments WHERE name = ?", (env,)).fetchone() is None:
            raise NotFound(
                f"environment {env!r} does not exist in organization {org!r}",
                f"list them with: crate env list; create it with: crate env create {env}",
            )

    def create_env(self, org: str, env: str) -> None:
        check_env(env)
        keys = self.org(org)
        with keys.store.write() as db:
            if db.execute("SELECT 1 FROM environments WHERE name = ?", (env,)).fetchone():
                raise Conflict(f"environment {env!r} already exists in organization {org!r}")
            db.execute(
                "INSERT INTO environments (name, created_at) VALUES (?, ?)", (env, utc_now())
            )

    def delete_env(self, org: str, env: str) -> int:
        """Delete an environment and all its secrets; returns how many secrets went."""
        keys = self.org(org)
        with keys.store.write() as db:
            self._require_env(db, org, env)
            count = db.execute("SELECT count(*) FROM secrets WHERE env = ?", (env,)).fetchone()[0]
            db.execute("DELETE FROM environments WHERE name = ?", (env,))
        return int(count)

    # -- sealed store ---------------------------------------------------------

    def public_key(self, org: str) -> dict[str, str]:
        import base64

        kid, der = self.org(org).active_public_key()
        body = base64.encodebytes(der).decode("ascii")
        pem = f"-----BEGIN PUBLIC KEY-----\n{body}-----END PUBLIC KEY-----\n"
        return {"public_key_pem": pem, "key_id": kid, "alg": jwe.ALG}

    def _unseal(self, keys: OrgKeys, token: object, env: str, name: str | None) -> bytes:
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
        private = keys.private_key(kid)
        try:
            return jwe.decrypt(private, token).plaintext
        except IntegrityError:
            raise InvalidSealedValue(
                "the sealed value could not be opened with the organization's key"
            ) from None

    def store_sealed(
        self,
        org: str,
        env: str,
        items: list[tuple[SealedItem, str]] | None,
        batch: tuple[list[SealedItem], str] | None,
        actor: str,
        action: str = "set",
    ) -> list[SecretRecord]:
        """Unseal and store values; all of them in one transaction, or none.

        `items` pairs each secret with its own JWE (the Crate protocol's form);
        `batch` is crate's extension for many values at once: one JWE whose
        plaintext is a JSON object of name to value, sealed to (org, env).
        """
        keys = self.org(org)
        check_env(env)
        values: list[tuple[SealedItem, str]] = []
        for item, token in items or []:
            check_secret_name(item.name)
            raw = self._unseal(keys, token, env, item.name)
            values.append((item, check_value(item.name, raw, self.max_value_bytes)))
        if batch is not None:
            batch_items, token = batch
            raw = self._unseal(keys, token, env, None)
            try:
                mapping = json.loads(raw)
            except (UnicodeDecodeError, ValueError):
                mapping = None
            if not isinstance(mapping, dict) or not all(
                isinstance(v, str) for v in mapping.values()
            ):
                raise InvalidSealedValue("a sealed batch must hold a JSON object of name to text")
            names = [i.name for i in batch_items]
            if sorted(mapping) != sorted(names) or len(set(names)) != len(names):
                raise InvalidSealedValue("the sealed batch does not hold exactly the listed names")
            for item in batch_items:
                check_secret_name(item.name)
                text = mapping[item.name]
                values.append(
                    (item, check_value(item.name, text.encode("utf-8"), self.max_value_bytes))
                )
        seen: set[str] = set()
        for item, _ in values:
            if item.name in seen:
                raise InvalidInput(f"secret {item.name} is given more than once")
            seen.add(item.name)
            if item.tags is not None:
                check_tags(item.tags)
        if not values:
            raise InvalidInput("nothing to store")
        now = utc_now()
        out: list[SecretRecord] = []
        with keys.store.write() as db:
            self._require_env(db, org, env)
            dek_version = keys.current_dek_version(db)
            org_dek = keys.dek(dek_version)
            for item, text in values:
                out.append(
                    self._write_version(
                        db,
                        keys,
                        env,
                        item.name,
                        text,
                        item.tags,
                        org_dek,
                        dek_version,
                        actor,
                        action,
                        now,
                    )
                )
        return out

    def _write_version(
        self,
        db: sqlite3.Connection,
        keys: OrgKeys,
        env: str,
        name: str,
        text: str | None,
        tags: list[str] | None,
        org_dek: bytes | None,
        dek_version: int | None,
        actor: str,
        action: str,
        now: str,
    ) -> SecretRecord:
        """Append one version (a value, or a tombstone when `text` is None)."""
        row = db.execute(
            "SELECT id, version, tags FROM secrets WHERE env = ? AND name = ?", (env, name)
        ).fetchone()
        if row is None:
            version = 1
            tag_list = check_tags(tags or [])
            secret_id = db.execute(
                "INSERT INTO secrets (env, name, version, deleted, tags, updated_at, actor) "
                "VALUES (?, ?, 1, ?, ?, ?, ?)",
                (env, name, int(text is None), json.dumps(tag_list), now, actor),
            ).lastrowid
        else:
            secret_id, previous, old_tags = row
            version = previous + 1
            tag_list = check_tags(tags) if tags is not None else json.loads(old_tags)
            db.execute(
                "UPDATE secrets SET version = ?, deleted = ?, tags = ?, updated_at = ?, actor = ? "
                "WHERE id = ?",
                (version, int(text is None), json.dumps(tag_list), now, actor, secret_id),
            )
        wrapped_dek = ciphertext = None
        if text is not None:
            assert org_dek is not None
            secret_dek = crypto.new_key()
            wrapped_dek = crypto.wrap_key(
                org_dek, secret_dek, crypto.aad(crypto.SECRET_DEK, keys.org, env, name, version)
            )
            ciphertext = crypto.encrypt(
                secret_dek,
                text.encode("utf-8"),
                crypto.aad(crypto.SECRET_VALUE, keys.org, env, name, version),
            )
        db.execute(
            "INSERT INTO secret_versions (secret_id, version, action, org_dek_version, "
            "wrapped_dek, ciphertext, tags, created_at, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                secret_id,
                version,
                action,
                dek_version if text is not None else None,
                wrapped_dek,
                ciphertext,
                json.dumps(tag_list),
                now,
                actor,
            ),
        )
        return SecretRecord(name, env, version, tag_list, now, actor, text is None)

    # -- reads ----------------------------------------------------------------

    def list_secrets(self, org: str, env: str, tags: list[str]) -> list[SecretRecord]:
        keys = self.org(org)
        want = set(check_tags(tags))
        with keys.store.read() as db:
            self._require_env(db, org, env)
            rows = db.execute(
                "SELECT name, version, deleted, tags, updated_at, actor FROM secrets "
                "WHERE env = ? AND deleted = 0 ORDER BY name",
                (env,),
            ).fetchall()
        records = [_record(r, env) for r in rows]
        return [r for r in records if want.issubset(r.tags)]

    def read_values(
        self,
        org: str,
        env: str,
        names: list[str],
        tags: list[str],
        versions: dict[str, int] | None = None,
    ) -> list[SecretValue]:
        """Decrypt the selected secrets: the named ones (all when none are named)
        carrying every tag in `tags`; `versions` picks older versions by name."""
        keys = self.org(org)
        for n in names:
            check_secret_name(n)
        want = set(check_tags(tags))
        versions = versions or {}
        with keys.store.read() as db:
            self._require_env(db, org, env)
            rows = self._select_rows(db, env, names, versions)
        found = {r[0] for r in rows}
        missing = [n for n in names if n not in found]
        if missing:
            raise NotFound(
                f"no secret {', '.join(missing)} in {org}/{env}",
                "list them with: crate secrets list",
            )
        out: list[SecretValue] = []
        for name, version, tag_text, dek_version, wrapped, blob in rows:
            if want and not want.issubset(json.loads(tag_text)):
                continue
            if blob is None:
                raise NotFound(f"version {version} of {name} in {org}/{env} is a deletion")
            secret_dek = crypto.unwrap_key(
                keys.dek(dek_version),
                wrapped,
                crypto.aad(crypto.SECRET_DEK, org, env, name, version),
            )
            value = crypto.decrypt(
                secret_dek, blob, crypto.aad(crypto.SECRET_VALUE, org, env, name, version)
            )
            out.append(SecretValue(name, version, value.decode("utf-8")))
        return out

    def _select_rows(
        self, db: sqlite3.Connection, env: str, names: list[str], versions: dict[str, int]
    ) -> list[Any]:
        base = (
            "SELECT s.name, v.version, v.tags, v.org_dek_version, v.wrapped_dek, v.ciphertext "
            "FROM secrets s JOIN secret_versions v ON v.secret_id = s.id "
        )
        if not names:
            return db.execute(
                base + "AND v.version = s.version WHERE s.env = ? AND s.deleted = 0 "
                "ORDER BY s.name",
                (env,),
            ).fetchall()
        rows = []
        for name in dict.fromkeys(names):
            wanted = versions.get(name)
            if wanted is None:
                row = db.execute(
                    base + "AND v.version = s.version WHERE s.env = ? AND s.name = ? "
                    "AND s.deleted = 0",
                    (env, name),
                ).fetchone()
            else:
                row = db.execute(
                    base + "WHERE s.env = ? AND s.name = ? AND v.version = ?",
                    (env, name, wanted),
                ).fetchone()
            if row is not None:
                rows.append(row)
        return rows

    def retrieve(
        self,
        org: str,
        env: str,
        names: list[str],
        tags: list[str],
        versions: dict[str, int] | None,
        client_jwk: object,
        nonce: str,
    ) -> str:
        """The ephemeral retrieval: selected values, encrypted to the client's key."""
        public = jwe.public_key_from_jwk(client_jwk)
        selected = self.read_values(org, env, names, tags, versions)
        bundle = {
            "org": org,
            "environment": env,
            "nonce": nonce,
            "secrets": [{"name": s.name, "value": s.value, "version": s.version} for s in selected],
        }
        plaintext = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return jwe.encrypt(public, plaintext)

    def history(self, org: str, env: str, name: str) -> list[dict[str, Any]]:
        keys = self.org(org)
        check_secret_name(name)
        with keys.store.read() as db:
            self._require_env(db, org, env)
            rows = db.execute(
                "SELECT v.version, v.action, v.ciphertext IS NULL, v.tags, v.created_at, v.actor "
                "FROM secrets s JOIN secret_versions v ON v.secret_id = s.id "
                "WHERE s.env = ? AND s.name = ? ORDER BY v.version",
                (env, name),
            ).fetchall()
        if not rows:
            raise NotFound(f"no secret {name} in {org}/{env}")
        return [
            {
                "version": v,
                "action": a,
                "deleted": bool(d),
                "tags": json.loads(t),
                "created_at": c,
                "actor": who,
            }
            for v, a, d, t, c, who in rows
        ]

    # -- changes without a value from the client ------------------------------------

    def delete(self, org: str, env: str, name: str, actor: str) -> SecretRecord:
        keys = self.org(org)
        check_secret_name(name)
        with keys.store.write() as db:
            self._require_env(db, org, env)
            row = db.execute(
                "SELECT deleted FROM secrets WHERE env = ? AND name = ?", (env, name)
            ).fetchone()
            if row is None or row[0]:
                raise NotFound(f"no secret {name} in {org}/{env}")
            return self._write_version(
                db, keys, env, name, None, None, None, None, actor, "delete", utc_now()
            )

    def rollback(self, org: str, env: str, name: str, to: int, actor: str) -> SecretRecord:
        """Write the value of version `to` as a new version (history is kept)."""
        keys = self.org(org)
        check_secret_name(name)
        (old,) = self.read_values(org, env, [name], [], {name: to})
        with keys.store.write() as db:
            dek_version = keys.current_dek_version(db)
            return self._write_version(
                db,
                keys,
                env,
                name,
                old.value,
                None,
                keys.dek(dek_version),
                dek_version,
                actor,
                "rollback",
                utc_now(),
            )


def _target_text(target: dict[str, Any]) -> str:
    parts: Iterable[Any] = (target.get("org"), target.get("env"), target.get("name"))
    return "/".join(str(p) for p in parts if p is not None) or "no target"
