"""The server role's operations on org vaults.

`VaultService` is what the API core calls: it opens org vaults, unwraps the
org keys with the master key, unseals stored values with the org RSA key,
encrypts them under the 3-tier hierarchy, and builds retrieval bundles
encrypted to the client's ephemeral key. It speaks in names and sealed
tokens, never in plaintext coming from or going to the wire.
"""

import json
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from crate_cli.config import CrateHome
from crate_cli.errors import (
    Conflict,
    CrateError,
    Forbidden,
    IntegrityError,
    InvalidInput,
    InvalidSealedValue,
    KeystoreError,
    NotFound,
)
from crate_cli.vault import audit, crypto, jwe, snapshots
from crate_cli.vault.audit import Caller
from crate_cli.vault.masterkey import MasterKeys, utc_now
from crate_cli.vault.names import (
    STEERING_HELP,
    check_env,
    check_org,
    check_secret_name,
    check_tags,
    check_value,
    steering_reason,
)
from crate_cli.vault.store import OrgStore

DEFAULT_MAX_VALUE_BYTES = 64 * 1024
# The largest version number SQLite can hold (a signed 64-bit integer).
MAX_VERSION = 2**63 - 1


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


class SecretValue(NamedTuple):
    """A decrypted value, as a retrieval returns it."""

    name: str
    version: int
    value: str


class ValueColumns(NamedTuple):
    """Decrypted values as three lists of equal length, in name order: a whole
    environment's can be 10,000 long, and lists make no object per secret."""

    names: list[str]
    versions: list[int]
    values: list[str]


# The columns of a `secrets` row, in the order OrgKeys.check_head expects. The
# queries that splice it in (noqa: S608) take every value as a parameter.
HEAD_COLUMNS = "s.name, s.version, s.deleted, s.tags, s.updated_at, s.actor, s.mac"
# Every secret version that has a wrapped DEK, as a rotation reads it.
_ROTATION_ROWS = (
    "SELECT s.env, s.name, v.version, v.action, v.org_dek_version, v.tags, "
    "v.created_at, v.actor, v.mac, v.wrapped_dek, v.secret_id "
    "FROM secret_versions v JOIN secrets s ON s.id = v.secret_id "
    "WHERE v.wrapped_dek IS NOT NULL"
)
# The newest version a secret's history holds: an authentic but older head row
# copied back in points below it.
NEWEST_VERSION = "(SELECT max(n.version) FROM secret_versions n WHERE n.secret_id = s.id)"


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


def _record(row: tuple[Any, ...], env: str) -> SecretRecord:
    name, version, deleted, tags, updated_at, actor = row[:6]
    return SecretRecord(name, env, version, _tags(tags), updated_at, actor, bool(deleted))


