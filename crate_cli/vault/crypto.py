"""The at-rest cipher: AES-256-GCM with associated data that names the place.

Every ciphertext crate stores is `FORMAT || nonce(12) || ciphertext || tag(16)`
under a 32-byte key, with associated data built by `aad()` alone, so that a
ciphertext moved to another purpose, org, env, name or version fails to
decrypt. The version of the key that wrapped it is stored beside it (a column
or a record field) by the caller.

Every failure to decrypt raises `IntegrityError` and nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crate_cli.errors import IntegrityError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
FORMAT_V1 = b"\x01"
_OVERHEAD = len(FORMAT_V1) + NONCE_BYTES + TAG_BYTES

# Purpose labels: one per kind of ciphertext. The label is versioned so a
# future format can never be confused with this one.
SECRET_VALUE = "crate/secret-value/v1"
SECRET_DEK = "crate/secret-dek/v1"
# An environment snapshot (snapshots.py) and the DEK it is sealed under.
ENV_SNAPSHOT = "crate/env-snapshot/v1"
ENV_SNAPSHOT_DEK = "crate/env-snapshot-dek/v1"
ORG_DEK = "crate/org-dek/v1"
ORG_RSA_KEY = "crate/org-rsa-key/v1"
ORG_AUDIT_KEY = "crate/org-audit-key/v1"
# The same key once the org's audit log has begun: resetting a log to empty
# would need the key wrapped back under the plain label, which takes the
# master key.
ORG_AUDIT_KEY_CHAINED = "crate/org-audit-key-chained/v1"
MASTER_SLOT = "crate/master-slot/v1"
MASTER_CHECK = "crate/master-check/v1"
# Subkey of the org audit key that authenticates the clear row metadata.
ROW_MAC_KEY = "crate/row-mac-key/v1"
SECRET_HEAD = "crate/secret-head/v1"
SECRET_VERSION = "crate/secret-version/v1"
API_TOKEN = "crate/api-token/v1"
TOKEN_REVOCATION = "crate/token-revocation/v1"
ALLOWED_NAME = "crate/allowed-name/v1"
ALLOWED_NAME_ENDED = "crate/allowed-name-ended/v1"
# Subkey of the org audit key that chains the audit log, and what it MACs.
AUDIT_CHAIN_KEY = "crate/audit-chain-key/v1"
AUDIT_ENTRY = "crate/audit-entry/v1"
AUDIT_ANCHOR = "crate/audit-anchor/v1"
MAC_BYTES = 32


def aad(purpose: str, *parts: str | int) -> bytes:
    """Associated data binding a ciphertext to its purpose and place.

    For example `aad(SECRET_VALUE, "acme", "dev", "DB_URL", 7)` gives
    `b"crate/secret-value/v1|acme|dev|DB_URL|7"`. Parts are names that cannot
    contain `|` (see `names`), which keeps the encoding unambiguous.
    """
    text = "|".join([purpose, *map(str, parts)])
    if text.count("|") != len(parts):
        raise ValueError("associated data parts must not contain '|'")
    return text.encode("utf-8")


def secret_aads(org: str, env: str, name: str, version: int) -> tuple[bytes, bytes]:
    """The AADs of one secret version's DEK and value, exactly as `aad()` builds
    them, in one step: the read path builds thousands of them."""
    place = f"{org}|{env}|{name}|{version}"
    if place.count("|") != 3:
        raise ValueError("associated data parts must not contain '|'")
    return f"{SECRET_DEK}|{place}".encode(), f"{SECRET_VALUE}|{place}".encode()


def cipher(key: bytes) -> AESGCM:
    """An AES-256-GCM object for a key that opens many blobs (an org DEK)."""
    if len(key) != KEY_BYTES:
        raise IntegrityError()
    return AESGCM(key)


def secret_opener(
    org: str, env: str, dek_cipher: Callable[[int], AESGCM]
) -> Callable[[str, int, int, object, object], bytes]:
    """Open the secrets of one environment: each one's DEK unwrapped with its
    org DEK, then its value decrypted, with the associated data of
    `secret_aads`. The fixed part of that data is joined once and the org DEK
    ciphers are made once (`dek_cipher(version)` on first use): the read path
    opens thousands. The returned function takes (name, version, org DEK
    version, wrapped DEK, value blob) and returns the value; any failure to
    open is IntegrityError."""
    if f"{org}{env}".count("|"):
        raise ValueError("associated data parts must not contain '|'")
    dek_place = f"{SECRET_DEK}|{org}|{env}|"
    value_place = f"{SECRET_VALUE}|{org}|{env}|"
    ciphers: dict[int, AESGCM] = {}

    def open_one(name: str, version: int, dek_version: int, wrapped: object, blob: object) -> bytes:
        cipher = ciphers.get(dek_version)
        if cipher is None:
            cipher = ciphers[dek_version] = dek_cipher(dek_version)
        if not (
            type(wrapped) is bytes
            and type(blob) is bytes
            and len(wrapped) >= _OVERHEAD
            and len(blob) >= _OVERHEAD
            and wrapped[0] == blob[0] == FORMAT_V1[0]
        ):
            raise IntegrityError()
        place = f"{name}|{version}"
        if place.count("|") != 1:
            raise ValueError("associated data parts must not contain '|'")
        try:
            dek = cipher.decrypt(wrapped[1:13], wrapped[13:], (dek_place + place).encode())
            if len(dek) != KEY_BYTES:
                raise IntegrityError()
            return AESGCM(dek).decrypt(blob[1:13], blob[13:], (value_place + place).encode())
        except InvalidTag:
            raise IntegrityError() from None

    return open_one


def sha256_hex(data: bytes) -> str:
    """SHA-256 in hex, for names derived from paths or tokens: through
    `cryptography`, which every command loads anyway (hashlib would load a
    second OpenSSL binding, 3 ms)."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize().hex()


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def derive_subkey(key: bytes, purpose: str) -> bytes:
    """A 32-byte subkey of `key` for one purpose (HKDF-SHA256, the label as info)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=purpose.encode("ascii")).derive(key)


def mac_message(purpose: str, *fields: str | int | None) -> bytes:
    """The bytes a row MAC covers: the fields joined by NUL, which no field may
    contain (names, tags and times cannot), so no field can bleed into another."""
    text = "\x00".join([purpose, *map(str, fields)])
    if text.count("\x00") != len(fields):
        raise ValueError("MAC fields must not contain NUL")
    return text.encode("utf-8")


class RowMac:
    """HMAC-SHA256 over `mac_message(purpose, *fixed, *fields)` for many rows
    under one key: keyed once and copied per row, with the fixed fields
    joined once (the read path checks a MAC per secret)."""

    def __init__(self, key: bytes, purpose: str, *fixed: str | int) -> None:
        self._keyed = hmac.HMAC(key, hashes.SHA256())
        self._prefix = "\x00".join([purpose, *map(str, fixed)]) + "\x00"
        self._separators = len(fixed) + 1

    def message(self, fields: tuple[object, ...]) -> bytes:
        """The same bytes as `mac_message`: no field may contain NUL."""
        text = self._prefix + "\x00".join(map(str, fields))
        if text.count("\x00") != self._separators + len(fields) - 1 or not fields:
            raise ValueError("MAC fields must not contain NUL")
        return text.encode("utf-8")

    def verify(self, fields: tuple[object, ...], tag: object) -> None:
        """Like `verify_mac`: anything but the right tag raises IntegrityError."""
        if not isinstance(tag, bytes) or len(tag) != MAC_BYTES:
            raise IntegrityError()
        h = self._keyed.copy()
        h.update(self.message(fields))
        try:
            h.verify(tag)
        except InvalidSignature:
            raise IntegrityError() from None

    def matches(self, fields: tuple[object, ...], tag: object) -> bool:
        """Whether `tag` is the MAC of `fields`; False, not an error, for a
        field holding NUL (which crate never writes)."""
        try:
            self.verify(fields, tag)
        except (IntegrityError, ValueError):
            return False
        return True

    def matches_joined(self, joined: str, count: int, tag: object) -> bool:
        """`matches` for `count` fields already joined by NUL."""
        if joined.count("\x00") != count - 1 or not isinstance(tag, bytes):
            return False
        h = self._keyed.copy()
        h.update((self._prefix + joined).encode("utf-8"))
        try:
            h.verify(tag)
        except InvalidSignature:
            return False
        return True


def mac(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256."""
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(message)
    return h.finalize()


