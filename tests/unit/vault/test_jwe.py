"""Tests of crate's JWE codec (RSA-OAEP-256 + A256GCM, compact serialization).

The codec is checked three ways: against itself (round trips, strict parsing,
tampering), against joserfc in both directions, and against RFC 7520 §5.2 and
RFC 7638 §3.1. Tokens with a bad shape are built by `_seal`, an independent
encoder written here from `cryptography` primitives, so that each rejection
test changes exactly one thing in an otherwise valid token.
"""

from __future__ import annotations

import base64
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc import jwe as jose_jwe
from joserfc.jwk import RSAKey

from crate_cli.errors import IntegrityError, MalformedJWE
from crate_cli.vault import jwe

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
SECRET = b"s3cr3t-PLAINTEXT-value-do-not-print"
HEADER = {"alg": "RSA-OAEP-256", "enc": "A256GCM"}
EXTRA = {"kid": "k-7f3a", "org": "acme", "env": "prod", "name": "DATABASE_URL"}

# joserfc does not enable RSA-OAEP-256 by default and, by default, refuses
# header members it does not know (org, env, name): allow both explicitly.
JOSE_REGISTRY = jose_jwe.JWERegistry(
    algorithms=["RSA-OAEP-256", "A256GCM"], strict_check_header=False
)

_OAEP_SHA256 = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)
_OAEP_SHA1 = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None
)


# -- helpers (independent of the module under test) ---------------------------


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _seal(
    public_key: rsa.RSAPublicKey,
    header: Any,
    plaintext: bytes = SECRET,
    *,
    iv: bytes | None = None,
    tag_len: int = 16,
    protected: str | None = None,
) -> str:
    """Build a compact JWE by hand: RSA-OAEP-256 key, AES-GCM content."""
    if protected is None:
        protected = b64e(json.dumps(header).encode("utf-8"))
    cek = os.urandom(32)
    iv = os.urandom(12) if iv is None else iv
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    ciphertext, tag = sealed[:-16], sealed[-16:][:tag_len]
    encrypted_key = public_key.encrypt(cek, _OAEP_SHA256)
    return ".".join([protected, b64e(encrypted_key), b64e(iv), b64e(ciphertext), b64e(tag)])


def _replace_part(token: str, index: int, raw: bytes) -> str:
    parts = token.split(".")
    parts[index] = b64e(raw)
    return ".".join(parts)


def _part(token: str, index: int) -> bytes:
    return b64d(token.split(".")[index])


def _pem(private_key: rsa.RSAPrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def key2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def key3072() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


@pytest.fixture(scope="module")
def other2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(params=[2048, 3072], ids=["rsa2048", "rsa3072"])
def any_key(
    request: pytest.FixtureRequest, key2048: rsa.RSAPrivateKey, key3072: rsa.RSAPrivateKey
) -> rsa.RSAPrivateKey:
    return key2048 if request.param == 2048 else key3072


@pytest.fixture(scope="module")
def rfc7520() -> dict[str, Any]:
    return json.loads((VECTORS / "rfc7520-5.2.json").read_text(encoding="utf-8"))


def _rfc_private_key(vector: dict[str, Any]) -> rsa.RSAPrivateKey:
    k = {
        name: int.from_bytes(b64d(vector["key"][name]), "big")
        for name in ("n", "e", "d", "p", "q", "dp", "dq", "qi")
    }
    public = rsa.RSAPublicNumbers(k["e"], k["n"])
    numbers = rsa.RSAPrivateNumbers(k["p"], k["q"], k["d"], k["dp"], k["dq"], k["qi"], public)
    return numbers.private_key()


# -- round trips ---------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext",
    [b"", b"x", SECRET, "pässwörd–✓".encode(), os.urandom(4096)],
    ids=["empty", "one-byte", "ascii", "utf8", "4KiB-binary"],
)
def test_roundtrip(any_key: rsa.RSAPrivateKey, plaintext: bytes) -> None:
    token = jwe.encrypt(any_key.public_key(), plaintext)
    result = jwe.decrypt(any_key, token)
    assert result.plaintext == plaintext
    assert result.header == HEADER


