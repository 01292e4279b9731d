"""Small units of the core: AAD, names, settings, routing, error round trips."""

from __future__ import annotations

from pathlib import Path

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


def test_open_secret_is_unwrap_then_decrypt() -> None:
    org_dek, secret_dek = crypto.new_key(), crypto.new_key()
    dek_aad, value_aad = crypto.secret_aads("acme", "dev", "A", 1)
    wrapped = crypto.wrap_key(org_dek, secret_dek, dek_aad)
    blob = crypto.encrypt(secret_dek, b"value", value_aad)
    opened = crypto.open_secret(crypto.cipher(org_dek), wrapped, blob, dek_aad, value_aad)
    assert opened == b"value"
    other_aads = crypto.secret_aads("acme", "dev", "B", 1)
    for args in [
        (wrapped, blob, *other_aads),
        (blob, wrapped, dek_aad, value_aad),
        (None, blob, dek_aad, value_aad),
        (wrapped, None, dek_aad, value_aad),
        (wrapped[:-1], blob, dek_aad, value_aad),
        (wrapped, b"\x02" + blob[1:], dek_aad, value_aad),
    ]:
        with pytest.raises(IntegrityError):
            crypto.open_secret(crypto.cipher(org_dek), *args)


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
