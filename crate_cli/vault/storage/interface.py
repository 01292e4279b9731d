"""What the vault's operations may ask of storage (DESIGN §3, §8).

The operations above this seam do the crypto and the policy; storage keeps
rows. Every method raises only CrateErrors (NotFound, Conflict,
VaultCorrupted, UnsupportedVersion, or CrateError for a full disk), and
every row is a named record holding exactly what was stored: integers for
flags (0 or 1, never bool: `str(True) != "1"` in a MAC), JSON and times as
the text that was written, bytes for blobs, None for NULL. The MACs, AADs
and digests computed over them are then the same whatever the backend.

Transactions: `read()` is one consistent snapshot of committed rows;
`write()` is one transaction of one org at a time, across threads and
processes, whose reads see everything committed before it began; `direct`
reads run inside the open transaction when there is one, else on their own.
Orders are part of each method's contract: names in the byte order of their
UTF-8 (SQLite's BINARY, PostgreSQL's COLLATE "C"), sequence numbers and
versions ascending unless a method says otherwise.

The SQLite implementation (storage/sqlite/) is the only one today; the
SQLite features it relies on are listed in docs/ARCHITECTURE.md.

Rows are `Record`s (crate_cli/records.py): typed like dataclasses, built
and read like tuples, and cheap to define on `crate run`'s path.
"""

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Protocol

from crate_cli.records import Record

# -- keys ---------------------------------------------------------------------------------


class WrappedKeyRow(Record):
    """An org data key or audit key, wrapped by master key `master_version`."""

    version: int
    master_version: int
    wrapped: bytes
    created_at: str


class RsaKeyRow(Record):
    """An org RSA key pair: the public half in clear, the private one wrapped."""

    kid: str
    master_version: int
    public_der: bytes
    wrapped_private: bytes
    created_at: str
    active: int


class MasterUse(Record):
    """How many keys of each kind each master key version wraps."""

    data_keys: dict[int, int]
    rsa_keys: dict[int, int]
    audit_keys: dict[int, int]


class KeysBelow(Record):
    """The keys wrapped by a master key version older than a given one."""

    data_keys: list[WrappedKeyRow]
    audit_keys: list[WrappedKeyRow]
    rsa_keys: list[RsaKeyRow]


class DataKeyUsage(Record):
    version: int
    master_version: int
    created_at: str
    wrapped_keys: int  # how many secret DEKs it wraps


# -- secrets ------------------------------------------------------------------------------


class HeadFields(Record):
    """What a write puts in a secret's head: its six MAC'd fields, then the MAC."""

    name: str
    version: int
    deleted: int  # 0 or 1
    tags: str  # JSON text
    updated_at: str
    actor: str
    mac: bytes


class HeadRow(Record):
    """A secret's head as read: the six MAC'd fields and the MAC (as
    HeadFields), storage's id of the secret, and the newest version its
    history holds (None: none)."""

    name: str
    version: int
    deleted: int
    tags: str
    updated_at: str
    actor: str
    mac: bytes
    secret_id: int
    newest: int | None


class ValueRow(Record):
    """A head (its MAC'd fields, its MAC, the newest version of its history)
    and the version a read chose. The last six fields are the chosen version
    row's MAC'd fields after its version, and its MAC: only asked for when a
    scope must hold for the version itself (`version_rows`), else None."""

    name: str
    head_version: int
    deleted: int
    tags: str
    updated_at: str
    actor: str
    head_mac: bytes
    version: int | None  # None: no such version row
    dek_version: int | None
    wrapped_dek: bytes | None
    ciphertext: bytes | None
    newest: int | None
    action: str | None
    version_dek: int | None
    version_tags: str | None
    created_at: str | None
    version_actor: str | None
    version_mac: bytes | None


class VersionRow(Record):
    """One version of a secret for its history: the six MAC'd fields, the
    MAC, and whether it holds no value (a deletion; not MAC'd)."""

    version: int
    action: str
    dek_version: int | None
    tags: str
    created_at: str
    actor: str
    mac: bytes
    deleted: int