def test_roundtrip_extra_header_members(any_key: rsa.RSAPrivateKey) -> None:
    token = jwe.encrypt(any_key.public_key(), SECRET, extra_header=EXTRA)
    assert jwe.parse_header(token) == {**HEADER, **EXTRA}
    result = jwe.decrypt(any_key, token)
    assert result.header == {**HEADER, **EXTRA}
    assert result.plaintext == SECRET


def test_token_shape(any_key: rsa.RSAPrivateKey) -> None:
    token = jwe.encrypt(any_key.public_key(), SECRET)
    parts = token.split(".")
    assert len(parts) == 5
    assert "=" not in token
    assert json.loads(b64d(parts[0])) == HEADER
    assert len(b64d(parts[1])) == any_key.key_size // 8
    assert len(b64d(parts[2])) == 12
    assert len(b64d(parts[3])) == len(SECRET)
    assert len(b64d(parts[4])) == 16


def test_encryption_is_randomized(key2048: rsa.RSAPrivateKey) -> None:
    a = jwe.encrypt(key2048.public_key(), SECRET).split(".")
    b = jwe.encrypt(key2048.public_key(), SECRET).split(".")
    assert a[0] == b[0]
    assert a[1] != b[1]  # fresh CEK and OAEP seed
    assert a[2] != b[2]  # fresh IV
    assert a[3] != b[3]


@pytest.mark.parametrize("member", ["alg", "enc", "zip", "crit"])
def test_encrypt_refuses_codec_owned_header_members(
    key2048: rsa.RSAPrivateKey, member: str
) -> None:
    with pytest.raises(ValueError, match=member):
        jwe.encrypt(key2048.public_key(), SECRET, extra_header={member: "x"})


def test_independent_encoder_is_accepted(key2048: rsa.RSAPrivateKey) -> None:
    # Positive control for `_seal`: the rejection tests below differ from this
    # token in one respect only.
    token = _seal(key2048.public_key(), HEADER)
    assert jwe.decrypt(key2048, token).plaintext == SECRET


# -- interoperability with joserfc -------------------------------------------


def test_joserfc_decrypts_our_tokens(any_key: rsa.RSAPrivateKey) -> None:
    token = jwe.encrypt(any_key.public_key(), SECRET, extra_header=EXTRA)
    result = jose_jwe.decrypt_compact(
        token, RSAKey.import_key(_pem(any_key)), registry=JOSE_REGISTRY
    )
    assert result.plaintext == SECRET
    assert result.protected == {**HEADER, **EXTRA}


def test_we_decrypt_joserfc_tokens(any_key: rsa.RSAPrivateKey) -> None:
    public = RSAKey.import_key(jwe.public_jwk(any_key.public_key()))
    protected = {**HEADER, **EXTRA}
    token = jose_jwe.encrypt_compact(protected, SECRET, public, registry=JOSE_REGISTRY)
    result = jwe.decrypt(any_key, token)
    assert result.plaintext == SECRET
    assert result.header == protected


def test_joserfc_generated_key_end_to_end() -> None:
    jose_key = RSAKey.generate_key(2048)
    our_public = jwe.public_key_from_jwk(jose_key.as_dict(private=False))
    assert our_public.public_numbers() == jose_key.public_key.public_numbers()
    token = jwe.encrypt(our_public, SECRET, extra_header={"kid": jose_key.thumbprint()})
    result = jose_jwe.decrypt_compact(token, jose_key, registry=JOSE_REGISTRY)
    assert result.plaintext == SECRET
    assert result.protected["kid"] == jwe.thumbprint(our_public)


