"""The primitives of crate_cli/vault/crypto.py: the AAD builder, blobs,
nonces, the secret opener and row MACs."""

from __future__ import annotations

from typing import Any

import pytest

from crate_cli.errors import IntegrityError
from crate_cli.vault import crypto


def test_aad_refuses_the_separator_in_a_part() -> None:
    with pytest.raises(ValueError):
        crypto.aad(crypto.SECRET_VALUE, "acme", "dev|prod", "X", 1)


def test_every_decrypt_failure_is_one_integrity_error() -> None:
    key = crypto.new_key()
    blob = crypto.encrypt(key, b"value", b"aad")
    for bad in (blob[:-1], b"\x02" + blob[1:], blob[:10], b""):
        with pytest.raises(IntegrityError):
            crypto.decrypt(key, bad, b"aad")
    with pytest.raises(IntegrityError):
        crypto.decrypt(crypto.new_key(), blob, b"aad")
    with pytest.raises(IntegrityError):
        crypto.decrypt(key[:16], blob, b"aad")


def test_nonces_are_fresh() -> None:
    key = crypto.new_key()
    assert crypto.encrypt(key, b"v", b"a")[1:13] != crypto.encrypt(key, b"v", b"a")[1:13]


def test_secret_aads_are_the_general_builder_s() -> None:
    dek_aad, value_aad = crypto.secret_aads("acme", "dev", "DB_URL", 7)
    assert dek_aad == crypto.aad(crypto.SECRET_DEK, "acme", "dev", "DB_URL", 7)
    assert value_aad == crypto.aad(crypto.SECRET_VALUE, "acme", "dev", "DB_URL", 7)
    with pytest.raises(ValueError):
        crypto.secret_aads("acme", "dev|x", "DB_URL", 7)


def test_secret_opener_is_unwrap_then_decrypt() -> None:
    org_dek, secret_dek = crypto.new_key(), crypto.new_key()
    dek_aad, value_aad = crypto.secret_aads("acme", "dev", "A", 1)
    wrapped = crypto.wrap_key(org_dek, secret_dek, dek_aad)
    blob = crypto.encrypt(secret_dek, b"value", value_aad)
    asked: list[int] = []

    def dek_cipher(version: int) -> Any:
        asked.append(version)
        return crypto.cipher(org_dek)

    open_value = crypto.secret_opener("acme", "dev", dek_cipher)
    assert open_value("A", 1, 9, wrapped, blob) == b"value"
    assert open_value("A", 1, 9, wrapped, blob) == b"value"
    assert asked == [9]  # one cipher per org DEK version
    for args in [
        ("B", 1, 9, wrapped, blob),  # another name's associated data
        ("A", 2, 9, wrapped, blob),  # another version's
        ("A", 1, 9, blob, wrapped),
        ("A", 1, 9, None, blob),
        ("A", 1, 9, wrapped, None),
        ("A", 1, 9, wrapped[:-1], blob),
        ("A", 1, 9, wrapped, b"\x02" + blob[1:]),
        ("A", 1, 9, bytearray(wrapped), blob),
    ]:
        with pytest.raises(IntegrityError):
            open_value(*args)
    other_env = crypto.secret_opener("acme", "prod", dek_cipher)
    with pytest.raises(IntegrityError):
        other_env("A", 1, 9, wrapped, blob)
    with pytest.raises(ValueError):
        crypto.secret_opener("acme", "dev|x", dek_cipher)
    with pytest.raises(ValueError):
        open_value("A|B", 1, 9, wrapped, blob)


def test_row_mac_is_mac_message_under_the_key() -> None:
    key = crypto.new_key()
    fields = ("DB_URL", 3, 0, '["a"]', "2026-11-29T08:00:00Z", "alice")
    message = crypto.mac_message(crypto.SECRET_HEAD, "acme", "dev", *fields)
    row_mac = crypto.RowMac(key, crypto.SECRET_HEAD, "acme", "dev")
    assert row_mac.message(fields) == message
    tag = crypto.mac(key, message)
    row_mac.verify(fields, tag)
    row_mac.verify(fields, tag)  # the keyed HMAC is copied, not used up
    for bad_fields, bad_tag in [
        (("DB_URL", 4, *fields[2:]), tag),
        (fields, tag[:-1] + bytes([tag[-1] ^ 1])),
        (fields, tag[:-1]),
        (fields, None),
        (fields, bytearray(tag)),
    ]:
        with pytest.raises(IntegrityError):
            row_mac.verify(bad_fields, bad_tag)
    with pytest.raises(ValueError):
        row_mac.message(("a\x00b", *fields[1:]))
    with pytest.raises(ValueError):
        row_mac.message(())


def test_mac_message_refuses_nul_in_a_field() -> None:
    with pytest.raises(ValueError):
        crypto.mac_message(crypto.SECRET_HEAD, "acme", "a\x00b")
    assert crypto.mac_message("p", "a", 1, None) == b"p\x00a\x001\x00None"
