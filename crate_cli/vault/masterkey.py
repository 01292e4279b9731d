"""Master key versions and their slots (DESIGN §2).

The registry lists every master key version and, for each, the slots that
seal it (LUKS-style: each slot wraps the same 32-byte key). It holds no key
in clear. Where it is kept is storage's business (a `RegistryStore`: the
home's `keys/master.json` for SQLite, vault/storage/registry_file.py, a row
of the store for PostgreSQL); every change is a load, change and save under
the registry's lock. Unlocking tries a version's slots in the order of the
`keys.unlock_order` setting and reports every failure if all fail.

An unlocked master key stays in this process's memory only.
"""

import base64
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crate_cli.clock import utc_now
from crate_cli.config import CrateHome
from crate_cli.errors import (
    Conflict,
    CrateError,
    IntegrityError,
    InvalidInput,
    KeystoreError,
    NotFound,
    UnsupportedVersion,
)
from crate_cli.records import Record
from crate_cli.vault import crypto
from crate_cli.vault.slots import provider
from crate_cli.vault.slots.base import OTHER_SLOT, SecretPrompt, SlotContext
from crate_cli.vault.storage.interface import RegistryStore

REGISTRY_FORMAT = 1


class SlotRecord(Record):
    id: str
    type: str
    created_at: str
    params: dict[str, Any]


class MasterVersion(Record):
    version: int
    created_at: str
    slots: tuple[SlotRecord, ...]
    # AES-GCM of nothing under the key: proves a key offered from outside (the
    # env slot) is this version's before anything is decrypted with it.
    check: str = ""


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
                check=str(v.get("check", "")),
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
                "check": v.check,
            }
            for v in versions
        ],
    }
    return json.dumps(doc, indent=2).encode("utf-8")


