"""The server role over the org vaults of one storage: a thin facade.

`VaultService` is what the API core calls. It opens each org once (its
store and its keys, vault/keys.py), keeps it for the process, warms it up
ahead of a request, and hands each operation to the module that does it:
secrets (sealed store, reads, retrieval, history, delete, rollback),
environments (environments and allowed names) and rotation (org data key
rotation, rewrap to a master key version, pruning). It speaks in names and
sealed tokens, never in plaintext coming from or going to the wire.
"""

from typing import Any

from crate_cli.errors import CrateError, NotFound
from crate_cli.vault import audit, environments, rotation, secrets
from crate_cli.vault.keys import Caller, OrgKeys
from crate_cli.vault.masterkey import MasterKeys
from crate_cli.vault.names import check_env, check_org
from crate_cli.vault.secrets import (
    DEFAULT_MAX_VALUE_BYTES,
    NO_SCOPE,
    Limits,
    Scope,
    SealedItem,
    SecretRecord,
    SecretValue,
    ValueColumns,
    VersionAction,
)
from crate_cli.vault.storage.interface import Storage

__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "SealedItem",
    "SecretRecord",
    "SecretValue",
    "ValueColumns",
    "VaultService",
]


class VaultService:
    """The server role over every org of one storage."""

    def __init__(
        self,
        storage: Storage,
        master: MasterKeys,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        rotate_org_every: float | None = None,
        caller: Caller | None = None,
    ) -> None:
        self.storage = storage
        self.master = master
        self.max_value_bytes = max_value_bytes
        self.rotate_org_every = rotate_org_every
        # Recorded in the audit log for what no request asked for (a rotation
        # from `crate keys`, a failed unlock): the process's user and client.
        self.caller = caller or Caller("crate")
        self._orgs: dict[str, OrgKeys] = {}

    @property
    def limits(self) -> Limits:
        return Limits(self.max_value_bytes, self.rotate_org_every)

    def close(self) -> None:
        for keys in self._orgs.values():
            keys.store.close()
        self._orgs.clear()

    def org(self, org: str) -> OrgKeys:
        keys = self._orgs.get(org)
        if keys is None:
            check_org(org)
            try:
                store = self.storage.open_org(org)
            except NotFound:
                raise NotFound(
                    f"organization {org!r} does not exist",
                    "list them with: crate org list, or create it with: crate org create " + org,
                ) from None
            keys = OrgKeys(
                org, store, self.master, self.caller, on_unlock_failure=audit.record_unlock_failure
            )
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
            keys.dek_cipher(keys.current_dek_version(keys.store.direct))
            keys.row_key()
            if prefetch:
                keys.store.prefetch()
        except CrateError:
            pass

    def list_orgs(self) -> list[str]:
        return self.storage.list_orgs()

    # -- environments and allowed names -------------------------------------------------

    def list_envs(self, org: str) -> list[str]:
        return environments.list_envs(self.org(org))

    def create_env(self, org: str, env: str, caller: Caller | None = None) -> None:
        check_env(env)
        environments.create_env(self.org(org), env, caller or self.caller)

    def delete_env(self, org: str, env: str, caller: Caller | None = None) -> int:
        """Delete an environment and all its secrets; returns how many secrets went."""
        return environments.delete_env(self.org(org), env, caller or self.caller)

    def allowed_names(self, org: str) -> list[dict[str, str]]:
        return environments.allowed_names(self.org(org))

    def allow_name(self, org: str, name: str, caller: Caller, allow: bool = True) -> bool:
        environments.steering_refusal(name)  # a bad name before the org is opened
        return environments.allow_name(self.org(org), name, caller, allow)

    # -- secrets --------------------------------------------------------------------------

    def public_key(self, org: str) -> dict[str, str]:
        return secrets.public_key(self.org(org))

    def store_sealed(
        self,
        org: str,
        env: str,
        items: list[tuple[SealedItem, str]] | None,
        batch: tuple[list[SealedItem], str] | None,
        caller: Caller,
        action: VersionAction = "set",
        tag_scope: frozenset[str] = NO_SCOPE,
        env_scope: frozenset[str] = NO_SCOPE,
    ) -> list[SecretRecord]:
        return secrets.store_sealed(
            self.org(org),
            env,
            items,
            batch,
            caller,
            action,
            Scope(env_scope, tag_scope),
            self.limits,
        )

    def list_secrets(
        self,
        org: str,
        env: str,
        tags: list[str],
        tag_scope: frozenset[str] = NO_SCOPE,
        caller: Caller | None = None,
    ) -> list[SecretRecord]:
        return secrets.list_secrets(self.org(org), env, tags, caller or self.caller, tag_scope)

    def read_values(
        self,
        org: str,
        env: str,
        names: list[str],
        tags: list[str],
        versions: dict[str, int] | None = None,
        tag_scope: frozenset[str] = NO_SCOPE,
    ) -> list[SecretValue]:
        return secrets.read_values(self.org(org), env, names, tags, versions, tag_scope)

    def read_columns(
        self,
        org: str,
        env: str,
        names: list[str],
        tags: list[str],
        versions: dict[str, int] | None = None,
        tag_scope: frozenset[str] = NO_SCOPE,
    ) -> ValueColumns:
        return secrets.read_columns(self.org(org), env, names, tags, versions, tag_scope)

    def retrieve(
        self,
        org: str,
        env: str,
        names: list[str],
        tags: list[str],
        versions: dict[str, int] | None,
        client_jwk: object,
        nonce: str,
        tag_scope: frozenset[str] = NO_SCOPE,
        caller: Caller | None = None,
        columns: bool = False,
        signed: bool = False,
        layout: str | None = None,
    ) -> dict[str, Any]:
        public = secrets.client_key(client_jwk)  # a bad request before the org is opened
        return secrets.retrieve(
            self.org(org),
            env,
            names,
            tags,
            versions,
            public,
            nonce,
            caller or self.caller,
            tag_scope,
            columns,
            signed,
            layout,
        )

    def history(
        self,
        org: str,
        env: str,
        name: str,
        tag_scope: frozenset[str] = NO_SCOPE,
        caller: Caller | None = None,
    ) -> list[dict[str, Any]]:
        return secrets.history(self.org(org), env, name, caller or self.caller, tag_scope)

    def delete(
        self,
        org: str,
        env: str,
        name: str,
        caller: Caller,
        tag_scope: frozenset[str] = NO_SCOPE,
    ) -> SecretRecord:
        return secrets.delete(self.org(org), env, name, caller, tag_scope)

    def rollback(
        self,
        org: str,
        env: str,
        name: str,
        to: int,
        caller: Caller,
        tag_scope: frozenset[str] = NO_SCOPE,
        env_scope: frozenset[str] = NO_SCOPE,
    ) -> SecretRecord:
        return secrets.rollback(self.org(org), env, name, to, caller, Scope(env_scope, tag_scope))

    # -- keys -----------------------------------------------------------------------------

    def record_key_change(self, action: audit.Action, details: dict[str, Any]) -> list[str]:
        """Record a change to the master key (a slot, a version) in every org's
        audit log, since each org's keys hang from it; returns the orgs whose
        log could not take the entry."""
        missed = []
        for org in self.storage.list_orgs():
            try:
                audit.record(self.org(org), self.caller, action, details=details)
            except CrateError:
                missed.append(org)
        return missed

    def rotate_org(
        self,
        org: str,
        progress: rotation.Progress | None = None,
        caller: Caller | None = None,
        scheduled: bool = False,
    ) -> tuple[int, int]:
        return rotation.rotate_org(self.org(org), caller or self.caller, progress, scheduled)

    def master_versions_used(self, org: str) -> dict[int, list[str]]:
        return rotation.master_versions_used(self.org(org))

    def rewrap_to_master(self, org: str, version: int, caller: Caller | None = None) -> int:
        return rotation.rewrap_to_master(self.org(org), version, caller or self.caller)

    def rotation_due(self, org: str) -> str | None:
        """When the org's data key is due for rotation (keys.rotate_org_every), or None."""
        if not self.rotate_org_every:
            return None
        return rotation.rotation_due(self.org(org), self.rotate_org_every)

    def org_dek_usage(self, org: str) -> list[dict[str, Any]]:
        return rotation.org_dek_usage(self.org(org))

    def prune_org_deks(self, org: str, caller: Caller | None = None) -> list[int]:
        return rotation.prune_org_deks(self.org(org), caller or self.caller)
