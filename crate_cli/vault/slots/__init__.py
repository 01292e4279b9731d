"""Key-slot providers, looked up by type name and imported only when used."""

from __future__ import annotations

import importlib

from crate_cli.errors import InvalidInput
from crate_cli.vault.slots.base import SlotProvider

# type name -> (module, class). The env slot is not here: it keeps nothing at
# rest and is handled by the master key registry itself.
_PROVIDERS = {
    "tpm2": ("crate_cli.vault.slots.tpm2", "Tpm2Slot"),
    "keyring": ("crate_cli.vault.slots.keyring", "KeyringSlot"),
    "file": ("crate_cli.vault.slots.file", "FileSlot"),
    "passphrase": ("crate_cli.vault.slots.passphrase", "PassphraseSlot"),
    "pkcs11": ("crate_cli.vault.slots.pkcs11", "Pkcs11Slot"),
}

SLOT_TYPES = tuple(_PROVIDERS)


def provider(type_name: str) -> SlotProvider:
    try:
        module_name, class_name = _PROVIDERS[type_name]
    except KeyError:
        raise InvalidInput(
            f"unknown key slot type {type_name!r}: use one of {', '.join(SLOT_TYPES)}"
        ) from None
    cls = getattr(importlib.import_module(module_name), class_name)
    instance: SlotProvider = cls()
    return instance