class MasterKeys:
    """The master key registry of one crate home (or of its store), and the
    keys unlocked so far.

    `registry` is where the registry is kept; None is the home's file. The
    slots' own files and the "last used" markers stay in the home."""

    def __init__(
        self,
        home: CrateHome,
        environ: dict[str, str] | None = None,
        prompt: SecretPrompt | None = None,
        unlock_order: list[str] | None = None,
        registry: RegistryStore | None = None,
    ) -> None:
        self.home = home
        self.environ = dict(os.environ) if environ is None else environ
        self.prompt = prompt
        self.unlock_order = unlock_order or []
        if registry is None:
            from crate_cli.vault.storage.registry_file import FileRegistry

            registry = FileRegistry(home)
        self.registry: RegistryStore = registry
        self._versions: list[MasterVersion] | None = None
        self._unlocked: dict[int, bytes] = {}

    @property
    def location(self) -> str:
        """What messages call the registry: its file, or the store's address."""
        return self.registry.location

    def _load(self) -> list[MasterVersion]:
        """The registry as stored now (inside `registry.locked()` for a change)."""
        raw = self.registry.load()
        self._versions = [] if raw is None else _parse_registry(raw, self.location)
        return self._versions

    def _save(self, versions: list[MasterVersion]) -> None:
        self.registry.save(_dump_registry(versions))
        self._versions = versions

    def _slot_context(self, options: dict[str, Any] | None = None) -> SlotContext:
        return SlotContext(
            home=self.home, environ=self.environ, prompt=self.prompt, options=options or {}
        )

    def versions(self) -> list[MasterVersion]:
        if self._versions is None:
            return self._load()
        return self._versions

    def exists(self) -> bool:
        return bool(self.versions())

    def current(self) -> MasterVersion:
        """The newest version, from the registry as it is now: a long-lived
        process (the agent, a server) must not wrap new keys under a version
        that another process rotated away (and maybe pruned)."""
        self._versions = None
        versions = self.versions()
        if not versions:
            raise KeystoreError("crate has no master key yet", "run: crate init")
        return max(versions, key=lambda v: v.version)

    def create_first(
        self,
        keystore: str,
        options: dict[str, Any] | None = None,
        *,
        list_orgs: Callable[[], list[str]],
    ) -> tuple[bool, MasterVersion]:
        """Create master key v1 sealed in one slot of type `keystore`.

        Serialised by a lock so two first uses at once create one key; returns
        (whether this call created it, the current version). `list_orgs` tells
        the orgs that exist: with any, the registry was lost, not never made.
        """
        with self.registry.locked():
            if self._load():
                return False, self.current()
            vaults = list_orgs()
            if vaults:
                # A new key could never open them: the registry was lost, not never made.
                raise KeystoreError(
                    f"the key registry {self.location} is missing or empty, "
                    f"but {len(vaults)} org vault(s) exist in {self.home.orgs_dir}",
                    "restore the keys folder from a backup; crate will not make a new master key",
                )
            key = crypto.new_key()
            slot = self._seal_slot(key, 1, keystore, options)
            version = MasterVersion(
                version=1, created_at=utc_now(), slots=(slot,), check=_key_check(key, 1)
            )
            self._save([version])
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

    def _version(self, version: int) -> MasterVersion:
        for _attempt in range(2):
            for v in self.versions():
                if v.version == version:
                    return v
            # Another process may have rotated the key since the registry was read.
            self._versions = None
        raise KeystoreError(
            f"master key v{version} is not in the key registry {self.location}",
            "it was pruned or the registry was replaced; restore keys/ from a backup",
        )

    def share_with(self, target: RegistryStore) -> bool:
        """Make the registry at `target` hold this registry's master key
        versions, so that orgs copied there open (`crate org export-store`):
        copied when it has none, accepted when it holds each of them with the
        same key check. Returns whether it was copied; Conflict when `target`
        holds other master keys."""
        mine = self._load()
        if not mine:
            raise KeystoreError(f"there is no master key in {self.location}", "run: crate init")
        with target.locked():
            raw = target.load()
            if raw is None:
                target.save(_dump_registry(mine))
                return True
            held = {(v.version, v.check) for v in _parse_registry(raw, target.location)}
            for v in mine:
                if (v.version, v.check) not in held:
                    raise Conflict(
                        f"{target.location} holds other master keys than {self.location} "
                        f"(master key v{v.version} differs)",
                        "copy into a store that has no master key yet",
                    )
        return False

    def forget(self) -> None:
        """Drop every unlocked key (the agent, when it locks). Python cannot
        overwrite immutable bytes; dropping the last reference is what it can do."""
        self._unlocked.clear()

    def unlock(self, version: int) -> bytes:
        """Return master key `version`, unsealing it through its slots once.

        `CRATE_MASTER_KEY` (the `env` slot: nothing at rest) counts as one
        more slot of every version, tried in its place in the unlock order.
        """
        key = self._unlocked.get(version)
        if key is None:
            record = self._version(version)
            slots = list(record.slots)
            if self.environ.get(ENV_SLOT_VARIABLE):
                slots.append(SlotRecord(id="env", type="env", created_at="", params={}))
            key = self._unseal_with(record, self._ordered(tuple(slots)))
            self._unlocked[version] = key
        return key

    def _unseal_with(self, record: MasterVersion, slots: list[SlotRecord]) -> bytes:
        failures: list[tuple[SlotRecord, KeystoreError]] = []
        for slot in slots:
            try:
                if slot.type == "env":
                    return self._key_from_environment(record)
                key = provider(slot.type).unseal(
                    self._slot_context(), slot.params, record.version, slot.id
                )
                _verify_key(key, record, f"{slot.type} slot {slot.id}")
                self._mark_used(slot.id)
                return key
            except KeystoreError as e:
                failures.append((slot, e))
        if not failures:
            raise KeystoreError(f"master key v{record.version} has no key slot")
        if len(failures) == 1:
            raise failures[0][1]
        detail = "; ".join(f"{s.type} slot {s.id}: {e.message}" for s, e in failures)
        hints = list(dict.fromkeys(e.hint for _, e in failures if e.hint and e.hint != OTHER_SLOT))
        raise KeystoreError(
            f"no key slot could unlock master key v{record.version}: {detail}",
            "; ".join(hints) or None,
        )

    def _key_from_environment(self, record: MasterVersion) -> bytes:
        raw = self.environ.get(ENV_SLOT_VARIABLE, "")
        prefix, _, encoded = raw.partition(":")
        if prefix != f"v{record.version}":
            raise KeystoreError(
                f"{ENV_SLOT_VARIABLE} does not hold master key v{record.version}",
                "make it with: crate keys export-env",
            )
        try:
            key = base64.b64decode(encoded.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            key = b""
        _verify_key(key, record, ENV_SLOT_VARIABLE, "make it with: crate keys export-env")
        return key

    # -- when each slot last unlocked -------------------------------------------------

    def _used_marker(self, slot_id: str) -> Path:
        return self.home.keys_dir / "used" / slot_id

    def _mark_used(self, slot_id: str) -> None:
        """Record that `slot_id` unlocked now: the mtime of an empty marker file
        (one syscall on the hot path; never fails the command)."""
        marker = self._used_marker(slot_id)
        try:
            os.utime(marker)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                marker.parent.mkdir(mode=0o700, exist_ok=True)
                marker.touch(mode=0o600)
        except OSError:
            pass

    def last_used(self, slot_id: str) -> str | None:
        """When `slot_id` last unlocked a master key (UTC, ISO 8601), if ever."""
        from crate_cli.clock import from_timestamp

        try:
            mtime = self._used_marker(slot_id).stat().st_mtime
        except OSError:
            return None
        return from_timestamp(mtime)

    def export_env(self) -> str:
        """The value of CRATE_MASTER_KEY for the current version (the key itself)."""
        record = self.current()
        key = self.unlock(record.version)
        return f"v{record.version}:{base64.b64encode(key).decode('ascii')}"

    # -- slot management --------------------------------------------------------------

    def slot_report(self) -> list[dict[str, Any]]:
        """Every slot of every version, oldest version first, as `crate keys`
        lists them: what protects it, what it depends on, when it last unlocked.
        Nothing here touches a TPM, token or keyring."""
        rows: list[dict[str, Any]] = []
        versions = sorted(self.versions(), key=lambda v: v.version)
        current = versions[-1].version if versions else None
        ctx = self._slot_context()
        for v in versions:
            for s in v.slots:
                try:
                    p = provider(s.type)
                    protection, details = p.describe(), p.details(ctx, s.params)
                except InvalidInput:
                    protection, details = f"{s.type} (unknown to this crate)", ""
                rows.append(
                    {
                        "id": s.id,
                        "type": s.type,
                        "master_version": v.version,
                        "current": v.version == current,
                        "created_at": s.created_at,
                        "last_used": self.last_used(s.id),
                        "protection": protection,
                        "details": details,
                        # Whether unlocking needs something of the user's
                        # (a PIN) or of the machine's state (PCRs), beyond
                        # the device itself.
                        "pin": bool(s.params.get("pin")),
                        "pcrs": list(s.params.get("pcrs") or []),
                    }
                )
        if self.environ.get(ENV_SLOT_VARIABLE):
            rows.append(
                {
                    "id": "env",
                    "type": "env",
                    "master_version": None,
                    "current": True,
                    "created_at": None,
                    "last_used": None,
                    "protection": "env (the master key itself, in CRATE_MASTER_KEY)",
                    "details": "nothing at rest",
                }
            )
        return rows

    def rotate(self) -> MasterVersion:
        """Create master key version N+1, sealed in a slot like each slot of
        version N (asking for what each needs); version N stays until pruned."""
        with self.registry.locked():
            record = self.current()  # the registry as it is now
            self.unlock(record.version)  # the old key must be usable to rewrap
            key = crypto.new_key()
            version = record.version + 1
            sealed: list[SlotRecord] = []
            try:
                for s in record.slots:
                    options = provider(s.type).reseal_options(s.params)
                    sealed.append(self._seal_slot(key, version, s.type, options))
            except BaseException:
                # The version is not registered: nothing may keep its slots.
                for slot in sealed:
                    with contextlib.suppress(Exception):
                        provider(slot.type).destroy(self._slot_context(), slot.params)
                raise
            slots = tuple(sealed)
            new = MasterVersion(
                version=version, created_at=utc_now(), slots=slots, check=_key_check(key, version)
            )
            self._save([*self.versions(), new])
            self._unlocked[version] = key
            return new

    def remove_version(self, version: int) -> MasterVersion:
        """Delete an old version and destroy its slots (the caller checked that
        nothing refers to it)."""
        with self.registry.locked():
            self._load()
            record = self._version(version)
            if record.version == self.current().version:
                raise Conflict(f"master key v{version} is the current one")
            self._save([v for v in self.versions() if v.version != version])
            self._unlocked.pop(version, None)
        for slot in record.slots:
            provider(slot.type).destroy(self._slot_context(), slot.params)
            self._used_marker(slot.id).unlink(missing_ok=True)
        return record

    def add_slot(self, keystore: str, options: dict[str, Any] | None = None) -> SlotRecord:
        """Seal the current master key in one more slot (unlocking it first)."""
        if keystore == "env":
            raise InvalidInput(
                "the env slot keeps nothing on disk: set CRATE_MASTER_KEY from "
                "`crate keys export-env` where it is needed"
            )
        with self.registry.locked():
            record = self.current()  # the registry as it is now
            key = self.unlock(record.version)
            slot = self._seal_slot(key, record.version, keystore, options)
            self._replace(record._replace(slots=(*record.slots, slot)))
            return slot

    def remove_slot(self, slot_id: str) -> SlotRecord:
        """Remove a slot, refusing when no other slot of its version still unlocks."""
        with self.registry.locked():
            for record in self._load():
                doomed = [s for s in record.slots if s.id == slot_id]
                if not doomed:
                    continue
                others = [s for s in record.slots if s.id != slot_id]
                if not others:
                    raise Conflict(
                        f"slot {slot_id} is the last slot of master key v{record.version}; "
                        "removing it would lose the key",
                        "add another slot first: crate keys slots add TYPE",
                    )
                try:
                    self._unseal_with(record, self._ordered(tuple(others)))
                except KeystoreError as e:
                    raise Conflict(
                        f"no other slot of master key v{record.version} unlocks it right now, "
                        f"so slot {slot_id} stays ({e.message})",
                        "make another slot work first (a passphrase: set CRATE_PASSPHRASE)",
                    ) from None
                self._replace(record._replace(slots=tuple(others)))
                provider(doomed[0].type).destroy(self._slot_context(), doomed[0].params)
                self._used_marker(slot_id).unlink(missing_ok=True)
                return doomed[0]
        raise NotFound(f"no key slot {slot_id!r}", "list them with: crate keys slots list")

    def _replace(self, record: MasterVersion) -> None:
        """Save the registry as loaded under `registry.locked()`, with `record`
        in place of its version."""
        self._save([record if v.version == record.version else v for v in self.versions()])


ENV_SLOT_VARIABLE = "CRATE_MASTER_KEY"


def _check_aad(version: int) -> bytes:
    return crypto.aad(crypto.MASTER_CHECK, version)


def _verify_key(key: bytes, record: MasterVersion, source: str, hint: str | None = None) -> None:
    """Prove `key` is master key `record.version` before anything is decrypted
    with it: a slot swapped in from elsewhere, or a wrong CRATE_MASTER_KEY,
    fails here with a clear message instead of as damaged vault data."""
    if not record.check:
        return
    try:
        if len(key) != crypto.KEY_BYTES:
            raise IntegrityError("size")
        crypto.decrypt(key, base64.b64decode(record.check), _check_aad(record.version))
    except (ValueError, IntegrityError):
        raise KeystoreError(
            f"{source} does not hold master key v{record.version}",
            hint or "it was replaced or copied from elsewhere; unlock with another slot",
        ) from None


def _key_check(key: bytes, version: int) -> str:
    return base64.b64encode(crypto.encrypt(key, b"", _check_aad(version))).decode("ascii")
