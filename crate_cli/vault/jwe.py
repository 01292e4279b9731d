"""A small JWE codec (RFC 7516 compact serialization) for crate's algorithms only.

`alg` is always `RSA-OAEP-256` (RSAES-OAEP with SHA-256 and MGF1-SHA-256,
RFC 7518 §4.3) and `enc` always `A256GCM` (RFC 7518 §5.3). A general JOSE
library costs 70-100 ms to import, which `crate run` cannot pay; this module
composes the same standard from `cryptography` primitives and is proven
against joserfc in both directions by the tests.

Parsing is strict: five parts, base64url without padding, a JSON object
header with exactly the known algorithms, no `crit`, no `zip`, a 96-bit IV,
a 128-bit tag and an encrypted key as long as the RSA modulus. Every failure
to decrypt, whatever its cause, raises `IntegrityError` (RFC 7516 §11.5: no
oracle on why).
"""

import binascii
import json
import math
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crate_cli.errors import IntegrityError, MalformedJWE
from crate_cli.records import Record

ALG = "RSA-OAEP-256"
ENC = "A256GCM"
_CEK_BYTES = 32
_IV_BYTES = 12
_TAG_BYTES = 16
_MAX_TOKEN = 64 * 1024 * 1024
_MAX_HEADER = 8 * 1024


_TO_URL = bytes.maketrans(b"+/", b"-_")
_FROM_URL = bytes.maketrans(b"-_", b"+/")


def b64u_encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_TO_URL).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    """Strict base64url without padding: one encoding per byte string, no other.

    A retrieval bundle is a megabyte of it for 10,000 secrets, so this runs in
    C: the standard alphabet's `+`, `/` and `=` are refused first, strict
    decoding refuses every other stranger, and only the last, partial group
    can carry unused bits (which must be zero), so only it is encoded back.
    """
    if not isinstance(text, str) or len(text) % 4 == 1 or not text.isascii():
        raise MalformedJWE()
    raw = text.encode("ascii")
    if b"+" in raw or b"/" in raw or b"=" in raw:
        raise MalformedJWE()
    try:
        data = binascii.a2b_base64(
            raw.translate(_FROM_URL) + b"=" * (-len(raw) % 4), strict_mode=True
        )
    except (binascii.Error, ValueError):
        raise MalformedJWE() from None
    partial = len(text) % 4
    if partial and b64u_encode(data[len(data) - (partial - 1) :]) != text[-partial:]:
        raise MalformedJWE()  # non-zero unused bits in the last character
    return data


def _oaep() -> padding.OAEP:
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
    )


class Decrypted(Record):
    header: dict[str, Any]
    plaintext: bytes


def encrypt(
    public_key: rsa.RSAPublicKey, plaintext: bytes, extra_header: dict[str, Any] | None = None
) -> str:
    """Encrypt `plaintext` to `public_key`; `extra_header` joins the protected header."""
    header: dict[str, Any] = {"alg": ALG, "enc": ENC}
    if extra_header:
        for key in extra_header:
            if key in ("alg", "enc", "zip", "crit"):
                raise ValueError(f"header parameter {key} is set by the codec")
        header.update(extra_header)
    protected = b64u_encode(json.dumps(header, separators=(",", ":")).encode("utf-8"))
    cek = os.urandom(_CEK_BYTES)
    iv = os.urandom(_IV_BYTES)
    encrypted_key = public_key.encrypt(cek, _oaep())
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    ciphertext, tag = sealed[:-_TAG_BYTES], sealed[-_TAG_BYTES:]
    return ".".join(
        [
            protected,
            b64u_encode(encrypted_key),
            b64u_encode(iv),
            b64u_encode(ciphertext),
            b64u_encode(tag),
        ]
    )