def verify_mac(key: bytes, message: bytes, tag: object) -> None:
    """Check an HMAC-SHA256 tag in constant time; anything else raises IntegrityError."""
    if not isinstance(tag, bytes) or len(tag) != MAC_BYTES:
        raise IntegrityError()
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(message)
    try:
        h.verify(tag)
    except InvalidSignature:
        raise IntegrityError() from None


def encrypt(
    key: bytes, plaintext: bytes, associated: bytes, *, nonce: bytes | None = None
) -> bytes:
    """Encrypt under `key` with a fresh random nonce.

    `nonce` exists only so that the known-answer vectors can be regenerated
    byte for byte; crate itself never passes it.
    """
    if nonce is None:
        nonce = os.urandom(NONCE_BYTES)
    elif len(nonce) != NONCE_BYTES:
        raise ValueError("AES-GCM nonces are 12 bytes")
    return FORMAT_V1 + nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, blob: bytes, associated: bytes) -> bytes:
    """Decrypt a blob made by `encrypt`; any mismatch raises IntegrityError."""
    if (
        not isinstance(blob, bytes)
        or len(key) != KEY_BYTES
        or len(blob) < _OVERHEAD
        or blob[:1] != FORMAT_V1
    ):
        raise IntegrityError()
    nonce = blob[1 : 1 + NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, blob[1 + NONCE_BYTES :], associated)
    except InvalidTag:
        raise IntegrityError() from None


def wrap_key(
    wrapping_key: bytes, key: bytes, associated: bytes, *, nonce: bytes | None = None
) -> bytes:
    """Wrap a 32-byte key (a DEK, the master key) under another key."""
    if len(key) != KEY_BYTES:
        raise ValueError("only 32-byte keys are wrapped")
    return encrypt(wrapping_key, key, associated, nonce=nonce)


def rewrap(old: AESGCM, new: AESGCM, blob: object, associated: bytes) -> bytes:
    """A key wrapped under `old`, wrapped under `new` instead (same associated
    data): what rotating an org DEK does to every secret DEK."""
    if not isinstance(blob, bytes) or len(blob) < _OVERHEAD or blob[:1] != FORMAT_V1:
        raise IntegrityError()
    try:
        key = old.decrypt(blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :], associated)
    except InvalidTag:
        raise IntegrityError() from None
    if len(key) != KEY_BYTES:
        raise IntegrityError()
    nonce = os.urandom(NONCE_BYTES)
    return FORMAT_V1 + nonce + new.encrypt(nonce, key, associated)


def unwrap_key(wrapping_key: bytes, blob: bytes, associated: bytes) -> bytes:
    key = decrypt(wrapping_key, blob, associated)
    if len(key) != KEY_BYTES:
        raise IntegrityError()
    return key
