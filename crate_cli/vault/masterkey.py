"""Master key versions and their slots (DESIGN §2).

The registry `keys/master.json` lists every master key version and, for each,
the slots that seal it (LUKS-style: each slot wraps the same 32-byte key).
It holds no key in clear. Unlocking tries a version's slots in the order of
the `keys.unlock_order` setting and reports every failure if all fail.

An unlocked master key stays in this process's memory only.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

from crate_cli.config import CrateHome, file_lock, write_private_file
from crate_cli.errors import CrateError, KeystoreError, UnsupportedVersion
from crate_cli.vault import crypto
from crate_cli.vault.slots import provider
from crate_cli.vault.slots.base import SecretPrompt, SlotContext

REGISTRY_FILE = "master.json"
REGISTRY_FORMAT = 1


def utc_now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SlotRecord(NamedTuple):
    id: str
    type: str
    created_at: str
    params: dict[str, Any]


class MasterVersion(NamedTuple):
    version: int
    created_at: str
    slots: tuple[SlotRecord, ...]


def _parse_registry(raw: bytes, path: object) -> list[MasterVersion]:
    try:
        doc = json.loads(raw)
        fmt = doc["format"]
        if not isinstance(fmt, int) or isinstance(fmt, bool):
            raise ValueError("format")
        if fmt != REGISTRY_FORMAT:
            raise UnsupportedVersion(
                f"key registry {path} has format {doc.get('format')!r}, "
                f"this crate reads format {REGISTRY_FORMAT}",
                "upgrade crate",
            )
        return [
            MasterVersion(
                version=int(v["version"]),
                created_at=str(v["created_at"]),
                slots=tuple(
                    SlotRecord(
                        id=str(s["id"]),
                        type=str(s["type"]),
                        created_at=str(s["created_at"]),
                        params=dict(s["params"]),
                    )
                    for s in v["slots"]
                ),
            )
            for v in doc["versions"]
        ]
    except CrateError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError):
        raise KeystoreError(
            f"key registry {path} is damaged",
            "restore it from a backup; without it the master key cannot be unlocked",
        ) from None


def _dump_registry(versions: list[MasterVersion]) -> bytes:
    doc = {
        "format": REGISTRY_FORMAT,
        "versions": [
            {
                "version": v.version,
                "created_at": v.created_at,
                "slots": [
                    {"id": s.id, "type": s.type, "created_at": s.created_at, "params": s.params}
                    for s in v.slots
                ],
            }
            for v in versions
        ],
    }
    return json.dumps(doc, indent=2).encode("utf-8")


class MasterKeys:
    """The master key registry of one crate home, and the keys unlocked so far."""

    def __init__(
        self,
        home: CrateHome,
        environ: dict[str, str] | None = None,
        prompt: SecretPrompt | None = None,
        unlock_order: list[str] | None = None,
    ) -> None:
        self.home = home
        self.environ = dict(os.environ) if environ is None else environ
        self.prompt = prompt
        self.unlock_order = unlock_order or []
        self._versions: list[MasterVersion] | None = None
        self._unlocked: dict[int, bytes] = {}

    @property
    def path(self) -> os.PathLike[str]:
        return self.home.keys_dir / REGISTRY_FILE

    def _slot_context(self, options: dict[str, Any] | None = None) -> SlotContext:
        return SlotContext(
            home=self.home, environ=self.environ, prompt=self.prompt, options=options or {}
        )

    def versions(self) -> list[MasterVersion]:
        if self._versions is None:
            path = self.home.keys_dir / REGISTRY_FILE
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                self._versions = []
            else:
                self._versions = _parse_registry(raw, path)
        return self._versions

    def exists(self) -> bool:
        return bool(self.versions())

    def current(self) -> MasterVersion:
        versions = self.versions()
        if not versions:
            raise KeystoreError("crate has no master key yet", "run: crate init")
        return max(versions, key=lambda v: v.version)

    def create_first(
        self, keystore: str, options: dict[str, Any] | None = None
    ) -> tuple[bool, MasterVersion]:
        """Create master key v1 sealed in one slot of type `keystore`.

        Serialised by a lock so two first uses at once create one key; returns
        (whether this call created it, the current version).
        """
        with file_lock(self.home.keys_dir / ".lock"):
            self._versions = None
            if self.exists():
                return False, self.current()
            vaults = list(self.home.orgs_dir.glob("*.vault")) if self.home.orgs_dir.exists() else []
            if vaults:
                # A new key could never open them: the registry was lost, not never made.
                raise KeystoreError(
                    f"the key registry {self.home.keys_dir / REGISTRY_FILE} is missing or empty, "
                    f"but {len(vaults)} org vault(s) exist in {self.home.orgs_dir}",
                    "restore the keys folder from a backup; crate will not make a new master key",
                )
            key = crypto.new_key()
            slot = self._seal_slot(key, 1, keystore, options)
            version = MasterVersion(version=1, created_at=utc_now(), slots=(slot,))
            write_private_file(self.home.keys_dir / REGISTRY_FILE, _dump_registry([version]))
            self._versions = [version]
            self._unlocked[1] = key
            return True, version

    def _seal_slot(
        self, key: bytes, version: int, keystore: str, options: dict[str, Any] | None
    ) -> SlotRecord:
        slot_id = os.urandom(4).hex()
        params = provider(keystore).seal(self._slot_context(options), key, version, slot_id)
        return SlotRecord(id=slot_id, type=keystore, created_at=utc_now(), params=params)

    def _ordered(self, slots: tuple[SlotRecord, ...]) -> list[SlotRecord]:
        order = {name: i for i, name in enumerate(self.unlock_order)}
        return sorted(slots, key=lambda s: order.get(s.type, len(order)))

    def unlock(self, version: int) -> bytes:
        """Return master key `version`, unsealing it through its slots once."""
        key = self._unlocked.get(version)
        if key is not None:
            return key
        matches = [v for v in self.versions() if v.version == version]
        if not matches:
            raise KeystoreError(
                f"master key v{version} is not in the key registry {self.path}",
                "it was pruned or the registry was replaced; restore keys/ from a backup",
            )
        failures: list[KeystoreError] = []
        for slot in self._ordered(matches[0].slots):
            try:
                key = provider(slot.type).unseal(
                    self._slot_context(), slot.params, version, slot.id
                )
            except KeystoreError as e:
                failures.append(e)
                continue
            self._unlocked[version] = key
            return key
        if len(failures) == 1:
            raise failures[0]
        detail = "; ".join(
            f"{s.type} slot {s.id}: {e.message}"
            for s, e in zip(self._ordered(matches[0].slots), failures, strict=False)
        )
        raise KeystoreError(f"no key slot could unlock master key v{version}: {detail}")