class OrgKeys:
    """An org's vault with its keys unwrapped on first use."""

    def __init__(
        self, org: str, store: OrgStore, master: MasterKeys, caller: Caller | None = None
    ) -> None:
        self.org = org
        self.store = store
        self.master = master
        # Who a failed unlock is recorded for: the process, not a request.
        self.caller = caller or Caller("crate")
        self._deks: dict[int, bytes] = {}
        self._ciphers: dict[int, Any] = {}
        self._private: dict[str, Any] = {}
        self._audit_keys: tuple[bytes, bytes] | None = None  # (row MAC key, chain key)
        self._head_macs: dict[str, crypto.RowMac] = {}  # by env
        self._unlock_failed = False

    def unlock(self, version: int) -> bytes:
        """Master key `version`; a failure is recorded in the org's audit log
        (unauthenticated, since the key is what is missing) once per process."""
        try:
            return self.master.unlock(version)
        except KeystoreError as e:
            if not self._unlock_failed:
                self._unlock_failed = True
                audit.record_pending(
                    self.store,
                    self.caller,
                    "unlock",
                    details={"error": e.api_code, "master_version": version},
                )
            raise

    def dek(self, version: int) -> bytes:
        key = self._deks.get(version)
        if key is None:
            with self.store.errors():
                row = self.store.conn.execute(
                    "SELECT master_version, wrapped FROM org_deks WHERE version = ?", (version,)
                ).fetchone()
            if row is None:
                # Referenced by a secret but gone: the vault was tampered with.
                raise IntegrityError()
            master_key = self.unlock(row[0])
            key = crypto.unwrap_key(
                master_key, row[1], crypto.aad(crypto.ORG_DEK, self.org, version)
            )
            self._deks[version] = key
        return key

    def dek_cipher(self, version: int) -> Any:
        """An AES-GCM object for org DEK `version`, made once per process."""
        cipher = self._ciphers.get(version)
        if cipher is None:
            cipher = self._ciphers[version] = crypto.cipher(self.dek(version))
        return cipher

    def current_dek_version(self, db: sqlite3.Connection) -> int:
        row = db.execute("SELECT max(version) FROM org_deks").fetchone()
        if row is None or row[0] is None:
            raise IntegrityError(f"organization {self.org!r} has no data key")
        return int(row[0])

    def _audit_subkeys(self) -> tuple[bytes, bytes]:
        if self._audit_keys is None:
            with self.store.errors():
                row = self.store.conn.execute(
                    "SELECT version, master_version, wrapped FROM org_audit_keys "
                    "ORDER BY version DESC LIMIT 1"
                ).fetchone()
            if row is None:
                raise IntegrityError()
            audit_key, _ = self.unwrap_audit_key(self.unlock(row[1]), row[2], row[0])
            self._audit_keys = (
                crypto.derive_subkey(audit_key, crypto.ROW_MAC_KEY),
                crypto.derive_subkey(audit_key, crypto.AUDIT_CHAIN_KEY),
            )
        return self._audit_keys

    def unwrap_audit_key(
        self, master_key: bytes, wrapped: bytes, version: int
    ) -> tuple[bytes, bool]:
        """The org audit key, and whether it is wrapped under the label that says
        the org's audit log has begun (crypto.ORG_AUDIT_KEY_CHAINED)."""
        try:
            chained = crypto.aad(crypto.ORG_AUDIT_KEY_CHAINED, self.org, version)
            return crypto.unwrap_key(master_key, wrapped, chained), True
        except IntegrityError:
            plain = crypto.aad(crypto.ORG_AUDIT_KEY, self.org, version)
            return crypto.unwrap_key(master_key, wrapped, plain), False

    def audit_log_begun(self, db: sqlite3.Connection, mark: bool = False) -> bool:
        """Whether the audit key says the org's log has begun; with `mark`,
        make it say so (inside the caller's write transaction)."""
        row = db.execute(
            "SELECT version, master_version, wrapped FROM org_audit_keys "
            "ORDER BY version DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise IntegrityError()
        master_key = self.unlock(row[1])
        key, begun = self.unwrap_audit_key(master_key, row[2], row[0])
        if mark and not begun:
            chained = crypto.aad(crypto.ORG_AUDIT_KEY_CHAINED, self.org, row[0])
            db.execute(
                "UPDATE org_audit_keys SET wrapped = ? WHERE version = ?",
                (crypto.wrap_key(master_key, key, chained), row[0]),
            )
        return begun

    def row_key(self) -> bytes:
        """The key that authenticates clear row metadata (a subkey of the audit key)."""
        return self._audit_subkeys()[0]

    def chain_key(self) -> bytes:
        """The key of the audit log's HMAC chain (another subkey of the audit key)."""
        return self._audit_subkeys()[1]

    def _row_message(self, purpose: str, env: str, *fields: Any) -> bytes:
        return crypto.mac_message(purpose, self.org, env, *fields)

    def head_mac(self, env: str, fields: tuple[Any, ...]) -> bytes:
        """The MAC of a `secrets` row: (name, version, deleted, tags, updated_at, actor)."""
        return crypto.mac(self.row_key(), self._row_message(crypto.SECRET_HEAD, env, *fields))

    def head_macs(self, env: str) -> crypto.RowMac:
        """The MAC of `secrets` rows in `env`, keyed once per environment."""
        verifier = self._head_macs.get(env)
        if verifier is None:
            verifier = crypto.RowMac(self.row_key(), crypto.SECRET_HEAD, self.org, env)
            self._head_macs[env] = verifier
        return verifier

    def check_head(self, env: str, row: tuple[Any, ...]) -> None:
        """Verify a `secrets` row read as its six MAC'd columns, then the MAC."""
        self.head_macs(env).verify(row[:6], row[6])

    def version_mac(self, env: str, name: str, fields: tuple[Any, ...]) -> bytes:
        """The MAC of a `secret_versions` row:
        (version, action, org_dek_version, tags, created_at, actor)."""
        return crypto.mac(
            self.row_key(), self._row_message(crypto.SECRET_VERSION, env, name, *fields)
        )

    def check_version(self, env: str, name: str, row: tuple[Any, ...]) -> None:
        """Verify a `secret_versions` row read as its six MAC'd columns, then the MAC."""
        crypto.verify_mac(
            self.row_key(), self._row_message(crypto.SECRET_VERSION, env, name, *row[:6]), row[6]
        )

    def revocation_mac(self, digest: bytes, name: str, revoked_at: str, actor: str) -> bytes:
        """The MAC of a `token_revocations` row (the revoked token's hash first)."""
        return crypto.mac(
            self.row_key(),
            crypto.mac_message(
                crypto.TOKEN_REVOCATION, self.org, digest.hex(), name, revoked_at, actor
            ),
        )

    def allowed_name_mac(self, name: str, allowed_at: str, actor: str) -> bytes:
        """The MAC of an `allowed_names` row."""
        return crypto.mac(
            self.row_key(),
            crypto.mac_message(crypto.ALLOWED_NAME, self.org, name, allowed_at, actor),
        )

    def allowance_end_mac(self, name: str, allowed_at: str, ended_at: str, actor: str) -> bytes:
        """The MAC of an `allowed_names_ended` row: the allowance of `name`
        made at `allowed_at` ended at `ended_at`, by `actor`."""
        return crypto.mac(
            self.row_key(),
            crypto.mac_message(
                crypto.ALLOWED_NAME_ENDED, self.org, name, allowed_at, ended_at, actor
            ),
        )

    def active_public_key(self) -> tuple[str, bytes]:
        with self.store.errors():
            row = self.store.conn.execute(
                "SELECT kid, public_der FROM org_rsa_keys WHERE active = 1 "
                "ORDER BY created_at DESC LIMIT 1"
            ).fetchone()
        if row is None:
            raise IntegrityError(f"organization {self.org!r} has no public key")
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
                self.unlock(row[0]), row[1], crypto.aad(crypto.ORG_RSA_KEY, self.org, kid)
            )
            # Generated and validated by crate itself: skip the costly re-validation.
            key = load_der_private_key(der, None, unsafe_skip_rsa_key_validation=True)
            self._private[kid] = key
        return key


