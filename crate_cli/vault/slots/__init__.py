"""Key-slot providers, looked up by type name and imported only when used."""

from __future__ import annotations

import importlib

from crate_cli.errors import InvalidInput
from crate_cli.vault.slots.base import SlotKind, SlotProvider

# type name -> (module, class). The env slot is not here: it keeps nothing at
# rest and is handled by the master key registry itself.
_PROVIDERS: dict[SlotKind, tuple[str, str]] = {
    "tpm2": ("crate_cli.vault.slots.tpm2", "Tpm2Slot"),
    "keyring": ("crate_cli.vault.slots.keyring", "KeyringSlot"),
    "file": ("crate_cli.vault.slots.file", "FileSlot"),
    "passphrase": ("crate_cli.vault.slots.passphrase", "PassphraseSlot"),
    "pkcs11": ("crate_cli.vault.slots.pkcs11", "Pkcs11Slot"),
}

SLOT_TYPES: tuple[SlotKind, ...] = tuple(_PROVIDERS)


def provider(type_name: str) -> SlotProvider:
    found = [kind for kind in SLOT_TYPES if kind == type_name]
    if not found:
        raise InvalidInput(
            f"unknown key slot type {type_name!r}: use one of {', '.join(SLOT_TYPES)}"
        )
    module_name, class_name = _PROVIDERS[found[0]]
    cls = getattr(importlib.import_module(module_name), class_name)
    instance: SlotProvider = cls()
    return instance