class NewVersion(Record):
    version: int
    action: str
    dek_version: int | None  # None for a deletion
    wrapped_dek: bytes | None
    ciphertext: bytes | None
    tags: str
    created_at: str
    actor: str
    mac: bytes


class RotationRow(Record):
    """A version that holds a wrapped DEK, with its secret's place: what a
    rotation rewraps. `version` to `mac` are the version row's MAC'd fields
    and its MAC."""

    env: str
    name: str
    version: int
    action: str
    dek_version: int
    tags: str
    created_at: str
    actor: str
    mac: bytes
    wrapped_dek: bytes
    secret_id: int


class VersionMac(Record):
    secret_id: int
    version: int
    mac: bytes


class VersionRewrap(Record):
    """A version moved to another org DEK: its new wrapped DEK and MAC."""

    dek_version: int
    wrapped_dek: bytes
    mac: bytes
    secret_id: int
    version: int


class SnapshotRow(Record):
    dek_version: int
    wrapped_dek: bytes
    ciphertext: bytes


# -- org policy and tokens ----------------------------------------------------------------


class AllowedNameRow(Record):
    name: str
    allowed_at: str
    actor: str
    mac: bytes


class EndedAllowanceRow(Record):
    name: str
    allowed_at: str
    ended_at: str
    actor: str
    mac: bytes


class TokenRow(Record):
    """An API token's row: seven MAC'd fields (then its hash, MAC'd as hex), the MAC."""

    name: str
    role: str
    envs: str  # JSON text
    tags: str  # JSON text
    created_at: str
    expires_at: str  # "" for never
    actor: str
    hash: bytes
    mac: bytes


class RevocationRow(Record):
    hash: bytes
    name: str
    revoked_at: str
    actor: str
    mac: bytes


# -- audit --------------------------------------------------------------------------------


class PendingFields(Record):
    """An audit entry recorded without the audit key (a failed unlock): the
    entry's fields but its sequence number and MAC."""

    time: str
    actor: str
    action: str
    env: str
    names: str  # JSON text
    outcome: str
    request_id: str
    client: str
    details: str  # JSON text


class PendingRow(Record):
    id: int
    fields: PendingFields


class AuditEntryRow(Record):
    """An audit entry: its ten fields in MAC order, then the MAC."""

    seq: int
    time: str
    actor: str
    action: str
    env: str
    names: str
    outcome: str
    request_id: str
    client: str
    details: str
    mac: bytes


class AuditPageRow(Record):
    entry: AuditEntryRow
    prev_mac: bytes | None  # the MAC of entry seq - 1 (None: it is missing)


class ChainRow(Record):
    """One step of a walk of the whole chain: the ten fields' text forms
    (str() of each) joined by NUL, as the MAC covers them."""

    seq: int
    action: str
    outcome: str
    text: str
    mac: bytes


class AnchorRow(Record):
    seq: int
    mac: bytes
    enabled: int  # as stored: the tag covers the integer
    tag: bytes


class AuditFilter(Record):
    since: str | None = None  # UTC time, as utc_now() writes it
    actor: str | None = None
    action: str | None = None
    env: str | None = None
    name: str | None = None  # entries naming this secret


# -- copying an org between stores ------------------------------------------------------