class VaultService:
    """The server role over every org vault of one crate home."""

    def __init__(
        self,
        home: CrateHome,
        master: MasterKeys,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        rotate_org_every: float | None = None,
        caller: Caller | None = None,
    ) -> None:
        self.home = home
        self.master = master
        self.max_value_bytes = max_value_bytes
        self.rotate_org_every = rotate_org_every
        # Recorded in the audit log for what no request asked for (a rotation
        # from `crate keys`, a failed unlock): the process's user and client.
        self.caller = caller or Caller("crate")
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
            keys = OrgKeys(org, store, self.master, self.caller)
            self._orgs[org] = keys
        return keys

    def warm(self, org: str, prefetch: bool = True) -> None:
        """Unlock what serving `org` needs (master key, current org DEK, row MAC
        key) ahead of a request, as a running server has, and with `prefetch`
        read the values' pages too: `crate run` calls it while its ephemeral
        key may still be searched (with a key at hand, reading them twice only
        costs time). Errors are left for the request itself to report."""
        try:
            keys = self.org(org)
            with keys.store.errors():
                version = keys.current_dek_version(keys.store.conn)
            keys.dek_cipher(version)
            keys.row_key()
            if not prefetch:
                return
            with keys.store.errors():
                # Pull the vault's pages into SQLite's cache, so that the
                # request itself does not wait for them.
                keys.store.conn.execute(
                    "SELECT sum(length(wrapped_dek)), sum(length(ciphertext)) FROM secret_versions"
                ).fetchone()
        except CrateError:
            pass

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

    def create_env(self, org: str, env: str, caller: Caller | None = None) -> None:
        check_env(env)
        keys = self.org(org)
        with keys.store.write() as db:
            if db.execute("SELECT 1 FROM environments WHERE name = ?", (env,)).fetchone():
                raise Conflict(f"environment {env!r} already exists in organization {org!r}")
            db.execute(
                "INSERT INTO environments (name, created_at) VALUES (?, ?)", (env, utc_now())
            )
            audit.append(db, keys, caller or self.caller, "env-create", env=env)

    def delete_env(self, org: str, env: str, caller: Caller | None = None) -> int:
        """Delete an environment and all its secrets; returns how many secrets went."""
        keys = self.org(org)
        with keys.store.write() as db:
            self._require_env(db, org, env)
            count = db.execute("SELECT count(*) FROM secrets WHERE env = ?", (env,)).fetchone()[0]
            db.execute("DELETE FROM environments WHERE name = ?", (env,))
            audit.append(
                db,
                keys,
                caller or self.caller,
                "env-delete",
                env=env,
                details={"secrets_deleted": count},
            )
        return int(count)

    # -- names that steer processes (vault/names.py) ---------------------------

    def _allowed(self, db: sqlite3.Connection, keys: OrgKeys) -> dict[str, dict[str, str]]:
        """The org's allowed steering names (upper case -> row), each row
        authenticated and not one whose allowance ended (an ended one copied
        back from a backup stays ended, whatever its MAC)."""
        import hmac

        ended = set(db.execute("SELECT name, allowed_at FROM allowed_names_ended"))
        allowed = {}
        for name, allowed_at, actor, tag in db.execute(
            "SELECT name, allowed_at, actor, mac FROM allowed_names ORDER BY name"
        ):
            if not isinstance(tag, bytes) or not hmac.compare_digest(
                keys.allowed_name_mac(name, allowed_at, actor), tag
            ):
                raise IntegrityError()
            if (name, allowed_at) not in ended:
                allowed[name.upper()] = {"name": name, "allowed_at": allowed_at, "actor": actor}
        return allowed

    def allowed_names(self, org: str) -> list[dict[str, str]]:
        """The steering names an admin allowed for the org, with who and when."""
        keys = self.org(org)
        with keys.store.read() as db:
            return list(self._allowed(db, keys).values())

    def allow_name(self, org: str, name: str, caller: Caller, allow: bool = True) -> bool:
        """Allow (or no longer allow) secrets of a steering name in the org;
        returns whether that changed anything. Audited either way it changes."""
        check_secret_name(name)
        reason = steering_reason(name)
        if reason is None:
            raise InvalidInput(
                f"{name} is not a name crate refuses ({STEERING_HELP}); nothing to allow"
            )
        keys = self.org(org)
        with keys.store.write() as db:
            present = self._allowed(db, keys).get(name.upper())
            if allow == (present is not None):
                return False
            if allow:
                now = utc_now()
                # OR REPLACE: over an ended allowance's row put back from a backup.
                db.execute(
                    "INSERT OR REPLACE INTO allowed_names (name, allowed_at, actor, mac) "
                    "VALUES (?, ?, ?, ?)",
                    (name, now, caller.actor, keys.allowed_name_mac(name, now, caller.actor)),
                )
                details = {"reason": reason}
            else:
                assert present is not None
                now = utc_now()
                allowed_at = present["allowed_at"]
                db.execute("DELETE FROM allowed_names WHERE name = ?", (present["name"],))
                db.execute(
                    "INSERT INTO allowed_names_ended (name, allowed_at, ended_at, actor, mac) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        present["name"],
                        allowed_at,
                        now,
                        caller.actor,
                        keys.allowance_end_mac(present["name"], allowed_at, now, caller.actor),
                    ),
                )
                # `ended`: `crate audit verify` checks that the record is still there.
                details = {"reason": reason, "ended": allowed_at}
            action = "name-allow" if allow else "name-disallow"
            audit.append(db, keys, caller, action, names=[name], details=details)
        return True

    def _check_steering(self, db: sqlite3.Connection, keys: OrgKeys, names: Iterable[str]) -> None:
        """Refuse to write secrets whose names steer the processes that inherit
        them, unless an admin allowed each name for the org (DESIGN §9)."""
        steering = [(n, r) for n in names if (r := steering_reason(n)) is not None]
        if not steering:
            return
        allowed = self._allowed(db, keys)
        for name, reason in steering:
            if name.upper() not in allowed:
                raise Forbidden(
                    f"secret name {name} is refused: {reason}, so whoever runs crate run with "
                    "it would run what its writer chose",
                    f"an admin of {keys.org!r} can allow it: crate org allow-name {name}",
                )

    # -- references between secrets (vault/references.py) ----------------------

    def _check_references(
        self,
        org: str,
        env: str,
        values: dict[str, str],
        env_scope: frozenset[str],
        tag_scope: frozenset[str],
    ) -> dict[str, list[str]]:
        """Refuse values whose references, followed through the values they
        reach, name a secret the writer cannot read now (another environment
        than its token's, tags outside its scope), or never end (a cycle, or
        deeper than MAX_DEPTH): a value may not make the server hand a reader
        what its writer could not read (DESIGN §9). Returns warnings by name:
        a `${` that is not a reference, a reference to nothing (yet)."""
        from crate_cli.vault import references as refs

        warnings: dict[str, list[str]] = {}
        known: dict[refs.Key, str] = {}
        for name, text in values.items():
            if not refs.has_references(text):
                continue
            known[(env, name)] = text
            if refs.malformed(text):
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
                for ref in refs.references(known[key], key[0]):
                    holder.setdefault(ref, holder[key])
                    if ref in known:
                        continue
                    value = batch.get(ref)
                    if value is None:
                        value = self._reference_target(
                            org, ref, holder[ref], env, env_scope, tag_scope, warnings
                        )
                    if value is not None:
                        known[ref] = value
                        reached.append(ref)
            frontier = [key for key in reached if refs.has_references(known[key])]
        done: set[tuple[str, str]] = set()
        for start in starts:
            _check_chain(start, known, env, [], done)
        return warnings

    def _reference_target(
        self,
        org: str,
        ref: tuple[str, str],
        start: tuple[str, str],
        env: str,
        env_scope: frozenset[str],
        tag_scope: frozenset[str],
        warnings: dict[str, list[str]],
    ) -> str | None:
        """The value a reference names, read with the writer's scope (None if
        there is none yet); an error naming the secret whose value holds the
        reference when the writer could not read it. A reference to nothing
        is refused to a writer limited to tags (what appears there later may
        carry tags it cannot read) and is a warning for any other."""
        from crate_cli.vault.references import show

        ref_env, ref_name = ref
        shown = f"the value of {start[1]} refers to {show(ref, env)}"
        if env_scope and ref_env not in env_scope:
            raise Forbidden(
                f"{shown}, in environment {ref_env!r}, which this token may not read",
                "a value may refer only to secrets its writer can read",
            )
        try:
            (found,) = self.read_values(org, ref_env, [ref_name], [], None, tag_scope)
        except Forbidden:
            raise Forbidden(
                f"{shown}, which this token may not read; nothing was stored",
                "a value may refer only to secrets its writer can read",
            ) from None
        except NotFound:
            if tag_scope:
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

    # -- sealed store ---------------------------------------------------------

    def public_key(self, org: str) -> dict[str, str]:
        import base64

        from cryptography.hazmat.primitives.serialization import load_der_public_key

        keys = self.org(org)
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
        self,
        keys: OrgKeys,
        token: object,
        env: str,
        name: str | None,
        tags: list[list[str] | None],
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

    def store_sealed(
        self,
        org: str,
        env: str,
        items: list[tuple[SealedItem, str]] | None,
        batch: tuple[list[SealedItem], str] | None,
        caller: Caller,
        action: str = "set",
        tag_scope: frozenset[str] = frozenset(),
        env_scope: frozenset[str] = frozenset(),
    ) -> list[SecretRecord]:
        """Unseal and store values; all of them in one transaction, or none.

        `items` pairs each secret with its own JWE (the Crate protocol's form);
        `batch` is crate's extension for many values at once: one JWE whose
        plaintext is a JSON object of name to value, sealed to (org, env).
        A value's references must name what the writer (`env_scope`,
        `tag_scope`) can read now; a record carries `warnings` for a `${`
        that is no reference.
        """
        keys = self.org(org)
        check_env(env)
        values: list[tuple[SealedItem, str]] = []
        for item, token in items or []:
            check_secret_name(item.name)
            raw = self._unseal(keys, token, env, item.name, [item.tags])
            values.append((item, check_value(item.name, raw, self.max_value_bytes)))
        if batch is not None:
            batch_items, token = batch
            raw = self._unseal(keys, token, env, None, [i.tags for i in batch_items])
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
        warnings = self._check_references(
            org, env, {item.name: text for item, text in values}, env_scope, tag_scope
        )
        self._rotate_if_due(org, caller)
        now = utc_now()
        out: list[SecretRecord] = []
        with keys.store.write() as db:
            self._require_env(db, org, env)
            self._check_steering(db, keys, (item.name for item, _ in values))
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
                        caller.actor,
                        action,
                        now,
                        tag_scope,
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

    def _head(self, db: sqlite3.Connection, keys: OrgKeys, env: str, name: str) -> Any:
        """The authenticated `secrets` row of one secret (with its id last), or None."""
        row = db.execute(
            f"SELECT {HEAD_COLUMNS}, s.id FROM secrets s WHERE s.env = ? AND s.name = ?",  # noqa: S608
            (env, name),
        ).fetchone()
        if row is not None:
            keys.check_head(env, row)
        return row

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
        tag_scope: frozenset[str] = frozenset(),
    ) -> SecretRecord:
        """Append one version (a value, or a tombstone when `text` is None).

        With a `tag_scope`, the secret must carry one of its tags both before
        (unless it was deleted) and after the change."""
        head = self._head(db, keys, env, name)
        version = 1 if head is None else head[1] + 1
        if tags is not None:
            tag_list = check_tags(tags)
        else:
            tag_list = [] if head is None else _tags(head[3])
        if tag_scope and (
            _outside(tag_scope, tag_list)
            or (head is not None and not head[2] and _outside(tag_scope, _tags(head[3])))
        ):
            raise Forbidden(
                f"secret {name} in {keys.org}/{env} would not carry one of this token's tags "
                f"({_scope_text(tag_scope)})",
                "a token limited to tags can change only secrets tagged with one of them",
            )
        tag_text = json.dumps(tag_list)
        deleted = int(text is None)
        head_mac = keys.head_mac(env, (name, version, deleted, tag_text, now, actor))
        if head is None:
            secret_id = db.execute(
                "INSERT INTO secrets (env, name, version, deleted, tags, updated_at, actor, mac) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (env, name, version, deleted, tag_text, now, actor, head_mac),
            ).lastrowid
        else:
            secret_id = head[7]
            db.execute(
                "UPDATE secrets SET version = ?, deleted = ?, tags = ?, updated_at = ?, "
                "actor = ?, mac = ? WHERE id = ?",
                (version, deleted, tag_text, now, actor, head_mac, secret_id),
            )
        wrapped_dek = ciphertext = None
        if text is not None:
            assert org_dek is not None
            secret_dek = crypto.new_key()
            dek_aad, value_aad = crypto.secret_aads(keys.org, env, name, version)
            wrapped_dek = crypto.wrap_key(org_dek, secret_dek, dek_aad)
            ciphertext = crypto.encrypt(secret_dek, text.encode("utf-8"), value_aad)
        else:
            dek_version = None
        db.execute(
            "INSERT INTO secret_versions (secret_id, version, action, org_dek_version, "
            "wrapped_dek, ciphertext, tags, created_at, actor, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                secret_id,
                version,
                action,
                dek_version,
                wrapped_dek,
                ciphertext,
                tag_text,
                now,
                actor,
                keys.version_mac(env, name, (version, action, dek_version, tag_text, now, actor)),
            ),
        )
        return SecretRecord(name, env, version, tag_list, now, actor, bool(deleted))

    # -- reads ----------------------------------------------------------------

    def list_secrets(
        self,
        org: str,
        env: str,
        tags: list[str],
        tag_scope: frozenset[str] = frozenset(),
        caller: Caller | None = None,
    ) -> list[SecretRecord]:
        keys = self.org(org)
        want = set(check_tags(tags))
        with keys.store.read() as db:
            self._require_env(db, org, env)
            rows = db.execute(
                f"SELECT {HEAD_COLUMNS}, {NEWEST_VERSION} FROM secrets s "  # noqa: S608
                "WHERE s.env = ? ORDER BY s.name",
                (env,),
            ).fetchall()
        out = []
        for row in rows:
            # Deleted rows are checked too: flipping the flag must not hide a secret.
            keys.check_head(env, row)
            if row[7] != row[1]:
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
            caller or self.caller,
            "list",
            env=env,
            details={"tags": sorted(want), "count": len(out)} if want else {"count": len(out)},
        )
        return out

    def read_values(
        self,
        org: str,
        env: str,
        names: list[str],
        tags: list[str],
        versions: dict[str, int] | None = None,
        tag_scope: frozenset[str] = frozenset(),
    ) -> list[SecretValue]:
        """`read_columns`, one record per secret."""
        columns = self.read_columns(org, env, names, tags, versions, tag_scope)
        return list(map(SecretValue._make, zip(*columns, strict=True)))

    def read_columns(
        self,
        org: str,
        env: str,
        names: list[str],
        tags: list[str],
        versions: dict[str, int] | None = None,
        tag_scope: frozenset[str] = frozenset(),
    ) -> ValueColumns:
        """Decrypt the selected secrets: the named ones (all when none are named)
        carrying every tag in `tags`; `versions` picks older versions by name.

        Each secret's head row is authenticated before its value is used and
        must point at the newest version of its history, so moving the version
        pointer back, flipping the deleted flag or restoring an older head row
        fails with IntegrityError instead of serving an older value.
        """
        keys = self.org(org)
        for n in names:
            check_secret_name(n)
        for n, v in (versions or {}).items():
            if not 1 <= v <= MAX_VERSION:
                raise NotFound(f"secret {n} in {org}/{env} has no version {v}")
        want = set(check_tags(tags))
        versions = versions or {}
        # A read of the whole environment is served from its snapshot when
        # one matches the heads (snapshots.py), and leaves one behind if not.
        whole = not (names or want or versions or tag_scope)
        with keys.store.read() as db:
            self._require_env(db, org, env)
            if whole:
                digest = snapshots.heads_digest(db, env)
                dek_now = keys.current_dek_version(db)
                cached = snapshots.load(db, keys, env, digest, dek_now)
                if cached is not None:
                    return ValueColumns._make(cached)
            rows = self._select_rows(db, env, names, versions, bool(tag_scope))
            # The data keys those rows name, from the same snapshot: a rotation
            # and prune committed meanwhile must not make them vanish.
            for dek_version in {r[8] for r in rows if r[8] is not None}:
                keys.dek_cipher(dek_version)
        out = ValueColumns([], [], [])
        found: set[str] = set()
        # The loop runs once per secret (10,000 in a big vault): the tags are
        # parsed only when a filter needs them, the rest is set up once.
        filtered = bool(want or tag_scope)
        verify_head = keys.head_macs(env).verify
        open_value = crypto.secret_opener(org, env, keys.dek_cipher)
        for row in rows:
            verify_head(row[:6], row[6])
            name, head_version, deleted, tag_text = row[:4]
            version, dek_version, wrapped, blob, newest = row[7:12]
            if newest != head_version:
                raise IntegrityError()
            explicit = name in versions
            if deleted and not explicit:
                continue
            found.add(name)
            if filtered:
                tags = _tags(tag_text)
                if _outside(tag_scope, tags):
                    if name in names:
                        raise Forbidden(
                            f"secret {name} in {org}/{env} carries none of this token's tags "
                            f"({_scope_text(tag_scope)})"
                        )
                    continue
                if tag_scope and version is not None:
                    # A scope holds for the version read, by its own tags: a
                    # secret deleted and stored again, or re-tagged, does not
                    # open its older versions to the new tags' holders.
                    keys.check_version(env, name, (version, *row[12:18]))
                    if _outside(tag_scope, _tags(row[14])):
                        raise Forbidden(
                            f"version {version} of secret {name} in {org}/{env} carries none "
                            f"of this token's tags ({_scope_text(tag_scope)})"
                        )
                if want and not want.issubset(tags):
                    if name in names:
                        raise NotFound(
                            f"secret {name} in {org}/{env} does not carry every tag of "
                            f"{', '.join(sorted(want))}"
                        )
                    continue
            if version is None or not 1 <= version <= head_version:
                if explicit:
                    raise NotFound(f"secret {name} in {org}/{env} has no version {versions[name]}")
                raise IntegrityError()  # the head points at a version that is not there
            if blob is None:
                if explicit:
                    raise NotFound(f"version {version} of {name} in {org}/{env} is a deletion")
                raise IntegrityError()  # a live head whose version holds no value
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
        if whole:
            snapshots.save(keys, env, digest, dek_now, out)
        return out

    def _select_rows(
        self,
        db: sqlite3.Connection,
        env: str,
        names: list[str],
        versions: dict[str, int],
        version_rows: bool = False,
    ) -> list[Any]:
        """Head columns, then the chosen version's: version, dek version, wrapped
        DEK, blob, the newest version; with `version_rows`, then the version
        row's other MAC'd columns (action, dek version, tags, created, actor)
        and its MAC, for a scope that must hold for the version itself."""
        extra = (
            ", v.action, v.org_dek_version, v.tags, v.created_at, v.actor, v.mac"
            if version_rows
            else ""
        )
        base = (
            f"SELECT {HEAD_COLUMNS}, v.version, v.org_dek_version, v.wrapped_dek, v.ciphertext, "  # noqa: S608
            f"{NEWEST_VERSION}{extra} FROM secrets s "
            "LEFT JOIN secret_versions v ON v.secret_id = s.id "
        )
        if not names:
            return db.execute(
                base + "AND v.version = s.version WHERE s.env = ? ORDER BY s.name", (env,)
            ).fetchall()
        rows = []
        for name in dict.fromkeys(names):
            wanted = versions.get(name)
            row = db.execute(
                base + "AND v.version = coalesce(?, s.version) WHERE s.env = ? AND s.name = ?",
                (wanted, env, name),
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
        tag_scope: frozenset[str] = frozenset(),
        caller: Caller | None = None,
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
        request gave it (`layout` its member, jwe.signed_message)."""
        try:
            public = jwe.public_key_from_jwk(client_jwk)
        except IntegrityError as e:  # a bad request, not a damaged vault
            raise InvalidInput(e.message) from None
        selected = self.read_columns(org, env, names, tags, versions, tag_scope)
        served = selected.names
        details: dict[str, Any] = {}
        if tags:
            details["tags"] = sorted(tags)
        if versions:
            details["versions"] = {
                n: v for n, v in zip(served, selected.versions, strict=True) if n in versions
            }
        audit.record(
            self.org(org),
            caller or self.caller,
            "retrieve",
            env=env,
            names=served,
            details=details,
        )
        bundle: dict[str, Any] = {"org": org, "environment": env, "nonce": nonce}
        if columns:
            bundle["names"] = served
            bundle["values"] = selected.values
            bundle["versions"] = selected.versions
        else:
            bundle["secrets"] = [
                {"name": n, "value": value, "version": v}
                for n, v, value in zip(*selected, strict=True)
            ]
        plaintext = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        answer: dict[str, Any] = {"bundle": jwe.encrypt(public, plaintext)}
        if signed:
            keys = self.org(org)
            kid, _ = keys.active_public_key()
            selection = jwe.selection_digest(env, names, tags, versions or {}, layout)
            message = jwe.signed_message(
                org, kid, jwe.thumbprint(public), nonce, selection, answer["bundle"]
            )
            answer["signature"] = {
                "alg": jwe.SIGNATURE_ALG,
                "kid": kid,
                "value": jwe.sign(keys.private_key(kid), message),
            }
        return answer

    def history(
        self,
        org: str,
        env: str,
        name: str,
        tag_scope: frozenset[str] = frozenset(),
        caller: Caller | None = None,
    ) -> list[dict[str, Any]]:
        """Every version's metadata (no values), each row authenticated; a removed
        version shows as a gap and fails with IntegrityError. With a
        `tag_scope`, only the versions whose own tags are in it are listed."""
        keys = self.org(org)
        check_secret_name(name)
        with keys.store.read() as db:
            self._require_env(db, org, env)
            head = self._head(db, keys, env, name)
            if head is None:
                raise NotFound(f"no secret {name} in {org}/{env}")
            if _outside(tag_scope, _tags(head[3])):
                raise Forbidden(
                    f"secret {name} in {org}/{env} carries none of this token's tags "
                    f"({_scope_text(tag_scope)})"
                )
            rows = db.execute(
                "SELECT version, action, org_dek_version, tags, created_at, actor, mac, "
                "ciphertext IS NULL FROM secret_versions WHERE secret_id = ? ORDER BY version",
                (head[7],),
            ).fetchall()
        if [r[0] for r in rows] != list(range(1, head[1] + 1)):
            raise IntegrityError()
        out = []
        for row in rows:
            keys.check_version(env, name, row)
            version, action, _, tag_text, created_at, actor = row[:6]
            if _outside(tag_scope, _tags(tag_text)):
                continue  # a version of other tags (before a re-tag or a re-creation)
            out.append(
                {
                    "version": version,
                    "action": action,
                    "deleted": bool(row[7]),
                    "tags": _tags(tag_text),
                    "created_at": created_at,
                    "actor": actor,
                }
            )
        audit.record(keys, caller or self.caller, "history", env=env, names=[name])
        return out

    def record_key_change(self, action: str, details: dict[str, Any]) -> list[str]:
        """Record a change to the master key (a slot, a version) in every org's
        audit log, since each org's keys hang from it; returns the orgs whose
        log could not take the entry."""
        from crate_cli.vault.orgs import list_orgs

        missed = []
        for org in list_orgs(self.home):
            try:
                audit.record(self.org(org), self.caller, action, details=details)
            except CrateError:
                missed.append(org)
        return missed

    # -- key rotation -----------------------------------------------------------------

    def rotate_org(
        self,
        org: str,
        progress: Callable[[int, int], None] | None = None,
        caller: Caller | None = None,
        scheduled: bool = False,
    ) -> tuple[int, int]:
        """Make org DEK version M+1 and rewrap every secret DEK under it.

        The rewraps are computed from a read snapshot, so that writers (and
        readers, whose audit entries are writes) are not held up meanwhile;
        then one short transaction inserts the new version and applies them,
        redoing any row that changed since. Readers see every key under the
        old versions or every key under the new one; a crash leaves the old
        state. Returns (new version, keys rewrapped)."""
        keys = self.org(org)
        new_key = crypto.new_key()
        new_cipher = crypto.cipher(new_key)
        with keys.store.read() as db:
            planned = keys.current_dek_version(db) + 1
            rows = db.execute(_ROTATION_ROWS).fetchall()
        prepared: dict[tuple[int, int], tuple[Any, ...]] = {}
        total = len(rows)
        for done, row in enumerate(rows, 1):
            prepared[(row[10], row[2])] = self._rewrap_row(keys, row, new_cipher, planned)
            if progress is not None and (done % 2000 == 0 or done == total):
                progress(done, total)
        with keys.store.write() as db:
            # The master version is read inside the transaction: a master
            # rotation's rewrap of this org comes wholly before or after it.
            master = self.master.current().version
            master_key = keys.unlock(master)
            new = keys.current_dek_version(db) + 1
            if new != planned:
                prepared.clear()  # another rotation came first: redo every row
            db.execute(
                "INSERT INTO org_deks (version, master_version, wrapped, created_at) "
                "VALUES (?, ?, ?, ?)",
                (
                    new,
                    master,
                    crypto.wrap_key(master_key, new_key, crypto.aad(crypto.ORG_DEK, org, new)),
                    utc_now(),
                ),
            )
            updates = []
            # Only ids and MACs are read under the lock: a row's wrapped DEK
            # changes only in a rotation, which changes its MAC too. A row
            # written or changed since the snapshot is done now.
            for secret_id, version, mac in db.execute(
                "SELECT secret_id, version, mac FROM secret_versions WHERE wrapped_dek IS NOT NULL"
            ).fetchall():
                ready = prepared.get((secret_id, version))
                if ready is None or ready[-1] != mac:
                    row = db.execute(
                        _ROTATION_ROWS + " AND v.secret_id = ? AND v.version = ?",
                        (secret_id, version),
                    ).fetchone()
                    ready = self._rewrap_row(keys, row, new_cipher, new)
                updates.append(ready[:5])
            db.executemany(
                "UPDATE secret_versions SET org_dek_version = ?, wrapped_dek = ?, mac = ? "
                "WHERE secret_id = ? AND version = ?",
                updates,
            )
            details: dict[str, Any] = {"data_key_version": new, "rewrapped": len(updates)}
            if scheduled:
                details["scheduled"] = True
            audit.append(db, keys, caller or self.caller, "rotate-org", details=details)
        keys._deks[new] = new_key
        return new, len(updates)

    def _rewrap_row(
        self, keys: OrgKeys, row: tuple[Any, ...], new_cipher: Any, new: int
    ) -> tuple[Any, ...]:
        """The UPDATE parameters that move one `_ROTATION_ROWS` row to org DEK
        `new`, followed by the row's MAC as it was read.
        The row is authenticated before it is re-MAC'd, so a tampered row is
        refused rather than laundered by the rotation."""
        env, name = row[0], row[1]
        keys.check_version(env, name, row[2:9])
        version, action, old_dek, tag_text, created_at, actor = row[2:8]
        dek_aad, _ = crypto.secret_aads(keys.org, env, name, version)
        wrapped = crypto.rewrap(keys.dek_cipher(old_dek), new_cipher, row[9], dek_aad)
        mac = keys.version_mac(env, name, (version, action, new, tag_text, created_at, actor))
        return (new, wrapped, mac, row[10], version, row[8])

    def master_versions_used(self, org: str) -> dict[int, list[str]]:
        """Which master key versions wrap this org's keys: version -> what."""
        keys = self.org(org)
        used: dict[int, list[str]] = {}
        with keys.store.read() as db:
            for table, what in (
                ("org_deks", "data key"),
                ("org_rsa_keys", "RSA key"),
                ("org_audit_keys", "audit key"),
            ):
                query = f"SELECT master_version, count(*) FROM {table} GROUP BY master_version"  # noqa: S608
                for version, count in db.execute(query):
                    used.setdefault(version, []).append(f"{count} {what}{'s' if count > 1 else ''}")
        return used

    def rewrap_to_master(self, org: str, version: int, caller: Caller | None = None) -> int:
        """Rewrap every key of the org that master key `version` does not wrap
        yet, in one transaction; returns how many were rewrapped."""
        keys = self.org(org)
        new_key = keys.unlock(version)
        count = 0
        with keys.store.write() as db:
            for table in ("org_deks", "org_audit_keys"):
                # `<`: keys already on a newer version (a later rotation) stay.
                rows = db.execute(
                    f"SELECT version, master_version, wrapped FROM {table} "  # noqa: S608
                    "WHERE master_version < ?",
                    (version,),
                ).fetchall()
                for key_version, old, wrapped in rows:
                    if table == "org_deks":
                        aad = crypto.aad(crypto.ORG_DEK, org, key_version)
                        key = crypto.unwrap_key(keys.unlock(old), wrapped, aad)
                    else:  # keeps the label that says whether the log has begun
                        key, begun = keys.unwrap_audit_key(keys.unlock(old), wrapped, key_version)
                        label = crypto.ORG_AUDIT_KEY_CHAINED if begun else crypto.ORG_AUDIT_KEY
                        aad = crypto.aad(label, org, key_version)
                    db.execute(
                        f"UPDATE {table} SET master_version = ?, wrapped = ? "  # noqa: S608
                        "WHERE version = ?",
                        (version, crypto.wrap_key(new_key, key, aad), key_version),
                    )
                    count += 1
            rows = db.execute(
                "SELECT kid, master_version, wrapped_private FROM org_rsa_keys "
                "WHERE master_version < ?",
                (version,),
            ).fetchall()
            for kid, old, wrapped in rows:
                aad = crypto.aad(crypto.ORG_RSA_KEY, org, kid)
                der = crypto.decrypt(keys.unlock(old), wrapped, aad)
                db.execute(
                    "UPDATE org_rsa_keys SET master_version = ?, wrapped_private = ? WHERE kid = ?",
                    (version, crypto.encrypt(new_key, der, aad), kid),
                )
                count += 1
            if count:
                audit.append(
                    db,
                    keys,
                    caller or self.caller,
                    "rotate-master",
                    details={"master_version": version, "rewrapped": count},
                )
        return count

    def rotation_due(self, org: str) -> str | None:
        """When the org's data key is due for rotation (keys.rotate_org_every), or None."""
        if not self.rotate_org_every:
            return None
        from datetime import datetime, timedelta

        keys = self.org(org)
        with keys.store.errors():
            row = keys.store.conn.execute(
                "SELECT created_at FROM org_deks ORDER BY version DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        created = datetime.strptime(row[0], "%Y-%m-%dT%H:%M:%S.%fZ")
        due = created + timedelta(seconds=self.rotate_org_every)
        return due.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _rotate_if_due(self, org: str, caller: Caller) -> None:
        due = self.rotation_due(org)
        if due is not None and due <= utc_now():
            self.rotate_org(org, caller=caller, scheduled=True)

    def org_dek_usage(self, org: str) -> list[dict[str, Any]]:
        """Each org DEK version: its master key version and how many secret
        DEKs it wraps (the newest one is the one new writes use)."""
        keys = self.org(org)
        with keys.store.read() as db:
            rows = db.execute(
                "SELECT d.version, d.master_version, d.created_at, "
                "(SELECT count(*) FROM secret_versions v WHERE v.org_dek_version = d.version) "
                "FROM org_deks d ORDER BY d.version"
            ).fetchall()
        newest = max((r[0] for r in rows), default=0)
        return [
            {
                "version": r[0],
                "master_version": r[1],
                "created_at": r[2],
                "wrapped_keys": r[3],
                "current": r[0] == newest,
            }
            for r in rows
        ]

    def prune_org_deks(self, org: str, caller: Caller | None = None) -> list[int]:
        """Delete org DEK versions that wrap nothing and are not the newest."""
        keys = self.org(org)
        with keys.store.write() as db:
            newest = keys.current_dek_version(db)
            unused = [
                r[0]
                for r in db.execute(
                    "SELECT d.version FROM org_deks d WHERE d.version < ? AND NOT EXISTS "
                    "(SELECT 1 FROM secret_versions v WHERE v.org_dek_version = d.version)",
                    (newest,),
                )
            ]
            db.executemany("DELETE FROM org_deks WHERE version = ?", [(v,) for v in unused])
            if unused:
                audit.append(
                    db,
                    keys,
                    caller or self.caller,
                    "prune",
                    details={"data_key_versions": unused},
                )
        for v in unused:
            keys._deks.pop(v, None)
            keys._ciphers.pop(v, None)
        return unused

    # -- changes without a value from the client ------------------------------------

    def delete(
        self,
        org: str,
        env: str,
        name: str,
        caller: Caller,
        tag_scope: frozenset[str] = frozenset(),
    ) -> SecretRecord:
        keys = self.org(org)
        check_secret_name(name)
        with keys.store.write() as db:
            self._require_env(db, org, env)
            head = self._head(db, keys, env, name)
            if head is None or head[2]:
                raise NotFound(f"no secret {name} in {org}/{env}")
            record = self._write_version(
                db,
                keys,
                env,
                name,
                None,
                None,
                None,
                None,
                caller.actor,
                "delete",
                utc_now(),
                tag_scope,
            )
            audit.append(
                db,
                keys,
                caller,
                "delete",
                env=env,
                names=[name],
                details={"version": record.version},
            )
        return record

    def rollback(
        self,
        org: str,
        env: str,
        name: str,
        to: int,
        caller: Caller,
        tag_scope: frozenset[str] = frozenset(),
        env_scope: frozenset[str] = frozenset(),
    ) -> SecretRecord:
        """Write the value of version `to` as a new version (history is kept).
        Its references must name what this writer can read now, as a store's."""
        keys = self.org(org)
        check_secret_name(name)
        (old,) = self.read_values(org, env, [name], [], {name: to}, tag_scope)
        self._check_references(org, env, {name: old.value}, env_scope, tag_scope)
        with keys.store.write() as db:
            self._check_steering(db, keys, [name])
            dek_version = keys.current_dek_version(db)
            record = self._write_version(
                db,
                keys,
                env,
                name,
                old.value,
                None,
                keys.dek(dek_version),
                dek_version,
                caller.actor,
                "rollback",
                utc_now(),
                tag_scope,
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


def _check_chain(
    key: tuple[str, str],
    known: dict[tuple[str, str], str],
    env: str,
    chain: list[tuple[str, str]],
    done: set[tuple[str, str]],
) -> None:
    """Refuse references from `key` that come back to a secret on the way
    (a cycle) or go deeper than MAX_DEPTH; `known` holds every value reached,
    `done` the secrets already shown to end (each is walked once)."""
    from crate_cli.vault.references import MAX_DEPTH, references, show

    if key in done:
        return
    if key in chain:
        loop = " -> ".join(show(k, env) for k in [*chain[chain.index(key) :], key])
        raise InvalidInput(
            f"secret references would form a cycle: {loop}; nothing was stored",
            "change one of these values to break the cycle",
        )
    if len(chain) > MAX_DEPTH:
        raise InvalidInput(
            f"secret references from {show(chain[0], env)} would nest more than {MAX_DEPTH} "
            "deep; nothing was stored"
        )
    for ref in references(known.get(key, ""), key[0]):
        _check_chain(ref, known, env, [*chain, key], done)
    done.add(key)


def _target_text(target: dict[str, Any]) -> str:
    parts: Iterable[Any] = (target.get("org"), target.get("env"), target.get("name"))
    return "/".join(str(p) for p in parts if p is not None) or "no target"
