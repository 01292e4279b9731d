"""The `file` slot: a random key-encryption key in a 0600 file.

The master key is wrapped by that key; the wrapped copy lives in the slot
record. Someone who can read the user's files can unlock the vault: the CLI
says so when it creates this slot. It is the fallback where no TPM, OS
keystore or HSM exists.
"""

from __future__ import annotations

from typing import Any

from crate_cli.config import write_private_file
from crate_cli.errors import IntegrityError, KeystoreError
from crate_cli.vault import crypto
from crate_cli.vault.slots.base import SlotContext, SlotProvider, b64, slot_aad, unb64


class FileSlot(SlotProvider):
    type_name = "file"

    def seal(
        self, ctx: SlotContext, master_key: bytes, version: int, slot_id: str
    ) -> dict[str, Any]:
        kek = crypto.new_key()
        name = f"slot-{slot_id}.key"
        write_private_file(ctx.home.keys_dir / name, kek)
        return {
            "key_file": name,
            "wrapped": b64(crypto.wrap_key(kek, master_key, slot_aad(version, slot_id))),
        }

    def unseal(self, ctx: SlotContext, params: dict[str, Any], version: int, slot_id: str) -> bytes:
        name = params.get("key_file")
        if not isinstance(name, str) or "/" in name:
            raise KeystoreError("file slot record is damaged (key_file)")
        path = ctx.home.keys_dir / name
        try:
            kek = path.read_bytes()
        except FileNotFoundError:
            raise KeystoreError(
                f"key file {path} is missing",
                "restore it from a backup or unlock with another slot (crate keys slots list)",
            ) from None
        except PermissionError:
            raise KeystoreError(f"key file {path} is not readable by this user") from None
        try:
            return crypto.unwrap_key(
                kek, unb64(params.get("wrapped"), "wrapped"), slot_aad(version, slot_id)
            )
        except IntegrityError:
            raise KeystoreError(
                f"key file {path} does not unlock master key v{version}",
                "it was replaced or damaged; restore it or unlock with another slot",
            ) from None

    def destroy(self, ctx: SlotContext, params: dict[str, Any]) -> None:
        name = params.get("key_file")
        if isinstance(name, str) and "/" not in name:
            (ctx.home.keys_dir / name).unlink(missing_ok=True)

    def describe(self) -> str:
        return "file (protected by file permissions only)"

    def details(self, ctx: SlotContext, params: dict[str, Any]) -> str:
        return f"key file {ctx.home.keys_dir / str(params.get('key_file'))}"
