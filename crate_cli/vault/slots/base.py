"""The seam for key-slot providers.

A slot holds one master key version, sealed by something outside the vault:
a key file, a passphrase, a TPM 2.0, the OS keyring or an HSM (PKCS#11). Each
provider turns the 32-byte master key into a JSON-able `params` dict and back.
Providers raise `KeystoreError` (exit 6) when they cannot unseal, with a
message that says what to do.
"""

import base64
import binascii
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal

from crate_cli.config import CrateHome
from crate_cli.errors import KeystoreError
from crate_cli.records import Record
from crate_cli.vault import crypto

# The hint of a slot that failed when other slots may still unlock the key.
OTHER_SLOT = "unlock with another slot (crate keys slots list)"

# What can seal a master key at rest (slots/__init__.py has a provider for
# each). The `env` slot of a key given in CRATE_MASTER_KEY keeps nothing at
# rest and is no provider.
SlotKind = Literal["tpm2", "keyring", "pkcs11", "passphrase", "file"]

# Asks the user for a secret without echo; returns the answer. None where no
# terminal exists, in which case providers say which variable to set.
SecretPrompt = Callable[[str], str]


class SlotContext(Record):
    """What a provider may use: where files go, the environment, a prompt."""

    home: CrateHome
    environ: dict[str, str]
    prompt: SecretPrompt | None = None
    options: Mapping[str, Any] = MappingProxyType({})


class SlotProvider(ABC):
    type_name: SlotKind

    @abstractmethod
    def seal(
        self, ctx: SlotContext, master_key: bytes, version: int, slot_id: str
    ) -> dict[str, Any]:
        """Seal `master_key` and return the params to store in the slot record."""

    @abstractmethod
    def unseal(self, ctx: SlotContext, params: dict[str, Any], version: int, slot_id: str) -> bytes:
        """Return the master key, or raise KeystoreError."""

    def destroy(self, ctx: SlotContext, params: dict[str, Any]) -> None:  # noqa: B027
        """Remove what the slot keeps outside the registry (nothing by default)."""

    def probe(self, ctx: SlotContext) -> str | None:
        """None when this slot type can be used here, else why not (for `auto`)."""
        return None

    def describe(self) -> str:
        return self.type_name

    def details(self, ctx: SlotContext, params: dict[str, Any]) -> str:
        """What this slot depends on, for `crate keys status`; never a secret."""
        return ""

    def reseal_options(self, params: dict[str, Any]) -> dict[str, Any]:
        """The creation options that make a slot like this one (a new master key
        version is sealed in a slot like each slot of the old one)."""
        return {}


def slot_aad(version: int, slot_id: str) -> bytes:
    return crypto.aad(crypto.MASTER_SLOT, version, slot_id)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, what: str) -> bytes:
    try:
        if not isinstance(text, str):
            raise ValueError
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, binascii.Error):
        raise KeystoreError(f"key slot record is damaged ({what})") from None