# An org's rows as `crate org export-store` copies them from one store to
# another, every field as stored (so every MAC still verifies): table -> its
# columns, in order. Rows carry no storage ids (a secret's versions name it by
# environment and name), and environment snapshots stay behind (the next read
# of the environment seals a new one).
EXPORT_TABLES: dict[str, tuple[str, ...]] = {
    "org_deks": ("version", "master_version", "wrapped", "created_at"),
    "org_rsa_keys": (
        "kid",
        "master_version",
        "public_der",
        "wrapped_private",
        "created_at",
        "active",
    ),
    "org_audit_keys": ("version", "master_version", "wrapped", "created_at"),
    "environments": ("name", "created_at"),
    "secrets": ("env", "name", "version", "deleted", "tags", "updated_at", "actor", "mac"),
    "secret_versions": (
        "env",
        "name",
        "version",
        "action",
        "org_dek_version",
        "wrapped_dek",
        "ciphertext",
        "tags",
        "created_at",
        "actor",
        "mac",
    ),
    "tokens": (
        "name",
        "hash",
        "role",
        "envs",
        "tags",
        "created_at",
        "expires_at",
        "actor",
        "mac",
    ),
    "token_revocations": ("hash", "name", "revoked_at", "actor", "mac"),
    "allowed_names": ("name", "allowed_at", "actor", "mac"),
    "allowed_names_ended": ("name", "allowed_at", "ended_at", "actor", "mac"),
    "audit_log": (
        "seq",
        "time",
        "actor",
        "action",
        "env",
        "names",
        "outcome",
        "request_id",
        "client",
        "details",
        "mac",
    ),
    "audit_pending": (
        "time",
        "actor",
        "action",
        "env",
        "names",
        "outcome",
        "request_id",
        "client",
        "details",
    ),
    "audit_anchor": ("seq", "mac", "enabled", "tag"),
}


# -- the protocols --------------------------------------------------------------------------


class OrgReader(Protocol):
    """Reads of one org's rows."""

    # keys
    def data_key(self, version: int) -> WrappedKeyRow | None: ...
    def newest_data_key(self) -> WrappedKeyRow | None: ...
    def newest_audit_key(self) -> WrappedKeyRow | None: ...
    def active_rsa_key(self) -> RsaKeyRow | None:
        """The active RSA key created last."""
        ...

    def rsa_key(self, kid: str) -> RsaKeyRow | None: ...
    def master_use(self) -> MasterUse: ...
    def keys_below_master(self, master_version: int) -> KeysBelow: ...
    def data_key_usage(self) -> list[DataKeyUsage]: ...
    def unused_data_keys(self, below: int) -> list[int]:
        """Versions under `below` that wrap no secret DEK."""
        ...

    # environments and org policy
    def environment_names(self) -> list[str]: ...
    def has_environment(self, env: str) -> bool: ...
    def count_secrets(self, env: str) -> int:
        """How many secrets (heads, deleted ones too) `env` holds."""
        ...

    def allowed_names(self) -> list[AllowedNameRow]: ...
    def ended_allowances(self) -> list[EndedAllowanceRow]: ...

    # secrets
    def head(self, env: str, name: str) -> HeadRow | None: ...
    def heads(self, env: str) -> list[HeadRow]: ...
    def values(
        self,
        env: str,
        names: Sequence[str],
        versions: Mapping[str, int],
        version_rows: bool = False,
    ) -> list[ValueRow]:
        """With no `names`, every head of `env` at its own version, in name
        order; else each distinct name in the order given, at
        `versions.get(name)` or its head version (names without a head are
        left out). A version that does not exist gives a row whose version
        fields are None."""
        ...

    def versions(self, secret_id: int) -> list[VersionRow]: ...
    def head_versions(self) -> dict[tuple[str, str], int]:
        """(env, name) -> head version, for every secret of the org."""
        ...

    def rotation_rows(self) -> list[RotationRow]: ...
    def rotation_row(self, secret_id: int, version: int) -> RotationRow | None: ...
    def wrapped_version_macs(self) -> list[VersionMac]:
        """The MAC of every version that holds a wrapped DEK."""
        ...

    # snapshots
    def head_macs(self, env: str) -> bytes:
        """The MACs of `env`'s heads concatenated in name order (b"" for none)."""
        ...

    def snapshot(self, env: str) -> SnapshotRow | None: ...

    # audit
    def anchor(self) -> AnchorRow | None: ...
    def pending_entries(self) -> list[PendingRow]: ...
    def newest_entry_time(self) -> str | None: ...
    def audit_page(
        self, filters: AuditFilter, limit: int, before: int | None, after: int | None
    ) -> list[AuditPageRow]:
        """Up to `limit` entries matching `filters`: with `after`, the oldest
        above it in ascending order; else the newest below `before` (or all),
        in descending order."""
        ...

    def audit_chain(self) -> Iterator[ChainRow]:
        """Every entry in sequence order, read as the transaction goes."""
        ...

    # tokens
    def has_token(self, name: str) -> bool: ...
    def tokens(self) -> list[TokenRow]: ...
    def token_by_hash(self, digest: bytes) -> TokenRow | None: ...
    def token_hash(self, name: str) -> bytes | None: ...
    def is_revoked(self, digest: bytes) -> bool: ...
    def revocations(self) -> list[RevocationRow]: ...

    # copying
    def export_rows(self, table: str) -> Iterator[tuple[object, ...]]:
        """Every row of `table` (a key of EXPORT_TABLES) in its columns' order."""
        ...


