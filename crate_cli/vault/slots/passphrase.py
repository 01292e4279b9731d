"""The `passphrase` slot: Argon2id turns a passphrase into a key-encryption key.

Parameters (RFC 9106's second recommended option: 64 MiB, t=3, p=4) and the
salt are stored with the slot, so they can be raised later without breaking
old slots. The passphrase comes from `CRATE_PASSPHRASE_FD` (a file
descriptor to read it from, like gpg's --passphrase-fd), `CRATE_PASSPHRASE`,
or a hidden prompt.
"""

from __future__ import annotations

import os
from typing import Any

from crate_cli.errors import IntegrityError, InvalidInput, KeystoreError, WrongPassphrase
from crate_cli.vault import crypto
from crate_cli.vault.slots.base import SlotContext, SlotProvider, b64, slot_aad, unb64

PASSPHRASE_ENV = "CRATE_PASSPHRASE"
PASSPHRASE_FD_ENV = "CRATE_PASSPHRASE_FD"
MAX_PASSPHRASE_BYTES = 4096
DEFAULT_PARAMS = {"iterations": 3, "lanes": 4, "memory_cost": 64 * 1024}
MIN_PASSPHRASE = 8
# What a slot record may ask for (iterations, lanes, memory in KiB): a damaged
# or hostile record must not make crate spin for hours or exhaust memory.
_BOUNDS = ((1, 64), (1, 64), (8 * 64, 4 * 1024 * 1024))


def derive_kek(
    passphrase: str, salt: bytes, iterations: int, lanes: int, memory_cost: int
) -> bytes:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    return Argon2id(
        salt=salt, length=32, iterations=iterations, lanes=lanes, memory_cost=memory_cost
    ).derive(passphrase.encode("utf-8"))


# What was read from a descriptor, by descriptor: a pipe can be read only once,
# and a command may unlock more than one slot (a master key rotation).
_from_fd: dict[int, str] = {}


def forget() -> None:
    """Drop the passphrases read from descriptors (the agent and the server
    call it, through hardening.drop_credentials, once the key is unlocked)."""
    _from_fd.clear()


def read_passphrase_fd(text: str) -> str:
    """The passphrase on file descriptor `text`: its bytes up to the first
    newline or the end of the file, read one at a time so that nothing after
    the line is consumed (the descriptor may be stdin). The descriptor is then
    made non-inheritable: commands crate starts do not get it."""
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        # Not repeated: a passphrase put there by mistake must not be echoed.
        raise InvalidInput(f"{PASSPHRASE_FD_ENV} must be a file descriptor number")
    fd = int(text)
    if fd in _from_fd:
        return _from_fd[fd]
    data = bytearray()
    try:
        while len(data) <= MAX_PASSPHRASE_BYTES:
            byte = os.read(fd, 1)
            if not byte or byte == b"\n":
                break
            data += byte
        if fd > 2:
            os.set_inheritable(fd, False)
    except OSError as e:
        raise KeystoreError(
            f"cannot read the passphrase from {PASSPHRASE_FD_ENV}={fd} "
            f"({e.strerror or type(e).__name__})",
            f"open the descriptor for crate, e.g. {PASSPHRASE_FD_ENV}=3 crate ... 3<FILE",
        ) from None
    if len(data) > MAX_PASSPHRASE_BYTES:
        raise InvalidInput(
            f"the passphrase on {PASSPHRASE_FD_ENV}={fd} is longer than "
            f"{MAX_PASSPHRASE_BYTES} bytes"
        )
    if data.endswith(b"\r"):
        del data[-1:]
    try:
        value = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"the passphrase on {PASSPHRASE_FD_ENV}={fd} is not UTF-8") from None
    finally:
        data[:] = bytes(len(data))
    if not value:
        raise KeystoreError(
            f"{PASSPHRASE_FD_ENV}={fd} gave no passphrase (an empty line or nothing)"
        )
    _from_fd[fd] = value
    return value


class PassphraseSlot(SlotProvider):
    type_name = "passphrase"

    def _passphrase(self, ctx: SlotContext, confirm: bool) -> str:
        fd = ctx.environ.get(PASSPHRASE_FD_ENV)
        value = read_passphrase_fd(fd) if fd else ctx.environ.get(PASSPHRASE_ENV)
        if value:
            if confirm and len(value) < MIN_PASSPHRASE:
                source = PASSPHRASE_FD_ENV if fd else PASSPHRASE_ENV
                raise InvalidInput(
                    f"the passphrase must have at least {MIN_PASSPHRASE} characters "
                    f"({source} gave a shorter one); nothing was created"
                )
            return value
        if ctx.prompt is None:
            raise KeystoreError(
                "a passphrase is needed and there is no terminal to ask for it",
                f"set {PASSPHRASE_FD_ENV} (a descriptor to read it from) or {PASSPHRASE_ENV}, "
                "or run the command in a terminal",
            )
        value = ctx.prompt("Passphrase for the crate master key: ")
        if confirm:
            if len(value) < MIN_PASSPHRASE:
                raise InvalidInput(
                    f"the passphrase must have at least {MIN_PASSPHRASE} characters; "
                    "nothing was created"
                )
            if ctx.prompt("Repeat the passphrase: ") != value:
                raise KeystoreError("the two passphrases differ; nothing was changed")
        return value

    def seal(
        self, ctx: SlotContext, master_key: bytes, version: int, slot_id: str
    ) -> dict[str, Any]:
        passphrase = self._passphrase(ctx, confirm=True)
        salt = os.urandom(16)
        kek = derive_kek(passphrase, salt, **DEFAULT_PARAMS)
        return {
            "kdf": "argon2id",
            "salt": b64(salt),
            **DEFAULT_PARAMS,
            "wrapped": b64(crypto.wrap_key(kek, master_key, slot_aad(version, slot_id))),
        }

    def unseal(self, ctx: SlotContext, params: dict[str, Any], version: int, slot_id: str) -> bytes:
        kdf_params = {k: params.get(k) for k in DEFAULT_PARAMS}
        if params.get("kdf") != "argon2id" or not all(
            isinstance(v, int) and not isinstance(v, bool) and low <= v <= high
            for (low, high), v in zip(_BOUNDS, kdf_params.values(), strict=True)
        ):
            raise KeystoreError("passphrase slot record is damaged (kdf parameters)")
        salt = unb64(params.get("salt"), "salt")
        wrapped = unb64(params.get("wrapped"), "wrapped")
        passphrase = self._passphrase(ctx, confirm=False)
        kek = derive_kek(passphrase, salt, **kdf_params)  # type: ignore[arg-type]
        try:
            return crypto.unwrap_key(kek, wrapped, slot_aad(version, slot_id))
        except IntegrityError:
            raise WrongPassphrase(
                "wrong passphrase for the crate master key; nothing was changed",
                f"check {PASSPHRASE_FD_ENV} or {PASSPHRASE_ENV}, or type it again",
            ) from None

    def describe(self) -> str:
        return "passphrase (Argon2id)"

    def details(self, ctx: SlotContext, params: dict[str, Any]) -> str:
        memory = params.get("memory_cost")
        passes = params.get("iterations")
        return (
            f"Argon2id, {memory // 1024 if isinstance(memory, int) else '?'} MiB, {passes} passes"
        )
