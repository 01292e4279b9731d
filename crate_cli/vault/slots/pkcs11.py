"""The `pkcs11` slot: an AES-256 key inside an HSM token wraps the master key.

The key is generated in the token as sensitive and non-extractable: it never
leaves the HSM, which does the AES-GCM itself, with the slot's associated
data. The slot record keeps the module path, the token label, the key's
label, the nonce and the wrapped master key. The user PIN comes from
`CRATE_PKCS11_PIN` or a hidden prompt. python-pkcs11 is imported only here.

A PKCS#11 module is a shared library that runs inside crate. So the module a
slot record names (a registry file that someone could swap) is loaded only
when the user names it too: `--pkcs11-module`, `CRATE_PKCS11_MODULE`, or the
`keys.pkcs11_modules` setting, to which crate adds the module of each slot
it seals from the user's own option (as for TPM TCTIs, tpm2.py).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from crate_cli.errors import CrateError, InvalidInput, KeystoreError
from crate_cli.vault.slots.base import OTHER_SLOT, SlotContext, SlotProvider, b64, slot_aad, unb64

PIN_ENV = "CRATE_PKCS11_PIN"
MODULE_ENV = "CRATE_PKCS11_MODULE"
MODULES_SETTING = "keys.pkcs11_modules"


def trusted_modules(ctx: SlotContext) -> set[str]:
    """The module paths the user named (absolute): the option, the variable,
    the setting."""
    from crate_cli.config import Settings

    named = [ctx.options.get("pkcs11_module"), ctx.environ.get(MODULE_ENV)]
    # A broken settings file names nothing; the option and variable still do.
    with contextlib.suppress(CrateError):
        named += list(Settings.load(ctx.home).get(MODULES_SETTING))
    return {os.path.abspath(str(m)) for m in named if m}


def check_recorded_module(ctx: SlotContext, module: str) -> str:
    """A module path from a slot record, if the user named it too; else KeystoreError."""
    if os.path.abspath(module) not in trusted_modules(ctx):
        from crate_cli.display import safe_text

        shown = safe_text(module, 200)
        raise KeystoreError(
            f"the pkcs11 slot names the module {shown}, which crate loads only when you "
            f"name it too (--pkcs11-module, {MODULE_ENV} or the {MODULES_SETTING} setting)",
            f"if it is your HSM's module, add it to {MODULES_SETTING} in settings.toml or set "
            f"{MODULE_ENV}; else {OTHER_SLOT}",
        )
    return module


def _remember_module(ctx: SlotContext, module: str) -> None:
    """Add a module the user named for a new slot to the setting, so that the
    slot unlocks later without naming it again."""
    from crate_cli.config import Settings

    listed = list(Settings.load(ctx.home).get(MODULES_SETTING))
    if module not in listed:
        Settings.update(ctx.home, MODULES_SETTING, [*listed, module])


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise KeystoreError(
            "the pkcs11 slot needs python-pkcs11, which is not installed",
            "install it with: pip install 'crate-cli[pkcs11]'",
        ) from None
    return pkcs11


class Pkcs11Slot(SlotProvider):
    type_name = "pkcs11"

    def _pin(self, ctx: SlotContext, token: str) -> str:
        pin = ctx.environ.get(PIN_ENV)
        if pin:
            return pin
        if ctx.prompt is None:
            raise KeystoreError(
                f"the PIN of HSM token {token!r} is needed and there is no terminal to ask for it",
                f"set {PIN_ENV} or run the command in a terminal",
            )
        return ctx.prompt(f"PIN of HSM token {token!r}: ")

    def _session(self, ctx: SlotContext, module: str, token_label: str, rw: bool) -> Any:
        pkcs11 = _pkcs11()
        if not os.path.exists(module):
            raise KeystoreError(
                f"the PKCS#11 module {module} does not exist",
                f"install the HSM's module, or {OTHER_SLOT}",
            )
        try:
            token = pkcs11.lib(module).get_token(token_label=token_label)
        except pkcs11.exceptions.NoSuchToken:
            raise KeystoreError(
                f"HSM token {token_label!r} is not present",
                f"connect it, or {OTHER_SLOT}",
            ) from None
        except Exception as e:  # a module that fails to load or to list its slots
            raise KeystoreError(f"the PKCS#11 module {module} failed: {type(e).__name__}") from None
        try:
            return token.open(user_pin=self._pin(ctx, token_label), rw=rw)
        except pkcs11.exceptions.PinIncorrect:
            raise KeystoreError(
                f"wrong PIN for HSM token {token_label!r}; nothing was changed",
                f"check {PIN_ENV} or type it again",
            ) from None
        except pkcs11.exceptions.PinLocked:
            raise KeystoreError(f"the PIN of HSM token {token_label!r} is locked") from None
        except pkcs11.exceptions.PKCS11Error as e:
            raise KeystoreError(
                f"HSM token {token_label!r} refused the session: {type(e).__name__}"
            ) from None

    def seal(
        self, ctx: SlotContext, master_key: bytes, version: int, slot_id: str
    ) -> dict[str, Any]:
        # A new master key version sealed like an old slot (`crate keys rotate
        # master`) takes the module from that slot's record: trusted as a record is.
        recorded = ctx.options.get("pkcs11_module_recorded")
        module = ctx.options.get("pkcs11_module") or (
            check_recorded_module(ctx, str(recorded)) if recorded else None
        )
        token_label = ctx.options.get("pkcs11_token")
        if not module or not token_label:
            raise InvalidInput("a pkcs11 slot needs --pkcs11-module PATH and --pkcs11-token LABEL")
        pkcs11 = _pkcs11()
        from pkcs11.mechanisms import GCMParams

        key_label = f"crate-master-wrap-{slot_id}"
        nonce = os.urandom(12)
        with self._session(ctx, module, token_label, rw=True) as session:
            key = session.generate_key(
                pkcs11.KeyType.AES,
                256,
                label=key_label,
                store=True,
                template={
                    pkcs11.Attribute.SENSITIVE: True,
                    pkcs11.Attribute.EXTRACTABLE: False,
                    pkcs11.Attribute.ENCRYPT: True,
                    pkcs11.Attribute.DECRYPT: True,
                },
            )
            wrapped = key.encrypt(
                master_key,
                mechanism=pkcs11.Mechanism.AES_GCM,
                mechanism_param=GCMParams(nonce, slot_aad(version, slot_id)),
            )
        if not recorded:
            _remember_module(ctx, os.path.abspath(module))
        return {
            "module": os.path.abspath(module),
            "token": token_label,
            "key_label": key_label,
            "nonce": b64(nonce),
            "wrapped": b64(bytes(wrapped)),
        }

    def unseal(self, ctx: SlotContext, params: dict[str, Any], version: int, slot_id: str) -> bytes:
        module, token_label, key_label = (
            params.get("module"),
            params.get("token"),
            params.get("key_label"),
        )
        if not all(isinstance(p, str) for p in (module, token_label, key_label)):
            raise KeystoreError("pkcs11 slot record is damaged")
        nonce = unb64(params.get("nonce"), "nonce")
        wrapped = unb64(params.get("wrapped"), "wrapped")
        check_recorded_module(ctx, str(module))
        pkcs11 = _pkcs11()
        from pkcs11.mechanisms import GCMParams

        with self._session(ctx, str(module), str(token_label), rw=False) as session:
            try:
                key = session.get_key(
                    object_class=pkcs11.ObjectClass.SECRET_KEY, label=str(key_label)
                )
            except (pkcs11.exceptions.NoSuchKey, pkcs11.exceptions.MultipleObjectsReturned):
                raise KeystoreError(
                    f"HSM token {token_label!r} no longer holds the key of slot {slot_id}",
                    OTHER_SLOT,
                ) from None
            try:
                master = bytes(
                    key.decrypt(
                        wrapped,
                        mechanism=pkcs11.Mechanism.AES_GCM,
                        mechanism_param=GCMParams(nonce, slot_aad(version, slot_id)),
                    )
                )
            except pkcs11.exceptions.PKCS11Error:
                master = b""
        if len(master) != 32:
            raise KeystoreError(
                f"the key in HSM token {token_label!r} does not unlock master key v{version}"
            )
        return master

    def destroy(self, ctx: SlotContext, params: dict[str, Any]) -> None:
        """Delete the wrapping key from the token when it can be reached; a token
        that is gone or locked keeps it (it wraps nothing any more)."""
        try:
            module = check_recorded_module(ctx, str(params.get("module")))
            pkcs11 = _pkcs11()
            with self._session(ctx, module, str(params.get("token")), rw=True) as session:
                session.get_key(
                    object_class=pkcs11.ObjectClass.SECRET_KEY, label=str(params.get("key_label"))
                ).destroy()
        except Exception:  # noqa: S110 - best effort by design, see the docstring
            pass

    def describe(self) -> str:
        return "pkcs11 (a non-extractable key in an HSM token)"

    def reseal_options(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "pkcs11_module_recorded": params.get("module"),
            "pkcs11_token": params.get("token"),
        }

    def details(self, ctx: SlotContext, params: dict[str, Any]) -> str:
        from crate_cli.display import safe_text

        return safe_text(f"token {params.get('token')!r} through {params.get('module')}", 300)
