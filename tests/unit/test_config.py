"""Settings and private files (crate_cli/config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crate_cli.config import CrateHome, Settings, write_private_file
from crate_cli.errors import CrateError, InvalidInput


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


def test_a_setting_without_a_section_is_a_top_level_key(tmp_path: Path) -> None:
    home = CrateHome(tmp_path, tmp_path)
    settings = Settings.load(home)
    assert settings.get("store") == ""
    settings.set("session.org", "acme")
    settings.set("store", "sqlite")
    settings.save()
    text = (tmp_path / "settings.toml").read_text()
    assert text.startswith('store = "sqlite"\n'), text  # TOML: before any table
    import tomllib

    assert tomllib.loads(text) == {"store": "sqlite", "session": {"org": "acme"}}
    assert Settings.load(home).get("store") == "sqlite"
    assert Settings.load(home).get("session.org") == "acme"
    (tmp_path / "settings.toml").write_text("store = 5\n")
    with pytest.raises(InvalidInput, match=r"setting store in .* must be a str"):
        Settings.load(home).get("store")