@pytest.mark.parametrize(
    ("alg", "enc"),
    [
        ("RSA-OAEP", "A256GCM"),
        ("RSA-OAEP-256", "A128GCM"),
        ("RSA-OAEP-256", "A256CBC-HS512"),
        ("RSA1_5", "A256GCM"),
    ],
)
def test_we_reject_joserfc_tokens_of_other_algorithms(
    key2048: rsa.RSAPrivateKey, alg: str, enc: str
) -> None:
    registry = jose_jwe.JWERegistry(algorithms=[alg, enc])
    public = RSAKey.import_key(jwe.public_jwk(key2048.public_key()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns that RSA1_5 is deprecated
        token = jose_jwe.encrypt_compact(
            {"alg": alg, "enc": enc}, SECRET, public, registry=registry
        )
    with pytest.raises(MalformedJWE):
        jwe.decrypt(key2048, token)


def test_public_jwk_matches_joserfc(any_key: rsa.RSAPrivateKey) -> None:
    ours = jwe.public_jwk(any_key.public_key())
    assert set(ours) == {"kty", "n", "e"}
    theirs = RSAKey.import_key(any_key.public_key())
    assert ours == {"kty": "RSA", **{k: theirs.as_dict()[k] for k in ("n", "e")}}
    imported = RSAKey.import_key(ours)
    assert imported.public_key.public_numbers() == any_key.public_key().public_numbers()
    assert imported.thumbprint() == jwe.thumbprint(any_key.public_key())


def test_public_key_from_jwk_accepts_joserfc_export(any_key: rsa.RSAPrivateKey) -> None:
    exported = RSAKey.import_key(any_key.public_key()).as_dict(private=False)
    loaded = jwe.public_key_from_jwk(exported)
    assert loaded.public_numbers() == any_key.public_key().public_numbers()


def test_thumbprint_rfc7638_example() -> None:
    # RFC 7638 §3.1: the example RSA key and its SHA-256 thumbprint.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
        "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
        "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    key = jwe.public_key_from_jwk({"kty": "RSA", "n": n, "e": "AQAB"})
    assert jwe.thumbprint(key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert jwe.public_jwk(key) == {"kty": "RSA", "n": n, "e": "AQAB"}


# -- RFC 7520 §5.2 (RSA-OAEP with SHA-1, A256GCM) ------------------------------


def test_rfc7520_vector_is_rejected(rfc7520: dict[str, Any]) -> None:
    key = _rfc_private_key(rfc7520)
    assert json.loads(b64d(rfc7520["protected_b64u"])) == rfc7520["protected"]
    with pytest.raises(MalformedJWE):
        jwe.parse_header(rfc7520["compact"])
    with pytest.raises(MalformedJWE):
        jwe.decrypt(key, rfc7520["compact"])


def test_rfc7520_content_layer(rfc7520: dict[str, Any]) -> None:
    key = _rfc_private_key(rfc7520)
    cek = key.decrypt(b64d(rfc7520["encrypted_key"]), _OAEP_SHA1)
    assert cek == b64d(rfc7520["cek"])
    iv = b64d(rfc7520["iv"])
    sealed = b64d(rfc7520["ciphertext"]) + b64d(rfc7520["tag"])
    aad = rfc7520["protected_b64u"].encode("ascii")
    assert AESGCM(cek).decrypt(iv, sealed, aad) == rfc7520["plaintext"].encode("utf-8")
    # The AAD is the encoded header, not the header JSON itself.
    with pytest.raises(InvalidTag):
        AESGCM(cek).decrypt(iv, sealed, b64d(rfc7520["protected_b64u"]))


def test_rfc7520_through_our_decrypt_with_sha1_key_encryption(
    rfc7520: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Swap only the key-encryption parameters for RFC 7520's RSA-OAEP (SHA-1):
    # everything else in `decrypt` (parsing, lengths, AAD, tag) runs as is.
    monkeypatch.setattr(jwe, "ALG", "RSA-OAEP")
    monkeypatch.setattr(jwe, "_oaep", lambda: _OAEP_SHA1)
    result = jwe.decrypt(_rfc_private_key(rfc7520), rfc7520["compact"])
    assert result.plaintext == rfc7520["plaintext"].encode("utf-8")
    assert result.header == rfc7520["protected"]


def test_rfc7520_our_encrypt_content_layer(
    rfc7520: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the RFC's CEK and IV, our A256GCM layer must give the RFC ciphertext
    # (the tag differs: our protected header, hence the AAD, is not the RFC's).
    chosen = {32: b64d(rfc7520["cek"]), 12: b64d(rfc7520["iv"])}
    real_urandom = os.urandom
    monkeypatch.setattr(
        jwe.os, "urandom", lambda n: chosen.pop(n) if n in chosen else real_urandom(n)
    )
    key = _rfc_private_key(rfc7520)
    plaintext = rfc7520["plaintext"].encode("utf-8")
    token = jwe.encrypt(key.public_key(), plaintext)
    assert not chosen, "encrypt did not draw a 32-byte CEK and a 12-byte IV"
    parts = token.split(".")
    assert parts[2] == rfc7520["iv"]
    assert parts[3] == rfc7520["ciphertext"]
    assert parts[4] != rfc7520["tag"]
    assert key.decrypt(b64d(parts[1]), _OAEP_SHA256) == b64d(rfc7520["cek"])
    assert jwe.decrypt(key, token).plaintext == plaintext


# -- strict parsing ------------------------------------------------------------


def _with_part(token: str, index: int, text: str) -> str:
    parts = token.split(".")
    parts[index] = text
    return ".".join(parts)


def _drop_part(token: str) -> str:
    return ".".join(token.split(".")[:4])


def _bad_length(token: str) -> str:
    # A base64url text whose length is 1 mod 4 cannot encode any bytes.
    text = token.split(".")[3]
    return _with_part(token, 3, text + "A" * ((1 - len(text)) % 4 or 4))


_Builder = Callable[[rsa.RSAPublicKey, str], str]

# Each builder gets the public key and a valid token (`good`) and returns a
# token that differs from a valid one in one respect.
MALFORMED: dict[str, _Builder] = {
    "four-parts": lambda pub, good: _drop_part(good),
    "six-parts": lambda pub, good: good + ".",
    "empty-string": lambda pub, good: "",
    "padding-in-header": lambda pub, good: _seal(
        pub, None, protected=b64e(json.dumps(HEADER).encode()) + "="
    ),
    "padding-in-iv": lambda pub, good: _with_part(good, 2, good.split(".")[2] + "=="),
    "padding-in-tag": lambda pub, good: _with_part(good, 4, good.split(".")[4] + "=="),
    "base64-length-1-mod-4": lambda pub, good: _bad_length(good),
    "non-ascii-part": lambda pub, good: _with_part(good, 3, good.split(".")[3] + "é"),
    "non-json-header": lambda pub, good: _seal(pub, None, protected=b64e(b"alg=RSA-OAEP-256")),
    "non-utf8-header": lambda pub, good: _seal(pub, None, protected=b64e(b'{"alg":"\xff"}')),
    "header-array": lambda pub, good: _seal(pub, ["RSA-OAEP-256", "A256GCM"]),
    "header-string": lambda pub, good: _seal(pub, "RSA-OAEP-256"),
    "header-null": lambda pub, good: _seal(pub, None),
    "alg-RSA1_5": lambda pub, good: _seal(pub, {**HEADER, "alg": "RSA1_5"}),
    "alg-dir": lambda pub, good: _seal(pub, {**HEADER, "alg": "dir"}),
    "alg-RSA-OAEP": lambda pub, good: _seal(pub, {**HEADER, "alg": "RSA-OAEP"}),
    "alg-lowercase": lambda pub, good: _seal(pub, {**HEADER, "alg": "rsa-oaep-256"}),
    "alg-missing": lambda pub, good: _seal(pub, {"enc": "A256GCM"}),
    "enc-A128GCM": lambda pub, good: _seal(pub, {**HEADER, "enc": "A128GCM"}),
    "enc-A256CBC-HS512": lambda pub, good: _seal(pub, {**HEADER, "enc": "A256CBC-HS512"}),
    "enc-missing": lambda pub, good: _seal(pub, {"alg": "RSA-OAEP-256"}),
    "crit": lambda pub, good: _seal(pub, {**HEADER, "crit": ["exp"], "exp": 1}),
    "crit-empty": lambda pub, good: _seal(pub, {**HEADER, "crit": []}),
    "zip": lambda pub, good: _seal(pub, {**HEADER, "zip": "DEF"}),
    "iv-16-bytes": lambda pub, good: _seal(pub, HEADER, iv=os.urandom(16)),
    "iv-empty": lambda pub, good: _with_part(good, 2, ""),
    "tag-12-bytes": lambda pub, good: _seal(pub, HEADER, tag_len=12),
    "tag-empty": lambda pub, good: _with_part(good, 4, ""),
    "key-one-byte-short": lambda pub, good: _replace_part(good, 1, _part(good, 1)[:-1]),
    "key-one-byte-long": lambda pub, good: _replace_part(good, 1, _part(good, 1) + b"\x00"),
    "key-empty": lambda pub, good: _with_part(good, 1, ""),
}


@pytest.fixture(scope="module")
def malformed(key2048: rsa.RSAPrivateKey) -> dict[str, str]:
    public = key2048.public_key()
    good = _seal(public, HEADER)
    return {name: build(public, good) for name, build in MALFORMED.items()}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_token_is_rejected(
    key2048: rsa.RSAPrivateKey, malformed: dict[str, str], case: str
) -> None:
    with pytest.raises(MalformedJWE):
        jwe.decrypt(key2048, malformed[case])


def test_non_string_token_is_rejected(key2048: rsa.RSAPrivateKey) -> None:
    token = jwe.encrypt(key2048.public_key(), SECRET)
    with pytest.raises(MalformedJWE):
        jwe.decrypt(key2048, token.encode("ascii"))  # type: ignore[arg-type]


def test_token_for_a_key_of_another_size_is_rejected(
    key2048: rsa.RSAPrivateKey, key3072: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(MalformedJWE):
        jwe.decrypt(key2048, jwe.encrypt(key3072.public_key(), SECRET))
    with pytest.raises(MalformedJWE):
        jwe.decrypt(key3072, jwe.encrypt(key2048.public_key(), SECRET))


# -- authentication failures -------------------------------------------------


def _tampered_tokens(token: str, other_token: str) -> dict[str, str]:
    parts = token.split(".")
    header = json.loads(b64d(parts[0]))
    ciphertext, tag, iv = _part(token, 3), _part(token, 4), _part(token, 2)
    respaced = b64e(json.dumps(header, separators=(", ", ": ")).encode())
    return {
        "ciphertext-byte": _replace_part(token, 3, bytes([ciphertext[0] ^ 0x80]) + ciphertext[1:]),
        "ciphertext-truncated": _replace_part(token, 3, ciphertext[:-1]),
        "ciphertext-extended": _replace_part(token, 3, ciphertext + b"\x00"),
        "tag-byte": _replace_part(token, 4, tag[:-1] + bytes([tag[-1] ^ 0x01])),
        "tag-zero": _replace_part(token, 4, bytes(16)),
        "header-member-changed": ".".join(
            [b64e(json.dumps({**header, "env": "dev"}).encode()), *parts[1:]]
        ),
        "header-member-added": ".".join(
            [b64e(json.dumps({**header, "extra": 1}).encode()), *parts[1:]]
        ),
        "header-reencoded-same-json": ".".join([respaced, *parts[1:]]),
        "iv-swapped": _replace_part(token, 2, _part(other_token, 2)),
        "iv-byte": _replace_part(token, 2, bytes([iv[0] ^ 0x01]) + iv[1:]),
        "encrypted-key-swapped": ".".join([parts[0], other_token.split(".")[1], *parts[2:]]),
    }


@pytest.fixture(scope="module")
def tampered(key2048: rsa.RSAPrivateKey) -> dict[str, str]:
    token = jwe.encrypt(key2048.public_key(), SECRET, extra_header=EXTRA)
    other = jwe.encrypt(key2048.public_key(), SECRET, extra_header=EXTRA)
    return _tampered_tokens(token, other)


@pytest.mark.parametrize(
    "case",
    [
        "ciphertext-byte",
        "ciphertext-truncated",
        "ciphertext-extended",
        "tag-byte",
        "tag-zero",
        "header-member-changed",
        "header-member-added",
        "header-reencoded-same-json",
        "iv-swapped",
        "iv-byte",
        "encrypted-key-swapped",
    ],
)
def test_tampered_token_fails_integrity(
    key2048: rsa.RSAPrivateKey, tampered: dict[str, str], case: str
) -> None:
    with pytest.raises(IntegrityError) as info:
        jwe.decrypt(key2048, tampered[case])
    # RFC 7516 §11.5: every cryptographic failure looks the same.
    assert type(info.value) is IntegrityError
    assert info.value.message == IntegrityError().message


def test_token_for_another_key_fails_like_tampering(
    key2048: rsa.RSAPrivateKey, other2048: rsa.RSAPrivateKey, tampered: dict[str, str]
) -> None:
    token = jwe.encrypt(other2048.public_key(), SECRET)
    with pytest.raises(IntegrityError) as wrong_key:
        jwe.decrypt(key2048, token)
    with pytest.raises(IntegrityError) as bad_tag:
        jwe.decrypt(key2048, tampered["tag-byte"])
    assert type(wrong_key.value) is type(bad_tag.value) is IntegrityError
    assert str(wrong_key.value) == str(bad_tag.value)
    # The intended key still opens it.
    assert jwe.decrypt(other2048, token).plaintext == SECRET


def test_errors_do_not_reveal_plaintext(
    key2048: rsa.RSAPrivateKey,
    other2048: rsa.RSAPrivateKey,
    tampered: dict[str, str],
    malformed: dict[str, str],
) -> None:
    tokens = [
        *tampered.values(),
        *malformed.values(),
        jwe.encrypt(other2048.public_key(), SECRET),
    ]
    needle = SECRET.decode("ascii")
    for token in tokens:
        with pytest.raises(IntegrityError) as info:
            jwe.decrypt(key2048, token)
        err = info.value
        rendered = f"{err!s} {err!r} {err.diagnostics()} {err.args!r}"
        assert needle not in rendered
        assert err.__cause__ is None
        assert err.__suppress_context__ or err.__context__ is None


def test_every_single_byte_change_is_detected(key2048: rsa.RSAPrivateKey) -> None:
    plaintext = b"hi"
    token = jwe.encrypt(key2048.public_key(), plaintext, extra_header={"kid": "k"})
    assert jwe.decrypt(key2048, token).plaintext == plaintext
    checked = 0
    for index in (0, 1, 2, 3, 4):  # header, encrypted key, IV, ciphertext, tag
        raw = _part(token, index)
        for position in range(len(raw)):
            flipped = bytearray(raw)
            flipped[position] ^= 1 << (position % 8)
            forged = _replace_part(token, index, bytes(flipped))
            with pytest.raises(IntegrityError):
                jwe.decrypt(key2048, forged)
            checked += 1
    assert checked == len(b64d(token.split(".")[0])) + 256 + 12 + 2 + 16


# -- public_key_from_jwk -------------------------------------------------------


def test_public_key_from_jwk_roundtrip(any_key: rsa.RSAPrivateKey) -> None:
    jwk = jwe.public_jwk(any_key.public_key())
    loaded = jwe.public_key_from_jwk({**jwk, "kid": "x", "use": "enc", "alg": "RSA-OAEP-256"})
    assert loaded.public_numbers() == any_key.public_key().public_numbers()


def _jwk_with(n: int, e: int) -> dict[str, str]:
    def enc(value: int) -> str:
        return b64e(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))

    return {"kty": "RSA", "n": enc(n), "e": enc(e)}


@pytest.fixture(scope="module")
def rejected_jwks(key2048: rsa.RSAPrivateKey) -> dict[str, Any]:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    public = jwe.public_jwk(key2048.public_key())
    n = key2048.public_key().public_numbers().n
    private = RSAKey.import_key(key2048).as_dict(private=True)
    return {
        "list": [public],
        "string": json.dumps(public),
        "none": None,
        "kty-missing": {"n": public["n"], "e": public["e"]},
        "kty-EC": {"kty": "EC", "crv": "P-256", "x": b64e(bytes(32)), "y": b64e(bytes(32))},
        "kty-oct": {"kty": "oct", "k": b64e(bytes(32))},
        "private-jwk": private,
        "public-plus-d": {**public, "d": private["d"]},
        "rsa-1024": jwe.public_jwk(small.public_key()),
        "n-8200-bits": _jwk_with((1 << 8199) | 1, 65537),
        "exponent-even": _jwk_with(n, 65536),
        "exponent-1": _jwk_with(n, 1),
        "exponent-80-bits": _jwk_with(n, (1 << 80) + 1),
        "n-missing": {"kty": "RSA", "e": "AQAB"},
        "e-missing": {"kty": "RSA", "n": public["n"]},
        "n-padded": {"kty": "RSA", "n": public["n"] + "=", "e": "AQAB"},
        "n-not-string": {"kty": "RSA", "n": n, "e": "AQAB"},
    }


REJECTED_JWK_CASES = [
    "list",
    "string",
    "none",
    "kty-missing",
    "kty-EC",
    "kty-oct",
    "private-jwk",
    "public-plus-d",
    "rsa-1024",
    "n-8200-bits",
    "exponent-even",
    "exponent-1",
    "exponent-80-bits",
    "n-missing",
    "e-missing",
    "n-padded",
    "n-not-string",
]


def test_rejected_jwk_cases_are_all_parametrized(rejected_jwks: dict[str, Any]) -> None:
    assert list(rejected_jwks) == REJECTED_JWK_CASES


@pytest.mark.parametrize("case", REJECTED_JWK_CASES)
def test_public_key_from_jwk_rejects(rejected_jwks: dict[str, Any], case: str) -> None:
    with pytest.raises(MalformedJWE):
        jwe.public_key_from_jwk(rejected_jwks[case])


# -- canonical encoding and hostile headers -------------------------------------


@pytest.mark.parametrize("variant", ["junk-chars", "std-alphabet", "trailing-bits"])
def test_non_canonical_base64url_is_rejected(key2048: rsa.RSAPrivateKey, variant: str) -> None:
    token = jwe.encrypt(key2048.public_key(), b"\xfb\xff\xbf" * 3)
    parts = token.split(".")
    if variant == "junk-chars":
        parts[3] = parts[3][:2] + "!!!!" + parts[3][2:]
    elif variant == "std-alphabet":
        # The 342-character encrypted key all but surely holds a '-' or '_'.
        assert "-" in parts[1] or "_" in parts[1]
        parts[1] = parts[1].replace("-", "+").replace("_", "/")
    else:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(parts[4][-1])
        parts[4] = parts[4][:-1] + alphabet[last ^ 1]  # tag: 22 chars, 4 unused bits
    with pytest.raises(MalformedJWE):
        jwe.decrypt(key2048, ".".join(parts))


def test_deeply_nested_header_is_malformed() -> None:
    protected = b64e(b"[" * 100_000)
    with pytest.raises(MalformedJWE):
        jwe.parse_header(".".join([protected, "AA", "AA", "AA", "AA"]))
