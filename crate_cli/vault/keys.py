"""An org's keys, unwrapped on first use, and who the audit log records.

`OrgKeys` holds one open org (its store) with the keys of the hierarchy
(DESIGN §2): the master key versions through MasterKeys, the org DEKs, the
org RSA key pair, and the audit key with its two subkeys (the row MAC key
that authenticates clear metadata, the audit chain key). It computes and
checks every row MAC; it records nothing itself: a failed unlock is handed
to `on_unlock_failure` (the audit log's pending entry, vault/audit.py).
"""

from collections.abc import Callable, Iterable
from typing import Any, Literal

from crate_cli.errors import IntegrityError, InvalidSealedValue, KeystoreError
from crate_cli.records import Record
from crate_cli.vault import crypto
from crate_cli.vault.masterkey import MasterKeys
from crate_cli.vault.storage.interface import OrgReader, OrgStore, OrgWriter, WrappedKeyRow

# What a caller may do: admin (everything), writer (read and change secrets),
# reader (read them); api/auth.py's GRANTS says which permissions each has.
Role = Literal["admin", "writer", "reader"]
ROLES: tuple[Role, ...] = ("admin", "writer", "reader")


def local_actor() -> str:
    """`user@host` for local calls (as getpass.getuser, without its imports)."""
    import os

    user = os.environ.get("LOGNAME") or os.environ.get("USER")
    if not user:
        import pwd

        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = str(os.getuid())
    return f"{user}@{os.uname().nodename}"


class Caller(Record):
    """Who an entry is recorded for: the actor, through which client, and the
    id of the request (empty outside the API)."""

    actor: str
    client: str = "cli"
    request_id: str = ""


# What a failed unlock of master key version N is reported to (once per process).
UnlockFailure = Callable[["OrgKeys", KeystoreError, int], None]


class OrgKeys:
    """An org's vault with its keys unwrapped on first use."""

    def __init__(
        self,
        org: str,
        store: OrgStore,
        master: MasterKeys,
        caller: Caller | None = None,
        *,
        on_unlock_failure: UnlockFailure,
    ) -> None:
        self.org = org
        self.store = store
        self.master = master
        # Who a failed unlock is recorded for: the process, not a request.
        self.caller = caller or Caller("crate")
        self._on_unlock_failure = on_unlock_failure
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
                self._on_unlock_failure(self, e, version)
            raise

    def dek(self, version: int) -> bytes:
        key = self._deks.get(version)
        if key is None:
            row = self.store.direct.data_key(version)
            if row is None:
                # Referenced by a secret but gone: the vault was tampered with.
                raise IntegrityError()
            master_key = self.unlock(row.master_version)
            key = crypto.unwrap_key(
                master_key, row.wrapped, crypto.aad(crypto.ORG_DEK, self.org, version)
            )
            self._deks[version] = key
        return key

    def dek_cipher(self, version: int) -> Any:
        """An AES-GCM object for org DEK `version`, made once per process."""
        cipher = self._ciphers.get(version)
        if cipher is None:
            cipher = self._ciphers[version] = crypto.cipher(self.dek(version))
        return cipher

    def remember_dek(self, version: int, key: bytes) -> None:
        """An org DEK this process made (a rotation), once its transaction committed."""
        self._deks[version] = key

    def forget_deks(self, versions: Iterable[int]) -> None:
        """Drop org DEKs that are gone (pruned)."""
        for version in versions:
            self._deks.pop(version, None)
            self._ciphers.pop(version, None)

    def current_dek_version(self, rows: OrgReader) -> int:
        """The newest org DEK's version: the one new values are written under."""
        row = rows.newest_data_key()
        if row is None:
            raise IntegrityError(f"organization {self.org!r} has no data key")
        return row.version

    def _audit_subkeys(self) -> tuple[bytes, bytes]:
        if self._audit_keys is None:
            row = self.store.direct.newest_audit_key()
            if row is None:
                raise IntegrityError()
            audit_key, _ = self.unwrap_audit_key(
                self.unlock(row.master_version), row.wrapped, row.version
            )
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

    def _audit_key(self, rows: OrgReader) -> tuple[WrappedKeyRow, bytes, bytes, bool]:
        """The newest audit key's row, the master key that wraps it, the key,
        and whether it says the log has begun."""
        row = rows.newest_audit_key()
        if row is None:
            raise IntegrityError()
        master_key = self.unlock(row.master_version)
        key, begun = self.unwrap_audit_key(master_key, row.wrapped, row.version)
        return row, master_key, key, begun

    def audit_log_begun(self, rows: OrgReader) -> bool:
        """Whether the audit key says the org's log has begun."""
        return self._audit_key(rows)[3]

    def mark_audit_log_begun(self, rows: OrgWriter) -> None:
        """Make the audit key say the org's log has begun (from then on an
        empty log is a reset one), inside the caller's write transaction."""
        row, master_key, key, begun = self._audit_key(rows)
        if not begun:
            chained = crypto.aad(crypto.ORG_AUDIT_KEY_CHAINED, self.org, row.version)
            rows.rewrap_audit_key(
                row.version, row.master_version, crypto.wrap_key(master_key, key, chained)
            )

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
        row = self.store.direct.active_rsa_key()
        if row is None:
            raise IntegrityError(f"organization {self.org!r} has no public key")
        return row.kid, row.public_der

    def private_key(self, kid: str) -> Any:
        key = self._private.get(kid)
        if key is None:
            row = self.store.direct.rsa_key(kid)
            if row is None:
                raise InvalidSealedValue(
                    f"the value was sealed to key {kid!r}, which organization {self.org!r} "
                    "does not have",
                    "fetch the org public key again and re-seal",
                )
            from cryptography.hazmat.primitives.serialization import load_der_private_key

            der = crypto.decrypt(
                self.unlock(row.master_version),
                row.wrapped_private,
                crypto.aad(crypto.ORG_RSA_KEY, self.org, kid),
            )
            # Generated and validated by crate itself: skip the costly re-validation.
            key = load_der_private_key(der, None, unsafe_skip_rsa_key_validation=True)
            self._private[kid] = key
        return key
