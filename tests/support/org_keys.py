"""An org opened as the vault's operations take it (crate_cli/vault/keys.py's
OrgKeys), over a real storage — SQLite files in a temp home, or a database of
a real PostgreSQL (a `Backend`) — and values sealed to its key as crate's
client seals them: for the unit tests of the operations (tests/unit/vault/),
which then read back the storage interface's rows, the same on both.

Making an org costs an RSA-3072 key, so a home (and a template database) is
made once per session and copied for each test.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from crate_cli.config import CrateHome
from crate_cli.vault import audit, jwe, secrets
from crate_cli.vault.keys import Caller, OrgKeys
from crate_cli.vault.masterkey import MasterKeys
from crate_cli.vault.orgs import create_org
from crate_cli.vault.secrets import NO_LIMITS, UNSCOPED, Limits, Scope, SealedItem, SecretRecord
from crate_cli.vault.storage.interface import (
    AuditEntryRow,
    AuditFilter,
    HeadRow,
    Storage,
    VersionRow,
)
from crate_cli.vault.storage.sqlite import SqliteStorage

ORG = "acme"
TESTER = Caller("tester@unit")


class Backend:
    """Where a test's orgs live: the home's SQLite files (no `url`), or the
    PostgreSQL database at `url`, which also keeps the master-key registry.
    Key slots that keep a file (the `file` slot) keep it in the home either way."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url

    @property
    def name(self) -> str:
        return "sqlite" if self.url is None else "postgres"

    def storage(self, root: Path) -> Storage:
        if self.url is None:
            return SqliteStorage(CrateHome(root, root))
        from crate_cli.vault.storage.postgres import PostgresStorage

        return PostgresStorage(self.url)

    def master(self, root: Path) -> MasterKeys:
        """The master keys of a new process on this backend."""
        registry = self.storage(root).master_registry()
        return MasterKeys(CrateHome(root, root), environ={}, registry=registry)


SQLITE = Backend()


def make_home(root: Path, backend: Backend = SQLITE) -> None:
    """A home at `root` with master key v1 in a file slot and org ORG."""
    storage = backend.storage(root)
    master = backend.master(root)
    master.create_first("file", list_orgs=storage.list_orgs)
    create_org(storage, master, ORG)


@contextlib.contextmanager
def open_org(
    root: Path, org: str = ORG, master: MasterKeys | None = None, backend: Backend = SQLITE
) -> Iterator[OrgKeys]:
    """The org's keys over its store, closed afterwards."""
    keys = OrgKeys(
        org,
        backend.storage(root).open_org(org),
        master or backend.master(root),
        TESTER,
        on_unlock_failure=audit.record_unlock_failure,
    )
    try:
        yield keys
    finally:
        keys.store.close()


def sealed(
    keys: OrgKeys, env: str, values: dict[str, str], tags: list[str] | None = None
) -> tuple[list[SealedItem], str]:
    """`values` as one batch sealed to the org key for (org, env), as the client seals it."""
    kid, _ = keys.active_public_key()
    public = keys.private_key(kid).public_key()
    header = {"kid": kid, "org": keys.org, "env": env, "tags": tags}
    token = jwe.encrypt(public, json.dumps(values).encode("utf-8"), header)
    return [SealedItem(name, tags) for name in values], token


def store(
    keys: OrgKeys,
    env: str,
    values: dict[str, str],
    tags: list[str] | None = None,
    scope: Scope = UNSCOPED,
    limits: Limits = NO_LIMITS,
) -> list[SecretRecord]:
    """A sealed store of `values` in one transaction (secrets.store_sealed)."""
    return secrets.store_sealed(
        keys, env, None, sealed(keys, env, values, tags), TESTER, "set", scope, limits
    )


def head(keys: OrgKeys, env: str, name: str) -> HeadRow:
    """The secret's head row, which must exist."""
    row = keys.store.direct.head(env, name)
    assert row is not None, f"no head for {env}/{name}"
    return row


def versions(keys: OrgKeys, env: str, name: str) -> list[VersionRow]:
    """The secret's version rows, oldest first."""
    return keys.store.direct.versions(head(keys, env, name).secret_id)


def newest_entry(keys: OrgKeys) -> AuditEntryRow:
    """The newest entry of the org's audit log."""
    with keys.store.read() as db:
        (page,) = db.audit_page(AuditFilter(), 1, None, None)
    return page.entry
