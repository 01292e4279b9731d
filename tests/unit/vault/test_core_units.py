"""Small units of the core: AAD, names, settings, routing, error round trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crate_cli.config import CrateHome, Settings, write_private_file
from crate_cli.errors import (
    Conflict,
    CrateError,
    ExitCode,
    IntegrityError,
    InvalidInput,
    InvalidSealedValue,
    KeystoreError,
    NotFound,
    PayloadTooLarge,
    SealedTransportRequired,
    error_from_api,
)
from crate_cli.vault import crypto, names


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


@pytest.mark.parametrize(
    ("check", "good", "bad"),
    [
        (names.check_org, ["acme", "my-team", "a" * 63], ["Acme", "-x", "a_b", "a" * 64, ""]),
        (names.check_env, ["dev", "qa_1", "pr-12"], ["Dev", "_x", "a b", "a" * 64]),
        (
            names.check_secret_name,
            ["DB_URL", "_x", "a1", "A" * 256],
            ["1A", "A-B", "A B", "A" * 257, "", "A|B"],
        ),
        (names.check_tag, ["db", "v1.2", "a_b-c"], ["DB", ".x", "a/b", "a" * 64]),
    ],
)
def test_name_rules(check: object, good: list[str], bad: list[str]) -> None:
    assert callable(check)
    for name in good:
        assert check(name) == name
    for name in bad:
        with pytest.raises(InvalidInput) as caught:
            check(name)
        assert caught.value.exit_code == ExitCode.USAGE
        assert "use " in caught.value.message


def test_a_long_bad_name_is_not_echoed() -> None:
    pasted = "sk_live_" + "x" * 100
    with pytest.raises(InvalidInput) as caught:
        names.check_org(pasted)
    assert pasted not in caught.value.message


def test_values_must_be_text_without_nul_and_within_the_limit() -> None:
    assert names.check_value("A", "héllo".encode(), 100) == "héllo"
    with pytest.raises(PayloadTooLarge):
        names.check_value("A", b"x" * 101, 100)
    with pytest.raises(InvalidInput):
        names.check_value("A", b"\xff\xfe", 100)
    with pytest.raises(InvalidInput):
        names.check_value("A", b"a\x00b", 100)


def test_tags_are_sorted_and_deduplicated() -> None:
    assert names.check_tags(["db", "backend", "db"]) == ["backend", "db"]


def test_settings_round_trip_and_type_checks(tmp_path: Path) -> None:
    home = CrateHome(tmp_path, tmp_path)
    settings = Settings.load(home)
    assert settings.get("session.env") == "dev"
    settings.set("session.org", "acme")
    settings.save()
    assert (tmp_path / "settings.toml").stat().st_mode & 0o777 == 0o600
    assert Settings.load(home).get("session.org") == "acme"
    (tmp_path / "settings.toml").write_text('[secrets]\nmax_value_bytes = "big"\n')
    with pytest.raises(InvalidInput):
        Settings.load(home).get("secrets.max_value_bytes")
    (tmp_path / "settings.toml").write_text("not = [toml")
    with pytest.raises(CrateError, match="not valid TOML"):
        Settings.load(home)


def test_private_files_replace_atomically(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file"
    write_private_file(target, b"one")
    write_private_file(target, b"two")
    assert target.read_bytes() == b"two"
    assert (tmp_path / "sub").stat().st_mode & 0o777 == 0o700
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["file"]


@pytest.mark.parametrize(
    "cls",
    [
        InvalidInput,
        PayloadTooLarge,
        SealedTransportRequired,
        InvalidSealedValue,
        NotFound,
        IntegrityError,
        KeystoreError,
        Conflict,
    ],
)
def test_errors_keep_their_exit_code_across_the_wire(cls: type[CrateError]) -> None:
    original = cls("message")
    rebuilt = error_from_api(original.api_code, original.message)
    assert rebuilt.exit_code == original.exit_code
    assert rebuilt.api_code == original.api_code
    assert rebuilt.message == "message"


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


def test_all_secret_names_is_check_secret_name_for_each() -> None:
    from crate_cli.vault.names import all_secret_names

    assert all_secret_names([])
    assert all_secret_names(["A", "_b", "C_1", "x" * 256])
    for bad in (["A", "1B"], ["A\nB"], ["A", ""], ["A", "B-C"], ["x" * 257], ["A", 1], ["A\n"]):
        assert not all_secret_names(bad), bad  # type: ignore[arg-type]


def test_mac_message_refuses_nul_in_a_field() -> None:
    with pytest.raises(ValueError):
        crypto.mac_message(crypto.SECRET_HEAD, "acme", "a\x00b")
    assert crypto.mac_message("p", "a", 1, None) == b"p\x00a\x001\x00None"


def test_settings_cache_follows_the_file_text(tmp_path: Path) -> None:
    home = CrateHome(tmp_path, tmp_path)
    settings = Settings.load(home)
    settings.set("session.org", "acme")
    settings.save()
    assert (tmp_path / ".settings.toml.json").stat().st_mode & 0o777 == 0o600
    assert Settings.load(home).get("session.org") == "acme"
    # A hand edit is seen at once, whatever the cache says.
    (tmp_path / "settings.toml").write_text('[session]\norg = "beta"\n')
    assert Settings.load(home).get("session.org") == "beta"
    # A damaged cache is ignored and rewritten.
    (tmp_path / ".settings.toml.json").write_text("{not json")
    assert Settings.load(home).get("session.org") == "beta"
    assert "beta" in (tmp_path / ".settings.toml.json").read_text()