def parse_header(token: str) -> dict[str, Any]:
    """Check the shape and the protected header of a compact JWE, and return it.

    Used before decryption to pick the key (`kid`) and check the target; the
    header is authenticated only once `decrypt` succeeds.
    """
    if not isinstance(token, str) or len(token) > _MAX_TOKEN:
        raise MalformedJWE()
    parts = token.split(".")
    if len(parts) != 5:
        raise MalformedJWE()
    if len(parts[0]) > _MAX_HEADER:
        raise MalformedJWE()
    try:
        header = json.loads(b64u_decode(parts[0]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedJWE() from None
    if not isinstance(header, dict):
        raise MalformedJWE()
    if header.get("alg") != ALG or header.get("enc") != ENC:
        raise MalformedJWE(f"unsupported JWE algorithms: crate accepts only {ALG} with {ENC}")
    if "crit" in header or "zip" in header:
        raise MalformedJWE("JWE header parameters 'crit' and 'zip' are not accepted")
    return header


def decrypt(private_key: rsa.RSAPrivateKey, token: str) -> Decrypted:
    """Decrypt a compact JWE made for `private_key`; any failure raises IntegrityError."""
    header = parse_header(token)
    protected, ek_b64, iv_b64, ct_b64, tag_b64 = token.split(".")
    encrypted_key = b64u_decode(ek_b64)
    iv = b64u_decode(iv_b64)
    ciphertext = b64u_decode(ct_b64)
    tag = b64u_decode(tag_b64)
    if (
        len(iv) != _IV_BYTES
        or len(tag) != _TAG_BYTES
        or len(encrypted_key) != (private_key.key_size + 7) // 8
    ):
        raise MalformedJWE()
    try:
        cek = private_key.decrypt(encrypted_key, _oaep())
    except ValueError:
        # RFC 7516 §11.5: go on with a random key so that a bad key and a bad
        # ciphertext fail the same way, at the tag check.
        cek = os.urandom(_CEK_BYTES)
    if len(cek) != _CEK_BYTES:
        cek = os.urandom(_CEK_BYTES)
    try:
        plaintext = AESGCM(cek).decrypt(iv, ciphertext + tag, protected.encode("ascii"))
    except InvalidTag:
        raise IntegrityError() from None
    return Decrypted(header=header, plaintext=plaintext)


def public_jwk(public_key: rsa.RSAPublicKey) -> dict[str, str]:
    """The RFC 7517 JWK of an RSA public key (members kty, n, e)."""
    numbers = public_key.public_numbers()
    return {
        "kty": "RSA",
        "n": b64u_encode(_int_bytes(numbers.n)),
        "e": b64u_encode(_int_bytes(numbers.e)),
    }


def public_key_from_jwk(
    jwk: object, min_bits: int = 2048, max_bits: int = 8192
) -> rsa.RSAPublicKey:
    """Load an RSA public JWK sent by a client; refuses weak, malformed or
    absurd keys: a modulus outside `min_bits`..`max_bits`, even, with a
    prime factor below 1024, or not in its shortest form, and an exponent
    that is even, below 3, over 2**32 or not in its shortest form. A key
    whose modulus has a small factor could be factored by whoever sent it
    to another client, or make the server's answer cheap to break."""
    if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
        raise MalformedJWE("public_key must be an RSA JWK")
    if "d" in jwk:
        raise MalformedJWE("public_key must not contain private key members")
    n_raw = b64u_decode(jwk.get("n", ""))
    e_raw = b64u_decode(jwk.get("e", ""))
    n = int.from_bytes(n_raw, "big")
    e = int.from_bytes(e_raw, "big")
    if not (min_bits <= n.bit_length() <= max_bits):
        raise MalformedJWE(f"public_key must be RSA of {min_bits} to {max_bits} bits")
    if n_raw[0] == 0 or not e_raw or e_raw[0] == 0:
        raise MalformedJWE("public_key must give n and e without leading zero bytes")
    if e < 3 or e % 2 == 0 or e > 2**32:
        raise MalformedJWE("public_key must have an odd exponent from 3 to 2**32")
    if n % 2 == 0 or math.gcd(n, _small_primes_product()) != 1:
        raise MalformedJWE("public_key is not a valid RSA key: its modulus has a small factor")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise MalformedJWE("public_key is not a valid RSA key") from None


_PRIMES_PRODUCT: int | None = None
SMALL_PRIME_BOUND = 1024


def _small_primes_product() -> int:
    """The product of every prime below SMALL_PRIME_BOUND, made once (0.1 ms:
    it is on the path of every `crate run`; a bound of 2**16 cost 8 ms)."""
    global _PRIMES_PRODUCT
    if _PRIMES_PRODUCT is None:
        sieve = bytearray([1]) * SMALL_PRIME_BOUND
        sieve[0:2] = b"\x00\x00"
        for i in range(2, int(SMALL_PRIME_BOUND**0.5) + 1):
            if sieve[i]:
                sieve[i * i :: i] = bytes(len(range(i * i, SMALL_PRIME_BOUND, i)))
        _PRIMES_PRODUCT = math.prod(i for i in range(SMALL_PRIME_BOUND) if sieve[i])
    return _PRIMES_PRODUCT


def thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256), used as the key id of org keys."""
    jwk = public_jwk(public_key)
    canonical = json.dumps(
        {"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(canonical.encode("ascii"))
    return b64u_encode(digest.finalize())


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


# -- the org key's signature over a retrieval's answer ----------------------------
#
# A relay that can read and change the traffic (a TLS-intercepting proxy, a
# stolen certificate) could swap the client's ephemeral key for its own and
# re-seal the answer to the client: the JWE alone proves nothing about who
# made it. So the server signs, with the org's RSA key (RSA-PSS, SHA-256), a
# message binding the answer to this request: the org, the key id, the
# thumbprint of the client's ephemeral key, its nonce, what it selected
# (names, tags, versions, layout) and the bundle. The client checks it
# against the key it pinned at login.

SIGNATURE_ALG = "PS256"
SIGNATURE_PURPOSE = "crate/retrieve-signature/v1"


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def selection_digest(
    environment: str,
    names: list[str],
    tags: list[str],
    versions: dict[str, int],
    layout: str | None,
) -> str:
    """SHA-256 (hex) of what a retrieval asked for, as the request carried it
    (missing members as empty, layout `rows` by default): signed with the
    answer, so that a relay cannot change the selection (roll a secret back
    to an older version, drop a tag filter) and pass the answer on."""
    canonical = json.dumps(
        {
            "environment": environment,
            "names": names,
            "tags": tags,
            "versions": versions,
            "layout": layout or "rows",
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(canonical.encode("ascii"))
    return digest.finalize().hex()


def signed_message(
    org: str, kid: str, client_key: str, nonce: str, selection: str, bundle: str
) -> bytes:
    """What the org key signs for one retrieval (`client_key`: the RFC 7638
    thumbprint of the client's ephemeral key; `selection`: selection_digest).
    Fields are joined by NUL, which none may hold."""
    fields = (SIGNATURE_PURPOSE, org, kid, client_key, nonce, selection, bundle)
    if any("\x00" in f for f in fields):
        raise MalformedJWE("a field of the signed message holds NUL")
    return "\x00".join(fields).encode("utf-8")


def sign(private_key: rsa.RSAPrivateKey, message: bytes) -> str:
    """RSA-PSS (SHA-256, 32-byte salt) over `message`, base64url."""
    return b64u_encode(private_key.sign(message, _pss(), hashes.SHA256()))


def verify(public_key: rsa.RSAPublicKey, message: bytes, signature: object) -> None:
    """Raise IntegrityError unless `signature` is the key's RSA-PSS over `message`."""
    from cryptography.exceptions import InvalidSignature

    try:
        raw = b64u_decode(signature) if isinstance(signature, str) else b""
        public_key.verify(raw, message, _pss(), hashes.SHA256())
    except (InvalidSignature, IntegrityError, ValueError):
        raise IntegrityError(
            "the retrieval's answer is not signed by the organization's pinned key"
        ) from None