class OrgWriter(OrgReader, Protocol):
    """The changes of one write transaction. Where SQLite has a trigger or a
    cascade do part of the work (dropping environment snapshots, deleting an
    environment's secrets), the method says so: another backend must do the
    same in the same transaction."""

    def init_org(self, org: str, created_at: str) -> None: ...
    def insert_data_key(self, row: WrappedKeyRow) -> None:
        """A new org data key; every environment snapshot is dropped."""
        ...

    def insert_audit_key(self, row: WrappedKeyRow) -> None: ...
    def insert_rsa_key(self, row: RsaKeyRow) -> None: ...
    def rewrap_data_key(self, version: int, master_version: int, wrapped: bytes) -> None: ...
    def rewrap_audit_key(self, version: int, master_version: int, wrapped: bytes) -> None: ...
    def rewrap_rsa_key(self, kid: str, master_version: int, wrapped_private: bytes) -> None: ...
    def delete_data_keys(self, versions: Sequence[int]) -> None: ...
    def add_environments(self, names: Sequence[str], created_at: str) -> None: ...
    def delete_environment(self, env: str) -> None:
        """An environment with its secrets, their versions and its snapshot."""
        ...

    def allow_name(self, row: AllowedNameRow) -> None:
        """Replaces a row of the same name."""
        ...

    def end_allowance(self, row: EndedAllowanceRow) -> None:
        """Removes the allowance of `row.name` and records its end (for good)."""
        ...

    def insert_head(self, env: str, head: HeadFields) -> int:
        """A new secret; returns its id. Drops `env`'s snapshot."""
        ...

    def update_head(self, secret_id: int, head: HeadFields) -> None:
        """Drops the snapshot of the secret's environment."""
        ...

    def insert_version(self, secret_id: int, row: NewVersion) -> None: ...
    def rewrap_versions(self, rows: Sequence[VersionRewrap]) -> None:
        """Drops the snapshots of the environments concerned."""
        ...

    def put_snapshot(self, env: str, row: SnapshotRow) -> None:
        """Replace `env`'s snapshot, only if `row.dek_version` is the newest
        org data key and `env` exists (else nothing is written)."""
        ...

    def insert_audit_entry(self, row: AuditEntryRow) -> None:
        """Raises AuditSeqTaken rather than overwrite an entry."""
        ...

    def clear_pending(self) -> None: ...
    def add_pending(self, fields: PendingFields) -> None: ...
    def write_anchor(self, row: AnchorRow) -> None: ...
    def insert_token(self, row: TokenRow) -> None: ...
    def revoke_token(self, row: RevocationRow) -> None:
        """Deletes the token named `row.name` and records its hash as revoked
        (for good; an existing record of that hash is kept)."""
        ...

    def import_rows(self, table: str, rows: Iterable[tuple[object, ...]]) -> None:
        """Add rows given as `export_rows` gives them, into an org that has
        none of them yet (its anchor row is replaced)."""
        ...


class OrgStore(Protocol):
    """One open org, used by one thread at a time."""

    org: str
    # What messages call it: the vault file, or where the org lives.
    location: str

    @property
    def direct(self) -> OrgReader:
        """Reads inside the open transaction if there is one, else each on its own."""
        ...

    def read(self) -> AbstractContextManager[OrgReader]: ...
    def write(self) -> AbstractContextManager[OrgWriter]: ...
    def after_transaction(self, action: Callable[[], None]) -> None:
        """Run `action` once the open transaction has ended (committed or
        rolled back), or now if none is open; a CrateError from it is dropped."""
        ...

    def prefetch(self) -> None:
        """Warm caches ahead of a request (may do nothing)."""
        ...

    def pending_removal_hint(self, entry_id: int) -> str:
        """How an operator removes a pending audit entry crate did not write."""
        ...

    def close(self) -> None: ...


class RegistryStore(Protocol):
    """Where the master-key registry (vault/masterkey.py) is kept: the home's
    `keys/master.json` for SQLite, a row of the store for PostgreSQL, so that
    every replica of a team server unlocks the same master key versions.
    Bytes in, bytes out: the registry's format is masterkey.py's business."""

    # What messages call it (a path, or the store's redacted address).
    location: str

    def load(self) -> bytes | None:
        """The registry as stored now (None: there is none yet)."""
        ...

    def locked(self) -> AbstractContextManager[None]:
        """Hold the registry's lock, shared by every process and replica, for
        a read-change-save; `load` and `save` inside it see and write under it."""
        ...

    def save(self, data: bytes) -> None:
        """Replace the registry; only inside `locked()`. Durable once the
        block of `locked()` has ended without an error."""
        ...


class Storage(Protocol):
    """Where a home's orgs live."""

    def master_registry(self) -> RegistryStore:
        """Where this storage's master-key registry is kept."""
        ...

    def exclusive(self, name: str) -> AbstractContextManager[None]:
        """Hold the lock `name` (a word), shared by every process and replica
        using this storage, for a long task that must run one at a time
        (a master key rotation). Not for the orgs' own writes."""
        ...

    def list_orgs(self) -> list[str]: ...
    def org_exists(self, org: str) -> bool: ...
    def prepare(self) -> None:
        """Make sure where orgs are kept exists and is private (NotPrivate if
        it is not); create_org calls it before it unlocks a key."""
        ...

    def org_marker(self, org: str) -> Hashable:
        """A value that changes whenever the org's data may have changed, had
        without opening it (`crate run --watch` polls it)."""
        ...

    def open_org(self, org: str) -> OrgStore:
        """NotFound when there is no such org."""
        ...

    def create_org(self, org: str, initialise: Callable[[OrgStore], None]) -> None:
        """Create `org` and run `initialise` on it: the org exists afterwards
        with everything `initialise` wrote, or not at all. Conflict when it
        exists already."""
        ...

    def delete_org(self, org: str) -> None:
        """NotFound when there is no such org."""
        ...


# -- retries ----------------------------------------------------------------------------------


class CommitCount:
    """How many write transactions committed while it was current."""

    def __init__(self) -> None:
        self.commits = 0


_COMMITS: ContextVar[CommitCount | None] = ContextVar("crate_store_commits", default=None)


@contextmanager
def counting_commits() -> Iterator[CommitCount]:
    """Count the commits of what runs inside (one request): a request that
    failed with StoreRetry runs again only if none of its writes committed."""
    count = CommitCount()
    token = _COMMITS.set(count)
    try:
        yield count
    finally:
        _COMMITS.reset(token)


def note_commit() -> None:
    """Called by a store that may raise StoreRetry, after each commit."""
    count = _COMMITS.get()
    if count is not None:
        count.commits += 1
